"""Clipped-surrogate loss: hand-computed golden values, gradients vs finite differences, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleaner_jax.rl import loss as L

# Jitted once per static configuration: eager op-by-op dispatch is slow on a loaded CI machine.
policy_loss = jax.jit(
    L.policy_loss,
    static_argnames=("clip_eps_low", "clip_eps_high", "dual_clip_c", "kl_coef", "entropy_coef"),
)

# Golden example (eps_low 0.2, eps_high 0.28, dual clip c 10), old log p = -1 everywhere:
#   row 0, A = +1, ratios (1, 1.5, 0.5):
#     t0: -1;  t1: max(-1.5, -1.28) = -1.28 (clipped high);  t2: max(-0.5, -0.8) = -0.5
#   row 1, A = -2, ratios (0.5, 12, 3), mask (1, 1, 0):
#     t0: max(1.0, 1.6) = 1.6 (clipped low);  t1: min(max(24, 2.56), 20) = 20 (dual clip)
#   token mean = (-1 - 1.28 - 0.5 + 1.6 + 20) / 5 = 3.764
RATIOS = np.array([[1.0, 1.5, 0.5], [0.5, 12.0, 3.0]])
OLD = -np.ones((2, 3), np.float32)
NEW = (OLD + np.log(RATIOS)).astype(np.float32)
ADV = np.array([1.0, -2.0], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


def test_golden_loss_and_metrics():
    loss, m = policy_loss(jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV), MASK)
    np.testing.assert_allclose(loss, 3.764, rtol=1e-5)
    np.testing.assert_allclose(m["pg_loss"], 3.764, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 2 / 5, rtol=1e-6)  # row0 t1, row1 t0
    np.testing.assert_allclose(m["clip_frac_high"], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["clip_frac_low"], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["dual_clip_frac"], 1 / 5, rtol=1e-6)
    approx_kl = -(math.log(1.5) + 2 * math.log(0.5) + math.log(12.0)) / 5  # -0.3008156
    np.testing.assert_allclose(m["approx_kl"], approx_kl, rtol=1e-5)
    np.testing.assert_allclose(m["ratio_mean"], (1 + 1.5 + 0.5 + 0.5 + 12) / 5, rtol=1e-5)


def test_golden_without_dual_clip_and_per_token_advantages():
    # Without dual clip row1 t1 costs 24 instead of 20: (-2.78 + 1.6 + 24) / 5 = 4.564.
    adv_BT = np.broadcast_to(ADV[:, None], (2, 3))
    loss, m = policy_loss(NEW, OLD, jnp.asarray(adv_BT), MASK, dual_clip_c=None)
    np.testing.assert_allclose(loss, 4.564, rtol=1e-5)
    assert float(m["dual_clip_frac"]) == 0.0


def test_num_tokens_normalizer_matches_micro_batch_accumulation():
    full, _ = policy_loss(NEW, OLD, ADV, MASK)
    parts = [policy_loss(NEW[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], MASK[i : i + 1],
                           num_tokens=MASK.sum())[0] for i in range(2)]  # fmt: skip
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)


def test_k3_kl_and_entropy_golden():
    # d = ref - logp = ln 2: k3 = 2 - ln 2 - 1 = 0.3068528.
    logp = jnp.array([[-1.0]])
    kl = L.k3_kl(logp, logp + math.log(2.0))
    np.testing.assert_allclose(kl, [[0.3068528]], rtol=1e-5)
    # logits (ln 3, 0): p = (0.75, 0.25); H = -(.75 ln .75 + .25 ln .25) = 0.5623351.
    logits = jnp.array([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    logp_BT, ent_BT = jax.jit(L.token_logprobs_and_entropy)(logits, jnp.array([[1, 0]]))
    np.testing.assert_allclose(logp_BT, [[math.log(0.25), math.log(0.5)]], rtol=1e-6)
    np.testing.assert_allclose(ent_BT, [[0.5623351, math.log(2.0)]], rtol=1e-6)
    loss, m = policy_loss(
        logp, logp, jnp.array([0.0]), jnp.ones((1, 1)), ref_logp_BT=logp + math.log(2.0),
        kl_coef=0.5, entropy_BT=jnp.array([[2.0]]), entropy_coef=0.1,
    )  # fmt: skip
    np.testing.assert_allclose(loss, 0.5 * 0.3068528 - 0.1 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], 0.3068528, rtol=1e-5)
    np.testing.assert_allclose(m["entropy"], 2.0)


def test_on_policy_gradient_is_minus_advantage_over_tokens():
    # ratio == 1 everywhere: loss = -mean(A) and d loss / d logp = -A * mask / N.
    grad = jax.jit(jax.grad(lambda lp: L.policy_loss(lp, OLD, ADV, MASK)[0]))(jnp.asarray(OLD))
    expected = -ADV[:, None] * MASK / MASK.sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_masked_garbage_does_not_leak():
    new = NEW.copy()
    new[1, 2] = -np.inf  # padding log-prob
    loss, m = policy_loss(new, OLD, ADV, MASK, ref_logp_BT=jnp.asarray(OLD), kl_coef=0.1)
    grad = jax.jit(jax.grad(lambda lp: L.policy_loss(lp, OLD, ADV, MASK)[0]))(jnp.asarray(new))
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in m.values())
    assert np.all(np.isfinite(np.asarray(grad))) and grad[1, 2] == 0


def test_gradient_through_logits_matches_finite_differences():
    B, T, V = 2, 3, 5
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(B, T, V))
        targets = rng.integers(0, V, size=(B, T))
        logp0, _ = L.token_logprobs_and_entropy(jnp.asarray(logits), jnp.asarray(targets))
        # Old log-probs offset so tokens sit in every regime (unclipped, clipped low/high, dual),
        # each away from a clipping kink where finite differences are undefined.
        offsets = np.array([[0.0, -0.4, 0.6], [0.1, -3.0, 0.5]])
        old = np.asarray(logp0) + offsets
        ref = np.asarray(logp0) - 0.3
        adv_B = np.array([0.7, -1.3])
        mask = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])

        def f(lg):
            logp, ent = L.token_logprobs_and_entropy(lg, jnp.asarray(targets))
            return L.policy_loss(logp, old, jnp.asarray(adv_B), mask, ref_logp_BT=ref,
                                 kl_coef=0.2, entropy_BT=ent, entropy_coef=0.05)[0]  # fmt: skip

        f = jax.jit(f)
        grad = np.asarray(jax.grad(f)(jnp.asarray(logits)))
        assert grad.dtype == np.float64
        h = 1e-6
        fd = np.zeros_like(logits)
        for idx in np.ndindex(logits.shape):
            e = np.zeros_like(logits)
            e[idx] = h
            fd[idx] = (float(f(logits + e)) - float(f(logits - e))) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
        assert np.abs(grad).max() > 1e-3  # not trivially zero


def test_jit_equals_eager():
    f = lambda *a: L.policy_loss(*a, ref_logp_BT=jnp.asarray(OLD), kl_coef=0.1)
    eager = f(NEW, OLD, ADV, MASK)
    jitted = jax.jit(f)(NEW, OLD, ADV, MASK)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_dual_clip_raises():
    with pytest.raises(ValueError, match="dual_clip_c"):
        L.policy_loss(NEW, OLD, ADV, MASK, dual_clip_c=0.5)
