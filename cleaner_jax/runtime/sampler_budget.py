"""Where the sampler runs and how much memory its KV pool may take (issue #29).

`placement_for`: this process's sampler placement (`sampling.placement`); `kv_pages_for`: the
pool's page count for `rollout.engine.num_pages=0`, net of what the update will still allocate
(`training_reserve_bytes`). `launch/tpu_compile.py` (`runtime/aot_step.py`) sizes the pool with
the same formula from a TPU compile.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections

from cleaner_jax.rl import compiled_memory
from cleaner_jax.rl.update import round_rows
from cleaner_jax.runtime import memory_plan
from cleaner_jax.sampling.paged_cache import bytes_per_page, device_memory, pages_for_memory
from cleaner_jax.sampling.placement import SamplerPlacement, sampler_placement

# `model` arguments are `runtime.parts.ModelBundle`s (cfg, graphdef, state, mesh); not imported:
# parts builds on this module.
ModelBundle = Any


def sampler_dtype(config: ml_collections.ConfigDict) -> str:
    """The sampler's compute dtype and weight-copy dtype: `rollout.dtype`, "" = `model.dtype`."""
    return config.rollout.dtype or config.model.dtype


# Of the memory left once the update's needs are reserved: the rest is margin for the sampler's
# own temporaries (prefill logits), the old-log-prob program and allocator fragmentation.
KV_MEMORY_FRACTION = 0.9


def mesh_axes(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The training mesh's axis sizes from `config.mesh` (without `rollout_devices`)."""
    return {k: int(v) for k, v in config.mesh.items() if k != "rollout_devices"}


def split_devices(config: ml_collections.ConfigDict, devices=None) -> tuple[list | None, list]:
    """(the sampler's devices, or None when it shares the training devices; the training
    mesh's devices) per `mesh.rollout_devices` (k): 0 = one device set for both (the sampler on
    the training devices, the default); k > 0 = disaggregated, the first k devices sample and
    the rest train, the weights crossing over at every push. `devices` default: all devices
    (abstract ones for AOT compiles); a split needs them in one process."""
    k = int((config.get("mesh") or {}).get("rollout_devices", 0))
    devices = list(devices if devices is not None else jax.devices())
    if k == 0:
        return None, devices
    processes = {d.process_index for d in devices}
    if len(processes) > 1:
        raise ValueError(
            f"mesh.rollout_devices={k}: split meshes are single-process for now ({len(processes)} "
            "processes here); use mesh.rollout_devices=0 (the sampler on every host's devices)"
        )
    if not 0 < k < len(devices):
        raise ValueError(
            f"mesh.rollout_devices={k} must leave devices to train on: 0 < k < {len(devices)}"
        )
    devices = sorted(devices, key=lambda d: d.id)
    return devices[:k], devices[k:]


def placement_for(config: ml_collections.ConfigDict, model: ModelBundle) -> SamplerPlacement:
    """This process's sampler placement (`sampling.placement`): tensor-parallel over its local
    devices (`rollout.engine.tensor_parallel`, 0 = gcd(kv heads, local devices); 1 on CPU), laid
    out against the training mesh for the weight sync; with `mesh.rollout_devices` over the
    sampler's own devices, the weights then cast on the training mesh and copied across."""
    tp = config.rollout.engine.get("tensor_parallel", 0)
    rollout, _ = split_devices(config)
    if rollout is not None:
        return sampler_placement(model.cfg, rollout, tensor_parallel=tp)
    return sampler_placement(
        model.cfg, tensor_parallel=tp, train_devices=list(model.mesh.devices.flat)
    )


def training_reserve_bytes(config: ml_collections.ConfigDict, model: ModelBundle, updater) -> int:
    """Per-device bytes the update will allocate after the engine is built: the optimizer
    state and the gradient accumulator (shard shapes on the training mesh, as `memory_plan`
    computes them) and the compiled train step's temporaries at `train.row_len` x the rows per
    device (`compiled_memory.train_activation_bytes`, divided by the tensor axis)."""
    mesh, cfg = model.mesh, model.cfg
    params = jax.eval_shape(lambda s: s, model.state)
    grads = memory_plan.per_device_bytes(params, mesh, cfg)
    opt = memory_plan.per_device_bytes(jax.eval_shape(updater.optimizer.init, params), mesh, cfg)
    t = config.train
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = max(1, round_rows(t.rows_per_micro, mesh) // shards)
    act = (
        compiled_memory.train_activation_bytes(cfg, t.row_len, rows, updater.loss_cfg)["total"]
        // mesh.shape["tensor"]
    )
    logging.info(
        "reserved for training per device: grads %d + optimizer %d + step temporaries %d bytes",
        grads,
        opt,
        act,
    )
    return grads + opt + act


def kv_pages_for(
    config: ml_collections.ConfigDict,
    model: ModelBundle,
    placement: SamplerPlacement,
    updater=None,
) -> int | None:
    """The KV pool's page count when `rollout.engine.num_pages` is 0, or None when the device
    reports no memory. Call it with the sampler's weights and the trainer's parameters placed:

        pages = floor(max(limit * fraction - in_use - reserve, 0) / page_bytes)

    limit, in_use = bytes_limit, bytes_in_use of the sampler's first device; reserve =
    `training_reserve_bytes` (0 without an updater: evaluation); fraction =
    `rollout.engine.memory_fraction` (default `KV_MEMORY_FRACTION`): everything the run holds
    stays within that fraction of the device; page_bytes = one page's K and V over all layers
    for the kv heads one device holds (`bytes_per_page`, shards = tp). The pool is updated in
    place by every sampler program (decode's temporaries do not grow with it:
    tests/sampling/aot_test.py), so a page costs its bytes once."""
    e = config.rollout.engine
    memory = device_memory(placement.devices[0])
    if memory is None:
        return None
    limit, in_use = memory
    split = split_devices(config)[0] is not None  # the update runs on other devices
    reserve = 0 if updater is None or split else training_reserve_bytes(config, model, updater)
    fraction = e.get("memory_fraction", KV_MEMORY_FRACTION)
    page = bytes_per_page(model.cfg, e.page_size, sampler_dtype(config), shards=placement.tp)
    pages = pages_for_memory(limit, in_use, reserve, fraction, page)
    logging.info(
        "KV pool: (%d bytes x %.2f - %d in use - %d reserved for training) / %d bytes per page "
        "per device = %d pages of %d tokens",
        limit,
        fraction,
        in_use,
        reserve,
        page,
        pages,
        e.page_size,
    )
    if pages < 2:
        raise ValueError(
            f"no memory left for the KV pool ({limit} bytes x {fraction}, {in_use} in use, "
            f"{reserve} reserved for training): set rollout.engine.num_pages, shorten "
            "train.row_len or shard wider"
        )
    return pages
