"""Memory plan: abstract shard bytes == bytes of really sharded arrays; hand-counted totals."""

import jax
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import PRESETS
from cleaner_jax.models.testing import random_model, tiny_variant
from cleaner_jax.runtime import memory_plan as mp


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (1, 2, 4), (2, 2, 2)])
def test_abstract_plan_matches_concrete_sharded_arrays(mesh_shape):
    cfg = tiny_variant("qwen2", tied=False, gqa=2, hidden_size=64, intermediate_size=96)
    concrete = nnx.split(random_model(cfg))[1]
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape, strict=True)))
    placed = sharding.shard_state(concrete, mesh, cfg=cfg)
    device0 = jax.devices()[0]
    real = sum(
        s.data.nbytes
        for x in jax.tree.leaves(placed)
        for s in x.addressable_shards
        if s.device == device0
    )
    abstract = mp.per_device_bytes(mp.abstract_state(cfg), mp.abstract_mesh(mesh_shape), cfg)
    assert abstract == real


def test_qwen3_4b_params_and_adam_state_per_device():
    cfg = PRESETS["qwen3_4b_instruct_2507"]
    params = mp.abstract_state(cfg)
    full = mp.per_device_bytes(params, mp.abstract_mesh((1, 1, 1)), cfg)
    assert full == 4 * cfg.num_params()
    eight = mp.per_device_bytes(params, mp.abstract_mesh((1, 8, 1)), cfg)
    # Everything shards 8 ways over fsdp except the q/k norm weights (head_dim is never split).
    norms = 2 * cfg.num_layers * cfg.head_dim * 4
    assert eight == (full - norms) // 8 + norms
    opt = mp.per_device_bytes(mp.abstract_opt_state(params), mp.abstract_mesh((1, 8, 1)), cfg)
    # AdamW mu and nu mirror the params; the rest is a few int32 step counters.
    assert 0 <= opt - 2 * eight <= 16


def test_activation_formula_hand_computed():
    cfg = tiny_variant("qwen3", hidden_size=8, intermediate_size=16, head_dim=2, num_layers=3)
    w = mp.Workload(tokens_per_device=20, row_len=10, compute_dtype="float16")
    # per token: 4*8 + 3*4*2 + 3*2*2 + 4*16 = 32 + 24 + 12 + 64 = 132 elements of 2 bytes,
    # plus a float32 log-sum-exp per head: 4 * 4 bytes. No [T, T] term.
    layer = 20 * (132 * 2 + 16)
    got = mp.activation_bytes(cfg, w, logprob_chunk=8)
    assert got["act_layer"] == layer
    assert got["act_no_remat"] == 3 * layer
    assert got["act_remat"] == 3 * 20 * 8 * 2 + layer
    assert got["logits"] == 3 * 8 * cfg.vocab_size * 4


def test_measured_activations_grow_linearly_with_the_row():
    """The plan's activations come from the real training step: each further layer keeps its
    input (remat), 4x the row is exactly 4x that; the whole grows at most linearly ([T, T]
    attention would be ~16x)."""
    cfg = tiny_variant("qwen3", hidden_size=32, intermediate_size=64, num_layers=3, remat=True)
    small = mp.measured_activation_bytes(cfg, mp.Workload(1024, 1024, "float32"))
    big = mp.measured_activation_bytes(cfg, mp.Workload(4096, 4096, "float32"))
    assert small["total"] == small["one_layer"] + 2 * small["per_layer"]
    assert small["per_layer"] == 1024 * cfg.hidden_size * 4
    assert big["per_layer"] == 4 * small["per_layer"]
    assert 1.0 < big["total"] / small["total"] < 4.0
    hw = mp.Hardware("test", 8, 80.0, (1, 8, 1))
    row = mp.plan(cfg, hw, mp.Workload(1024, 1024, "float32"), measured=small)
    assert row["activations"] == small["total"]
    assert row["activations_from"].startswith("compiled")


def test_kv_pages_from_sequence_budget():
    w = mp.Workload(kv_seqs=2, kv_seq_len=33, page_size=16)
    assert w.num_kv_pages == 2 * 3 + 1
    cfg = tiny_variant("qwen3")
    per_page = 2 * cfg.num_layers * 16 * cfg.num_kv_heads * cfg.head_dim * 2
    assert mp.kv_bytes(cfg, w) == 7 * per_page
    np.testing.assert_equal(mp.Workload(kv_pages=5).num_kv_pages, 5)


def test_hardware_meshes_use_every_device():
    for hw in mp.HARDWARE.values():
        assert np.prod(hw.mesh) == hw.num_devices
    with pytest.raises(ValueError, match="does not have"):
        mp.Hardware("bad", 8, 80.0, (1, 4, 1))


@pytest.mark.parametrize("mu_dtype,mu_bytes", [("", 4), ("bfloat16", 2)])
def test_gradient_and_optimizer_lines_hand_counted(mu_dtype, mu_bytes):
    cfg = tiny_variant("qwen3")
    p = cfg.num_params()
    hw = mp.Hardware("test", 1, 80.0, (1, 1, 1))
    row = mp.plan(cfg, hw, mp.Workload(64, 64, "float16", mu_dtype=mu_dtype))
    # One float32 gradient tree: micro-batch gradients are added into the donated accumulator.
    assert row["grads_fp32"] == row["params_fp32"] == 4 * p
    # AdamW mu (mu_dtype) + nu (float32); scalars: the int32 counts of Adam and of the learning
    # rate schedule, and with float16 compute the float32 loss scale and its int32 step counter.
    assert row["opt_state"] == (mu_bytes + 4) * p + 4 * 4
    static = row["params_fp32"] + row["params_sampler"] + row["grads_fp32"] + row["opt_state"]
    assert row["train_total"] == static + row["activations"]


@pytest.mark.tpu_compile
def test_tpu_compiled_row_agrees_with_the_plan():
    """The plan's TPU row against XLA's TPU compiler (v5p-8's abstract devices): the compiled
    gradient step's arguments are the plan's params + accumulator + batch, and the totals agree
    within 25% for a small model whose activations are a minor share."""
    cfg = tiny_variant("qwen3", hidden_size=256, intermediate_size=512)
    cfg = cfg.replace(head_dim=128, num_heads=4, num_kv_heads=2)
    w = mp.Workload(tokens_per_device=512, row_len=512, compute_dtype="bfloat16", kv_seqs=1)
    hw = mp.HARDWARE["TPUv5p-8"]
    got = mp.tpu_compiled(cfg, hw, w)
    plan = mp.plan(cfg, hw, w)
    params = plan["params_fp32"]
    assert got["tpu_argument"] >= 2 * params  # parameters and the gradient accumulator
    assert 0.75 <= plan["total_with_kv"] / got["tpu_total_with_kv"] <= 1.25
