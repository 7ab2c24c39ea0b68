"""Trainer-side log-probs: packed == prefix-shared == full per-sequence forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import logprobs as logprobs_lib
from cleaner_jax.rl.logprobs import mismatch_metrics, packed_logprobs, prefix_shared_logprobs
from cleaner_jax.rl.packing import TrainSample, pack, unpack_per_sample


def _reference(model, tokens, temperature):
    logits, _ = nnx.jit(lambda m, t, p: m(t, p))(
        model, jnp.asarray(tokens)[None], jnp.arange(len(tokens))[None]
    )
    logp = jax.nn.log_softmax(logits[0, :-1] / temperature)
    return np.take_along_axis(np.asarray(logp), np.asarray(tokens)[1:, None], 1)[:, 0]


def test_packed_and_prefix_shared_match_full_forward():
    cfg = tiny_config(vocab_size=128)
    model = Qwen(cfg, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 128, 21)
    responses = [rng.integers(0, 128, n) for n in (3, 17, 9, 1)]
    samples = [
        TrainSample(np.concatenate([prompt, r]), np.ones(len(prompt) + len(r))) for r in responses
    ]
    temperature = 0.7
    batch = pack(samples, 48)
    # Chunks that divide neither the row (48) nor the padded response length (32): the padded
    # chunked path must give the full forward's log-probs.
    packed = unpack_per_sample(
        packed_logprobs(graphdef, state, batch, temperature, chunk=7), batch, samples
    )
    shared = prefix_shared_logprobs(
        graphdef, state, prompt, responses, temperature=temperature, bucket=16, chunk=5
    )
    for s, p, sh in zip(samples, packed, shared, strict=True):
        ref = _reference(model, s.tokens, temperature)
        np.testing.assert_allclose(p[1:], ref, atol=1e-5)
        np.testing.assert_allclose(sh, ref[len(prompt) - 1 :], atol=1e-5)


def test_recompute_one_shape_sharded_equals_unsharded_and_full_forward():
    """The trainer's recompute: many samples, a fixed [rows, row_len] shape per call (one trace
    for several calls), rows sharded over an 8-device fsdp mesh, equal to the unsharded call and
    to each sample's own full forward."""
    cfg = tiny_config(vocab_size=96)
    model = Qwen(cfg, rngs=nnx.Rngs(2))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(3)
    samples = [
        TrainSample(rng.integers(0, 96, n), np.ones(n)) for n in (5, 30, 12, 17, 9, 2, 25, 31)
    ]
    mesh = sharding.make_mesh({"fsdp": 8})
    sharded_state = sharding.shard_state(state, mesh, cfg=cfg)
    traces_before = logprobs_lib._packed_logprobs._cache_size()
    # >= 4 rows of 32 in calls of 3 rows: at least 2 calls of one shape, one compile.
    plain = logprobs_lib.recompute_sample_logprobs(
        graphdef, state, samples, row_len=32, rows_per_call=3, chunk=8
    )
    assert logprobs_lib._packed_logprobs._cache_size() == traces_before + 1
    traces_before += 1
    on_mesh = logprobs_lib.recompute_sample_logprobs(
        graphdef, sharded_state, samples, row_len=32, rows_per_call=8, chunk=8, mesh=mesh
    )
    # 8 samples of 2..31 tokens fill > 1 row of 32 but <= 8 rows: one call, one new compile.
    assert logprobs_lib._packed_logprobs._cache_size() == traces_before + 1
    for s, a, b in zip(samples, plain, on_mesh, strict=True):
        assert a[0] == 0.0 and len(a) == len(s.tokens)
        np.testing.assert_allclose(a[1:], _reference(model, s.tokens, 1.0), atol=1e-5)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_recompute_refuses_zero_rows():
    with pytest.raises(ValueError, match="rows_per_call"):
        logprobs_lib.recompute_sample_logprobs(None, None, [], row_len=8, rows_per_call=0)


def test_mismatch_metrics_golden():
    sampler = np.array([-1.0, -2.0, -0.5, 0.0])
    trainer = np.array([-1.5, -2.0, -0.5, -9.0])
    mask = np.array([1, 1, 0, 0])
    m = mismatch_metrics(sampler, trainer, mask)
    # d = trainer - sampler on masked tokens = [-0.5, 0]; k3 = mean(exp(d) - 1 - d).
    assert np.isclose(m["logprob_mismatch/mean_abs"], 0.25)
    assert np.isclose(m["logprob_mismatch/max_abs"], 0.5)
    assert np.isclose(m["logprob_mismatch/kl_k3"], (np.exp(-0.5) - 1 + 0.5) / 2)
