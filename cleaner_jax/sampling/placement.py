"""Where the sampler runs: a tensor-parallel placement over this process's local devices.

Choice (issue #29): ONE engine per process, tensor-parallel over kv heads on a mesh of the
process's local devices (option (a)), not one engine per device. Why:
- decode is memory-bound on weight and KV reads. Tensor parallelism splits both reads over the
  devices, so a step costs ~1/tp of one device's and every device serves every slot; per-device
  engines each read ALL weights per step (8 GB for Qwen3-4B in bf16) and replicate them tp
  times, which also takes that memory from the KV pool and the update.
- the tail of a rollout batch (a few long trajectories left) runs tp times faster per token with
  tensor parallelism; with per-device engines all but one device idle there.
- one engine keeps the prefix cache and SAAR's `engine.release` exactly as they are (no routing,
  no stickiness to keep), and one program compiles once instead of once per device.
- the shapes fit: Qwen3-4B has 8 kv heads (2 per chip on a 4-chip v5p host: the Mosaic kernel's
  megacore "kv_head" mode splits them over the chip's two TensorCores; 1 per GPU on 8 GPUs),
  Qwen2.5-7B 4 (1 per v5p chip, megacore "batch"; on 8 GPUs see the fallback).
Fallback: `tp = gcd(num_kv_heads, local devices)` (or an explicit `tensor_parallel` that divides
both); the sampler then runs on the first tp local devices and the rest do not sample (Qwen2.5-7B
on 8 GPUs: 4 of 8). On CPU the default is tp = 1: forced host devices share the same cores.

Layout on the placement mesh (axes data, fsdp, tensor = 1, 1, tp): parameters by the model's own
rules (`models.sharding.DEFAULT_RULES`: heads, kv heads, mlp and vocab on `tensor`, everything
else replicated), so GSPMD partitions the projections and the MLP; the KV pool sharded on its kv
head axis (axis 0 of every layout); attention per shard in a `jax.shard_map`
(`paged_cache.PagedKVCache.update_and_attend`), since a Pallas call is opaque to GSPMD and every
kv head's queries, keys and values then sit on one device.

Weight sync (`rl.distributed.sampler_replica`): one jitted program casts the trainer's fp32
masters and reshards them onto a SYNC mesh over the training mesh's devices, in the training
mesh's device order (jit takes one device order for all inputs and outputs), whose groups of tp
devices (each within one process) each hold a full tensor-parallel copy; each process keeps the
copy of its sampler devices (its first group) and the other groups' copies are freed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cleaner_jax.models import platform as platform_lib
from cleaner_jax.models import sharding
from cleaner_jax.models.config import ModelConfig

TENSOR_AXIS = "tensor"


def device_megacore(device: Any) -> bool:
    """Whether `device` (possibly abstract) is two TensorCores (TPU v5p megacore)."""
    if platform_lib.normalize(device.platform) != "tpu":
        return False
    return int(getattr(device, "num_cores", 1) or 1) >= 2


def choose_tensor_parallel(
    num_kv_heads: int, num_devices: int, platform: str, requested: int = 0
) -> int:
    """The sampler's tensor-parallel width: `requested` if > 0 (it must divide the kv heads and
    fit the devices), else 1 on CPU and gcd(kv heads, devices) elsewhere."""
    if requested > 0:
        if num_kv_heads % requested or requested > num_devices:
            raise ValueError(
                f"sampler tensor_parallel={requested} must divide num_kv_heads={num_kv_heads} "
                f"and be at most the {num_devices} local devices: pick a divisor of both, or 0"
            )
        return requested
    if platform == "cpu":
        return 1
    return math.gcd(num_kv_heads, num_devices)


@dataclasses.dataclass(frozen=True)
class SamplerPlacement:
    """The sampler's devices of this process: `mesh` (data, fsdp, tensor) = (1, 1, tp).
    `sync_mesh`: the weight sync's target over the training mesh's devices (None: the
    placement was built without a training mesh; the sync then casts and copies)."""

    mesh: Mesh
    sync_mesh: Mesh | None = None

    @property
    def devices(self) -> list:
        return list(self.mesh.devices.flat)

    @property
    def tp(self) -> int:
        return int(self.mesh.shape[TENSOR_AXIS])

    @property
    def platform(self) -> str:
        return platform_lib.platform_of(self.devices)

    @property
    def megacore(self) -> bool:
        return device_megacore(self.devices[0])

    @property
    def replicated(self) -> NamedSharding:
        """Inputs every device reads whole (page tables, tokens, positions)."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def pool_sharding(self) -> NamedSharding:
        """KV page arrays `[K, P, ...]`: kv heads over the tensor axis."""
        return NamedSharding(self.mesh, PartitionSpec(TENSOR_AXIS))

    @property
    def attention_mesh(self) -> Mesh | None:
        """The mesh attention runs per shard on (None with one device: no shard_map)."""
        return self.mesh if self.tp > 1 else None

    def param_shardings(self, state: Any, cfg: ModelConfig) -> Any:
        return sharding.state_shardings(state, self.mesh, cfg=cfg)

    def put(self, state: Any, cfg: ModelConfig) -> Any:
        """`state` placed on this placement (a no-op for leaves already there)."""
        return jax.device_put(state, self.param_shardings(state, cfg))


def _sync_layout(train_devices: list, tp: int, process: int) -> tuple[Mesh, list]:
    """(sync mesh, this process's sampler devices in tensor order). The sync mesh lists the
    training mesh's devices in ITS flat order (jit wants one device order for inputs and
    outputs), shaped (a, tp, b, 1) with axes (data, tensor, replica, fsdp): the group (i, k) is
    `train_devices[i*tp*b + t*b + k]` for t < tp; the smallest b whose groups each sit in one
    process is taken (b = 1: consecutive devices)."""
    n = len(train_devices)
    for b in (b for b in range(1, n // tp + 1) if (n // tp) % b == 0):
        a = n // (tp * b)
        groups = [
            [train_devices[i * tp * b + t * b + k] for t in range(tp)]
            for i in range(a)
            for k in range(b)
        ]
        if all(len({d.process_index for d in g}) == 1 for g in groups):
            mine = next(g for g in groups if g[0].process_index == process)
            arr = np.array(train_devices, dtype=object).reshape(a, tp, b, 1)
            axes = ("data", TENSOR_AXIS, "replica", "fsdp")
            return Mesh(arr, axes, axis_types=(AxisType.Auto,) * 4), mine
    raise ValueError(
        f"no layout of the training mesh's {n} devices puts each group of tensor_parallel={tp} "
        "sampler devices in one process: lower rollout.engine.tensor_parallel"
    )


def sampler_placement(
    cfg: ModelConfig,
    devices: Sequence[Any] | None = None,
    tensor_parallel: int = 0,
    train_devices: Sequence[Any] | None = None,
) -> SamplerPlacement:
    """The placement over `devices` (default: this process's local devices); for abstract
    devices (AOT compiles) pass one host's devices of the topology.

    `train_devices`: the training mesh's devices in its flat order (`mesh.devices.flat`, every
    process's); the sampler then takes this process's first group of the weight-sync layout
    (`_sync_layout`) and the placement carries the sync mesh. Without it, the first tp devices
    by id."""
    devices = sorted(devices if devices is not None else jax.local_devices(), key=lambda d: d.id)
    platform = platform_lib.platform_of(devices)
    tp = choose_tensor_parallel(cfg.num_kv_heads, len(devices), platform, tensor_parallel)
    sync_mesh = None
    mine = devices[:tp]
    if train_devices is not None:
        sync_mesh, mine = _sync_layout(list(train_devices), tp, devices[0].process_index)
    mesh = Mesh(
        np.array(mine, dtype=object).reshape(1, 1, tp),
        sharding.MESH_AXES,
        axis_types=(AxisType.Auto,) * 3,
    )
    return SamplerPlacement(mesh, sync_mesh)


@functools.lru_cache(maxsize=16)
def _cast_and_place(dtype: str | None, out_shardings: tuple[NamedSharding, ...]):
    target = None if dtype is None else jnp.dtype(dtype)

    def cast_all(leaves):
        return [x if target is None or x.dtype == target else x.astype(target) for x in leaves]

    return jax.jit(cast_all, out_shardings=list(out_shardings))


def weight_sync_program(
    abstract_state: Any, placement: SamplerPlacement, cfg: ModelConfig, dtype: str | None
):
    """(the jitted weight sync, its flat output shardings): a function of the state's flat leaf
    list that casts every leaf to `dtype` and reshards it onto `placement.sync_mesh`, where each
    process's first group of tp devices holds its sampler's copy. Cached: the per-step sync
    reuses one compiled program. `abstract_state` may be arrays or ShapeDtypeStructs (AOT
    compiles, `sampling.aot`); its leaves must sit on the training mesh the placement was built
    from (`sampler_placement(..., train_devices=mesh.devices.flat)`). Run by
    `rl.distributed.sampler_replica`."""
    if placement.sync_mesh is None:
        raise ValueError(
            "the placement has no weight-sync mesh: build it with sampler_placement(..., "
            "train_devices=<training mesh>.devices.flat)"
        )
    shardings = sharding.state_shardings(abstract_state, placement.sync_mesh, cfg=cfg)
    flat = tuple(jax.tree.leaves(shardings))
    return _cast_and_place(dtype, flat), flat
