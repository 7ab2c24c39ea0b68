"""The report's off-policy correction (issue #30): a key table per arm and the correction's
clipped / rejected tokens with the sampler-trainer log-ratio quantiles.

The key table (in studies without a baseline arm, or with an off-policy arm) gives, per arm, the
first-attempt failure rate and the final held-out accuracy as means over seeds with a 95% t
interval over seeds (`stats.mean_ci`; the seeds are the units), the first seed's held-out pass@1
with a bootstrap over problems, the fractions of trained tokens the correction clipped and
rejected, and the wall time of a GRPO run. The off-policy section reads the trainer's
`off_policy/<span>/*` metrics (`rl/off_policy.py`; span = sampled, spliced_shallow, spliced_deep):
log π_prox - log μ quantiles, the fractions clipped and rejected, k1 / k3 estimates of
KL(μ ‖ π_prox), and `train/is_weight_mean`. An arm trained against the sampler's own log-probs
(`train.old_logprobs=sampler`) has no π_prox and logs none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cleaner_jax.rl.off_policy import SPAN_NAMES
from cleaner_jax.study import plots, stats
from cleaner_jax.study.plots import FAR, VAL_ACC, arm_of, last, mean_over
from cleaner_jax.study.report_evals import fmt, pass1_cell

ARM_TEXT = {
    "baseline": "SAAR off (baseline)",
    "cleaner": "SAAR on (cleaner)",
    "switch": "SAAR switched on mid-training (switch)",
    "correction": "SAAR on with the off-policy correction (correction)",
}
SPANS = tuple(SPAN_NAMES.values())


def _finite_mean(vals: list[float], reduce=np.mean) -> float:
    """`reduce` (mean by default) of the finite values; NaN if there are none."""
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(reduce(vals)) if vals else math.nan


def _has_off_policy(rows: list[dict]) -> bool:
    return any(k.startswith("off_policy/") for r in rows for k in r)


def _ci_cell(per_seed: list[float]) -> str:
    """Mean over seeds [95% t interval over seeds]."""
    vals = [v for v in per_seed if np.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f} (one seed, no interval)"
    ci = stats.mean_ci(vals)
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def pooled(rows_list: list[list[dict]], span: str, frac: str) -> float:
    """The fraction `frac` (clipped_frac, rejected_frac) of `span`'s trained tokens over every
    given run and step: each step's fraction weighted by its token count. NaN if none logged."""
    p = f"off_policy/{span}"
    hit = tokens = 0.0
    for rows in rows_list:
        for r in rows:
            n, f = r.get(f"{p}/tokens"), r.get(f"{p}/{frac}")
            if n is not None and f is not None and np.isfinite(f):
                hit, tokens = hit + f * n, tokens + n
    return hit / tokens if tokens else math.nan


def _all_spans(rows_list: list[list[dict]], frac: str) -> float:
    """`pooled` over every span kind."""
    hit = tokens = 0.0
    for span in SPANS:
        n = sum(r.get(f"off_policy/{span}/tokens", 0.0) for rows in rows_list for r in rows)
        f = pooled(rows_list, span, frac)
        if n and np.isfinite(f):
            hit, tokens = hit + f * n, tokens + n
    return hit / tokens if tokens else math.nan


def _frac_cell(rows_list: list[list[dict]], frac: str) -> str:
    if not any(_has_off_policy(rows) for rows in rows_list):
        return "not measured"
    total = _all_spans(rows_list, frac)
    per_seed = [v for rows in rows_list if np.isfinite(v := _all_spans([rows], frac))]
    spread = f" (seeds {min(per_seed):.4f} to {max(per_seed):.4f})" if len(per_seed) > 1 else ""
    return f"{total:.4f}{spread}" if np.isfinite(total) else "n/a"


def _wall_cell(names: list[str], timings: Mapping[str, float]) -> str:
    secs = [timings[f"grpo/{n}"] for n in names if f"grpo/{n}" in timings]
    secs = [s for s in secs if np.isfinite(s)]
    if not secs:
        return "n/a"
    runs = f"{len(secs)} run" + ("s" if len(secs) > 1 else "")
    return f"{np.mean(secs):.0f} s a run ({runs}, {sum(secs):.0f} s in all)"


def _eval_cell(arm: str, evals: Mapping[str, Mapping]) -> str:
    name = next((n for n in evals if n != "sft" and arm_of(n) == arm), None)
    if name is None:
        return "n/a"
    e = evals[name]
    cell = pass1_cell(e.get("modes", {}).get("off"), (e.get("records") or {}).get("off"))
    return f"{cell} ({name})"


def key_table(
    runs: plots.Runs, evals: Mapping[str, Mapping], timings: Mapping[str, float], reference: str
) -> list[str]:
    """Per arm, with intervals: failure rate, held-out accuracy, clipped / rejected tokens, wall
    time. Empty for studies with a baseline and no off-policy metrics (the quick, full and long
    modes' reports are unchanged)."""
    if reference == "baseline" and not any(_has_off_policy(rows) for rows in runs.values()):
        return []
    lines = [
        "",
        "## Arms at a glance (95% intervals)",
        "",
        "First-attempt failure rate: each run's mean over training steps; held-out accuracy: "
        "each run's final validation accuracy; both as the mean over seeds with a t interval "
        "over seeds. Held-out pass@1: the first seed's final checkpoint without test-time SAAR, "
        "bootstrap over problems. Clipped / rejected: the share of trained tokens the "
        "off-policy correction truncated (TIS weight at its cap) or left out of the loss, over "
        "every seed and step. Wall time: one GRPO run (training and its validations).",
        "",
        "| arm | seeds | first-attempt failure rate | held-out acc (final) | held-out pass@1 "
        "(eval) | tokens clipped | tokens rejected | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in plots.arms(runs):
        names = [n for n in runs if arm_of(n) == arm]
        rows_list = [runs[n] for n in names]
        lines.append(
            f"| {arm} | {len(names)} | {_ci_cell([mean_over(r, FAR) for r in rows_list])} | "
            f"{_ci_cell([last(r, VAL_ACC) for r in rows_list])} | {_eval_cell(arm, evals)} | "
            f"{_frac_cell(rows_list, 'clipped_frac')} | {_frac_cell(rows_list, 'rejected_frac')} "
            f"| {_wall_cell(names, timings)} |"
        )
    return lines


def _weighted(rows_list: list[list[dict]], span: str, key: str) -> float:
    """Token-weighted mean over steps (and seeds) of a per-step `span` metric."""
    p = f"off_policy/{span}"
    pts = [
        (r[f"{p}/{key}"], r[f"{p}/tokens"])
        for rows in rows_list
        for r in rows
        if r.get(f"{p}/{key}") is not None and r.get(f"{p}/tokens")
    ]
    pts = [(v, n) for v, n in pts if np.isfinite(v)]
    return float(np.average([v for v, _ in pts], weights=[n for _, n in pts])) if pts else math.nan


def off_policy_section(runs: plots.Runs) -> list[str]:
    """Per arm and span kind: tokens, clipped / rejected fractions, log-ratio quantiles, KL."""
    if not any(_has_off_policy(rows) for rows in runs.values()):
        return []
    lines = [
        "",
        "## Off-policy correction: sampler μ vs trainer π_prox",
        "",
        "Per span kind (sampled tokens; SAAR's shallow and deep splices, rescored by the sampler "
        "under the purified context), over every seed and training step: trained tokens, the "
        "fractions clipped and rejected (pooled over tokens), the quantiles p5 / p50 / p95 of "
        "log π_prox - log μ (each step's quantile, token-weighted mean over steps), the largest "
        "|log ratio| seen, and k1 / k3 estimates of KL(μ ‖ π_prox) (token-weighted means).",
        "",
        "| arm | span | tokens | clipped | rejected | log-ratio p5 / p50 / p95 | max \\|log "
        "ratio\\| | KL k1 / k3 | samples fully rejected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for arm in plots.arms(runs):
        rows_list = [rows for n, rows in runs.items() if arm_of(n) == arm]
        if not any(_has_off_policy(rows) for rows in rows_list):
            notes.append(
                f"- {arm}: no `off_policy/*` metrics: the arm trains against the sampler's own "
                "log-probs (train.old_logprobs=sampler), so there is no trainer recompute π_prox "
                "to compare μ with."
            )
            continue
        for span in SPANS:
            p = f"off_policy/{span}"
            tokens = sum(r.get(f"{p}/tokens", 0.0) for rows in rows_list for r in rows)
            if not tokens:
                continue
            q = " / ".join(
                f"{_weighted(rows_list, span, f'log_ratio_p{k}'):+.2e}" for k in (5, 50, 95)
            )
            peaks = [r.get(f"{p}/log_ratio_abs_max", math.nan) for rows in rows_list for r in rows]
            peak = _finite_mean(peaks, np.max)
            kl = " / ".join(f"{_weighted(rows_list, span, k):.2e}" for k in ("kl_k1", "kl_k3"))
            full = sum(
                r.get(f"{p}/samples_fully_rejected", 0.0) for rows in rows_list for r in rows
            )
            lines.append(
                f"| {arm} | {span} | {tokens:.0f} | "
                f"{fmt(pooled(rows_list, span, 'clipped_frac'), 4)} | "
                f"{fmt(pooled(rows_list, span, 'rejected_frac'), 4)} | {q} | {peak:.2e} | {kl} | "
                f"{full:.0f} |"
            )
        weights = [mean_over(rows, "train/is_weight_mean") for rows in rows_list]
        rejected = [mean_over(rows, "off_policy/rejected_frac") for rows in rows_list]
        notes.append(
            f"- {arm}: mean importance weight per step (`train/is_weight_mean`, mean over seeds) "
            f"{fmt(_finite_mean(weights), 4)}; rejected share of a step's trained tokens "
            f"(`off_policy/rejected_frac`, mean over steps and seeds) "
            f"{fmt(_finite_mean(rejected), 4)}."
        )
    return lines + [""] + notes
