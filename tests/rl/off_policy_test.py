"""The off-policy correction (rl/off_policy.py) against hand-computed values, and the loss it
feeds (rl/loss.policy_loss with `is_weights_BT`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleaner_jax.rl import off_policy
from cleaner_jax.rl.loss import policy_loss
from cleaner_jax.rl.off_policy import (
    SPAN_DEEP,
    SPAN_SAMPLED,
    SPAN_SHALLOW,
    OffPolicyConfig,
    correct_sample,
)
from cleaner_jax.rl.packing import TrainSample

LN = math.log


def _sample(prox, mu, mask, kinds=None, valid=None):
    n = len(prox)
    return TrainSample(
        tokens=np.arange(n),
        loss_mask=np.asarray(mask, np.float32),
        logprobs=np.asarray(prox, np.float32),
        behaviour_logprobs=np.asarray(mu, np.float32),
        behaviour_mask=None if valid is None else np.asarray(valid, np.float32),
        span_kinds=np.asarray(kinds if kinds is not None else [SPAN_SAMPLED] * n, np.int8),
    )


def test_token_tis_caps_weights_at_c():
    # ratios π_prox/μ: 4, 1, 0.5 (and a masked token whose ratio would be huge)
    prox = [LN(0.8), LN(0.3), LN(0.1), LN(0.9)]
    mu = [LN(0.2), LN(0.3), LN(0.2), LN(1e-6)]
    c = correct_sample(prox, mu, [1, 1, 1, 0], OffPolicyConfig("tis", "token", cap=2.0))
    np.testing.assert_allclose(c.weights, [2.0, 1.0, 0.5, 1.0], rtol=1e-6)
    assert c.keep.all() and list(c.clipped) == [True, False, False, False]


def test_sequence_tis_multiplies_token_ratios():
    # Σ log ratios = log(1.5) + log(2) = log 3 -> every trained token weighs min(3, 5) = 3
    prox, mu = [LN(0.3), LN(0.4), 0.0], [LN(0.2), LN(0.2), -5.0]
    c = correct_sample(prox, mu, [1, 1, 0], OffPolicyConfig("tis", "sequence", cap=5.0))
    np.testing.assert_allclose(c.weights, [3.0, 3.0, 1.0], rtol=1e-5)
    c2 = correct_sample(prox, mu, [1, 1, 0], OffPolicyConfig("tis", "sequence", cap=2.0))
    np.testing.assert_allclose(c2.weights[:2], [2.0, 2.0], rtol=1e-6)
    assert c2.clipped[:2].all() and not c2.clipped[2]


def test_geometric_mis_rejects_a_whole_sequence_on_the_mean_log_ratio():
    # log ratios 0.03, -0.01, 0.01: mean 0.01 -> ρ = e^0.01 = 1.01005 > 1.01: all rejected
    d = np.array([0.03, -0.01, 0.01], np.float32)
    cfg = OffPolicyConfig("mis", "geometric", mask_low=0.99, mask_high=1.01)
    c = correct_sample(d, np.zeros(3), [1, 1, 1], cfg)
    assert not c.keep.any()
    # log ratios 0.03, -0.02, 0.01: mean 0.00667 -> ρ = 1.00669, kept, weight ρ on every token
    d2 = np.array([0.03, -0.02, 0.01], np.float32)
    c2 = correct_sample(d2, np.zeros(3), [1, 1, 1], cfg)
    assert c2.keep.all()
    np.testing.assert_allclose(c2.weights, [math.exp(0.02 / 3)] * 3, rtol=1e-5)


def test_token_mis_and_decoupled_reject_outside_bounds():
    prox, mu = [LN(0.9), LN(0.5), LN(0.1)], [LN(0.3), LN(0.5), LN(0.4)]  # ratios 3, 1, 0.25
    mis = correct_sample(prox, mu, [1, 1, 1], OffPolicyConfig("mis", "token"))
    assert list(mis.keep) == [False, True, False]
    np.testing.assert_allclose(mis.weights, [1.0, 1.0, 1.0], rtol=1e-6)  # kept: ρ = 1
    dec = correct_sample(prox, mu, [1, 1, 1], OffPolicyConfig("decoupled", cap=2.0))
    assert list(dec.keep) == [False, True, True]
    np.testing.assert_allclose(dec.weights[1:], [1.0, 0.25], rtol=1e-5)


def test_apply_removes_rejected_tokens_from_the_mask_and_reports_per_span():
    s = _sample(
        prox=[0.0, LN(0.9), LN(0.5), LN(0.4)],
        mu=[0.0, LN(0.3), LN(0.5), LN(0.4)],
        mask=[0, 1, 1, 1],
        kinds=[0, SPAN_SAMPLED, SPAN_SHALLOW, SPAN_DEEP],
    )
    m = off_policy.apply([s], OffPolicyConfig("mis", "token"))
    assert list(s.loss_mask) == [0, 0, 1, 1]
    assert m["off_policy/sampled/rejected_frac"] == 1.0
    assert m["off_policy/spliced_shallow/rejected_frac"] == 0.0
    assert m["off_policy/spliced_deep/log_ratio_p50"] == pytest.approx(0.0, abs=1e-7)
    assert m["off_policy/sampled/log_ratio_p50"] == pytest.approx(math.log(3), rel=1e-5)
    assert m["off_policy/sampled/kl_k1"] == pytest.approx(-math.log(3), rel=1e-5)
    assert m["off_policy/sampled/kl_k3"] == pytest.approx(3 - 1 - math.log(3), rel=1e-5)
    assert m["off_policy/rejected_frac"] == pytest.approx(1 / 3)
    assert m["off_policy/samples_fully_rejected"] == 0.0


def test_tokens_without_mu_are_refused():
    s = _sample([LN(0.5)] * 3, [LN(0.5)] * 3, [0, 1, 1], valid=[0, 1, 0])
    with pytest.raises(ValueError, match="1 trained tokens have none"):
        off_policy.apply([s], OffPolicyConfig("tis"))
    off_policy.apply([s], OffPolicyConfig("none"))  # nothing to weigh: no refusal


def test_bounds_that_reject_everything_warn_with_the_count(caplog):
    s = _sample([0.0, LN(0.9), LN(0.9)], [0.0, LN(0.1), LN(0.1)], [0, 1, 1])
    m = off_policy.apply([s], OffPolicyConfig("mis", "token"))
    assert m["off_policy/rejected_all"] == 1.0 and m["off_policy/samples_fully_rejected"] == 1.0
    assert "rejected all 2 trained tokens" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="is"), "choose one of"),
        (dict(mode="tis", level="batch"), "choose one of"),
        (dict(mode="decoupled", level="sequence"), "each token"),
        (dict(mode="tis", cap=0.5), ">= 1"),
        (dict(mode="mis", mask_low=1.1, mask_high=2.0), "must hold 1"),
        (dict(mode="mis", mask_low=1.0, mask_high=1.0), "must hold 1"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OffPolicyConfig(**kwargs)


def _loss_and_grad(logp, old, adv, mask, weights, num_tokens=None):
    def f(lp):
        return policy_loss(lp, old, adv, mask, is_weights_BT=weights, num_tokens=num_tokens)[0]

    return jax.value_and_grad(f)(logp)


@pytest.mark.parametrize("name", sorted(off_policy.PRESETS))
def test_mu_equal_to_prox_gives_the_uncorrected_loss_and_gradients(name):
    rng = np.random.default_rng(0)
    prox = np.log(rng.uniform(0.05, 0.95, (2, 6))).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], np.float32)
    logp = jnp.asarray(prox + rng.normal(0, 0.2, prox.shape).astype(np.float32))
    adv = jnp.asarray([1.0, -0.5])
    cfg = OffPolicyConfig(*off_policy.PRESETS[name])
    samples = [_sample(prox[i], prox[i], mask[i]) for i in range(2)]
    off_policy.apply(samples, cfg)
    w = np.stack([s.is_weights for s in samples])
    new_mask = np.stack([s.loss_mask for s in samples])
    np.testing.assert_array_equal(new_mask, mask)
    np.testing.assert_array_equal(w, np.ones_like(w))
    base = _loss_and_grad(logp, prox, adv, mask, None)
    corrected = _loss_and_grad(logp, prox, adv, new_mask, jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(base[0]), np.asarray(corrected[0]))
    np.testing.assert_array_equal(np.asarray(base[1]), np.asarray(corrected[1]))


def test_weighted_loss_hand_values_and_denominator():
    # Two trained tokens at ratio r = 1 (logp == old) and A = 1: each token's surrogate is -1.
    # Weights 2 and 0.5, one token rejected by the mask: loss = -(2 + 0.5) / 2 kept tokens.
    logp = jnp.zeros((1, 3))
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    w = jnp.asarray([[2.0, 0.5, 7.0]])
    loss, grad = _loss_and_grad(logp, jnp.zeros((1, 3)), jnp.asarray([1.0]), mask, w)
    assert float(loss) == pytest.approx(-1.25)
    # d/dlogp of -A w r / N at r = 1 (inside the clip range): -w / N; the rejected token: 0.
    np.testing.assert_allclose(np.asarray(grad), [[-1.0, -0.25, 0.0]], rtol=1e-6)
