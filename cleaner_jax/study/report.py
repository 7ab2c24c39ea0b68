"""The study report: `report.md` with PNG figures comparing GRPO with and without SAAR.

Reads each run's `metrics.jsonl` (runs named `<arm>_seed<s>`; arms baseline, cleaner and, if
run, switch: SAAR switched on mid-training; or, in the correction mode, cleaner and correction:
SAAR with the off-policy correction on) and writes: a table per run; the premise check; the
pre-run power design; per-arm means over seeds and the steps each arm needs to reach the
reference arm's final held-out accuracy (bootstrap interval over seeds); held-out pass@k with and
without test-time SAAR and its latency overhead; where the study has an off-policy arm, the
per-arm key table and the correction's clipped / rejected tokens and log-ratio quantiles
(`study/report_correction.py`); the claims, each an effect with a 95% interval and a verdict in
plain words; where GRPO's credit on failed calls went; wall times; figures (`study/plots.py`).
Differences are always treatment - reference (the baseline arm; without one, the first arm:
correction - cleaner), and the seeds, not the steps, are the independent units of a training
effect.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping

import numpy as np

from cleaner_jax.runtime.metrics import read_metrics
from cleaner_jax.study import plots, report_correction, stats
from cleaner_jax.study.plots import FAR, VAL_ACC, arm_of, last, mean_over, seed_of
from cleaner_jax.study.report_diagnostics import credit_section, timing_section
from cleaner_jax.study.report_evals import evals_section, test_time_claims
from cleaner_jax.study.report_evals import fmt as _f

_ALL_FAILURES = "saar/tool_failures_per_traj"
_FIGURES = (
    (FAR, "first-attempt tool failure rate"),
    ("saar/final_tool_failures_per_traj", "tool failures per trajectory (trained trajectory)"),
    (_ALL_FAILURES, "tool failures per trajectory (every attempt, rolled back included)"),
    (VAL_ACC, "held-out accuracy"),
    ("reward/acc", "train accuracy (rollouts)"),
    ("saar/tool_calls_per_traj", "tool calls per trajectory"),
    ("response_length/mean", "response length (tokens)"),
    ("credit/adv_recovered", "E[advantage | recovered failed call]"),
    ("off_policy/sampled/clipped_frac", "off-policy correction: sampled tokens clipped"),
    ("train/is_weight_mean", "off-policy correction: mean importance weight"),
    # The step's timeline (async rollouts): trainer and producer idle, sampler and tools busy.
    ("time/wait_rollout", "timeline: trainer waiting for rollouts (s per step)"),
    ("async/producer_idle_s", "timeline: producer waiting on the staleness bound (s per step)"),
    ("time/sampler_busy", "timeline: sampler busy, prefill + decode calls (s per step)"),
    ("time/tools_busy", "timeline: a sandbox call running (s per step)"),
    ("async/staleness_mean", "mean staleness of trained tokens (versions)"),
)
_ONE = "one seed, no interval"


def _with_derived(rows: list[dict]) -> list[dict]:
    """Adds the model's tool errors per trajectory over every attempt (the `failure_type/*`
    counts over `trajectories`) where the trainer logged the batch statistics."""
    out = []
    for r in rows:
        if _ALL_FAILURES not in r and r.get("saar/trajectories"):
            errors = sum(v for k, v in r.items() if k.startswith("saar/failure_type/"))
            r = {**r, _ALL_FAILURES: errors / r["saar/trajectories"]}
        out.append(r)
    return out


def _steps_to(rows: list[dict], key: str, target: float) -> str:
    for r in rows:
        if r.get(key) is not None and r[key] >= target - 1e-9:
            return str(r["step"])
    return "not reached"


def _spread(vals: list[float]) -> str:
    vals = [v for v in vals if np.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f} (one seed)"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def _whose(reference: str) -> str:
    """ "baseline's" / "cleaner arm's": the owner of the held-out accuracy target."""
    return "baseline's" if reference == "baseline" else f"{reference} arm's"


def _runs_table(runs: plots.Runs, target: float, reference: str) -> list[str]:
    lines = [
        "| run | first-attempt failure rate (mean over steps) | last step | tool failures / "
        f"trained traj (mean) | held-out acc (final) | steps to {_whose(reference)} final acc "
        f"({_f(target)}) | shallow | deep | rollbacks recovered / triggered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        sums = [
            sum(r.get(f"saar/{k}_sum", 0) for r in rows)
            for k in ("shallow", "deep", "rollbacks_recovered", "rollbacks_triggered")
        ]
        lines.append(
            f"| {name} | {_f(mean_over(rows, FAR))} | {_f(last(rows, FAR))} | "
            f"{_f(mean_over(rows, 'saar/final_tool_failures_per_traj'))} | "
            f"{_f(last(rows, VAL_ACC))} | {_steps_to(rows, VAL_ACC, target)} | "
            f"{sums[0]:.0f} | {sums[1]:.0f} | {sums[2]:.0f} / {sums[3]:.0f} |"
        )
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


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return json.dumps(v, default=str) if isinstance(v, Mapping | list | tuple) else str(v)
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def _design_mde(design: Mapping | None) -> float:
    mde = (design or {}).get("mde")
    return float(mde) if isinstance(mde, int | float) and np.isfinite(mde) else math.nan


def _design_section(design: Mapping) -> list[str]:
    """The pre-run power design in words, then every number it holds."""
    mde, power = _design_mde(design), design.get("power")
    power_text = f"{100 * power:g}% power" if isinstance(power, int | float) else "its power"
    setup = [
        f"two-sided alpha = {_number(design['alpha'])}" if "alpha" in design else "",
        f"{design['seeds']} seeds" if "seeds" in design else "",
        f"{design['steps']} steps per run" if "steps" in design else "",
        f"{design['m']} rollouts per arm, seed and step" if "m" in design else "",
    ]
    setup_text = ", ".join(s for s in setup if s)
    if np.isfinite(mde):
        said = (
            f"The design can detect a change of {mde:.3f} in the first-attempt failure rate "
            f"with {power_text}" + (f" ({setup_text})" if setup_text else "") + "."
        )
    else:
        reason = design.get("mde_reason")
        said = "The design states no minimum detectable effect" + (
            f": {reason}." if reason else "."
        )
    lines = ["", "## Design (written before the runs)", "", said]
    pairs = design.get("required_pairs")
    if isinstance(pairs, Mapping) and pairs:
        lines += [
            "",
            "Seeds per arm needed (same power): "
            + "; ".join(f"a change of {e} needs {n}" for e, n in pairs.items())
            + ".",
        ]
    assumptions = design.get("assumptions")
    if assumptions:
        if isinstance(assumptions, Mapping):
            items = [f"{k}: {v}" for k, v in assumptions.items()]
        else:
            items = [assumptions] if isinstance(assumptions, str) else list(assumptions)
        lines += ["", "Assumptions:", ""] + [f"- {a}" for a in items]
    rest = {
        k: v
        for k, v in design.items()
        if k not in ("required_pairs", "assumptions", "mde_reason") and v is not None
    }
    if rest:
        lines += ["", "| design quantity | value |", "|---|---|"]
        lines += [f"| `{k}` | {_number(v)} |" for k, v in rest.items()]
    return lines


def _arms_section(runs: plots.Runs, target: float, reference: str) -> list[str]:
    """Per arm: mean ± sd over seeds, then steps to the target with a bootstrap over seeds."""
    lines = [
        "",
        "## Arms (mean ± sd over seeds)",
        "",
        "| arm | seeds | first-attempt failure rate | tool failures / trained traj | "
        "held-out acc (final) | SAAR switched on at step |",
        "|---|---|---|---|---|---|",
    ]
    for arm in plots.arms(runs):
        arm_runs = [rows for n, rows in runs.items() if arm_of(n) == arm]
        switched = sorted({s for r in arm_runs if (s := plots.switch_step(r)) is not None})
        lines.append(
            f"| {arm} | {len(arm_runs)} | "
            f"{_spread([mean_over(r, FAR) for r in arm_runs])} | "
            f"{_spread([mean_over(r, 'saar/final_tool_failures_per_traj') for r in arm_runs])} "
            f"| {_spread([last(r, VAL_ACC) for r in arm_runs])} | "
            f"{', '.join(map(str, switched)) or '-'} |"
        )
    lines += ["", f"## Steps to the {_whose(reference)} final held-out accuracy ({_f(target)})", ""]
    if not np.isfinite(target):
        return lines + [f"No {reference} held-out accuracy was logged: no target."]
    lines += [
        "Steps at which the arm's mean-over-seeds held-out accuracy first reaches the target; "
        "the interval is a percentile bootstrap over seeds.",
        "",
        "| arm | seeds | steps | 95% CI (bootstrap over seeds) |",
        "|---|---|---|---|",
    ]
    for arm in plots.arms(runs):
        steps, curves, _ = plots.seed_matrix(runs, arm, VAL_ACC)
        if not curves.size:
            lines.append(f"| {arm} | 0 | no held-out accuracy logged | - |")
            continue
        ci = stats.steps_to_target_ci(curves, target - 1e-9)
        at = [
            str(steps[int(i)]) if np.isfinite(i) else "not reached"
            for i in dataclasses.astuple(ci)[:3]
        ]
        interval = _ONE if len(curves) == 1 else f"{at[1]} to {at[2]}"
        lines.append(f"| {arm} | {len(curves)} | {at[0]} | {interval} |")
    return lines


def _paired_by_step(
    runs: plots.Runs,
    key: str,
    arm: str,
    since: Mapping[str, int] | None = None,
    until: Mapping[str, int] | None = None,
    reference: str = "baseline",
) -> dict[str, list[float]]:
    """Per seed: `arm` - `reference` in `key` at each step > 0 both logged, from the seed's
    `since` step on and before its `until` step where given. The arms of a seed train on the
    same prompts at every step, so the difference removes the prompt-batch noise."""
    out = {}
    for name, rows in runs.items():
        other = runs.get(f"{arm}_{seed_of(name)}")
        if arm_of(name) != reference or other is None:
            continue
        first = max(1, (since or {}).get(seed_of(name), 1))
        stop = (until or {}).get(seed_of(name), math.inf)
        a = {r["step"]: r[key] for r in rows if r.get(key) is not None and first <= r["step"]}
        b = {r["step"]: r[key] for r in other if r.get(key) is not None and first <= r["step"]}
        a = {s: v for s, v in a.items() if s < stop}
        diffs = [b[s] - a[s] for s in sorted(set(a) & set(b)) if np.isfinite(b[s] - a[s])]
        if diffs:
            out[seed_of(name)] = diffs
    return out


def _verdict(
    diffs: Mapping[str, list[float]], quantity: str, subject: str
) -> tuple[str, stats.PairedEffect | None]:
    """The per-seed mean differences, and the effect over seeds in plain words."""
    means = {k: float(np.mean(v)) for k, v in diffs.items()}
    text = (
        "per-seed mean differences "
        + ", ".join(f"{k}: {v:+.3f}" for k, v in means.items())
        + f"; mean {np.mean(list(means.values())):+.3f}. "
    )
    if len(means) < 2:
        return text + f"({_ONE}.)", None
    effect = stats.paired_difference_by_cluster(
        [d for v in diffs.values() for d in v], [k for k, v in diffs.items() for _ in v]
    )
    return text + f"Over {len(means)} seeds: " + stats.describe(effect, quantity, subject), effect


def _mde_comparison(effect: stats.PairedEffect | None, design: Mapping | None) -> str:
    mde = _design_mde(design)
    if effect is None or not np.isfinite(mde):
        return ""
    if effect.significant:
        return f" The design's minimum detectable effect was {mde:.3f}."
    if abs(effect.estimate) < mde:
        return (
            f" The effect is below what the design can detect (minimum detectable effect "
            f"{mde:.3f}): this run can neither show nor rule out an effect that small."
        )
    return (
        f" The effect is at least the design's minimum detectable effect ({mde:.3f}) yet not "
        "significant: the seeds varied more than the design assumed."
    )


def _final_diffs(runs: plots.Runs, arm: str, reference: str) -> dict[str, list[float]]:
    """Per seed: `arm` - `reference` in the final held-out accuracy."""
    finals = {}
    for name, rows in runs.items():
        other = runs.get(f"{arm}_{seed_of(name)}")
        if arm_of(name) == reference and other is not None:
            d = last(other, VAL_ACC) - last(rows, VAL_ACC)
            if np.isfinite(d):
                finals[seed_of(name)] = [d]
    return finals


_ABSENT = "not tested: no seed ran both arms."
_SUBJECTS = {"cleaner": "SAAR", "switch": "switching SAAR on", "correction": "the correction"}


def _same(diffs: Mapping[str, list[float]], what: str) -> str:
    """A note when every paired difference is exactly 0 (e.g. a correction whose weights are all
    1: the arms then sample the same rollouts), which an interval of 0 to 0 alone leaves vague."""
    values = [d for v in diffs.values() for d in v]
    return f" The two arms logged the same {what}." if values and not any(values) else ""


def _pair_claims(runs: plots.Runs, design: Mapping | None, reference: str) -> list[str]:
    """Without a baseline arm: each other arm - `reference`, failure rate and final accuracy."""
    lines = []
    for arm in (a for a in plots.arms(runs) if a != reference):
        subject = _SUBJECTS.get(arm, f"the {arm} arm")
        diffs = _paired_by_step(runs, FAR, arm, reference=reference)
        text, effect = (
            _verdict(diffs, "first-attempt failure rate", subject) if diffs else (_ABSENT, None)
        )
        text += _same(diffs, "rate at every step of every seed")
        lines.append(
            f"- **(a) First-attempt failure rate, {arm} vs {reference}** ({arm} - {reference}, "
            f"paired by seed and step): {text}{_mde_comparison(effect, design)}"
        )
        finals = _final_diffs(runs, arm, reference)
        text = _verdict(finals, "final held-out accuracy", subject)[0] if finals else _ABSENT
        text += _same(finals, "final accuracy in every seed")
        lines.append(
            f"- **(b) Held-out accuracy, {arm} vs {reference}** ({arm} - {reference}, final, "
            f"paired by seed): {text}"
        )
    return lines


def _claims_section(
    runs: plots.Runs, design: Mapping | None, evals: Mapping[str, Mapping] | None
) -> list[str]:
    reference = plots.reference_arm(runs)
    lines = ["", f"## Claims (treatment - {reference}, 95% intervals, seeds as the units)", ""]
    if reference != "baseline":
        return lines + _pair_claims(runs, design, reference) + test_time_claims(evals or {})
    absent = _ABSENT
    diffs = _paired_by_step(runs, FAR, "cleaner")
    text, effect = (
        _verdict(diffs, "first-attempt failure rate", "SAAR") if diffs else (absent, None)
    )
    lines += [
        "- **(a) SAAR lowers the first-attempt failure rate** (cleaner - baseline, paired by "
        f"seed and step): {text}{_mde_comparison(effect, design)}"
    ]
    finals = _final_diffs(runs, "cleaner", "baseline")
    text = _verdict(finals, "final held-out accuracy", "SAAR")[0] if finals else absent
    lines += [f"- **(b) Held-out accuracy** (cleaner - baseline, final, paired by seed): {text}"]
    since = {
        seed_of(n): s
        for n, rows in runs.items()
        if arm_of(n) == "switch" and (s := plots.switch_step(rows)) is not None
    }
    if since:
        after = _paired_by_step(runs, FAR, "switch", since)
        text = (
            _verdict(after, "first-attempt failure rate after the switch", "Switching SAAR on")[0]
            if after
            else absent
        )
        before = _paired_by_step(runs, FAR, "switch", until=since)
        before = [d for v in before.values() for d in v]
        check = f" Before the switch: mean {np.mean(before):+.3f}." if before else ""
        lines += [
            "- **(c) Switching SAAR on mid-training** (switch - baseline, first-attempt failure "
            f"rate at the steps from the switch on, paired by seed and step): {text}{check}"
        ]
    elif any(arm_of(n) == "switch" for n in runs):
        lines += ["- **(c) Switching SAAR on mid-training**: no step logged saar/active = 1."]
    lines += test_time_claims(evals or {})
    return lines


def write_report(
    workdir: str,
    run_dirs: Mapping[str, str],
    *,
    timings: Mapping[str, float],
    corpus_stats: Mapping,
    mode: str,
    premise: Mapping | None = None,
    design: Mapping | None = None,
    evals: Mapping[str, Mapping] | None = None,
) -> str:
    """Writes `<workdir>/report.md` and its PNGs; returns the report's path.

    design: the pre-run power design (`mde`, `power`, `alpha`, `seeds`, `steps`, `sd_*`,
      `required_pairs` {effect: pairs}, `assumptions`, ...; whatever is present is printed).
    evals: model name ("sft" or a run name) -> an `Evaluator.run` summary, optionally with
      `records` {"off": [...], "on": [...]} per-problem records for intervals over problems.
    """
    runs = {name: _with_derived(read_metrics(d)) for name, d in run_dirs.items()}
    switch_at = [
        s
        for n, rows in runs.items()
        if arm_of(n) == "switch" and (s := plots.switch_step(rows)) is not None
    ]
    figures = []
    for key, title in _FIGURES:
        fname = key.replace("/", "_") + ".png"
        if plots.plot_metric(runs, key, title, os.path.join(workdir, fname), switch_at=switch_at):
            figures.append((title, fname))

    reference = plots.reference_arm(runs)
    base = [rows for n, rows in runs.items() if arm_of(n) == reference]
    finals = [v for r in base if np.isfinite(v := last(r, VAL_ACC))]
    target = float(np.mean(finals)) if finals else math.nan
    switch_text = (
        ", and switched on mid-training (switch)"
        if any(arm_of(n) == "switch" for n in runs)
        else ""
    )
    arms_text = (
        f"SAAR off (baseline) and on (cleaner){switch_text}"
        if reference == "baseline"
        else ", ".join(report_correction.ARM_TEXT.get(a, a) for a in plots.arms(runs))
    )
    lines = [
        f"# CLEANER miniature study ({mode} mode)",
        "",
        "Tiny Qwen3-shaped model, synthetic tool-use arithmetic, cold-start SFT then GRPO with "
        f"{arms_text}, same SFT checkpoint and seeds.",
        "",
        f"SFT corpus: {dict(corpus_stats)}",
        "",
    ]
    lines += _runs_table(runs, target, reference)
    lines += _premise_section(premise) if premise else []
    lines += _design_section(design) if design else []
    lines += _arms_section(runs, target, reference)
    lines += report_correction.key_table(runs, evals or {}, timings, reference)
    lines += report_correction.off_policy_section(runs)
    lines += evals_section(evals) if evals else []
    lines += _claims_section(runs, design, evals)
    lines += credit_section(runs)
    lines += timing_section(runs, timings)
    lines += ["", "## Figures", ""]
    lines += [
        "Mean over seeds (thick), 95% band over seeds (shaded; none with one seed), each seed "
        "(thin); dashed: the step where the switch arm turned SAAR on.",
        "",
    ]
    lines += [f"![{title}]({fname})" for title, fname in figures]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
