"""The updater: accumulation == one big batch, sharded == unsharded, gradients == finite diffs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl.packing import TrainSample, pack, split_rows
from cleaner_jax.rl.update import LossConfig, OptimConfig, Updater, make_optimizer


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config(vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8)
    graphdef, state = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    samples = [
        TrainSample(
            rng.integers(0, 64, n),
            rng.random(n) > 0.3,
            advantage=float(rng.normal()),
            logprobs=-rng.random(n) * 4,
        )
        for n in rng.integers(5, 30, 10)
    ]
    return cfg, graphdef, state, pack(samples, 32, rows_multiple=8)


def _max_diff(a, b):
    return max(
        float(jnp.abs(x - y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize("kind", ["ppo", "sft"])
def test_accumulation_equals_single_batch(setup, kind):
    _, graphdef, state, batch = setup
    up = Updater(graphdef, make_optimizer(OptimConfig()), LossConfig(kind=kind))
    g1, m1 = up.grads(state, [batch])
    g4, m4 = up.grads(state, split_rows(batch, 2))
    assert _max_diff(g1, g4) < 1e-6
    for k in m1:
        np.testing.assert_allclose(float(m1[k]), float(m4[k]), rtol=1e-5, atol=1e-6)


def test_chunked_logprobs_leave_gradients_unchanged(setup):
    # "sft" differs only in skipping the entropy (chunked_logprobs_test covers with_entropy).
    _, graphdef, state, batch = setup
    kind = "ppo"
    opt = make_optimizer(OptimConfig())
    whole = Updater(graphdef, opt, LossConfig(kind=kind, temperature=0.8, logprob_chunk=0))
    # 5 does not divide the row length 32, so the padded tail chunk is exercised too.
    chunked = Updater(graphdef, opt, LossConfig(kind=kind, temperature=0.8, logprob_chunk=5))
    g0, m0 = whole.grads(state, [batch])
    g5, m5 = chunked.grads(state, [batch])
    # Same float32 per-token math; only XLA's fusion/reduction order may differ (~ulps).
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g0))
    assert _max_diff(g0, g5) <= 1e-6 * max(scale, 1.0)
    for k in m0:
        np.testing.assert_allclose(float(m5[k]), float(m0[k]), rtol=1e-6, atol=1e-7)


def test_sharded_update_equals_single_device(setup):
    cfg, graphdef, state, batch = setup
    opt = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=1))
    # A chunk below the row length (32) so the mesh runs the per-batch-shard chunk loop.
    loss_cfg = LossConfig(logprob_chunk=12)
    single = Updater(graphdef, opt, loss_cfg)
    s1, o1 = jax.tree.map(jnp.copy, state), None
    o1 = single.init(s1)
    s1, o1, m1 = single.step(s1, o1, split_rows(batch, 4))

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    s8 = sharding.shard_state(jax.tree.map(jnp.copy, state), mesh, cfg=cfg)
    multi = Updater(graphdef, opt, loss_cfg, mesh=mesh)
    o8 = multi.init(s8)
    s8, o8, m8 = multi.step(s8, o8, split_rows(batch, 4))
    assert len(jax.tree.leaves(s8)[0].sharding.device_set) == 8
    assert _max_diff(s1, s8) < 1e-6
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def test_loss_gradient_matches_finite_differences(setup):
    _, graphdef, state, batch = setup
    up = Updater(graphdef, make_optimizer(OptimConfig()), LossConfig(kind="ppo"))
    grads, metrics = up.grads(state, [batch])
    flat = nnx.to_flat_state(state)
    path, var = next((p, v) for p, v in flat if "q_proj" in str(p) and "kernel" in str(p))
    g = nnx.to_flat_state(grads)
    g_val = dict(g)[path][...]

    def loss_with(delta):
        new = jax.tree.map(lambda x: x, state)
        leaf = dict(nnx.to_flat_state(new))[path]
        leaf.value = leaf[...].at[0, 0].add(delta)
        return float(up.grads(new, [batch])[1]["loss"])

    # float64 is off; a central difference with a moderate step is accurate to ~1e-3 relative.
    eps = 1e-2
    fd = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
    np.testing.assert_allclose(fd, float(g_val[0, 0]), rtol=2e-2, atol=2e-4)
    assert np.isfinite(metrics["loss"])


def test_optimizer_state_lives_on_the_parameter_mesh(setup):
    cfg, graphdef, state, _ = setup
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = sharding.shard_state(state, mesh, cfg=cfg)
    opt_state = Updater(graphdef, make_optimizer(OptimConfig()), LossConfig(), mesh=mesh).init(
        sharded
    )
    for leaf in jax.tree.leaves(opt_state):
        assert len(leaf.sharding.device_set) == 8, leaf.shape
