"""The demo report: `report.md` with PNG plots comparing the GRPO baseline and GRPO + SAAR.

Reads each run's `metrics.jsonl` (written by the trainer) and plots, per arm (mean over seeds,
thin lines per seed): first-attempt tool failure rate, tool failures per trajectory (visible in
the trained trajectory), held-out accuracy, reward, shallow vs deep rollbacks, time per phase.
The table gives each run's numbers and the steps each arm needs to reach the baseline's final
held-out accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cleaner_jax.runtime.metrics import read_metrics  # noqa: E402
from cleaner_jax.study import stats  # noqa: E402

_PLOTS = (
    ("saar/first_attempt_failure_rate", "first-attempt tool failure rate"),
    ("saar/final_tool_failures_per_traj", "tool failures per trained trajectory"),
    ("val/reward/acc", "held-out accuracy"),
    ("reward/acc", "train accuracy (rollouts)"),
    ("saar/tool_calls_per_traj", "tool calls per trajectory"),
    ("response_length/mean", "response length (tokens)"),
    ("credit/adv_recovered", "E[advantage | recovered failed call]"),
)
_COLORS = {"baseline": "tab:blue", "cleaner": "tab:red"}


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, vals = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(vals, float)


def _arm_of(name: str) -> str:
    return name.split("_seed")[0]


def _arm_mean_curve(runs: Mapping[str, list[dict]], arm: str, key: str) -> dict[int, float]:
    """Mean over the arm's seeds at each step every seed logged `key`."""
    curves = [
        dict(zip(*_series(rows, key), strict=True)) for n, rows in runs.items() if _arm_of(n) == arm
    ]
    curves = [c for c in curves if c]
    if not curves:
        return {}
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return {int(st): float(np.mean([c[st] for c in curves])) for st in steps}


def _plot(runs: Mapping[str, list[dict]], key: str, title: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, rows in runs.items():
        steps, vals = _series(rows, key)
        if len(steps):
            ax.plot(steps, vals, color=_COLORS.get(_arm_of(name)), alpha=0.3, lw=1)
    labelled = False
    for arm in sorted({_arm_of(n) for n in runs}):
        curve = _arm_mean_curve(runs, arm, key)
        if curve:
            ax.plot(
                list(curve),
                list(curve.values()),
                color=_COLORS.get(arm),
                lw=2.2,
                label=f"{arm} (mean)",
            )
            labelled = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _last(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(vals[-1]) if vals else float("nan")


def _mean_over(rows: list[dict], key: str) -> float:
    """Mean over the training steps (> 0) that logged a finite `key`."""
    vals = [r[key] for r in rows if key in r and r["step"] > 0 and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def _steps_to(rows: list[dict], key: str, target: float) -> str:
    for r in rows:
        if key in r and r[key] >= target:
            return str(r["step"])
    return "not reached"


_CREDIT_COLS = (
    ("accuracy", "train acc"),
    ("first_call_failure_rate", "failed first call"),
    ("recovery_rate", "of which recovered"),
    ("acc_clean", "acc, clean"),
    ("acc_recovered", "acc, recovered"),
    ("adv_recovered", "E[A \\| recovered]"),
    ("failed_call_credit_baseline", "credit on failed calls, unpurified"),
    ("failed_call_credit_saar", "credit on failed calls, purified"),
)


def _credit_section(runs: Mapping[str, list[dict]]) -> list[str]:
    """Where GRPO's credit on failed calls went (`credit/*`, see `rl/credit.py`)."""
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
        "| run | " + " | ".join(label for _, label in _CREDIT_COLS) + " |",
        "|---|" + "---|" * len(_CREDIT_COLS),
    ]
    for name, rows in runs.items():
        vals = [_mean_over(rows, f"credit/{key}") for key, _ in _CREDIT_COLS]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return lines


def _paired_steps(runs: Mapping[str, list[dict]], key: str) -> dict[str, list[float]]:
    """Per seed: cleaner - baseline in `key` at each step > 0 both logged. The arms of a seed
    train on the same prompts at every step, so the difference removes the prompt-batch noise."""
    out = {}
    for name, rows in runs.items():
        if _arm_of(name) != "baseline":
            continue
        seed = name[len("baseline") :]
        other = runs.get("cleaner" + seed)
        if other is None:
            continue
        a = {r["step"]: r[key] for r in rows if key in r and r["step"] > 0}
        b = {r["step"]: r[key] for r in other if key in r and r["step"] > 0}
        common = sorted(set(a) & set(b))
        if common:
            out[seed.lstrip("_")] = [b[st] - a[st] for st in common]
    return out


def _spread(vals: list[float]) -> str:
    vals = [v for v in vals if np.isfinite(v)]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def _arms_section(runs: Mapping[str, list[dict]], target: float) -> list[str]:
    """Per arm: mean ± std over seeds; steps to the target on the arm's mean held-out curve;
    the paired per-seed difference in first-attempt failure rate."""
    lines = [
        "",
        "## Arms (mean ± std over seeds)",
        "",
        "| arm | seeds | first-attempt failure rate | tool failures / trained traj | "
        "held-out acc (final) | steps to baseline's final acc (arm mean curve) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in sorted({_arm_of(n) for n in runs}):
        arm_runs = [rows for n, rows in runs.items() if _arm_of(n) == arm]
        curve = _arm_mean_curve(runs, arm, "val/reward/acc")
        reached = next((str(st) for st, v in curve.items() if v >= target), "not reached")
        lines.append(
            f"| {arm} | {len(arm_runs)} | "
            f"{_spread([_mean_over(r, 'saar/first_attempt_failure_rate') for r in arm_runs])} | "
            f"{_spread([_mean_over(r, 'saar/final_tool_failures_per_traj') for r in arm_runs])} | "
            f"{_spread([_last(r, 'val/reward/acc') for r in arm_runs])} | {reached} |"
        )
    steps = _paired_steps(runs, "saar/first_attempt_failure_rate")
    if steps:
        diff = {k: float(np.mean(v)) for k, v in steps.items()}
        per_seed = ", ".join(f"{k}: {v:+.3f}" for k, v in diff.items())
        lines += [
            "",
            "First-attempt failure rate, cleaner - baseline, paired by seed and step (same "
            f"prompts): mean {np.mean(list(diff.values())):+.3f} ({per_seed}). Negative means "
            "SAAR's arm writes fewer failing calls.",
        ]
        if len(steps) > 1:  # the interval treats seeds, not steps, as the independent units
            effect = stats.paired_difference_by_cluster(
                [d for v in steps.values() for d in v],
                [k for k, v in steps.items() for _ in v],
            )
            lines += ["", stats.describe(effect, "first-attempt failure rate") + " (over seeds)"]
    return lines


def _premise_section(premise: Mapping) -> list[str]:
    """The premise check before RL (`study/premise.py`): E[A | recovered] with its interval."""
    ci = premise.get("adv_recovered_ci") or {}
    held = "holds" if premise.get("premise_holds") else "does not hold"
    estimate = (
        f"{ci['estimate']:.3f} (95% CI {ci['low']:.3f} to {ci['high']:.3f}, {ci['groups']} "
        "prompt groups)"
        if ci
        else "n/a (no recovered trajectory)"
    )
    return [
        "",
        "## Premise check (SFT model, no SAAR, before RL)",
        "",
        f"E[A | recovered] = {estimate}: the premise {held} (it needs an interval above 0). "
        f"{premise['prompts']} prompts x {premise['n']} samples; accuracy "
        f"{premise['accuracy']:.3f}, first call fails {premise['first_call_failure_rate']:.3f}, "
        f"recovery {premise['recovery_rate']:.3f}, accuracy clean / recovered / unrecovered "
        f"{premise['acc_clean']:.3f} / {premise['acc_recovered']:.3f} / "
        f"{premise['acc_unrecovered']:.3f}.",
    ]


def write_report(
    workdir: str,
    run_dirs: Mapping[str, str],
    *,
    timings: Mapping[str, float],
    corpus_stats: Mapping,
    mode: str,
    premise: Mapping | None = None,
) -> str:
    runs = {name: read_metrics(d) for name, d in run_dirs.items()}
    plots = []
    for key, title in _PLOTS:
        fname = key.replace("/", "_") + ".png"
        _plot(runs, key, title, os.path.join(workdir, fname))
        plots.append((title, fname))

    base = [r for n, r in runs.items() if _arm_of(n) == "baseline"]
    target = float(np.nanmean([_last(r, "val/reward/acc") for r in base])) if base else np.nan
    lines = [
        f"# CLEANER miniature study ({mode} mode)",
        "",
        "Tiny Qwen3-shaped model, synthetic tool-use arithmetic, cold-start SFT then GRPO with "
        "SAAR off (baseline) and on (cleaner), same SFT checkpoint and seeds.",
        "",
        f"SFT corpus: {dict(corpus_stats)}",
        "",
        "| run | first-attempt failure rate (mean over steps) | last step | tool failures / "
        "trained traj (mean) | held-out acc (final) | steps to baseline's final acc "
        f"({target:.3f}) | shallow | deep | rollbacks recovered / triggered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        shallow = sum(r.get("saar/shallow_sum", 0) for r in rows)
        deep = sum(r.get("saar/deep_sum", 0) for r in rows)
        rec = sum(r.get("saar/rollbacks_recovered_sum", 0) for r in rows)
        trig = sum(r.get("saar/rollbacks_triggered_sum", 0) for r in rows)
        lines.append(
            f"| {name} | {_mean_over(rows, 'saar/first_attempt_failure_rate'):.3f} | "
            f"{_last(rows, 'saar/first_attempt_failure_rate'):.3f} | "
            f"{_mean_over(rows, 'saar/final_tool_failures_per_traj'):.3f} | "
            f"{_last(rows, 'val/reward/acc'):.3f} | "
            f"{_steps_to(rows, 'val/reward/acc', target)} | {shallow:.0f} | {deep:.0f} | "
            f"{rec:.0f} / {trig:.0f} |"
        )
    lines += _premise_section(premise) if premise else []
    lines += _arms_section(runs, target)
    lines += _credit_section(runs)
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    phase_keys = sorted(
        {k for rows in runs.values() for r in rows for k in r if k.startswith("time/")}
    )
    if phase_keys:
        lines += [
            "",
            "Mean seconds per step and phase:",
            "",
            "| run | " + " | ".join(k[5:] for k in phase_keys) + " |",
            "|---|" + "---|" * len(phase_keys),
        ]
        for name, rows in runs.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{_mean_over(rows, k):.2f}" for k in phase_keys) + " |"
            )
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({fname})" for title, fname in plots]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
