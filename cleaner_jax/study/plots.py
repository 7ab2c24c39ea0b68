"""The miniature study's curves: per-arm metric series over training steps, and their figures.

Runs are named `<arm>_seed<s>` and hold the rows of their `metrics.jsonl`. A figure draws each
arm's mean over seeds with a 95% t-band over seeds (`stats.band_over_seeds`; with one seed there
is no band and the legend says so), a thin line per seed, and a vertical line at the step where
the switch arm turned SAAR on (its first step logging `saar/active` == 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cleaner_jax.study import stats  # noqa: E402

FAR = "saar/first_attempt_failure_rate"
VAL_ACC = "val/reward/acc"
ARM_ORDER = ("baseline", "cleaner", "switch", "correction")
COLORS = {
    "baseline": "tab:blue",
    "cleaner": "tab:red",
    "switch": "tab:green",
    "correction": "tab:purple",
}

Runs = Mapping[str, list[dict]]


def arm_of(name: str) -> str:
    return name.split("_seed")[0]


def seed_of(name: str) -> str:
    """ "cleaner_seed3" -> "seed3": the label that pairs the arms' runs of one seed."""
    return name[len(arm_of(name)) :].lstrip("_")


def arms(runs: Runs) -> list[str]:
    """The arms present in `ARM_ORDER` order (baseline, cleaner, switch, correction), then any
    other alphabetically."""
    present = {arm_of(n) for n in runs}
    return [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))


def comparison(arm_names) -> tuple[str, str]:
    """(treatment, reference) of a study's arms: cleaner vs baseline where the study has a
    baseline, otherwise the second arm vs the first in `ARM_ORDER` order (the correction mode:
    correction vs cleaner). Raises with fewer than two arms."""
    present = {arm_of(n) for n in arm_names}
    ordered = [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))
    if len(ordered) < 2:
        raise ValueError(f"a comparison needs two arms, got {ordered}")
    reference = ordered[0]
    if reference == "baseline" and "cleaner" in present:
        return "cleaner", reference
    return ordered[1], reference


def reference_arm(runs: Runs) -> str:
    """The arm the others are compared with: baseline if the study ran it, else the first arm in
    `ARM_ORDER` order (cleaner in the correction mode)."""
    present = arms(runs)
    return "baseline" if "baseline" in present or not present else present[0]


def last(rows: list[dict], key: str) -> float:
    """The last finite value of `key` (NaN if none)."""
    vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(vals[-1]) if vals else math.nan


def mean_over(rows: list[dict], key: str) -> float:
    """Mean over the training steps (> 0) that logged a finite `key`."""
    vals = [r[key] for r in rows if r.get(key) is not None and r["step"] > 0]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that logged `key`; NaN values are kept (a plot leaves a gap)."""
    pts = [(r["step"], float(r[key])) for r in rows if r.get(key) is not None]
    if not pts:
        return np.zeros(0, int), np.zeros(0)
    steps, vals = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(vals, float)


def seed_matrix(runs: Runs, arm: str, key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(steps, seeds x steps values, run names) of `arm` over the union of its logged steps; NaN
    where a seed did not log `key` at a step. Seeds that never logged it are left out."""
    curves = {n: series(rows, key) for n, rows in runs.items() if arm_of(n) == arm}
    curves = {n: c for n, c in curves.items() if len(c[0])}
    steps = np.asarray(sorted({int(s) for st, _ in curves.values() for s in st}), int)
    col = {s: j for j, s in enumerate(steps)}
    out = np.full((len(curves), len(steps)), np.nan)
    for i, (st, vals) in enumerate(curves.values()):
        out[i, [col[int(s)] for s in st]] = vals
    return steps, out, list(curves)


def switch_step(rows: list[dict]) -> int | None:
    """The first step that logged `saar/active` == 1 (the switch arm's switch), None if none."""
    return next((int(r["step"]) for r in rows if r.get("saar/active") == 1), None)


def plot_metric(
    runs: Runs, key: str, title: str, path: str, *, switch_at: Sequence[int] = ()
) -> bool:
    """Writes the figure of `key` to `path`; False (no file) if no run logged it."""
    if not any(len(series(rows, key)[0]) for rows in runs.values()):
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for arm in arms(runs):
        steps, curves, _ = seed_matrix(runs, arm, key)
        if not curves.size:
            continue
        color = COLORS.get(arm)
        for row in curves:
            ok = np.isfinite(row)
            ax.plot(steps[ok], row[ok], color=color, alpha=0.3, lw=0.8)
        band = stats.band_over_seeds(curves)
        if len(curves) > 1:
            label = f"{arm} (mean, 95% band over {len(curves)} seeds)"
            ax.fill_between(steps, band.low, band.high, color=color, alpha=0.15, lw=0)
        else:
            label = f"{arm} (one seed, no interval)"
        ok = np.isfinite(band.mean)
        ax.plot(steps[ok], band.mean[ok], color=color, lw=2.0, label=label)
    for i, s in enumerate(sorted(set(switch_at))):
        label = "SAAR switched on (switch arm)" if i == 0 else None
        ax.axvline(s, color=COLORS["switch"], ls="--", lw=1.2, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
