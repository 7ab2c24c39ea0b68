"""Device mesh and parameter sharding for the Qwen decoder.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with sharded
parameters) and `tensor` (Megatron-style tensor parallelism). Each parameter gets logical axis
names from a table keyed by its NAME (`q_proj/kernel` -> (embed, heads)); rules from the config
map logical names to mesh axes. Flax's own variable sharding metadata is deliberately not used:
flax 0.12 applies it eagerly at construction and then needs a mesh to build any model at all.

A dimension whose size is not divisible by its mesh axes is replicated instead (debug log), so
every rule set works on every mesh. Fused projection dims (heads * head_dim) are only split at
head boundaries when `cfg` is given. The stacked decoder layers of `cfg.scan_layers` carry one
more leading dimension, logical name `layers`, which no mesh axis shards unless a rule says so.
GSPMD propagates activation shardings from the parameters and the batch-sharded inputs, so the
mesh axes are `Auto`.

Letters: B batch, T seq, D embed, N heads, K kv heads, H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cleaner_jax.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes] | Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)

# (module name, parameter name) -> logical axes of the stored array. Kernels are [in, out];
# q/k/v/o kernels fuse heads and head_dim into one dimension named after the heads.
PARAM_LOGICAL_AXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "heads"),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("o_proj", "kernel"): ("heads", "embed"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "bias"): ("embed",),
    ("q_norm", "weight"): ("head_dim",),
    ("k_norm", "weight"): ("head_dim",),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("input_layernorm", "weight"): ("embed",),
    ("post_attention_layernorm", "weight"): ("embed",),
    ("norm", "weight"): ("embed",),
    ("lm_head", "kernel"): ("embed", "vocab"),
}


class ShardingError(ValueError):
    """A mesh or rule set that cannot be applied."""


def make_mesh(
    axis_sizes: Mapping[str, int] | None = None, *, devices: Sequence[Any] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 (= the remaining devices).

    `axis_sizes` maps axis names to sizes (an ml_collections ConfigDict works); missing axes
    have size 1. The default is all devices on `fsdp`.
    """
    sizes = dict(axis_sizes) if axis_sizes is not None else {"fsdp": -1}
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ShardingError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    devices = list(devices) if devices is not None else jax.devices()
    shape = [int(sizes.get(name, 1)) for name in MESH_AXES]
    if shape.count(-1) > 1:
        raise ShardingError(f"at most one mesh axis may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in shape):
        raise ShardingError(f"mesh axis sizes must be positive or -1, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ShardingError(
                f"{len(devices)} devices cannot fill a mesh with fixed axes of product {known}"
            )
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ShardingError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices, "
            f"{len(devices)} are available; use -1 for one axis to absorb the rest"
        )
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=axis_types, devices=devices)
    except AssertionError as e:
        # jax's physical-layout mesh wants one device per chip on TPU v4+; libtpu's abstract v4
        # topology (compile-only, `models.topology`) exposes each TensorCore as a device. Such a
        # mesh takes the devices in id order.
        if "megacore" not in str(e):
            raise
        logging.warning("mesh in device order (%s)", str(e).splitlines()[0])
        ordered = np.array(sorted(devices, key=lambda d: d.id), dtype=object)
        return Mesh(ordered.reshape(shape), MESH_AXES, axis_types=axis_types)


def _rules_dict(rules: Rules | None) -> dict[str, MeshAxes]:
    rules = DEFAULT_RULES if rules is None else rules
    items = rules.items() if isinstance(rules, Mapping) else rules
    out: dict[str, MeshAxes] = {}
    for logical, axes in items:
        if isinstance(axes, list):
            axes = tuple(axes)
        out[logical] = axes
    # Rule sets written before `scan_layers` existed keep working: the stacked layer axis is
    # replicated unless a rule maps it.
    out.setdefault("layers", None)
    return out


def logical_to_spec(
    logical: Sequence[str | None],
    rules: Rules | None = None,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    units: Mapping[str, int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array with the given logical axis names.

    With `shape` and `mesh`, a dim not divisible by its mesh axes (in multiples of
    `units[logical]`, e.g. head_dim for fused head dims) is replicated; a mesh axis is used at
    most once per spec.
    """
    table = _rules_dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ShardingError(f"no sharding rule for logical axis {name!r}; rules: {table}")
        axes = table[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used)
        if mesh is not None:
            missing = [a for a in axes_t if a not in mesh.shape]
            if missing:
                raise ShardingError(f"rule {name!r} -> {axes} names axes {missing} not in mesh")
            if shape is not None and axes_t:
                n_shards = math.prod(mesh.shape[a] for a in axes_t)
                unit = (units or {}).get(name, 1)
                if shape[dim] % unit or (shape[dim] // unit) % n_shards:
                    logging.debug(
                        "dim %d (%s, size %d) not divisible by %s (%d shards): replicated",
                        dim,
                        name,
                        shape[dim],
                        axes_t,
                        n_shards,
                    )
                    axes_t = ()
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def _path_names(path: tuple[Any, ...]) -> list[str]:
    return [
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        for k in path
        if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")
    ]


def is_stacked_layer_path(path: tuple[Any, ...]) -> bool:
    """Whether a key path (`jax.tree_util` keys, or the strings/ints of `nnx.to_flat_state`)
    leads to a stacked decoder-layer parameter (`layers/self_attn/...`, `cfg.scan_layers`)
    rather than one layer's (`layers/3/self_attn/...`)."""
    names = _path_names(path)
    if "layers" not in names:
        return False
    i = names.index("layers")
    return i + 1 < len(names) and not names[i + 1].isdigit()


def param_logical_axes(path: tuple[Any, ...]) -> tuple[str, ...]:
    """Logical axes of the parameter at a `jax.tree_util` key path into the model state (or a
    parameter-shaped tree such as an optimizer moment); stacked layers get a leading `layers`."""
    names = _path_names(path)
    key = (names[-2], names[-1])
    if key not in PARAM_LOGICAL_AXES:
        raise ShardingError(
            f"parameter {jax.tree_util.keystr(path)} has no entry {key} in PARAM_LOGICAL_AXES; "
            "add one when adding a parameter to the model"
        )
    logical = PARAM_LOGICAL_AXES[key]
    return ("layers", *logical) if is_stacked_layer_path(path) else logical


def state_shardings(
    state: Any, mesh: Mesh, rules: Rules | None = None, cfg: ModelConfig | None = None
) -> Any:
    """The tree of NamedShardings for a model state (arrays or ShapeDtypeStructs)."""
    units = {"heads": cfg.head_dim, "kv_heads": cfg.head_dim} if cfg is not None else None

    def one(path, leaf):
        logical = param_logical_axes(path)
        if len(logical) != len(leaf.shape):
            raise ShardingError(
                f"{jax.tree_util.keystr(path)} has shape {leaf.shape} but logical axes {logical}"
            )
        spec = logical_to_spec(logical, rules, shape=leaf.shape, mesh=mesh, units=units)
        return NamedSharding(mesh, spec)

    return jax.tree.map_with_path(one, state)


def shard_state(
    state: Any, mesh: Mesh, rules: Rules | None = None, cfg: ModelConfig | None = None
) -> Any:
    """Places every parameter of `state` with its NamedSharding on `mesh`."""
    return jax.device_put(state, state_shardings(state, mesh, rules, cfg))


def batch_sharding(mesh: Mesh, rules: Rules | None = None, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, T, ...] input (tokens, positions, segment ids): batch split, rest not."""
    logical = ("batch", "seq") + (None,) * (ndim - 2)
    return NamedSharding(mesh, logical_to_spec(logical[:ndim], rules, mesh=mesh))


def describe_shardings(shardings: Any) -> dict[str, str]:
    """{parameter path: partition spec} for logs and tests."""
    flat = jax.tree.leaves_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    return {jax.tree_util.keystr(p): str(s.spec) for p, s in flat}


def replicated_fraction(state: Any) -> float:
    """Fraction of parameter elements that sit on every device (1.0 = nothing sharded)."""
    total = rep = 0
    for leaf in jax.tree.leaves(state):
        n = int(np.prod(leaf.shape))
        total += n
        if leaf.sharding.is_fully_replicated:
            rep += n
    return rep / max(total, 1)
