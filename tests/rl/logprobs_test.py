"""Trainer-side log-probs: packed == prefix-shared == full per-sequence forward."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
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


def test_mismatch_metrics_golden():
    sampler = np.array([-1.0, -2.0, -0.5, 0.0])
    trainer = np.array([-1.5, -2.0, -0.5, -9.0])
    mask = np.array([1, 1, 0, 0])
    m = mismatch_metrics(sampler, trainer, mask)
    # d = trainer - sampler on masked tokens = [-0.5, 0]; k3 = mean(exp(d) - 1 - d).
    assert np.isclose(m["logprob_mismatch/mean_abs"], 0.25)
    assert np.isclose(m["logprob_mismatch/max_abs"], 0.5)
    assert np.isclose(m["logprob_mismatch/kl_k3"], (np.exp(-0.5) - 1 + 0.5) / 2)
