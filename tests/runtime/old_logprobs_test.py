"""Which old log-probs the trainer uses (`train.old_logprobs`) and what it recomputes for them."""

import types

import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models.testing import random_model, tiny_variant
from cleaner_jax.rl.logprobs import prefix_shared_logprobs
from cleaner_jax.rl.packing import TrainSample
from cleaner_jax.runtime import trainer

N, PROMPT = 2, 5  # samples per group, prompt tokens


@pytest.fixture(scope="module")
def bundle():
    cfg = tiny_variant(vocab_size=64)
    graphdef, state = nnx.split(random_model(cfg, seed=3))
    return graphdef, state


def _samples(stale: list[bool]):
    rng = np.random.default_rng(0)
    samples, rollouts = [], []
    for i, s in enumerate(stale):
        if i % N == 0:
            prompt = rng.integers(1, 64, PROMPT)
        tokens = np.concatenate([prompt, rng.integers(1, 64, 4 + i)])
        mask = np.r_[np.zeros(PROMPT), np.ones(len(tokens) - PROMPT)]
        marker = np.full(len(tokens), -7.0, np.float32)  # what "the sampler" reported
        samples.append(TrainSample(tokens, mask, logprobs=marker, prompt_len=PROMPT))
        # The trainer only asks a rollout whether its log-probs are stale.
        rollouts.append(types.SimpleNamespace(has_stale_logprobs=s))
    return samples, rollouts


def _config(mode):
    """The fields of `TrainSettings` that `_old_logprobs` reads."""
    # Rows of 16 tokens, 2 per call: the 4 samples (9-12 tokens) take 4 rows in 2 calls.
    return types.SimpleNamespace(
        old_logprobs=mode, logprob_chunk=5, temperature=1.0, row_len=16, rows_per_micro=2
    )


def _trainer_logprobs(bundle, sample):
    """The oracle: the prefix-shared path (a different forward: dense KV cache, prompt once)."""
    graphdef, state = bundle
    return prefix_shared_logprobs(
        graphdef, state, sample.tokens[:PROMPT], [sample.tokens[PROMPT:]]
    )[0]


def test_sampler_mode_scores_only_groups_with_stale_rollouts(bundle):
    samples, rollouts = _samples([False, False, False, True])
    metrics = trainer._old_logprobs(_config("sampler"), *bundle, rollouts, samples, N)
    for s in samples[:3]:  # fresh: the sampler's log-probs stay
        np.testing.assert_array_equal(s.logprobs, -7.0)
    np.testing.assert_allclose(
        samples[3].logprobs[PROMPT:], _trainer_logprobs(bundle, samples[3]), atol=1e-5
    )
    # Mismatch measured on the fresh member of the scored group only (marker vs real: large).
    assert metrics["logprob_mismatch/mean_abs"] > 1.0


def test_sampler_mode_without_stale_rollouts_scores_nothing(bundle):
    samples, rollouts = _samples([False] * 4)
    assert trainer._old_logprobs(_config("sampler"), *bundle, rollouts, samples, N) == {}
    for s in samples:
        np.testing.assert_array_equal(s.logprobs, -7.0)


def test_recompute_mode_replaces_every_sample(bundle):
    samples, rollouts = _samples([False, True, False, False])
    metrics = trainer._old_logprobs(_config("recompute"), *bundle, rollouts, samples, N)
    for s in samples:
        np.testing.assert_allclose(s.logprobs[PROMPT:], _trainer_logprobs(bundle, s), atol=1e-5)
    assert "logprob_mismatch/kl_k3" in metrics
