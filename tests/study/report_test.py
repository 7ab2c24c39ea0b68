"""The demo report from hand-written metrics: table values, credit section, plots."""

import json
import os

from cleaner_jax.study import report


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
    # Arms: mean ± std over seeds, steps to 0.5 on the arm's mean curve, paired difference.
    assert "| baseline | 1 | 0.300 ± 0.000 | n/a | 0.500 ± 0.000 | 2 |" in text
    assert "| cleaner | 1 | 0.200 ± 0.000 |" in text
    assert "mean -0.100 (seed0: -0.100)" in text
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
    assert "mean -0.150 (seed0: -0.100, seed1: -0.200)" in text
    assert (
        "SAAR lowers the first-attempt failure rate by 0.150 (95% CI -0.485 to 0.785, "
        "p = 0.205): not significant. (over seeds)"
    ) in text
