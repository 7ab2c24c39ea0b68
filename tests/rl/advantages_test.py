"""Advantage estimators: hand-computed golden values, properties, DAPO dynamic sampling."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.rl import advantages as adv

# Three groups of n=4: mixed symmetric, one success, no signal.
REWARDS = np.array([1, -1, -1, 1, 1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float32)
EPS = 1e-6
# Group 0: mean 0, sample std sqrt(4/3) = 1.1547005. Group 1: mean -0.5, deviations
# (1.5, -0.5, -0.5, -0.5), sum of squares 3, sample std sqrt(3/3) = 1. Group 2: all zero.
S0 = 1.0 / (np.sqrt(4.0 / 3.0) + EPS)
GRPO_GOLDEN = [S0, -S0, -S0, S0, 1.5 / (1 + EPS), -0.5 / (1 + EPS), -0.5 / (1 + EPS),
               -0.5 / (1 + EPS), 0, 0, 0, 0]  # fmt: skip
DRGRPO_GOLDEN = [1, -1, -1, 1, 1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]
# RLOO: r minus the mean of the other three; group 1: 1 - (-1) = 2, -1 - (-1/3) = -2/3.
RLOO_GOLDEN = [4 / 3, -4 / 3, -4 / 3, 4 / 3, 2, -2 / 3, -2 / 3, -2 / 3, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "estimator,golden",
    [("grpo", GRPO_GOLDEN), ("drgrpo", DRGRPO_GOLDEN), ("rloo", RLOO_GOLDEN)],
)
def test_golden(estimator, golden):
    out = adv.compute_advantages(REWARDS, group_size=4, estimator=estimator)
    assert out.dtype == np.float32 and out.shape == (12,)
    np.testing.assert_allclose(out, np.array(golden), rtol=1e-6, atol=1e-7)


def test_grpo_uses_sample_std_like_verl():
    # Population std would give 1/1 = 1 for group 0; verl (torch.std, unbiased) gives 0.866.
    out = adv.grpo_advantages(np.array([1.0, -1.0, -1.0, 1.0]), 4)
    np.testing.assert_allclose(out[0], np.sqrt(3.0) / 2.0, rtol=1e-5)


def test_singleton_groups_pass_rewards_through():
    r = np.array([0.5, -1.0, 2.0])
    for estimator in adv.ADVANTAGE_ESTIMATORS:
        np.testing.assert_allclose(adv.compute_advantages(r, 1, estimator), r)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="groups of 4"):
        adv.grpo_advantages(np.zeros(6), 4)
    with pytest.raises(ValueError, match="flat"):
        adv.grpo_advantages(np.zeros((2, 4)), 4)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        adv.compute_advantages(np.zeros(4), 4, "ppo")


@settings(max_examples=50, deadline=None)
# Rewards on a grid (as real rewards are: +-1, fractions of tests passed), so "all equal"
# is exact and not a matter of floating-point underflow.
@given(
    st.integers(2, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            hnp.arrays(np.float64, st.integers(1, 4).map(lambda g: g * n),
                       elements=st.integers(-12, 12).map(lambda k: k / 4)),
        )
    )
)  # fmt: skip
def test_properties(n_and_rewards):
    n, r = n_and_rewards
    grpo = adv.grpo_advantages(r, n).reshape(-1, n)
    dr = adv.drgrpo_advantages(r, n).reshape(-1, n)
    rloo = adv.rloo_advantages(r, n).reshape(-1, n)
    np.testing.assert_allclose(dr.sum(1), 0, atol=1e-4)
    np.testing.assert_allclose(rloo, dr * n / (n - 1), rtol=1e-5, atol=1e-5)
    std = r.reshape(-1, n).std(axis=1, ddof=1, keepdims=True)
    np.testing.assert_allclose(grpo * (std + 1e-6), dr, rtol=1e-4, atol=1e-5)
    flat = adv.zero_variance_groups(r, n)
    np.testing.assert_array_equal(flat, std[:, 0] == 0)
    assert np.all(grpo[flat] == 0)


def test_zero_variance_and_rows():
    mask = adv.zero_variance_groups(REWARDS, 4)
    np.testing.assert_array_equal(mask, [False, False, True])
    np.testing.assert_array_equal(adv.keep_group_rows(~mask, 4), np.arange(8))
    np.testing.assert_array_equal(adv.keep_group_rows([False, True], 2), [2, 3])


def test_dynamic_sampling_refills_to_target():
    state = adv.DynamicSamplingState(target_groups=3, group_size=2, max_rounds=3)
    # Round 1: groups (1,1) flat, (1,-1) kept, (-1,-1) flat.
    rows = state.add(np.array([1, 1, 1, -1, -1, -1.0]))
    np.testing.assert_array_equal(rows, [2, 3])
    assert (state.kept_groups, state.dropped_groups, state.full) == (1, 2, False)
    # Round 2: three informative groups but room for two: the first two are kept.
    rows = state.add(np.array([0, 1, 1, 0, 0.5, 0, 1, 1.0]))
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])
    assert state.full and state.kept_groups == 3 and not state.exhausted
