"""Per-device memory plan of a training + rollout setup, from abstract shapes (nothing allocated).

Parameters and optimizer state are not estimated by formula: the real model is built with
`nnx.eval_shape`, the real AdamW chain (`rl.update.make_optimizer`) is initialised with
`jax.eval_shape`, every leaf gets its sharding from the real rules (`sharding.logical_to_spec`,
the table `state_shardings` uses) on a `jax.sharding.AbstractMesh` of the target's device count,
and the bytes per device are the products of `NamedSharding.shard_shape`. Optimizer moments are
sharded like their parameter (what GSPMD propagates through `jit(optimizer.init)`); scalars are
replicated.

Activations are read off the compiled training program (`rl.compiled_memory`): the trainer's
loss + gradient of one micro-batch (`rl.update._grad_step`, with the configured attention path,
chunked log-probs and remat) is lowered with abstract inputs at the workload's row length and rows
per device, compiled for the local backend (CPU here), and XLA's `memory_analysis().temp` is what
the program needs besides its arguments and outputs; 1- and 2-layer compiles are extrapolated
linearly in the layers. So the plan follows the code: a path that built [T, T] or [T, V] would show.
With tensor parallelism the measured bytes are divided by the tensor axis (an estimate: the
compile is unsharded). `activation_bytes` keeps a hand formula of the same program as a cross-check
(t tokens per device, b bytes of the compute dtype, T row length):
  per layer, per token, saved for the backward pass (elements, compute dtype):
      A = 4D (residual in, input norm out, residual mid, post-attn norm out)
        + 3NH + 3KH (q/k/v projections, q/k after norm+RoPE, attention output)
        + 4F (gate, up, silu(gate), gate*up)
  memory-linear attention also keeps a float32 log-sum-exp per query and head: 4 N bytes a token;
  layer(t) = t (A b + 4 N)
  no remat: L layer(t);   remat (per layer): L t D b (layer inputs) + layer(t) (one layer
      recomputed during its backward);
  log-prob head: float32 logits of one chunk of c tokens, their softmax and gradient: 3 c V 4.
Gradients: float32 like the master params, once: the jitted gradient step adds each micro-batch's
gradients into the donated accumulator (`rl.update._grad_step`), so only the leaves being added
exist twice, transiently (counted in the compiled step's temporaries, not here). Optimizer state:
the real chain's leaves, AdamW mu in `Workload.mu_dtype` (`optim.mu_dtype`), nu float32.
KV pages: `sampling.paged_cache.bytes_per_page` in the sampler's dtype; the pool is not sharded,
so the device that runs a process's sampler holds all of its pages. At run time the pool is sized
from free memory (`rollout.engine.num_pages=0`) and the engine preempts when it runs dry, so the KV
figure is a chosen reserve (`kv_seqs` sequences of `kv_seq_len` tokens held at once, default 8
full-length ones), and `kv_full_seqs_free` says how many full-length sequences the memory left
after training state and activations would hold.

Letters: L layers, D embed, N heads, K kv heads, H head dim, F mlp, V vocab, T row length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec

from cleaner_jax.models.config import PRESETS, ModelConfig
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.models.sharding import MESH_AXES, Rules, logical_to_spec, param_logical_axes
from cleaner_jax.rl import compiled_memory
from cleaner_jax.rl.update import OptimConfig, make_optimizer
from cleaner_jax.sampling.paged_cache import bytes_per_page

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Hardware:
    """A target: JAX device count, HBM per device (GiB) and the (data, fsdp, tensor) mesh."""

    name: str
    num_devices: int
    hbm_gib: float
    mesh: tuple[int, int, int]

    def __post_init__(self):
        if math.prod(self.mesh) != self.num_devices:
            raise ValueError(
                f"{self.name}: mesh {self.mesh} does not have {self.num_devices} devices"
            )


# TPU v5p-8 / v4-8 are 4 chips (8 TensorCores in megacore pairs): 4 JAX devices each.
HARDWARE: dict[str, Hardware] = {
    "1xH100-80GB": Hardware("1xH100-80GB", 1, 80.0, (1, 1, 1)),
    "8xH100-80GB": Hardware("8xH100-80GB", 8, 80.0, (1, 8, 1)),
    "TPUv5p-8": Hardware("TPUv5p-8", 4, 95.0, (1, 4, 1)),
    "TPUv4-8": Hardware("TPUv4-8", 4, 32.0, (1, 4, 1)),
}

MODELS: dict[str, str] = {"Qwen3-4B": "qwen3_4b_instruct_2507", "Qwen2.5-7B": "qwen2_5_7b_instruct"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """What runs on the devices. Defaults: the paper's budgets (base config)."""

    tokens_per_device: int = 23040  # one packed row of train.row_len per device per micro-batch
    row_len: int = 23040
    compute_dtype: str = "float16"
    remat: bool = True
    page_size: int = 16
    kv_pages: int = 0  # 0: kv_seqs sequences of kv_seq_len tokens
    kv_seqs: int = 8
    kv_seq_len: int = 23040
    mu_dtype: str = ""  # optim.mu_dtype: AdamW first-moment storage ("" = float32)

    @property
    def num_kv_pages(self) -> int:
        if self.kv_pages:
            return self.kv_pages
        return self.kv_seqs * -(-self.kv_seq_len // self.page_size) + 1  # + the null page


def abstract_mesh(shape: tuple[int, int, int]) -> AbstractMesh:
    return AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _leaf_spec(path, leaf, mesh, rules, units) -> PartitionSpec:
    if not leaf.shape:
        return PartitionSpec()
    logical = param_logical_axes(path)
    return logical_to_spec(logical, rules, shape=leaf.shape, mesh=mesh, units=units)


def per_device_bytes(
    tree: Any, mesh: AbstractMesh, cfg: ModelConfig, rules: Rules | None = None
) -> int:
    """Bytes one device holds of an abstract tree of parameters (or parameter-shaped optimizer
    moments), from the shard shapes of the real sharding rules."""
    units = {"heads": cfg.head_dim, "kv_heads": cfg.head_dim}
    total = 0
    for path, leaf in jax.tree.leaves_with_path(tree):
        sharding = NamedSharding(mesh, _leaf_spec(path, leaf, mesh, rules, units))
        total += math.prod(sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def abstract_state(cfg: ModelConfig) -> nnx.State:
    return nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))[1]


def abstract_opt_state(
    params: nnx.State, mu_dtype: str = "", compute_dtype: str = "float32"
) -> Any:
    """The trainer's optimizer state (with float16 compute: the loss-scale scalars too)."""

    opt = make_optimizer(OptimConfig(mu_dtype=mu_dtype), compute_dtype=compute_dtype)
    return jax.eval_shape(opt.init, params)


def activation_bytes(
    cfg: ModelConfig, w: Workload, tensor: int = 1, logprob_chunk: int = 1024
) -> dict[str, int]:
    """The module docstring's hand formula, per device."""
    b = jnp.dtype(w.compute_dtype).itemsize
    d, f, n, k, h = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    )
    t = w.tokens_per_device
    per_token = 4 * d + 3 * n * h + 3 * k * h + 4 * f
    layer = t * (per_token * b + 4 * n) / tensor
    chunk = min(logprob_chunk, t) if logprob_chunk > 0 else t
    return {
        "act_layer": int(layer),
        "act_no_remat": int(cfg.num_layers * layer),
        "act_remat": int(cfg.num_layers * t * d * b + layer),
        "logits": int(3 * chunk * cfg.vocab_size * 4 / tensor),
    }


def measured_activation_bytes(cfg: ModelConfig, w: Workload, tensor: int = 1) -> dict[str, int]:
    """Temporaries of the compiled training step (see the module docstring), per device."""

    rows = max(1, w.tokens_per_device // w.row_len)
    got = compiled_memory.train_activation_bytes(
        cfg.replace(dtype=w.compute_dtype, remat=w.remat), w.row_len, rows
    )
    return {k: int(v / tensor) for k, v in got.items()}


def _kv_of(w: Workload) -> dict:
    return {"page_size": w.page_size, "compute_dtype": w.compute_dtype}


def kv_bytes(cfg: ModelConfig, w: Workload) -> int:

    return w.num_kv_pages * bytes_per_page(cfg, w.page_size, w.compute_dtype)


def plan(
    cfg: ModelConfig,
    hw: Hardware,
    w: Workload,
    rules: Rules | None = None,
    measured: dict[str, int] | None = None,
) -> dict:
    """Bytes per device of every item, the total and whether it fits the device's HBM.

    `measured`: `measured_activation_bytes(cfg, w, tensor)`; the training activations in the
    total are then the compiled program's, else the hand formula's.
    """
    mesh = abstract_mesh(hw.mesh)
    params = abstract_state(cfg.replace(param_dtype="float32"))
    sampler = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, w.compute_dtype), params)
    opt = abstract_opt_state(params, w.mu_dtype, w.compute_dtype)
    p32 = per_device_bytes(params, mesh, cfg, rules)
    act = activation_bytes(cfg, w, tensor=hw.mesh[2])
    out = {
        "model_params": cfg.num_params(),
        "devices": hw.num_devices,
        "mesh": dict(zip(MESH_AXES, hw.mesh, strict=True)),
        "hbm_bytes": int(hw.hbm_gib * GIB),
        "params_fp32": p32,
        "params_sampler": per_device_bytes(sampler, mesh, cfg, rules),
        "grads_fp32": p32,
        "opt_state": per_device_bytes(opt, mesh, cfg, rules),
        "act_formula": (act["act_remat"] if w.remat else act["act_no_remat"]) + act["logits"],
        "kv_pages": w.num_kv_pages,
        "kv_bytes": kv_bytes(cfg, w),
    }
    if measured is not None:
        out["act_compiled"] = measured["total"]
        out["act_compiled_per_layer"] = measured["per_layer"]
        out["activations"] = measured["total"]
        out["activations_from"] = "compiled training step (memory_analysis)"
    else:
        out["activations"] = out["act_formula"]
        out["activations_from"] = "formula"
    static = out["params_fp32"] + out["params_sampler"] + out["grads_fp32"] + out["opt_state"]
    out["train_total"] = static + out["activations"]
    out["total_with_kv"] = out["train_total"] + out["kv_bytes"]
    out["fits"] = out["total_with_kv"] <= out["hbm_bytes"]
    per_seq = -(-w.kv_seq_len // w.page_size) * kv_bytes(cfg, Workload(kv_pages=1, **_kv_of(w)))
    out["kv_full_seqs_free"] = max(0, (out["hbm_bytes"] - out["train_total"]) // per_seq)
    return out


# The TPU rows' slices (`models.topology`), for the plan-vs-compiled comparison. Not v4-8:
# libtpu's abstract v4 topology exposes each TensorCore as a device (8 x 16 GiB), the plan's row
# is the megacore runtime's 4 x 32 GiB.
TPU_SLICES = {"TPUv5p-8": "v5p-8"}


def tpu_compiled(cfg: ModelConfig, hw: Hardware, w: Workload, rules: Rules | None = None) -> dict:
    """The plan's training total as XLA's TPU compiler sees it (needs libtpu, no TPU): the
    trainer's gradient step (`rl.update._grad_step`, accumulating into the donated gradient
    tree) compiled for the slice's abstract devices at the workload's shapes, full depth, plus
    the long-lived buffers it does not take as arguments (AdamW state, the sampler's copy, the
    KV reserve, from the same abstract shapes as the plan)."""
    from cleaner_jax.models import sharding as sharding_lib
    from cleaner_jax.models import topology
    from cleaner_jax.rl.update import LossConfig
    from cleaner_jax.runtime import aot

    devices = topology.topology_devices(TPU_SLICES[hw.name])
    mesh = sharding_lib.make_mesh(dict(zip(MESH_AXES, hw.mesh, strict=True)), devices=devices)
    # float16 runs as bfloat16 on TPU (`runtime.config.adapt_dtypes_to_platform`): same bytes.
    dtype = "bfloat16" if w.compute_dtype == "float16" else w.compute_dtype
    cfg = cfg.replace(dtype=dtype, remat=w.remat, param_dtype="float32")
    graphdef, params = aot.abstract_params(cfg, mesh)
    opt = make_optimizer(OptimConfig(mu_dtype=w.mu_dtype), compute_dtype=dtype)
    opt_state = aot.abstract_opt_state(opt, params, mesh, cfg)
    rows = aot.round_rows(max(1, w.tokens_per_device // w.row_len), mesh)
    programs, _ = aot.update_programs(
        graphdef, params, opt_state, opt, LossConfig(), mesh, rows, w.row_len
    )
    fn, args, kwargs = programs["update/grad"]
    r = aot.compile_program("update/grad", fn, args, kwargs, mesh)
    sampler = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, w.compute_dtype), params)
    resident = (
        aot.tree_bytes_per_device(opt_state)
        + per_device_bytes(sampler, abstract_mesh(hw.mesh), cfg, rules)
        + kv_bytes(cfg, w)
    )
    return {
        "tpu_compile_s": r.compile_s,
        "tpu_temp": r.temp,
        "tpu_argument": r.argument,
        "tpu_program": r.program_bytes,
        "tpu_total_with_kv": r.program_bytes + resident,
    }


def plan_all(
    w: Workload,
    models: Mapping[str, str] = MODELS,
    hardware: Mapping[str, Hardware] = HARDWARE,
    measure: bool = True,
    tpu_compile: bool = False,
) -> list[dict]:
    """Every (model, hardware) row; `measure` compiles the training step once per model and
    tensor width (see `measured_activation_bytes`); `tpu_compile` adds, to the TPU rows, the
    same totals from XLA's TPU compiler (`tpu_compiled`) and their ratio to the plan."""
    rows = []
    for model_name, preset in models.items():
        cfg = PRESETS[preset].replace(dtype=w.compute_dtype, remat=w.remat)
        measured: dict[int, dict[str, int]] = {}
        for hw in hardware.values():
            tensor = hw.mesh[2]
            if measure and tensor not in measured:
                measured[tensor] = measured_activation_bytes(cfg, w, tensor)
            m = measured.get(tensor)
            row = {"model": model_name, "hardware": hw.name, **plan(cfg, hw, w, None, m)}
            if tpu_compile and hw.name in TPU_SLICES:
                row.update(tpu_compiled(cfg, hw, w))
                row["plan_over_tpu"] = row["total_with_kv"] / row["tpu_total_with_kv"]
            rows.append(row)
    return rows
