"""`sampling.aot.sampler_programs` compiles, without running, for 8 CPU devices and for the
abstract devices of a TPU v5p host (`jax.experimental.topologies`, libtpu's compiler on this
CPU host): prefill, decode and weight sync of a tiny model whose dims respect TPU tiling (head
dim 128, 16-token pages). The v5p decode runs the Mosaic paged kernel with megacore on.

Decode updates the pool in place: its temporaries do not grow with the page count and the
compiled program copies no pool-sized buffer (on v5p a scatter whose window spanned the kv heads
made XLA carry the pool through the decode loop in another layout: a copy of the pool in and out
of the loop and, every step, to the kernel's layout; Qwen3-4B at the paper's 92,161 pages then
needed 103 GB of temporaries per chip)."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.sampling import EngineConfig
from cleaner_jax.sampling.aot import sampler_programs
from cleaner_jax.sampling.attention_kernels import resolve_attention

# Another process may hold libtpu's lockfile; a deviceless compile never touches a chip.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

ECFG = EngineConfig(
    page_size=16,
    num_pages=64,
    max_slots=8,
    prefill_chunk=64,
    prefill_blocks=4,
    max_seq_len=256,
    decode_steps=2,
)


def _train_state(cfg, mesh):
    """The trainer's fp32 parameters as ShapeDtypeStructs sharded on the training mesh."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding.state_shardings(abstract, mesh, cfg=cfg)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=s), abstract, shardings
    )
    return graphdef, state


def _compile_all(programs):
    return {name: fn.lower(*a, **kw).compile() for name, (fn, a, kw) in programs.items()}


def test_sampler_programs_compile_for_cpu_devices():
    cfg = tiny_config(num_heads=8, num_kv_heads=4)
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    graphdef, state = _train_state(cfg, mesh)
    programs = sampler_programs(graphdef, state, ECFG, jax.devices(), tensor_parallel=2)
    assert set(programs) == {"prefill", "decode", "weight_sync"}
    _, args, _ = programs["decode"]
    assert args[1][0].shape == (4, 64, 16, 16)  # the jnp layout's K pages [K, P, H, S]
    assert args[3].shape == (8, 16)  # the widest page-table bucket
    for name, compiled in _compile_all(programs).items():
        assert compiled.memory_analysis() is not None, name


@pytest.fixture(scope="module")
def v5p_devices():
    topologies = pytest.importorskip("jax.experimental.topologies")
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1").devices
    except Exception as e:  # no libtpu here: nothing to compile for
        pytest.skip(f"no TPU topology ({type(e).__name__}: {e})")


def test_auto_attention_follows_the_context_mesh(v5p_devices):
    mesh = jax.sharding.Mesh(np.array(v5p_devices), ("fsdp",))
    with jax.set_mesh(mesh):
        assert resolve_attention("auto") == "pallas_tpu"
    assert resolve_attention("auto") == "jnp"  # the CPU host


def test_sampler_programs_compile_for_v5p(v5p_devices, monkeypatch):
    from jax.experimental.pallas.ops.tpu import paged_attention as tpu_ops

    modes = []
    kernel = tpu_ops.paged_attention

    def recording(*args, **kwargs):
        modes.append(kwargs.get("megacore_mode"))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(tpu_ops, "paged_attention", recording)
    # 8 kv heads over the host's 4 chips: 2 per chip, split over each chip's 2 cores.
    cfg = tiny_config(num_heads=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
    mesh = sharding.make_mesh({"fsdp": -1}, devices=v5p_devices)
    graphdef, state = _train_state(cfg, mesh)
    programs = sampler_programs(graphdef, state, ECFG, v5p_devices)
    compiled = _compile_all(programs)
    assert modes and set(modes) == {"kv_head"}
    decode = compiled["decode"].memory_analysis()
    # Per chip: the pool's 2 of 8 kv heads (64 pages x 2 layers x K and V x 16 x 128 bf16).
    pool_bytes = 64 * 2 * 2 * 2 * 16 * 128 * 2
    assert decode.alias_size_in_bytes >= pool_bytes
    assert decode.temp_size_in_bytes < 16 * 2**20


def _decode_memory(cfg, devices, num_pages, attention="auto", tensor_parallel=0):
    """(temporary bytes, pool bytes per device, pool-shaped copies in the HLO) of the compiled
    decode with a pool of `num_pages`."""
    mesh = sharding.make_mesh({"fsdp": -1}, devices=devices)
    graphdef, state = _train_state(cfg, mesh)
    ecfg = dataclasses.replace(ECFG, num_pages=num_pages, attention=attention)
    programs = sampler_programs(graphdef, state, ecfg, devices, tensor_parallel=tensor_parallel)
    fn, args, kw = programs["decode"]
    compiled = fn.lower(*args, **kw).compile()
    pool = args[1] + args[2]
    shards = [(x.sharding.shard_shape(x.shape), x.dtype) for x in pool]
    pool_bytes = sum(math.prod(s) * d.itemsize for s, d in shards)
    hlo_dtype = {"bfloat16": "bf16", "float32": "f32"}
    names = {f"{hlo_dtype[d.name]}[{','.join(map(str, s))}]" for s, d in shards}
    copies = [
        line.strip()[:160]
        for line in compiled.as_text().splitlines()
        for op in (" copy(", " copy-start(")
        if op in line and any(n in line.split(op)[0] for n in names)
    ]
    return compiled.memory_analysis().temp_size_in_bytes, pool_bytes, copies


def _assert_pool_updated_in_place(cfg, devices, **kwargs):
    """Decode at 64 and 2,048 pages: no pool-shaped copy, temporaries grow by < 1/16 of the pool
    (a copy of one layer's K or V array would be 1/4 here)."""
    (small_temp, small_pool, _), (temp, pool, copies) = (
        _decode_memory(cfg, devices, p, **kwargs) for p in (64, 2048)
    )
    assert not copies, copies
    assert temp - small_temp < (pool - small_pool) / 16, (small_temp, temp, small_pool, pool)


@pytest.mark.parametrize("tensor_parallel", [1, 2])  # 1: the view decode; 2: shard_map per shard
def test_decode_temporaries_do_not_grow_with_the_pool_cpu(tensor_parallel):
    cfg = tiny_config(num_heads=8, num_kv_heads=4)
    _assert_pool_updated_in_place(cfg, jax.devices(), tensor_parallel=tensor_parallel)


@pytest.mark.tpu_compile
@pytest.mark.parametrize("attention", ["auto", "jnp"])  # auto: the Mosaic paged kernel
def test_decode_temporaries_do_not_grow_with_the_pool_v5p(v5p_devices, attention):
    cfg = tiny_config(num_heads=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
    _assert_pool_updated_in_place(cfg, list(v5p_devices), attention=attention)
