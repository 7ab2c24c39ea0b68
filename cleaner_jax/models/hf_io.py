"""HF safetensors checkpoints <-> our Qwen model.

Import reads a local HF directory (`model.safetensors`, or shards listed in
`model.safetensors.index.json`) one tensor at a time: each tensor is read on the host,
transposed to our `[in, out]` layout, cast to the parameter dtype and placed straight into its
target sharding, so the checkpoint is never held in host memory twice. The model is built
abstractly (`nnx.eval_shape`) and then filled; every expected tensor must be present with its
exact shape, and unknown tensors are an error (rotary `inv_freq` buffers and a tied
`lm_head.weight` are skipped).

Export streams the parameters into safetensors files (a shard per `max_shard_bytes`, plus an
index json) and writes a `config.json` that `transformers.AutoModelForCausalLM` loads.

Names: our flat path `layers/3/self_attn/q_proj/kernel` is HF
`model.layers.3.self_attn.q_proj.weight` with the kernel transposed ([out, in] in HF);
`embed_tokens/embedding` is `model.embed_tokens.weight`; `lm_head/kernel` is `lm_head.weight`.
With stacked layers (`cfg.scan_layers`) our `layers/self_attn/q_proj/kernel` [L, in, out] holds
HF's `model.layers.{i}.self_attn.q_proj.weight` at index i: import fills one stacked parameter on
the host from its L tensors before placing it (host memory: the largest stacked parameter), and
export writes the same files, byte for byte, as the unrolled layout (each layer's slice is taken
on device, then gathered).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.models.sharding import Rules, is_stacked_layer_path, state_shardings

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class CheckpointError(ValueError):
    """A checkpoint directory whose contents do not match the model config."""


def hf_name(path: tuple[Any, ...]) -> str:
    """HF tensor name of our parameter at flat-state `path` (strings and layer ints)."""
    parts = [str(p) for p in path]
    if parts[-1] in ("kernel", "embedding"):
        parts[-1] = "weight"
    name = ".".join(parts)
    return name if parts[0] == "lm_head" else "model." + name


def _is_kernel(path: tuple[Any, ...]) -> bool:
    return path[-1] == "kernel"


def _tensors_of(path: tuple[Any, ...], shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
    """[(HF name, layer index into our array or None)] of the parameter at flat `path`."""
    if not is_stacked_layer_path(path):
        return [(hf_name(path), None)]
    return [(hf_name((path[0], i, *path[1:])), i) for i in range(shape[0])]


def _hf_shape(path: tuple[Any, ...], shape: tuple[int, ...], layer: int | None) -> tuple[int, ...]:
    """Shape of one HF tensor of our parameter: one layer's slice, kernels transposed."""
    one = tuple(shape[1:] if layer is not None else shape)
    return one[::-1] if _is_kernel(path) else one


def _param_flat_state(cfg: ModelConfig):
    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, state


def _ignored(name: str, cfg: ModelConfig) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.tie_word_embeddings and name == "lm_head.weight"


def _checkpoint_files(path: str) -> dict[str, list[str]]:
    """{safetensors file: [tensor names]} of a checkpoint dir."""
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path} has no 'weight_map' object")
        files: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            files.setdefault(os.path.join(path, fname), []).append(name)
        for fpath in files:
            if not os.path.isfile(fpath):
                raise CheckpointError(f"{index_path} lists {os.path.basename(fpath)}, not found")
        return files
    if os.path.isfile(single_path):
        with safe_open(single_path, "np") as f:
            return {single_path: list(f.keys())}
    present = sorted(os.listdir(path)) if os.path.isdir(path) else []
    raise CheckpointError(
        f"no {SINGLE_FILE} or {INDEX_FILE} in {path!r} (found {present[:10]}); only safetensors "
        "checkpoints are supported: re-save with save_pretrained(..., safe_serialization=True)"
    )


def _host_device_context():
    # safe_open(..., "flax") materialises each tensor on the default device; keep it on the
    # host so that only the shards each device owns are transferred.
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:
        return jax.default_device(None)


def _check_tied_head(fpath: str, files: dict[str, list[str]], embedding: jax.Array) -> None:
    # A tied config with a stored lm_head that differs from the embedding would silently drop
    # trained weights; a copy of the embedding (older exports) is fine.
    with safe_open(fpath, "flax") as f:
        head = np.asarray(f.get_tensor("lm_head.weight"))
    emb = np.asarray(jax.device_get(embedding)).astype(head.dtype)
    if head.shape != emb.shape or not np.array_equal(head, emb):
        raise CheckpointError(
            "unexpected tensors: lm_head.weight differs from model.embed_tokens.weight but the "
            "config ties them (tie_word_embeddings=true); set tie_word_embeddings=false"
        )


def _list_names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_hf_checkpoint(
    path: str,
    cfg: ModelConfig | None = None,
    *,
    dtype: str | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> tuple[ModelConfig, Qwen]:
    """Reads an HF Qwen2/Qwen3 checkpoint dir into a `Qwen` model.

    Args:
      path: local dir with config.json and safetensors.
      cfg: the config to build (default: from `path/config.json`); its shapes must match.
      dtype: parameter dtype ("float32", "bfloat16", "float16"); default `cfg.param_dtype`.
      mesh, rules: place each parameter with its sharding (`sharding.state_shardings`);
        without a mesh, everything goes to the first device.

    Returns:
      (cfg, model), `cfg.param_dtype` set to the dtype the parameters were cast to.
    """
    if cfg is None:
        cfg = ModelConfig.from_pretrained(path)
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    graphdef, state = _param_flat_state(cfg)
    flat = dict(nnx.to_flat_state(state))
    wanted = {p: _tensors_of(p, tuple(v.get_value().shape)) for p, v in flat.items()}
    expected_names = {name for tensors in wanted.values() for name, _ in tensors}
    if mesh is not None:
        shardings = {
            p: v.get_value() for p, v in nnx.to_flat_state(state_shardings(state, mesh, rules, cfg))
        }
    else:
        device = SingleDeviceSharding(jax.local_devices()[0])
        shardings = {p: device for p in flat}

    files = _checkpoint_files(path)
    file_of = {n: fpath for fpath, names in files.items() for n in names}
    unknown = sorted(n for n in file_of if n not in expected_names and not _ignored(n, cfg))
    missing = sorted(n for n in expected_names if n not in file_of)
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing tensors: {_list_names(missing)}")
        if unknown:
            problems.append(f"unexpected tensors: {_list_names(unknown)}")
        raise CheckpointError(
            f"checkpoint {path!r} does not match the {cfg.architecture} config "
            f"(layers={cfg.num_layers}, tied={cfg.tie_word_embeddings}, "
            f"qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm}): " + "; ".join(problems)
        )

    np_dtype = np.dtype(cfg.jnp_param_dtype)
    filled = {}
    with _host_device_context(), ExitStack() as stack:
        # safetensors files are memory-mapped: opening all of them at once costs no memory, and
        # a stacked parameter's tensors may sit in different shards.
        handles = {fpath: stack.enter_context(safe_open(fpath, "flax")) for fpath in files}

        def read(name: str, want: tuple[int, ...], kernel: bool) -> np.ndarray:
            x = np.asarray(handles[file_of[name]].get_tensor(name))
            if x.shape != want:
                raise CheckpointError(
                    f"tensor {name!r} in {os.path.basename(file_of[name])} has shape {x.shape}, "
                    f"the config implies {want}: config.json and weights disagree"
                )
            return x.T if kernel else x

        for p, tensors in wanted.items():
            shape = tuple(flat[p].get_value().shape)
            if tensors[0][1] is None:
                x = read(tensors[0][0], _hf_shape(p, shape, None), _is_kernel(p))
                x = np.ascontiguousarray(x.astype(np_dtype, copy=False))
            else:
                x = np.empty(shape, np_dtype)
                for name, i in tensors:
                    x[i] = read(name, _hf_shape(p, shape, i), _is_kernel(p))
            filled[p] = jax.make_array_from_callback(shape, shardings[p], lambda idx, x=x: x[idx])
            del x
        if cfg.tie_word_embeddings and "lm_head.weight" in file_of:
            _check_tied_head(
                file_of["lm_head.weight"], files, filled[("embed_tokens", "embedding")]
            )
    for p, arr in filled.items():
        flat[p].set_value(arr)
    logging.info("loaded %d tensors from %s (%s)", len(filled), path, cfg.param_dtype)
    return cfg, nnx.merge(graphdef, state)


def _param_state(model_or_state: Any):
    if isinstance(model_or_state, nnx.Module):
        return nnx.state(model_or_state, nnx.Param)
    return model_or_state


def _host_array(arr: jax.Array) -> np.ndarray:
    if isinstance(arr, jax.Array) and not arr.is_fully_addressable:
        from jax.experimental import multihost_utils

        arr = multihost_utils.process_allgather(arr, tiled=True)
    return np.asarray(jax.device_get(arr))


@jax.jit
def _layer_slice(stacked: jax.Array, layer: jax.Array) -> jax.Array:
    return stacked[layer]


def _plan_shards(
    entries: list[tuple[str, tuple[Any, ...], tuple[int, ...]]], itemsize: int, max_bytes: int
) -> list[list[tuple[str, tuple[Any, ...], tuple[int, ...]]]]:
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = int(np.prod(entry[2])) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _write_safetensors(
    fpath: str,
    entries: list[tuple[str, tuple[Any, ...], tuple[int, ...]]],
    tensors: Iterator[np.ndarray],
    st_dtype: str,
    itemsize: int,
    write: bool,
) -> None:
    """Streams tensors into one safetensors file (the header is known from the shapes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, _, shape in entries:
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {
            "dtype": st_dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8-byte alignment
    f = open(fpath, "wb") if write else None
    try:
        if f:
            f.write(struct.pack("<Q", len(blob)) + blob)
        for (name, _, shape), x in zip(entries, tensors, strict=True):
            if x.shape != tuple(shape):
                raise CheckpointError(f"{name}: host array {x.shape} != planned {shape}")
            if f:
                f.write(x.tobytes())
    finally:
        if f:
            f.close()


def save_hf_checkpoint(
    model_or_state: Any,
    cfg: ModelConfig,
    out_dir: str,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> list[str]:
    """Writes config.json + safetensors that `AutoModelForCausalLM.from_pretrained` loads.

    Every process must call it (sharded parameters are gathered); only process 0 writes.
    Above `max_shard_bytes` the weights are split into `model-0000i-of-0000n.safetensors` with
    a `model.safetensors.index.json`. Returns the written file names.
    """
    dtype = dtype or cfg.param_dtype
    if dtype not in _ST_DTYPES:
        raise ValueError(f"export dtype {dtype!r}: use one of {sorted(_ST_DTYPES)}")
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    flat = dict(nnx.to_flat_state(_param_state(model_or_state)))
    expected = dict(nnx.to_flat_state(_param_flat_state(cfg)[1]))
    if set(flat) != set(expected):
        raise CheckpointError(
            "state does not match cfg: "
            f"extra {sorted(map(str, set(flat) - set(expected)))[:5]}, "
            f"missing {sorted(map(str, set(expected) - set(flat)))[:5]}"
        )
    entries = []
    for p, var in flat.items():
        shape = tuple(var.get_value().shape)
        if shape != tuple(expected[p].get_value().shape):
            raise CheckpointError(f"{p}: shape {shape} != {expected[p].get_value().shape} of cfg")
        for name, layer in _tensors_of(p, shape):
            entries.append((name, (p, layer), _hf_shape(p, shape, layer)))
    entries.sort(key=lambda e: e[0])

    write = jax.process_index() == 0
    if write:
        os.makedirs(out_dir, exist_ok=True)
    shards = _plan_shards(entries, np_dtype.itemsize, max_shard_bytes)
    fnames = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )

    def host_tensors(shard):
        for _, (p, layer), _ in shard:
            arr = flat[p].get_value()
            # One layer of a stacked parameter is sliced on device (a traced index: one compile
            # per shape), so the host never holds more than one tensor.
            x = _host_array(arr if layer is None else _layer_slice(arr, np.int32(layer)))
            x = x.T if _is_kernel(p) else x
            yield np.ascontiguousarray(x.astype(np_dtype, copy=False))

    for fname, shard in zip(fnames, shards, strict=True):
        _write_safetensors(
            os.path.join(out_dir, fname),
            shard,
            host_tensors(shard),
            _ST_DTYPES[dtype],
            np_dtype.itemsize,
            write,
        )
    if write:
        if len(shards) > 1:
            index = {
                "metadata": {
                    "total_size": sum(int(np.prod(e[2])) * np_dtype.itemsize for e in entries)
                },
                "weight_map": {e[0]: f for f, s in zip(fnames, shards, strict=True) for e in s},
            }
            with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
                json.dump(index, f, indent=2)
        hf_cfg = cfg.replace(param_dtype=dtype).to_hf_dict()
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
    logging.info("wrote %d tensors in %d file(s) to %s", len(entries), len(shards), out_dir)
    return fnames + ([INDEX_FILE] if len(shards) > 1 else []) + ["config.json"]
