"""The study's power plan (study/design.py): golden values computed by hand, scipy only where the
exact noncentral t is needed."""

import json
import math

import pytest
from scipy import stats as sps

from cleaner_jax.study import design

Z = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8} = 2.80158522


def _t_power(effect, sd, n, alpha=0.05):
    """Two-sided paired t power from scipy's noncentral t (independent of study.stats)."""
    df, nc = n - 1, effect / sd * math.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)


def test_the_full_demo_design_by_hand():
    # p = 0.25, m = 4 prompts x 8 = 32, 6 steps, 3 seeds (the full demo's sizes):
    # 2 p (1 - p) / m = 2 * 0.25 * 0.75 / 32 = 3/256  -> sd_step = sqrt(3) / 16 = 0.1082532
    # sd_seed = sqrt(3/256 / 6) = sqrt(1/512) = 0.0441942
    # normal MDE = Z * sd_seed / sqrt(3) = 2.8015852 * 0.0441942 / 1.7320508 = 0.0714839
    d = design.plan(0.25, 32, 6, 3)
    assert d["sd_step"] == pytest.approx(math.sqrt(3) / 16, rel=1e-12)
    assert d["sd_seed"] == pytest.approx(1 / math.sqrt(512), rel=1e-12)
    assert d["mde_normal"] == pytest.approx(0.0714839, abs=1e-7)
    # Exact t (df 2): scipy's noncentral t gives power 0.8 at the MDE, about 3.26 sd_seed
    # (the normal approximation's 1.62 sd_seed is far too optimistic at 3 seeds).
    assert _t_power(d["mde"], d["sd_seed"], 3) == pytest.approx(0.8, abs=1e-9)
    assert d["mde"] / d["sd_seed"] == pytest.approx(3.26, abs=0.01)
    assert d["mde_reason"] is None
    # Seeds for 0.05: normal (Z * sd_seed / 0.05)^2 = 2.4763^2 = 6.13 -> 7; exact t needs more.
    # Seeds for 0.02: (Z * sd_seed / 0.02)^2 = 6.1907^2 = 38.33 -> 39; exact t needs more.
    assert (Z * d["sd_seed"] / 0.05) ** 2 == pytest.approx(6.132, abs=1e-3)
    assert (Z * d["sd_seed"] / 0.02) ** 2 == pytest.approx(38.325, abs=1e-3)
    needed = d["required_pairs"]
    assert set(needed) == {"0.02", "0.05"}
    for effect, n in needed.items():
        # The fewest seeds whose exact power reaches 0.8.
        assert _t_power(float(effect), d["sd_seed"], n) >= 0.8
        assert _t_power(float(effect), d["sd_seed"], n - 1) < 0.8
    assert needed == {"0.02": 41, "0.05": 9}
    assert d["assumptions"] and any("approximation" in a for a in d["assumptions"])
    json.dumps(d, allow_nan=False)  # design.json is plain JSON


def test_a_second_design_by_hand():
    # p = 0.5, m = 8, 2 steps, 4 seeds: 2 * 0.25 / 8 = 1/16 -> sd_step = 0.25,
    # sd_seed = 0.25 / sqrt(2) = 0.1767767, normal MDE = 2.8015852 * 0.1767767 / 2 = 0.2476275
    d = design.plan(0.5, 8, 2, 4)
    assert d["sd_step"] == pytest.approx(0.25, rel=1e-12)
    assert d["sd_seed"] == pytest.approx(0.1767767, abs=1e-7)
    assert d["mde_normal"] == pytest.approx(0.2476275, abs=1e-7)
    assert _t_power(d["mde"], d["sd_seed"], 4) == pytest.approx(0.8, abs=1e-9)


def test_one_seed_has_no_mde_but_says_why():
    # normal MDE with one pair: Z * sd_seed = 2.8015852 * 0.0441942 = 0.1238137
    d = design.plan(0.25, 32, 6, 1)
    assert d["mde"] is None and "at least 2" in d["mde_reason"]
    assert d["mde_normal"] == pytest.approx(0.1238137, abs=1e-7)
    assert d["required_pairs"] == {"0.02": 41, "0.05": 9}  # the design's needs do not change
    assert "no minimum detectable effect" in design.describe(d)


@pytest.mark.parametrize("p", [0.0, 1.0, float("nan")])
def test_a_rate_without_variance_has_no_mde(p):
    d = design.plan(p, 32, 6, 3)
    assert d["mde"] is None and d["mde_normal"] is None and d["required_pairs"] is None
    assert d["mde_reason"]


@pytest.mark.parametrize("args", [(1.5, 32, 6, 3), (0.2, 0, 6, 3), (0.2, 32, 0, 3)])
def test_bad_inputs_are_refused(args):
    with pytest.raises(ValueError):
        design.plan(*args)


def test_describe_states_the_mde_and_the_seeds_needed():
    line = design.describe(design.plan(0.25, 32, 6, 3))
    assert "0.144" in line and "0.071" in line and "0.05 needs 9 seeds" in line
    assert "cleaner - baseline" in line


def test_the_compared_arms_are_named():
    """The correction mode compares correction with cleaner; the effect and the log line say so."""
    d = design.plan(0.25, 32, 6, 3, comparison=("correction", "cleaner"))
    assert d["effect"] == "first-attempt tool failure rate, correction - cleaner"
    assert "(correction - cleaner)" in design.describe(d)
    assert d["mde"] == design.plan(0.25, 32, 6, 3)["mde"]
    with pytest.raises(ValueError, match="two arms"):
        design.plan(0.25, 32, 6, 3, comparison=("cleaner", "cleaner"))
