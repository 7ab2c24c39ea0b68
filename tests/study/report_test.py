"""The study report from hand-written metrics and summaries: every number checked by hand."""

import json
import math
import os

import numpy as np
import pytest

from cleaner_jax.study import plots, report, stats


def _write(run_dir, rows):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_report_tables_and_plots(tmp_path):
    base = [
        {"step": 0, "val/reward/acc": 0.25},
        {"step": 1, "saar/first_attempt_failure_rate": 0.4, "credit/adv_recovered": -0.2},
        {"step": 2, "saar/first_attempt_failure_rate": 0.2, "val/reward/acc": 0.5},
    ]
    clean = [
        {"step": 0, "val/reward/acc": 0.25},
        {"step": 1, "saar/first_attempt_failure_rate": 0.3, "saar/shallow_sum": 2},
        {"step": 2, "saar/first_attempt_failure_rate": 0.1, "val/reward/acc": 0.75},
        {"step": 3, "credit/adv_recovered": 0.5, "saar/deep_sum": 1},
    ]
    runs = {"baseline_seed0": str(tmp_path / "b"), "cleaner_seed0": str(tmp_path / "c")}
    _write(runs["baseline_seed0"], base)
    _write(runs["cleaner_seed0"], clean)
    path = report.write_report(
        str(tmp_path), runs, timings={"sft": 1.5}, corpus_stats={"direct": 2}, mode="quick"
    )
    text = open(path).read()
    # failure rate mean over steps > 0, last, ..., final held-out acc, steps to 0.5, shallow, deep
    assert "| baseline_seed0 | 0.300 | 0.200 |" in text
    assert "| cleaner_seed0 | 0.200 | 0.100 |" in text
    assert "steps to baseline's final acc (0.500)" in text
    assert "| 0.750 | 2 | 2 | 1 |" in text
    # Arms with one seed: values without a spread, steps to 0.5 without an interval.
    assert "| baseline | 1 | 0.300 (one seed) | n/a | 0.500 (one seed) | - |" in text
    assert "| cleaner | 1 | 0.200 (one seed) |" in text
    assert "| baseline | 1 | 2 | one seed, no interval |" in text
    assert "| cleaner | 1 | 2 | one seed, no interval |" in text
    assert "seed0: -0.100; mean -0.100. (one seed, no interval.)" in text
    # Credit: a step without the metric is skipped, not counted as 0 (E[A | recovered] column).
    section = text.split("## Credit on failed calls")[1].split("## Wall time")[0]
    base_row = next(line for line in section.splitlines() if line.startswith("| baseline_seed0"))
    assert base_row.split(" | ")[6] == "-0.200" and "nan" in base_row
    assert "| sft | 1.5 |" in text
    for png in ("saar_first_attempt_failure_rate.png", "credit_adv_recovered.png"):
        assert os.path.getsize(tmp_path / png) > 1000


def test_report_states_the_premise_and_the_effect_interval_over_seeds(tmp_path):
    """Two seeds: per-seed mean differences -0.1 and -0.2 (cleaner - baseline); over seeds mean
    -0.15, sd 0.0707, se 0.05, t = -3 with 1 df: half-width 12.706 * 0.05 = 0.635, two-sided
    p = 1 - 2 atan(3) / pi = 0.205."""
    rates = {
        "baseline_seed0": [0.4, 0.3],
        "cleaner_seed0": [0.3, 0.2],
        "baseline_seed1": [0.5, 0.3],
        "cleaner_seed1": [0.2, 0.2],
    }
    runs = {}
    for name, (r1, r2) in rates.items():
        runs[name] = str(tmp_path / name)
        _write(
            runs[name],
            [
                {"step": 0, "val/reward/acc": 0.5},
                {"step": 1, "saar/first_attempt_failure_rate": r1},
                {"step": 2, "saar/first_attempt_failure_rate": r2, "val/reward/acc": 0.5},
            ],
        )
    premise = {
        "adv_recovered_ci": {"estimate": -0.106, "low": -0.241, "high": 0.016, "groups": 64},
        "premise_holds": False,
        "prompts": 64,
        "n": 8,
        "accuracy": 0.4,
        "first_call_failure_rate": 0.262,
        "recovery_rate": 0.791,
        "acc_clean": 0.452,
        "acc_recovered": 0.321,
        "acc_unrecovered": 0.0,
    }
    path = report.write_report(
        str(tmp_path), runs, timings={}, corpus_stats={}, mode="full", premise=premise
    )
    text = open(path).read()
    assert "E[A | recovered] = -0.106 (95% CI -0.241 to 0.016, 64 prompt groups): the premise " \
        "does not hold" in text  # fmt: skip
    assert "accuracy clean / recovered / unrecovered 0.452 / 0.321 / 0.000" in text
    assert "seed0: -0.100, seed1: -0.200; mean -0.150." in text
    assert (
        "mean -0.150. Over 2 seeds: SAAR lowers the first-attempt failure rate by 0.150 (95% CI "
        "-0.485 to 0.785, p = 0.205): not significant."
    ) in text


def _study(tmp_path):
    """3 seeds x 3 arms, steps 0-4; held-out accuracy at steps 0, 2, 4; the switch arm turns
    SAAR on at step 3. First-attempt failure rates (steps 1-4): baseline 0.4 throughout;
    cleaner - baseline per seed -0.1 (as -0.05, -0.15, -0.05, -0.15), -0.2, -0.3; switch equal
    to the baseline before step 3, then -0.1, -0.2, -0.15."""
    cleaner = {0: [0.35, 0.25, 0.35, 0.25], 1: [0.2] * 4, 2: [0.1] * 4}
    switch = {0: 0.3, 1: 0.2, 2: 0.25}
    final_acc = {
        "baseline": [0.4, 0.5, 0.6],
        "cleaner": [0.5, 0.7, 0.6],
        "switch": [0.45, 0.55, 0.65],
    }
    mid_acc = {"baseline": [0.3] * 3, "cleaner": [0.5, 0.6, 0.7], "switch": [0.3] * 3}
    runs = {}
    for seed in range(3):
        for arm in ("baseline", "cleaner", "switch"):
            rows = [{"step": 0, "val/reward/acc": 0.2}]
            for step in range(1, 5):
                rate = {
                    "baseline": 0.4,
                    "cleaner": cleaner[seed][step - 1],
                    "switch": 0.4 if step < 3 else switch[seed],
                }[arm]
                row = {"step": step, "saar/first_attempt_failure_rate": rate}
                row |= {"saar/trajectories": 4.0, "saar/failure_type/NameError": 2.0 * rate}
                row["saar/final_tool_failures_per_traj"] = 0.1 * step
                if arm == "switch":
                    row["saar/active"] = float(step >= 3)
                if step in (2, 4):
                    row["val/reward/acc"] = (mid_acc if step == 2 else final_acc)[arm][seed]
                rows.append(row)
            name = f"{arm}_seed{seed}"
            runs[name] = str(tmp_path / name)
            _write(runs[name], rows)
    return runs


_DESIGN = {
    "mde": 0.25,
    "mde_normal": 0.12,
    "sd_seed": 0.1,
    "power": 0.8,
    "alpha": 0.05,
    "seeds": 3,
    "steps": 4,
    "required_pairs": {"0.1": 9},
    "assumptions": ["seed means of the paired difference are normal"],
}


def _summary(p_off, p_on, k4_off, k4_on, fails_off, fails_on):
    mode = lambda p, k4, fails: {
        "problems": 4,
        "n": 4,
        "pass@k": {"1": p, "4": k4},
        "pass@1": p,
        "rollout_wall_s": 1.0,
        "tool_stats": {"final_tool_failures_per_traj": fails},
    }
    return {
        "modes": {"off": mode(p_off, k4_off, fails_off), "on": mode(p_on, k4_on, fails_on)},
        "saar_overhead": {"total_overhead": 0.25, "per_problem_overhead_median": 0.2},
    }


def _records(correct):
    return [{"id": f"p{i}", "num_correct": c, "samples": [{}] * 4} for i, c in enumerate(correct)]


def test_report_claims_design_and_evals_three_seeds_three_arms(tmp_path):
    runs = _study(tmp_path)
    evals = {
        "sft": _summary(0.25, 0.3125, 0.5, 0.5, 1.0, 0.5),
        "cleaner_seed0": _summary(0.5, 0.625, 0.75, 0.875, 0.5, 0.25)
        | {"records": {"off": _records([1, 2, 3, 2]), "on": _records([2, 3, 3, 2])}},
    }
    path = report.write_report(
        str(tmp_path),
        runs,
        timings={},
        corpus_stats={},
        mode="full",
        design=_DESIGN,
        evals=evals,
    )
    text = open(path).read()
    # Per run and per arm.
    assert "| switch_seed0 | 0.350 | 0.300 |" in text
    assert "| baseline | 3 | 0.400 ± 0.000 |" in text
    assert "| switch | 3 | 0.325 ± 0.025 | 0.250 ± 0.000 | 0.550 ± 0.100 | 3 |" in text
    # Steps to the baseline's final accuracy 0.5: the cleaner mean curve reaches it at step 2 in
    # every resample (each seed is >= 0.5 there); the baseline's and the switch arm's at step 4,
    # and resamples of mostly-low seeds never reach it.
    assert "## Steps to the baseline's final held-out accuracy (0.500)" in text
    assert "| baseline | 3 | 4 | 4 to not reached |" in text
    assert "| cleaner | 3 | 2 | 2 to 2 |" in text
    assert "| switch | 3 | 4 | 4 to not reached |" in text
    # Design in words.
    assert (
        "The design can detect a change of 0.250 in the first-attempt failure rate with 80% "
        "power (two-sided alpha = 0.05, 3 seeds, 4 steps per run)."
    ) in text
    assert "a change of 0.1 needs 9" in text and "| `sd_seed` | 0.1 |" in text
    # (a) per-seed means -0.1, -0.2, -0.3: mean -0.2, sd 0.1, se 0.0577, t = -3.464 (2 df):
    # half-width 4.302653 * 0.0577 = 0.248, p = 1 - 3.464 / sqrt(14) = 0.074. Below the MDE.
    assert "seed0: -0.100, seed1: -0.200, seed2: -0.300; mean -0.200." in text
    assert (
        "Over 3 seeds: SAAR lowers the first-attempt failure rate by 0.200 (95% CI -0.048 to "
        "0.448, p = 0.074): not significant. The effect is below what the design can detect "
        "(minimum detectable effect 0.250)"
    ) in text
    # (b) final accuracy cleaner - baseline 0.1, 0.2, 0.0: t = 1.732, p = 1 - 1.732 / sqrt(5).
    assert (
        "SAAR raises the final held-out accuracy by 0.100 (95% CI -0.148 to 0.348, "
        "p = 0.225): not significant."
    ) in text
    # (c) after the switch -0.1, -0.2, -0.15: mean -0.15, se 0.05 / sqrt(3), t = -5.196,
    # half-width 0.124, p = 1 - 5.196 / sqrt(29) = 0.035; before it the arms are equal.
    assert (
        "Switching SAAR on lowers the first-attempt failure rate after the switch by 0.150 "
        "(95% CI 0.026 to 0.274, p = 0.035): significant. Before the switch: "
        "mean +0.000."
    ) in text
    # (d) pass@1 per problem off 0.25, 0.5, 0.75, 0.5 and on 0.5, 0.75, 0.75, 0.5.
    off_ci = stats.bootstrap_ci([0.25, 0.5, 0.75, 0.5], np.mean)
    on_ci = stats.bootstrap_ci([0.5, 0.75, 0.75, 0.5], np.mean)
    assert (
        f"| cleaner_seed0 | 4 x 4 | 0.500 [{off_ci.low:.3f}, {off_ci.high:.3f}] | "
        f"0.625 [{on_ci.low:.3f}, {on_ci.high:.3f}] | 0.750 / 0.875 | 0.500 / 0.250 | "
        "+25.0% (median per problem +20.0%) |"
    ) in text
    assert "| sft | 4 x 4 | 0.250 (per-problem records not given) | 0.312 (per-problem" in text
    diff_ci = stats.bootstrap_ci([0.25, 0.25, 0.0, 0.0], np.mean)
    assert (
        "bootstrap over 4 problems: "
        f"Test-time SAAR raises the pass@1 (cleaner_seed0) by 0.125 (95% CI "
        f"{diff_ci.low:.3f} to {diff_ci.high:.3f})"
    ) in text
    assert "**(d) Test-time SAAR, sft** (pass@1 on - off, paired by problem): +0.062; " \
        "per-problem records not given, no interval." in text  # fmt: skip
    for png in (
        "saar_first_attempt_failure_rate.png",
        "saar_final_tool_failures_per_traj.png",
        "saar_tool_failures_per_traj.png",
        "val_reward_acc.png",
    ):
        assert os.path.getsize(tmp_path / png) > 1000
        assert f"]({png})" in text
    assert not os.path.exists(tmp_path / "credit_adv_recovered.png")  # no run logged it


def test_report_survives_nan_missing_keys_and_partial_inputs(tmp_path):
    """NaN held-out accuracy, a switch arm that never switched, a one-mode evaluation and a
    design with only alpha: every section still renders and says what is missing."""
    runs = {}
    for name, acc in (("baseline_seed0", math.nan), ("switch_seed0", 0.5)):
        runs[name] = str(tmp_path / name)
        _write(runs[name], [{"step": 0}, {"step": 1, "val/reward/acc": acc}])
    evals = {"sft": {"modes": {"on": {"pass@k": {"1": 0.5}, "problems": 2, "n": 1}}}}
    path = report.write_report(
        str(tmp_path),
        runs,
        timings={},
        corpus_stats={},
        mode="quick",
        design={
            "alpha": 0.05,
            "mde": None,
            "mde_reason": "1 seed(s): a paired t-test over seeds needs at least 2",
        },
        evals=evals,
    )
    text = open(path).read()
    assert "No baseline held-out accuracy was logged: no target." in text
    assert "The design states no minimum detectable effect: 1 seed(s): a paired t-test" in text
    assert "| sft | 2 x 1 | n/a | 0.500 (per-problem records not given) |" in text
    assert "n/a (needs both modes)" in text
    assert "(c) Switching SAAR on mid-training**: no step logged saar/active = 1." in text
    assert "(a) SAAR lowers the first-attempt failure rate** (cleaner - baseline, paired by " \
        "seed and step): not tested" in text  # fmt: skip
    assert os.path.getsize(tmp_path / "val_reward_acc.png") > 1000


def _correction_study(tmp_path):
    """2 seeds x arms cleaner and correction (the correction mode: no baseline arm). Failure
    rates at steps 1, 2: cleaner 0.4, 0.2 (seed0) and 0.3, 0.1 (seed1): per-seed means 0.3 and
    0.2; correction 0.3, 0.1 and 0.3, 0.1: 0.2 and 0.2. Final held-out accuracy cleaner 0.5, 0.6,
    correction 0.6, 0.6. Only the correction arm logs off_policy/* (the cleaner arm trains
    against the sampler's log-probs): seed0 clips 2 of 100 sampled tokens and 1 of 10 shallow
    spliced ones at step 1, 0 of 100 at step 2; seed1 2 of 200 at step 1 and rejects none."""
    rates = {
        "cleaner": {0: (0.4, 0.2), 1: (0.3, 0.1)},
        "correction": {0: (0.3, 0.1), 1: (0.3, 0.1)},
    }
    acc = {"cleaner": (0.5, 0.6), "correction": (0.6, 0.6)}
    spans = {
        (0, 1): {"sampled": (100, 0.02, -0.01), "spliced_shallow": (10, 0.1, 0.05)},
        (0, 2): {"sampled": (100, 0.0, 0.01)},
        (1, 1): {"sampled": (200, 0.01, 0.0)},
    }
    runs = {}
    for seed in (0, 1):
        for arm in ("cleaner", "correction"):
            rows = [{"step": 0, "val/reward/acc": 0.4}]
            for step in (1, 2):
                row = {"step": step, "saar/first_attempt_failure_rate": rates[arm][seed][step - 1]}
                if step == 2:
                    row["val/reward/acc"] = acc[arm][seed]
                if arm == "correction":
                    row |= {"train/is_weight_mean": 0.99, "off_policy/rejected_frac": 0.0}
                    for span, (n, clipped, p50) in spans.get((seed, step), {}).items():
                        p = f"off_policy/{span}"
                        row |= {f"{p}/tokens": n, f"{p}/clipped_frac": clipped}
                        row |= {f"{p}/rejected_frac": 0.0, f"{p}/samples_fully_rejected": 0}
                        row |= {f"{p}/log_ratio_p5": p50 - 0.1, f"{p}/log_ratio_p50": p50}
                        row |= {f"{p}/log_ratio_p95": p50 + 0.1, f"{p}/log_ratio_abs_max": 0.5}
                        row |= {f"{p}/kl_k1": 0.001, f"{p}/kl_k3": 0.002}
                rows.append(row)
            runs[f"{arm}_seed{seed}"] = str(tmp_path / f"{arm}_seed{seed}")
            _write(runs[f"{arm}_seed{seed}"], rows)
    return runs


def test_correction_mode_compares_with_the_cleaner_arm(tmp_path):
    runs = _correction_study(tmp_path)
    timings = {"grpo/cleaner_seed0": 100.0, "grpo/cleaner_seed1": 120.0}
    timings |= {"grpo/correction_seed0": 150.0, "grpo/correction_seed1": 170.0}
    evals = {"correction_seed0": _summary(0.5, 0.625, 0.75, 0.875, 0.5, 0.25)}
    evals["correction_seed0"]["records"] = {"off": _records([1, 2, 3, 2])}
    path = report.write_report(
        str(tmp_path), runs, timings=timings, corpus_stats={}, mode="correction", evals=evals
    )
    text = open(path).read()
    assert "SAAR on (cleaner), SAAR on with the off-policy correction (correction)" in text
    # The target is the cleaner arm's mean final accuracy (0.55), not a baseline's.
    assert "## Steps to the cleaner arm's final held-out accuracy (0.550)" in text
    assert "steps to cleaner arm's final acc (0.550)" in text
    # (a) correction - cleaner per seed: -0.1 and 0.0; mean -0.05, sd 0.0707, se 0.05, t = -1
    # with 1 df: half-width 12.706 * 0.05 = 0.635, p = 1 - 2 atan(1) / pi = 0.5.
    assert "## Claims (treatment - cleaner, 95% intervals, seeds as the units)" in text
    assert (
        "**(a) First-attempt failure rate, correction vs cleaner** (correction - cleaner, paired "
        "by seed and step): per-seed mean differences seed0: -0.100, seed1: +0.000; mean -0.050. "
        "Over 2 seeds: the correction lowers the first-attempt failure rate by 0.050 (95% CI "
        "-0.585 to 0.685, p = 0.500): not significant."
    ) in text
    # (b) final accuracy correction - cleaner: +0.1, 0.0.
    assert "seed0: +0.100, seed1: +0.000; mean +0.050. Over 2 seeds: the correction raises" in text
    assert "(a) SAAR lowers" not in text and "baseline" not in text.split("## Claims")[1]
    # Key table: cleaner failure rate 0.3, 0.2 -> 0.25 +- 0.635; accuracy 0.5, 0.6 -> 0.55 +-
    # 0.635; correction failure rate 0.2, 0.2 (no spread: a zero-width interval).
    key = text.split("## Arms at a glance")[1].split("\n## ")[0]
    assert "| cleaner | 2 | 0.250 [-0.385, 0.885] | 0.550 [-0.085, 1.185] | n/a | not measured " \
        "| not measured | 110 s a run (2 runs, 220 s in all) |" in key  # fmt: skip
    # Clipped: 2 + 1 + 0 + 2 of 410 tokens = 0.0122; seed0 3 / 210 = 0.0143, seed1 2 / 200.
    off_ci = stats.bootstrap_ci([0.25, 0.5, 0.75, 0.5], np.mean)
    assert (
        "| correction | 2 | 0.200 [0.200, 0.200] | 0.600 [0.600, 0.600] | 0.500 "
        f"[{off_ci.low:.3f}, {off_ci.high:.3f}] (correction_seed0) | 0.0122 (seeds 0.0100 to "
        "0.0143) | 0.0000 (seeds 0.0000 to 0.0000) | 160 s a run (2 runs, 320 s in all) |"
    ) in key
    # Per span: sampled 4 of 400 clipped; its p50 token-weighted over steps
    # (-0.01 * 100 + 0.01 * 100 + 0 * 200) / 400 = 0; shallow 1 of 10.
    section = text.split("## Off-policy correction")[1].split("\n## ")[0]
    assert "| correction | sampled | 400 | 0.0100 | 0.0000 | -1.00e-01 / +0.00e+00 / " \
        "+1.00e-01 | 5.00e-01 | 1.00e-03 / 2.00e-03 | 0 |" in section  # fmt: skip
    assert "| correction | spliced_shallow | 10 | 0.1000 | 0.0000 | -5.00e-02 / +5.00e-02 / " \
        "+1.50e-01 |" in section  # fmt: skip
    assert "spliced_deep" not in section
    assert "- cleaner: no `off_policy/*` metrics" in section
    assert "(`train/is_weight_mean`, mean over seeds) 0.9900" in section
    assert os.path.getsize(tmp_path / "off_policy_sampled_clipped_frac.png") > 1000
    assert os.path.getsize(tmp_path / "train_is_weight_mean.png") > 1000


def test_reference_arm_and_comparison():
    assert plots.comparison(("baseline", "cleaner", "switch")) == ("cleaner", "baseline")
    assert plots.comparison(("cleaner", "correction")) == ("correction", "cleaner")
    assert plots.comparison(("correction", "cleaner")) == ("correction", "cleaner")
    assert plots.reference_arm({"baseline_seed0": [], "cleaner_seed0": []}) == "baseline"
    assert plots.reference_arm({"correction_seed0": [], "cleaner_seed0": []}) == "cleaner"
    with pytest.raises(ValueError, match="two arms"):
        plots.comparison(("cleaner",))


def test_identical_arms_are_said_to_be_identical(tmp_path):
    """A correction whose weights are all 1 samples the cleaner arm's rollouts: every paired
    difference is 0 and the claim says so beside its 0-width interval."""
    runs = {}
    for seed in (0, 1):
        rows = [
            {"step": 0, "val/reward/acc": 0.4},
            {"step": 1, "saar/first_attempt_failure_rate": 0.3 + 0.1 * seed},
            {"step": 2, "saar/first_attempt_failure_rate": 0.2, "val/reward/acc": 0.5 + seed / 10},
        ]
        for arm in ("cleaner", "correction"):
            runs[f"{arm}_seed{seed}"] = str(tmp_path / f"{arm}_seed{seed}")
            _write(runs[f"{arm}_seed{seed}"], rows)
    text = open(
        report.write_report(str(tmp_path), runs, timings={}, corpus_stats={}, mode="correction")
    ).read()
    assert (
        "the correction changes the first-attempt failure rate by 0.000 (95% CI 0.000 to 0.000, "
        "p = 1.000): not significant. The two arms logged the same rate at every step of every "
        "seed."
    ) in text
    assert "The two arms logged the same final accuracy in every seed." in text
    # Per-seed rates 0.25 and 0.3: mean 0.275, se 0.025, half-width 12.706 * 0.025 = 0.318.
    # Without off-policy metrics the correction arm's fractions read "not measured".
    assert "| correction | 2 | 0.275 [-0.043, 0.593] |" in text and "not measured" in text
