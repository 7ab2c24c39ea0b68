"""The sampler's device programs with abstract inputs, for ahead-of-time compiles.

`sampler_programs` returns exactly what an `Engine` on the same placement runs: its
`EngineSteps.prefill` and `.decode` (built by `engine_steps.engine_steps_for`, so the attention
kernel, megacore mode and per-shard `shard_map` are the engine's) at the engine config's real
shapes, and the weight sync (`placement.weight_sync_program`, which
`rl.distributed.sampler_replica` runs: the trainer's fp32 state on the training mesh -> the
sampler's dtype and placement). Every argument is a `jax.ShapeDtypeStruct`
carrying its `NamedSharding`, so the devices may be abstract (`jax.experimental.topologies`:
XLA's TPU compiler on a CPU host, libtpu installed) and nothing is allocated::

    programs = sampler_programs(graphdef, train_state, engine_config, topology.devices)
    for name, (fn, args, kwargs) in programs.items():
        memory = fn.lower(*args, **kwargs).compile().memory_analysis()

Letters: B slots, M pages per row (the widest bucket: max_seq_len / page_size), J prefill
blocks, U tokens per block, X stop tokens per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cleaner_jax.sampling.engine_steps import default_num_pages, engine_steps_for
from cleaner_jax.sampling.engine_types import EngineConfig, SamplingRows
from cleaner_jax.sampling.paged_cache import pool_shapes
from cleaner_jax.sampling.placement import (
    SamplerPlacement,
    sampler_placement,
    weight_sync_program,
)

Program = tuple[Any, tuple, dict]


def _abstract(x, sharding=None, dtype=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype or x.dtype), sharding=sharding)


def _sampler_devices(devices: Sequence[Any]) -> list:
    """One host's devices (the first device's process): what that process's sampler uses."""
    proc = devices[0].process_index
    return [d for d in devices if d.process_index == proc]


def sampler_programs(
    graphdef: nnx.GraphDef,
    abstract_state: Any,
    engine_config: EngineConfig,
    devices_or_mesh: Sequence[Any] | Mesh,
    *,
    tensor_parallel: int = 0,
    placement: SamplerPlacement | None = None,
) -> dict[str, Program]:
    """{"prefill", "decode", "weight_sync"} -> (jitted fn, args, kwargs) for `fn.lower(*args,
    **kwargs).compile()`.

    `graphdef`: the sampler's model structure (computing in the sampler dtype, e.g.
    `runtime.parts.sampler_graphdef`); `abstract_state`: the trainer's parameter tree (arrays or
    ShapeDtypeStructs, fp32 masters); when its leaves carry NamedShardings (the training mesh)
    the "weight_sync" program is included, else only prefill and decode. `devices_or_mesh`: the
    target's devices (a Mesh: its devices), of which the first device's host is the sampler's
    (`placement.sampler_placement` with `tensor_parallel`, unless `placement` is given). The
    sampler's parameters are `abstract_state` cast to the graphdef's compute dtype on the
    placement. `engine_config.num_pages=None` compiles the pool an engine gets on a device that
    reports no memory (`max_slots` full-length sequences); pass the page count a run uses.
    """
    if isinstance(devices_or_mesh, Mesh):
        devices = list(devices_or_mesh.devices.flat)
    else:
        devices = list(devices_or_mesh)
    c = engine_config
    cfg = nnx.merge(graphdef, abstract_state).cfg
    leaves = jax.tree.leaves(abstract_state)
    trained = all(isinstance(getattr(x, "sharding", None), NamedSharding) for x in leaves)
    train_devices = list(leaves[0].sharding.mesh.devices.flat) if trained else None
    if placement is None:
        host = _sampler_devices(train_devices or devices)
        placement = sampler_placement(cfg, host, tensor_parallel, train_devices)
    steps = engine_steps_for(graphdef, c, placement)
    num_pages = c.num_pages or default_num_pages(c)
    params = placement.param_shardings(abstract_state, cfg)
    sampler_state = jax.tree.map(lambda x, s: _abstract(x, s, cfg.dtype), abstract_state, params)
    k_pages, v_pages = pool_shapes(
        cfg, num_pages, c.page_size, cfg.dtype, steps.impl, placement.pool_sharding
    )
    rep = placement.replicated

    def i32(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rep)

    def rows(n):
        return jax.tree.map(lambda x: _abstract(x, rep), SamplingRows.build(n))

    b, m = c.max_slots, -(-c.max_seq_len // c.page_size)
    j = c.prefill_blocks
    u = c.prefill_chunk // j
    out: dict[str, Program] = {
        "prefill": (
            steps.prefill,
            (
                sampler_state,
                k_pages,
                v_pages,
                i32(j, m),
                i32(j, u),
                i32(j, u),
                i32(j, u),
                i32(j),
                i32(j),
                i32(j),
                rows(j),
            ),
            {},
        ),
        "decode": (
            steps.decode,
            (
                sampler_state,
                k_pages,
                v_pages,
                i32(b, m),
                i32(b),
                i32(b),
                rows(b),
                i32(b),
                i32(b, c.max_stop_tokens),
            ),
            {},
        ),
    }
    if trained and placement.sync_mesh is not None:
        sync, _ = weight_sync_program(abstract_state, placement, cfg, cfg.dtype)
        out["weight_sync"] = (sync, ([_abstract(x, x.sharding) for x in leaves],), {})
    return out
