"""Sampling distribution: empirical frequencies vs the exact temperature/top-k/top-p law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleaner_jax.sampling.token_sampling import sample_tokens, truncation_mask

LOGITS = np.array([2.0, 1.5, 1.2, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
N = 20000


def _expected(temperature, top_p, top_k):
    """Reference law written independently: sort, cut top-k, cut top-p, renormalise."""
    scaled = LOGITS.astype(np.float64) / temperature
    order = np.argsort(-scaled)
    keep = np.zeros_like(scaled, bool)
    kept_order = order[:top_k] if top_k > 0 else order
    p = np.exp(scaled[kept_order] - scaled[kept_order].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    for i, tok in enumerate(kept_order):
        if i == 0 or before[i] < top_p:
            keep[tok] = True
    q = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    return q / q.sum()


def _chi2_critical(df, z=3.719):  # z for p = 1e-4, Wilson-Hilferty approximation
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def _draw(temperature, top_p, top_k, seed=0):
    b = N
    full = lambda x, dt: jnp.full((b,), x, dt)  # noqa: E731
    toks, lps = jax.jit(sample_tokens)(
        jnp.broadcast_to(jnp.asarray(LOGITS), (b, LOGITS.size)),
        full(seed, jnp.int32),
        jnp.arange(b, dtype=jnp.int32),
        full(temperature, jnp.float32),
        full(top_p, jnp.float32),
        full(top_k, jnp.int32),
        full(False, bool),
    )
    return np.asarray(toks), np.asarray(lps)


@pytest.mark.parametrize(
    "temperature,top_p,top_k",
    [(1.0, 1.0, 0), (0.7, 1.0, 3), (1.3, 0.8, 0), (1.0, 0.9, 5), (2.0, 0.5, 2)],
)
def test_empirical_frequencies_match_expected_law(temperature, top_p, top_k):
    toks, lps = _draw(temperature, top_p, top_k)
    expected = _expected(temperature, top_p, top_k)
    counts = np.bincount(toks, minlength=LOGITS.size)
    assert counts[expected == 0].sum() == 0, "sampled a token that top-k/top-p removed"
    kept = expected > 0
    e = expected[kept] * N
    stat = ((counts[kept] - e) ** 2 / e).sum()
    if kept.sum() > 1:
        assert stat < _chi2_critical(kept.sum() - 1), (stat, counts, e)
    # Reported log-probs are under the untruncated tempered softmax.
    full_logp = np.asarray(jax.nn.log_softmax(jnp.asarray(LOGITS) / temperature))
    np.testing.assert_allclose(lps, full_logp[toks], atol=1e-6)


def test_the_frequency_test_detects_a_wrong_law():
    toks, _ = _draw(1.0, 1.0, 0)
    wrong = _expected(0.8, 1.0, 0)  # a 20% temperature error must be rejected
    counts = np.bincount(toks, minlength=LOGITS.size)
    stat = ((counts - wrong * N) ** 2 / (wrong * N)).sum()
    assert stat > _chi2_critical(LOGITS.size - 1)


def test_greedy_and_seed_determinism():
    b = 4
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(b, 32)), jnp.float32)
    args = (jnp.full((b,), 1.0), jnp.full((b,), 1.0), jnp.zeros((b,), jnp.int32))
    pos = jnp.arange(b, dtype=jnp.int32)
    sample = jax.jit(sample_tokens)
    g, _ = sample(logits, jnp.zeros((b,), jnp.int32), pos, *args, jnp.ones((b,), bool))
    np.testing.assert_array_equal(g, jnp.argmax(logits, -1))
    s1, _ = sample(logits, jnp.full((b,), 7), pos, *args, jnp.zeros((b,), bool))
    s2, _ = sample(logits[::-1], jnp.full((b,), 7), pos[::-1], *args, jnp.zeros((b,), bool))
    np.testing.assert_array_equal(s1, s2[::-1])  # depends on (seed, position), not on the row


def test_truncation_mask_golden():
    scaled = jnp.asarray([[3.0, 1.0, 2.0, 0.0]])
    m = truncation_mask(scaled, jnp.asarray([1.0]), jnp.asarray([2]))
    np.testing.assert_array_equal(m, [[True, False, True, False]])
    # softmax([3,2,1,0]) = [.644, .237, .087, .032]: top_p 0.7 keeps the first two.
    m = truncation_mask(scaled, jnp.asarray([0.7]), jnp.asarray([0]))
    np.testing.assert_array_equal(m, [[True, False, True, False]])
    m = truncation_mask(scaled, jnp.asarray([0.5]), jnp.asarray([0]))
    np.testing.assert_array_equal(m, [[True, False, False, False]])


def test_top_p_one_keeps_the_whole_vocab_even_when_the_cumsum_saturates():
    # One dominant logit: the float32 cumsum is 1.0 after the first token, so "mass before < 1"
    # alone would drop the (tiny but nonzero) tail.
    scaled = jnp.asarray([[30.0] + [0.0] * 255])
    m = truncation_mask(scaled, jnp.asarray([1.0]), jnp.asarray([0]))
    assert bool(m.all())


def test_a_row_samples_the_same_whatever_shares_its_batch():
    # The sort and the random draw are skipped when no row needs them: a row's token must not
    # depend on whether another row in the batch asked for top-k/top-p or for greedy.
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 64)), jnp.float32)
    seeds, pos = jnp.asarray([3, 4, 5]), jnp.asarray([10, 11, 12])
    temp = jnp.ones((3,))
    sample = jax.jit(sample_tokens)
    for top_p, top_k, greedy in [
        ([1.0, 1.0, 1.0], [0, 0, 0], [False, False, False]),
        ([1.0, 0.5, 1.0], [0, 0, 3], [False, False, False]),
        ([1.0, 1.0, 1.0], [0, 0, 0], [False, True, True]),
    ]:
        toks, lps = sample(
            logits, seeds, pos, temp, jnp.asarray(top_p), jnp.asarray(top_k), jnp.asarray(greedy)
        )
        alone, alone_lp = sample(
            logits[:1],
            seeds[:1],
            pos[:1],
            temp[:1],
            jnp.ones((1,)),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros((1,), bool),
        )
        assert int(toks[0]) == int(alone[0])
        np.testing.assert_allclose(lps[0], alone_lp[0], atol=1e-6)
    greedy_toks, _ = sample(
        logits, seeds, pos, temp, jnp.ones((3,)), jnp.zeros((3,), jnp.int32), jnp.ones((3,), bool)
    )
    np.testing.assert_array_equal(greedy_toks, jnp.argmax(logits, -1))
