"""pass@k: Chen et al.'s unbiased estimator against hand-computed values and brute force."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleaner_jax.rl.passk import mean_pass_at_k, pass_at_k, valid_ks


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (16, 0, 1, 0.0),
        (16, 16, 16, 1.0),
        (16, 4, 1, 0.25),  # pass@1 = c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (16, 1, 8, 0.5),  # 1 - C(15,8)/C(16,8) = 1 - 8/16
        (10, 3, 4, 1 - 35 / 210),  # C(7,4)=35, C(10,4)=210
        (8, 5, 4, 1.0),  # n - c = 3 < k: every 4-subset holds a correct sample
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_equals_subset_enumeration(nck):
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert len(subsets) == math.comb(n, k)


def test_mean_over_problems_and_valid_ks():
    correct = [[True, False, False, False], [True, True, False, False]]
    out = mean_pass_at_k(correct, ks=(1, 2, 4, 8, 16))
    assert list(out) == [1, 2, 4]  # k > n dropped
    assert out[1] == pytest.approx((0.25 + 0.5) / 2)
    assert out[2] == pytest.approx((0.5 + (1 - 1 / 6)) / 2)
    assert out[4] == 1.0
    assert valid_ks(3) == [1, 2]


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_rejects_ragged_sample_counts():
    with pytest.raises(ValueError, match="different sample counts"):
        mean_pass_at_k([[True], [True, False]])
