"""The report's training diagnostics: where GRPO's credit on failed calls went (the trainer's
`credit/*` metrics, `rl/credit.py`) and the wall time of each stage and training phase."""

from __future__ import annotations

from collections.abc import Mapping

from cleaner_jax.study import plots
from cleaner_jax.study.plots import mean_over
from cleaner_jax.study.report_evals import fmt


def credit_section(runs: plots.Runs) -> list[str]:
    """Where GRPO's credit on failed calls went (`credit/*`, see `rl/credit.py`)."""
    cols = (
        ("accuracy", "train acc"),
        ("first_call_failure_rate", "failed first call"),
        ("recovery_rate", "of which recovered"),
        ("acc_clean", "acc, clean"),
        ("acc_recovered", "acc, recovered"),
        ("adv_recovered", "E[A \\| recovered]"),
        ("failed_call_credit_baseline", "credit on failed calls, unpurified"),
        ("failed_call_credit_saar", "credit on failed calls, purified"),
    )
    if not any(k.startswith("credit/") for rows in runs.values() for r in rows for k in r):
        return []
    lines = [
        "",
        "## Credit on failed calls",
        "",
        "Means over training steps of the trainer's `credit/*` metrics (`rl/credit.py`). "
        '"Recovered": a later call succeeded in context (baseline) or SAAR spliced a successful '
        "retry in (cleaner). SAAR moves a recovered trajectory's advantage from its failed call "
        "to the clean correction, so it lowers the first-attempt failure rate faster than the "
        "baseline only if E[A | recovered] > 0 (recovered trajectories beat their group's "
        "mean). Negative credit on failed calls means GRPO pushes against them; the baseline "
        "trains on the unpurified trajectories, the cleaner arm on the purified ones.",
        "",
        "| run | " + " | ".join(label for _, label in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, rows in runs.items():
        vals = [mean_over(rows, f"credit/{key}") for key, _ in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return lines


def timing_section(runs: plots.Runs, timings: Mapping[str, float]) -> list[str]:
    lines = ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    phases = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("time/")})
    if phases:
        lines += [
            "",
            "Mean seconds per step and phase:",
            "",
            "| run | " + " | ".join(k[5:] for k in phases) + " |",
            "|---|" + "---|" * len(phases),
        ]
        for name, rows in runs.items():
            lines.append(f"| {name} | " + " | ".join(fmt(mean_over(rows, k), 2) for k in phases))
            lines[-1] += " |"
    return lines
