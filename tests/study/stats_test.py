"""The study's statistics against hand-computed values, plus property tests.

Quantiles used below: z_0.975 = 1.959964, z_0.8 = 0.841621; t_0.975 for df 1, 2, 3, 4 is
12.706205, 4.302653, 3.182446, 2.776445.
"""

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.study import stats

NAN = math.nan


# t_{q,1} = tan(pi (q - 1/2)) and t_{q,2} = (2q - 1) / sqrt(2 q (1 - q)) in closed form; the
# rest are printed tables.
@pytest.mark.parametrize(
    "df,value",
    [
        (1, math.tan(math.pi * 0.475)),
        (2, 0.95 / math.sqrt(2 * 0.975 * 0.025)),
        (1, 12.706),
        (2, 4.303),
        (4, 2.776),
        (10, 2.228),
        (30, 2.042),
    ],
)
def test_t_quantile_matches_tables(df, value):
    assert stats._t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_wilson_7_of_20():
    # p = 0.35, z^2 = 3.841459, z^2/n = 0.192073.
    # center = (0.35 + 3.841459/40) / 1.192073 = 0.446036 / 1.192073 = 0.374170
    # half = 1.959964 / 1.192073 * sqrt(0.35*0.65/20 + 3.841459/1600)
    #      = 1.644166 * sqrt(0.011375 + 0.002401) = 1.644166 * 0.117371 = 0.192978
    ci = stats.proportion_ci(7, 20)
    assert ci.estimate == 0.35 and ci.n == 20
    assert (ci.low, ci.high) == pytest.approx((0.181192, 0.567146), abs=1e-5)


def test_wilson_at_the_edges():
    # 0/10: center = (z^2/20) / (1 + z^2/10) = 0.192073 / 1.384146 = 0.138767 = half.
    ci = stats.proportion_ci(0, 10)
    assert ci.estimate == 0 and ci.low == 0
    assert ci.high == pytest.approx(2 * 0.138767, abs=1e-5)
    ci = stats.proportion_ci(10, 10)
    assert ci.high == 1 and ci.low == pytest.approx(1 - 2 * 0.138767, abs=1e-5)


def test_mean_ci_four_values():
    # [1, 2, 3, 4]: mean 2.5, sd = sqrt(5/3) = 1.290994, se = 0.645497, df 3;
    # half = 3.182446 * 0.645497 = 2.054260.
    ci = stats.mean_ci([1, 2, 3, 4])
    assert ci.estimate == 2.5 and ci.n == 4
    assert (ci.low, ci.high) == pytest.approx((0.445740, 4.554260), abs=1e-5)
    # 50%: t_{0.75,3} = 0.764892, half = 0.764892 * 0.645497 = 0.493735.
    assert stats.mean_ci([1, 2, 3, 4], level=0.5).low == pytest.approx(2.006265, abs=1e-6)


def test_mean_ci_one_value_is_the_whole_line():
    ci = stats.mean_ci([0.3])
    assert (ci.estimate, ci.low, ci.high, ci.n) == (0.3, -math.inf, math.inf, 1)


BASE = [0.30, 0.25, 0.40, 0.35, 0.20]
CLEAN = [0.26, 0.22, 0.35, 0.33, 0.15]


def test_paired_difference_five_pairs():
    # d = clean - base = [-0.04, -0.03, -0.05, -0.02, -0.05], mean -0.038;
    # squared deviations (1e-6): 4, 64, 144, 324, 144 -> sum 680e-6, var 170e-6, sd 0.0130384,
    # se = 0.0130384 / sqrt(5) = 0.00583095, t = -0.038 / 0.00583095 = -6.516946, df 4;
    # half = 2.776445 * 0.00583095 = 0.0161893.
    eff = stats.paired_difference(BASE, CLEAN)
    assert eff.estimate == pytest.approx(-0.038)
    assert (eff.low, eff.high) == pytest.approx((-0.0541893, -0.0218107), abs=1e-6)
    assert eff.t_stat == pytest.approx(-6.516946, abs=1e-5)
    assert (eff.df, eff.n) == (4, 5)
    # Student t with 4 df in closed form: F(t) = 1/2 + 3/8 u (1 - t^2 / (12 (1 + t^2/4))) with
    # u = t / sqrt(1 + t^2/4): t^2 = 42.4706, u = 1.911984, F = 1/2 + 3/8 * 1.911984 * 0.695359
    # = 0.998568, so p = 2 (1 - F) = 0.002862.
    t = 6.516946
    cdf = 0.5 + 3 / 8 * t / math.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert eff.p_value == pytest.approx(2 * (1 - cdf), rel=1e-4)
    assert eff.p_value == pytest.approx(0.002862, abs=2e-6)
    assert eff.significant
    swapped = stats.paired_difference(CLEAN, BASE)
    assert swapped.estimate == pytest.approx(0.038) and swapped.p_value == eff.p_value


def test_paired_difference_degenerate_cases():
    one = stats.paired_difference([0.1], [0.3])
    assert math.isnan(one.p_value) and not one.significant and one.high == math.inf
    same = stats.paired_difference([0.0, 1.0, 2.0], [0.5, 1.5, 2.5])  # every d = 0.5
    assert same.p_value == 0.0 and same.significant
    zero = stats.paired_difference([0.1, 0.2], [0.1, 0.2])
    assert zero.p_value == 1.0 and not zero.significant


def test_paired_difference_by_cluster():
    # seed 0: [0.1, 0.3] -> 0.2; seed 1: [0.0, 0.2, 0.1] -> 0.1; seed 2: [0.3] -> 0.3.
    # Seed means [0.2, 0.1, 0.3]: mean 0.2, sd 0.1, se 0.057735, t = 3.464102, df 2;
    # half = 4.302653 * 0.057735 = 0.248414; Student t with 2 df: p = 1 - t / sqrt(2 + t^2)
    # = 1 - 3.464102 / 3.741657 = 0.074180.
    diffs = [0.1, 0.3, 0.0, 0.2, 0.1, 0.3]
    seeds = ["s0", "s0", "s1", "s1", "s1", "s2"]
    eff = stats.paired_difference_by_cluster(diffs, seeds)
    assert (eff.estimate, eff.n, eff.df) == (pytest.approx(0.2), 3, 2)
    assert (eff.low, eff.high) == pytest.approx((-0.048414, 0.448414), abs=1e-6)
    assert eff.p_value == pytest.approx(0.074180, abs=1e-6)
    assert not eff.significant
    # Treating the six steps as independent pairs claims significance the design lacks.
    naive = stats.paired_difference(np.zeros(6), diffs)
    assert naive.df == 5 and naive.significant


def test_bootstrap_is_deterministic_given_seed():
    x = np.random.default_rng(1).normal(size=40)
    a = stats.bootstrap_ci(x, np.mean, n_boot=300, seed=7)
    assert a == stats.bootstrap_ci(x, np.mean, n_boot=300, seed=7)
    assert a != stats.bootstrap_ci(x, np.mean, n_boot=300, seed=8)
    assert a.estimate == pytest.approx(x.mean()) and a.low < a.estimate < a.high and a.n == 40


def test_bootstrap_resamples_whole_groups():
    # Column 0 is the group id; group g has g + 1 rows. A resample is a union of whole groups,
    # so each id appears a multiple of (id + 1) times.
    ids = np.repeat(np.arange(5), np.arange(1, 6))
    values = np.stack([ids, np.arange(ids.size)], axis=1)

    def check(rows):
        counts = np.bincount(rows[:, 0].astype(int), minlength=5)
        assert all(c % (g + 1) == 0 for g, c in enumerate(counts))
        return float(rows[:, 1].mean())

    ci = stats.bootstrap_ci(values, check, n_boot=200, seed=0, groups=ids)
    assert ci.n == 5 and ci.low <= ci.high


def test_bootstrap_coverage_sanity():
    # The 95% percentile interval of the mean covers the true mean about 95% of the time.
    rng = np.random.default_rng(0)
    hits = [
        (ci := stats.bootstrap_ci(rng.normal(size=30), np.mean, n_boot=400, seed=i)).low
        < 0
        < ci.high
        for i in range(150)
    ]
    assert 0.85 <= np.mean(hits) <= 0.99


def test_bootstrap_non_finite_resamples(caplog):
    # E[A | recovered] of a resample without a recovered call is NaN: dropped, with a warning.
    values = np.array([[1.0, 1], [0.5, 0], [-0.5, 0], [0.2, 0], [0.1, 0]])

    def cond_mean(rows):
        sel = rows[rows[:, 1] == 1, 0]
        return float(sel.mean()) if sel.size else NAN

    with caplog.at_level(logging.WARNING):
        ci = stats.bootstrap_ci(values, cond_mean, n_boot=100, seed=0)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    assert "non-finite" in caplog.text
    with pytest.raises(ValueError, match="not finite on any"):
        stats.bootstrap_ci(values, lambda rows: NAN, n_boot=10)


def test_mde_normal_golden():
    # (1.959964 + 0.841621) * 1 / sqrt(16) = 2.801585 / 4 = 0.700396
    assert stats.minimum_detectable_effect(1.0, 16, method="normal") == pytest.approx(
        0.700396, abs=1e-6
    )
    # required pairs for effect 0.5 sd: (2.801585 / 0.5)^2 = 31.40 -> 32
    assert stats.required_pairs(0.5, 1.0, method="normal") == 32


def test_mde_noncentral_t():
    # Above the normal approximation at small n, converging to it at large n; at the MDE the
    # test rejects with 80% power (Monte Carlo, 20000 simulated designs, SE of the rate 0.003).
    mde = stats.minimum_detectable_effect(1.0, 10)
    assert mde == pytest.approx(0.996, abs=1e-3)  # G*Power's d_z for n = 10
    assert mde > stats.minimum_detectable_effect(1.0, 10, method="normal")
    big = stats.minimum_detectable_effect(1.0, 2000)
    assert big == pytest.approx(stats.minimum_detectable_effect(1.0, 2000, method="normal"), 2e-3)
    d = np.random.default_rng(0).normal(mde, 1.0, size=(20000, 10))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(10))
    assert np.mean(np.abs(t) > stats._t_quantile(0.975, 9)) == pytest.approx(0.8, abs=0.012)
    assert stats.paired_t_power(0.0, 1.0, 10) == pytest.approx(0.05)
    assert stats.paired_t_power(-mde, 1.0, 10) == pytest.approx(0.8)


@pytest.mark.parametrize("method", ["t", "normal"])
@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 40])
def test_required_pairs_inverts_mde(method, n):
    mde = stats.minimum_detectable_effect(0.07, n, alpha=0.05, power=0.8, method=method)
    assert stats.required_pairs(mde, 0.07, method=method) == n
    assert stats.required_pairs(mde * 1.05, 0.07, method=method) <= n


def test_band_over_seeds_with_nan():
    # step 0: [1, 3, 5] mean 3, sd 2, half = 4.302653 * 2 / sqrt(3) = 4.968275
    # step 1: [2, 6]    mean 4, sd 2.828427, half = 12.706205 * 2.828427 / sqrt(2) = 25.412409
    # step 2: [7]       mean 7, no band; step 3: no finite seed.
    curves = [[1, 2, NAN, NAN], [3, NAN, NAN, NAN], [5, 6, 7, NAN]]
    with np.errstate(all="raise"):
        band = stats.band_over_seeds(curves)
    np.testing.assert_array_equal(band.n, [3, 2, 1, 0])
    np.testing.assert_allclose(band.mean, [3, 4, 7, NAN])
    np.testing.assert_allclose(band.low, [3 - 4.968275, 4 - 25.412409, NAN, NAN], atol=1e-5)
    np.testing.assert_allclose(band.high, [3 + 4.968275, 4 + 25.412409, NAN, NAN], atol=1e-5)


@pytest.mark.parametrize(
    "curve,target,higher,expected",
    [
        ([0.1, 0.4, 0.5, 0.7], 0.5, True, 2),  # equality counts as reaching it
        ([0.6, 0.4], 0.5, True, 0),
        ([0.1, 0.2], 0.5, True, None),
        ([NAN, 0.6], 0.5, True, 1),
        ([0.4, 0.3, 0.1], 0.2, False, 2),  # a failure rate going down
    ],
)
def test_steps_to_target(curve, target, higher, expected):
    assert stats.steps_to_target(curve, target, higher) == expected


def test_steps_to_target_ci():
    same = [[0.0, 0.3, 0.6, 0.9]] * 3
    ci = stats.steps_to_target_ci(same, 0.5, n_boot=50)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (2, 2, 2, 3)
    # Mean curve [0, 0.233, 0.533, 0.733] reaches 0.5 at step 2. A resample of seed 2 alone
    # (prob 1/27 > 2.5%) never reaches it, one of seed 0 alone reaches it at step 1.
    mixed = [[0, 0.5, 1, 1], [0, 0.2, 0.6, 1], [0, 0, 0, 0.2]]
    ci = stats.steps_to_target_ci(mixed, 0.5, n_boot=2000, seed=0)
    assert (ci.estimate, ci.low, ci.high) == (2, 1, math.inf)
    assert ci == stats.steps_to_target_ci(mixed, 0.5, n_boot=2000, seed=0)


def test_describe():
    eff = {"estimate": -0.031, "low": -0.050, "high": -0.012, "level": 0.95, "p_value": 0.004}
    assert stats.describe(eff, "first-attempt failure rate") == (
        "SAAR lowers the first-attempt failure rate by 0.031 (95% CI 0.012 to 0.050, p = 0.004):"
        " significant."
    )
    assert stats.describe(stats.paired_difference(BASE, CLEAN), "failure rate") == (
        "SAAR lowers the failure rate by 0.038 (95% CI 0.022 to 0.054, p = 0.003): significant."
    )
    ci = stats.Interval(0.02, -0.01, 0.05, 0.9, 8)
    assert stats.describe(ci, "held-out accuracy", subject="CLEANER") == (
        "CLEANER raises the held-out accuracy by 0.020 (90% CI -0.010 to 0.050): not significant."
    )
    tiny = stats.PairedEffect(0.5, 0.4, 0.6, 0.975, 9, 12.0, 8, 1e-6)
    assert stats.describe(tiny, "reward", digits=1) == (
        "SAAR raises the reward by 0.5 (97.5% CI 0.4 to 0.6, p < 0.001): significant."
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: stats.proportion_ci(3, 0), "positive integer"),
        (lambda: stats.proportion_ci(5, 4), r"in \[0, n=4\]"),
        (lambda: stats.proportion_ci(1, 4, level=1.0), "strictly between 0 and 1"),
        (lambda: stats.mean_ci([]), "empty"),
        (lambda: stats.mean_ci([1, NAN]), "NaN"),
        (lambda: stats.mean_ci([1, 2], level=0), "strictly between"),
        (lambda: stats.paired_difference([1, 2], [1, 2, 3]), "pair up"),
        (lambda: stats.paired_difference_by_cluster([1, 2], [0]), "label each diff"),
        (lambda: stats.bootstrap_ci([], np.mean), "empty"),
        (lambda: stats.bootstrap_ci([1, 2], np.mean, groups=[0]), "label per row"),
        (lambda: stats.bootstrap_ci([1, 2], np.mean, n_boot=0), "n_boot"),
        (lambda: stats.bootstrap_ci([1, 2], np.mean, n_boot=2.5), "n_boot"),
        (lambda: stats.minimum_detectable_effect(1.0, 1), "n_pairs must be >= 2"),
        (lambda: stats.minimum_detectable_effect(0.0, 5), "sd_diff must be positive"),
        (lambda: stats.minimum_detectable_effect(1.0, 5, method="z"), "method"),
        (lambda: stats.minimum_detectable_effect(1.0, 5, power=1.0), "power"),
        (lambda: stats.paired_t_power(0.1, 1.0, 5, alpha=1.5), "alpha must lie"),
        (lambda: stats.required_pairs(0.0, 1.0), "nonzero"),
        (lambda: stats.band_over_seeds([1, 2]), "seeds x steps"),
        (lambda: stats.steps_to_target([], 0.5), "non-empty"),
        (lambda: stats.steps_to_target_ci([[1.0]], 0.5, n_boot=0), "n_boot"),
        (lambda: stats.describe({"estimate": 0.1}, "x"), "lacks"),
    ],
)
def test_input_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 100_000),
    frac=st.floats(0, 1),
    level=st.floats(0.5, 0.999),
)
def test_wilson_properties(n, frac, level):
    k = round(frac * n)
    ci = stats.proportion_ci(k, n, level)
    assert 0 <= ci.low <= ci.estimate <= ci.high <= 1
    wider = stats.proportion_ci(k, n, min(0.9999, level + 0.0005))
    assert wider.low <= ci.low + 1e-12 and wider.high >= ci.high - 1e-12


_PAIRS = st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=2, max_size=30)


@settings(max_examples=100, deadline=None)
@given(pairs=_PAIRS.filter(lambda p: len({round(b - a, 6) for a, b in p}) > 1))
def test_paired_difference_properties(pairs):
    a, b = map(np.array, zip(*pairs, strict=True))
    eff, back = stats.paired_difference(a, b), stats.paired_difference(b, a)
    assert eff.low <= eff.estimate <= eff.high
    assert back.estimate == pytest.approx(-eff.estimate, abs=1e-12)
    assert back.p_value == pytest.approx(eff.p_value)
    if abs(eff.p_value - 0.05) > 1e-9:  # the interval excludes 0 exactly when p < 1 - level
        assert eff.significant == (eff.p_value < 0.05)
