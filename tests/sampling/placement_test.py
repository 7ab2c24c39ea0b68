"""The sampler's tensor-parallel placement: tp choice and weight-sync layout (golden), the weight
sync == a cast (tp 1, 2, 4 from an fsdp x tensor training mesh), a tp=2 engine == a tp=1 engine,
and the KV pool arithmetic (golden values, a fake free-memory figure)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import distributed
from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams, paged_cache
from cleaner_jax.sampling.placement import (
    _sync_layout,
    choose_tensor_parallel,
    sampler_placement,
    weight_sync_program,
)

CFG = tiny_config(num_heads=8, num_kv_heads=4)


@pytest.mark.parametrize(
    "kv_heads, devices, platform, requested, want",
    [
        (8, 4, "tpu", 0, 4),  # Qwen3-4B on a v5p host: 2 kv heads per chip
        (4, 4, "tpu", 0, 4),  # Qwen2.5-7B on a v5p host: 1 per chip
        (8, 8, "gpu", 0, 8),  # Qwen3-4B on 8 GPUs
        (4, 8, "gpu", 0, 4),  # Qwen2.5-7B on 8 GPUs: fallback, 4 GPUs sample
        (2, 8, "cpu", 0, 1),  # CPU: one device unless asked
        (4, 8, "cpu", 2, 2),
    ],
)
def test_choose_tensor_parallel(kv_heads, devices, platform, requested, want):
    assert choose_tensor_parallel(kv_heads, devices, platform, requested) == want


def test_choose_tensor_parallel_rejects_bad_request():
    with pytest.raises(ValueError, match="divide num_kv_heads"):
        choose_tensor_parallel(4, 8, "gpu", 3)


@dataclasses.dataclass(frozen=True)
class _Dev:
    id: int
    process_index: int


def test_sync_layout_keeps_groups_in_one_process():
    # Two processes whose devices interleave in the training mesh's order: consecutive pairs
    # would mix processes, so the layout takes stride-2 groups (b = 2).
    order = [_Dev(i, i % 2) for i in range(8)]
    mesh, mine = _sync_layout(order, 2, process=1)
    assert dict(mesh.shape) == {"data": 2, "tensor": 2, "replica": 2, "fsdp": 1}
    assert [d.id for d in mine] == [1, 3]
    assert list(mesh.devices.flat) == order  # jit wants the training mesh's device order
    mesh, mine = _sync_layout([_Dev(i, i // 4) for i in range(8)], 4, process=1)
    assert [d.id for d in mine] == [4, 5, 6, 7] and mesh.shape["replica"] == 1


@pytest.fixture(scope="module")
def model():
    return Qwen(CFG, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_weight_sync_equals_cast(model, tp):
    _, state = nnx.split(model)
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    trained = sharding.shard_state(state, mesh, cfg=CFG)
    placement = sampler_placement(CFG, tensor_parallel=tp, train_devices=mesh.devices.flat)
    assert placement.tp == tp and placement.sync_mesh.size == 8
    got = distributed.sampler_replica(trained, placement, CFG, "bfloat16")
    k_proj = next(
        x for p, x in jax.tree.leaves_with_path(got) if "k_proj" in jax.tree_util.keystr(p)
    )
    # kv heads split over the sampler's devices
    assert k_proj.sharding.shard_shape(k_proj.shape)[-1] == k_proj.shape[-1] // tp
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        assert a.sharding.mesh == placement.mesh and a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(
            np.asarray(a, np.float32), np.asarray(b.astype(jnp.bfloat16), np.float32)
        )
    program, _ = weight_sync_program(trained, placement, CFG, "bfloat16")
    assert program._cache_size() == 1  # one compiled program per sync


def test_tensor_parallel_engine_equals_one_device(model):
    ecfg = EngineConfig(
        page_size=4,
        num_pages=40,
        max_slots=4,
        prefill_chunk=16,
        prefill_blocks=4,
        max_seq_len=32,
        decode_steps=2,
        decode_width_buckets=1,
    )
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, CFG.vocab_size, size=n)) for n in (3, 9, 17)]
    params = [SamplingParams(temperature=1.0, seed=s, max_new_tokens=6) for s in range(3)]
    outs = []
    for tp in (1, 2):
        engine = Engine(model, ecfg, sampler_placement(CFG, tensor_parallel=tp))
        k0 = engine._k[0]
        assert k0.sharding.shard_shape(k0.shape)[0] == CFG.num_kv_heads // tp
        outs.append(engine.generate_batch(prompts, params))
    for one, two in zip(*outs, strict=True):
        assert one.tokens == two.tokens
        np.testing.assert_allclose(one.logprobs, two.logprobs, atol=1e-5)


def test_pages_for_memory_golden():
    # (10 GiB x 0.9 - 1 GiB in use - 4 GiB reserved) / 1 MiB pages = 4096 pages.
    gib, mib = 1024**3, 1024**2
    assert paged_cache.pages_for_memory(10 * gib, gib, 4 * gib, 0.9, mib) == 4096
    assert paged_cache.pages_for_memory(gib, 0, 2 * gib, 0.9, mib) == 0  # reserve exceeds it
    with pytest.raises(ValueError, match="memory_fraction"):
        paged_cache.pages_for_memory(gib, 0, 0, 0.0, mib)
    # Qwen3-4B in bf16, 16-token pages, kv heads over 4 chips: 2 * 36 * 16 * 2 * 128 * 2 bytes.
    qwen3_4b = tiny_config(num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128)
    assert paged_cache.bytes_per_page(qwen3_4b, 16, "bfloat16", shards=4) == 589_824


class _FakeDevice:
    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        return self._stats


def test_num_pages_from_fake_memory_stats():
    cfg = tiny_config()  # 2 layers, 2 kv heads of 16: 2 * 2 * 4 * 2 * 16 * 4 = 2048 B a page
    dev = _FakeDevice({"bytes_limit": 1_000_000, "bytes_in_use": 200_000})
    # (1_000_000 * 0.9 - 200_000 - 300_000) // 2048 = 195; kv heads over 2 devices: 1024 B
    # a page -> 390.
    got = paged_cache.num_pages_from_memory(cfg, 4, 0.9, dev, reserve_bytes=300_000)
    assert got == 195
    got = paged_cache.num_pages_from_memory(cfg, 4, 0.9, dev, shards=2, reserve_bytes=300_000)
    assert got == 390
    assert paged_cache.num_pages_from_memory(cfg, 4, 0.5, _FakeDevice({})) is None
