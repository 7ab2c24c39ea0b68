"""`sampling.aot.sampler_programs` compiles, without running, for 8 CPU devices and for the
abstract devices of a TPU v5p host (`jax.experimental.topologies`, libtpu's compiler on this
CPU host): prefill, decode and weight sync of a tiny model whose dims respect TPU tiling (head
dim 128, 16-token pages). The v5p decode runs the Mosaic paged kernel with megacore on."""

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
