"""Multi-process helpers for the GRPO loop: work split, object exchange and array placement.

One process per host (DESIGN §3 "Scale"). Training runs SPMD on the global mesh: every process
issues the same jitted programs on global arrays. Rollouts do not: each process rolls out its own
share of the prompts with a sampler on its LOCAL devices, then the finished rollouts are exchanged
so that every process again holds identical host data for the update. This module provides:

- `initialize`: `jax.distributed.initialize` with arguments from the environment, so a local
  2-process run needs no cluster manager;
- `process_share` / `allgather_objects` / `gather_shares`: which prompts this process rolls out,
  and the exchange of picklable results (rollouts, reward results) in process order;
- `host_batch_to_global`: global arrays from host data that is identical on every process (the
  micro-batches and numpy inputs of jits over global parameters);
- `to_host`: numpy from global arrays (a collective for sharded ones);
- `sampler_replica`: the weight sync: the trainer's parameters cast and resharded, in one
  jitted program (`weight_sync_program`), onto this process's tensor-parallel sampler placement
  (`sampling.placement`; a local jit cannot read a global array that spans other processes'
  devices);
- `local_replica`: the parameters fully replicated on one local device.

Functions that gather (`allgather_objects`, `gather_shares`, `to_host` on sharded arrays,
`sampler_replica` and `local_replica` on global arrays) are collectives: every process must call
them in the same order.
With one process none of them touches a collective.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.sampling.placement import SamplerPlacement, weight_sync_program

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # also read by jax itself
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> None:
    """Connects this process to the others (`jax.distributed.initialize`).

    Unset arguments come from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID;
    when none of the three is set either, jax auto-detects the cluster (TPU pods, Slurm, Open
    MPI). Must run before anything touches a jax device.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    given = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ValueError(
            f"partial distributed setup (coordinator={coordinator_address!r}, "
            f"num_processes={num_processes}, process_id={process_id}): set all three of "
            f"${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID} (or none, on a "
            "cluster jax detects by itself)"
        )
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=initialization_timeout,
    )
    logging.info(
        "process %d of %d: %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main_process() -> bool:
    """True on the process that writes metrics, exports and other single-writer files."""
    return jax.process_index() == 0


def share_bounds(num_items: int, num_processes: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [start, stop) blocks of `num_items`, one per process."""
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be >= 1")
    cuts = [num_items * p // num_processes for p in range(num_processes + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def process_share(
    items: list, *, process_index: int | None = None, process_count: int | None = None
) -> list[int]:
    """The global indices of `items` this process handles (a contiguous block).

    Pass whole groups (prompts, not rollouts) so that a group's n rollouts stay on one process.
    Blocks are contiguous and in process order, so `gather_shares` of per-index results
    restores the global order. A process may get an empty share when there are fewer items than
    processes.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} is outside [0, {count})")
    start, stop = share_bounds(len(items), count)[index]
    return list(range(start, stop))


def _allgather_host(x: np.ndarray) -> np.ndarray:
    """Stacks this process's host array with everyone's: [num_processes, *x.shape]."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def _bucket_len(n: int) -> int:
    return max(1024, 1 << (n - 1).bit_length())


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's picklable `obj`, in process order (a collective)."""
    if jax.process_count() == 1:
        return [obj]
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    if payload.size >= 2**31:
        raise ValueError(
            f"allgather_objects payload is {payload.size} bytes (limit 2 GiB): exchange smaller "
            "pieces, e.g. one step's rollouts in several calls"
        )
    # int32: process_allgather goes through jax, which truncates int64 unless x64 is on.
    sizes = _allgather_host(np.array([payload.size], np.int32))[:, 0]
    # Power-of-two buffer lengths: each new length compiles a new gather program.
    padded = np.zeros(_bucket_len(int(sizes.max())), np.uint8)
    padded[: payload.size] = payload
    gathered = _allgather_host(padded)
    return [pickle.loads(gathered[p, : int(n)].tobytes()) for p, n in enumerate(sizes)]


def gather_shares(local: list) -> list:
    """Concatenates every process's list in process order (a collective).

    With `process_share` blocks this turns per-process results back into the global order.
    """
    return [x for part in allgather_objects(list(local)) for x in part]


def host_batch_to_global(arrays: Any, sharding: Sharding | Any) -> Any:
    """Global jax arrays from host arrays that are IDENTICAL on every process.

    `arrays` is any pytree of numpy arrays (a dict of micro-batch fields, a parameter tree);
    `sharding` one `Sharding` for all leaves or a matching tree of them. Each process fills only
    its addressable shards, so nothing crosses processes. With one process this equals
    `jax.device_put(arrays, sharding)`.
    """

    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    if isinstance(sharding, Sharding):
        return jax.tree.map(lambda x: one(x, sharding), arrays)
    return jax.tree.map(one, arrays, sharding)


@functools.lru_cache(maxsize=16)
def _replicator(dtype: str | None, out_shardings: tuple[NamedSharding, ...]):
    """A jitted cast + all-gather of a flat list of arrays; cached so that the per-step weight
    sync reuses one compiled program instead of tracing a fresh function each time."""
    target = None if dtype is None else jnp.dtype(dtype)

    def cast_all(leaves):
        return [x if target is None or x.dtype == target else x.astype(target) for x in leaves]

    return jax.jit(cast_all, out_shardings=list(out_shardings))


def _replicate_and_cast(leaves: list[jax.Array], dtype: str | None) -> list[jax.Array]:
    """Every array cast to `dtype` and fully replicated over its own mesh (one program)."""
    if not all(isinstance(x.sharding, NamedSharding) for x in leaves):
        raise TypeError(
            "expected NamedSharding arrays (as sharding.shard_state and jit over a Mesh make them)"
        )
    shardings = tuple(x.sharding.update(spec=PartitionSpec()) for x in leaves)
    return _replicator(dtype, shardings)(leaves)


def _is_remote(x: Any) -> bool:
    """A jax array whose full value this process cannot read without a collective."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def to_host(tree: Any) -> Any:
    """Numpy copies of every leaf. Arrays sharded across processes are all-gathered first (one
    program for the whole tree): a collective whenever the tree holds such arrays."""
    leaves, treedef = jax.tree.flatten(tree)
    remote = [i for i, x in enumerate(leaves) if _is_remote(x)]
    if remote:
        gathered = _replicate_and_cast([leaves[i] for i in remote], None)
        for i, x in zip(remote, gathered, strict=True):
            leaves[i] = x.addressable_data(0)
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])


def local_replica(state: Any, dtype: str | None = None, device: jax.Device | None = None) -> Any:
    """The parameter tree complete on one local device (default: this process's first), in
    `dtype` (default: unchanged), for the process-local sampler.

    Global arrays are cast and all-gathered on device in one program; each process keeps the
    copy on its own device. Every process must call it at the same point when `state` spans
    processes.
    """
    device = device or jax.local_devices()[0]
    leaves, treedef = jax.tree.flatten(state)
    if any(not isinstance(x, jax.Array) for x in leaves):
        raise TypeError("local_replica expects a tree of jax.Arrays (the trainer's parameters)")
    if device.process_index != jax.process_index():
        raise ValueError(f"{device} belongs to process {device.process_index}, not this one")
    if all(x.is_fully_addressable for x in leaves):
        target = None if dtype is None else jnp.dtype(dtype)
        return jax.tree.map(
            lambda x: jax.device_put(x if target is None else x.astype(target), device), state
        )

    def pick(x):
        for shard in x.addressable_shards:
            if shard.device == device:
                return shard.data
        raise ValueError(f"{device} holds no copy of a parameter: it is not in the mesh")

    return jax.tree.unflatten(treedef, [pick(x) for x in _replicate_and_cast(leaves, dtype)])


def _device_order(x) -> tuple | None:
    s = x.sharding
    return tuple(s.mesh.devices.flat) if isinstance(s, NamedSharding) else None


def sampler_replica(
    state: Any, placement: SamplerPlacement, cfg: ModelConfig, dtype: str | None = None
) -> Any:
    """The parameter tree on this process's sampler `placement`, in `dtype` (default:
    unchanged), by one jitted program from the training mesh (`weight_sync_program`). Every
    process must call it at the same point when `state` spans processes (one SPMD program over
    all devices). A single-process state not on the placement's training mesh (tests, a model
    on one device) is cast and copied instead."""
    leaves, treedef = jax.tree.flatten(state)
    if any(not isinstance(x, jax.Array) for x in leaves):
        raise TypeError("sampler_replica expects a tree of jax.Arrays (the trainer's parameters)")
    sync = placement.sync_mesh
    order = None if sync is None else tuple(sync.devices.flat)
    if any(_device_order(x) != order for x in leaves):
        if jax.process_count() > 1:
            raise ValueError(
                "the state is not on the training mesh the sampler placement was built from: pass "
                "the trainer's state and sampler_placement(..., train_devices=mesh.devices.flat)"
            )
        target = None if dtype is None else jnp.dtype(dtype)
        cast = [x if target is None or x.dtype == target else x.astype(target) for x in leaves]
        return placement.put(jax.tree.unflatten(treedef, cast), cfg)
    program, _ = weight_sync_program(state, placement, cfg, dtype)
    out = program(leaves)
    mine = set(placement.devices)
    picked = []
    for x, s in zip(out, jax.tree.leaves(placement.param_shardings(state, cfg)), strict=True):
        shards = [sh.data for sh in x.addressable_shards if sh.device in mine]
        picked.append(jax.make_array_from_single_device_arrays(x.shape, s, shards))
    return jax.tree.unflatten(treedef, picked)
