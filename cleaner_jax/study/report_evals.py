"""The report's held-out evaluation: pass@k with and without test-time SAAR, and claim (d).

Inputs are `runtime/evaluation.py` summaries by model name, optionally with the per-problem
records of each mode (`records` {"off": [...], "on": [...]}), which give pass@1 a bootstrap
interval over problems (the samples of a problem are correlated, so the problems are the units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cleaner_jax.study import stats

NO_RECORDS = "per-problem records not given"


def fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if v is not None and np.isfinite(v) else "n/a"


def pass1_cell(summary: Mapping | None, records: list[Mapping] | None) -> str:
    """pass@1 with a bootstrap over problems (samples of one problem are not independent)."""
    if summary is None:
        return "n/a"
    p1 = fmt(summary.get("pass@1", summary.get("pass@k", {}).get("1")))
    if not records:
        return f"{p1} ({NO_RECORDS})"
    ci = stats.bootstrap_ci([r["num_correct"] / _samples(r) for r in records], np.mean)
    return (
        f"{p1} (one problem, no interval)" if ci.n == 1 else f"{p1} [{fmt(ci.low)}, {fmt(ci.high)}]"
    )


def _samples(record: Mapping) -> int:
    s = record.get("samples", record.get("n"))
    return len(s) if isinstance(s, list) else int(s)


def evals_section(evals: Mapping[str, Mapping]) -> list[str]:
    """Held-out pass@k off / on test-time SAAR (`runtime/evaluation.py` summaries)."""
    modes_of = {name: e.get("modes", {}) for name, e in evals.items()}
    ks = sorted(
        {int(k) for ms in modes_of.values() for m in ms.values() for k in m.get("pass@k", ())}
    )
    ks = [k for k in ks if k != 1]
    lines = [
        "",
        "## Held-out pass@k with and without test-time SAAR",
        "",
        "pass@1 with a 95% percentile bootstrap over problems (the samples of a problem are "
        "correlated, so the problems are the units). Latency overhead: rollout wall time with "
        "SAAR / without - 1, total and median per problem.",
        "",
        "| model | problems x samples | pass@1 off | pass@1 on | "
        + "".join(f"pass@{k} off / on | " for k in ks)
        + "tool failures / final traj off / on | latency overhead |",
        "|---|---|---|---|" + "---|" * len(ks) + "---|---|",
    ]
    for name, e in evals.items():
        modes, records = modes_of[name], e.get("records") or {}
        any_mode = next(iter(modes.values()), {})
        size = f"{any_mode.get('problems', '?')} x {any_mode.get('n', '?')}"
        cells = [pass1_cell(modes.get(m), records.get(m)) for m in ("off", "on")]
        off, on = modes.get("off", {}), modes.get("on", {})
        for k in ks:
            cells.append(f"{fmt(off.get('pass@k', {}).get(str(k)))} / ")
            cells[-1] += fmt(on.get("pass@k", {}).get(str(k)))
        fails = [m.get("tool_stats", {}).get("final_tool_failures_per_traj") for m in (off, on)]
        cells.append(f"{fmt(fails[0])} / {fmt(fails[1])}")
        over = e.get("saar_overhead") or {}
        total, median = over.get("total_overhead"), over.get("per_problem_overhead_median")
        cells.append(
            "n/a (needs both modes)"
            if total is None
            else f"{100 * total:+.1f}%"
            + (f" (median per problem {100 * median:+.1f}%)" if median is not None else "")
        )
        lines.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    return lines


def _pass1_diffs(off: list[Mapping] | None, on: list[Mapping] | None) -> list[float] | None:
    """pass@1 on - off per problem, paired by id (by order if the records carry no id)."""
    if not off or not on:
        return None
    if all("id" in r for r in [*off, *on]):
        on_of = {r["id"]: r for r in on}
        pairs = [(r, on_of[r["id"]]) for r in off if r["id"] in on_of]
    elif len(off) == len(on):
        pairs = list(zip(off, on, strict=True))
    else:
        return None
    p1 = lambda r: r["num_correct"] / _samples(r)
    return [p1(b) - p1(a) for a, b in pairs]


def test_time_claims(evals: Mapping[str, Mapping]) -> list[str]:
    """(d) pass@1 on - off per evaluated model, paired by problem where records are given."""
    lines = []
    for name, e in evals.items():
        modes, records = e.get("modes", {}), e.get("records") or {}
        if not ("off" in modes and "on" in modes):
            continue
        label = f"- **(d) Test-time SAAR, {name}** (pass@1 on - off, paired by problem): "
        d = _pass1_diffs(records.get("off"), records.get("on"))
        if d is None:
            diff = modes["on"].get("pass@1", math.nan) - modes["off"].get("pass@1", math.nan)
            lines.append(label + f"{diff:+.3f}; {NO_RECORDS}, no interval.")
        elif len(d) < 2:
            lines.append(
                label + f"{fmt(np.mean(d)) if d else 'n/a'}; {len(d)} paired problem(s), "
                "no interval."
            )
        else:
            said = stats.describe(
                stats.bootstrap_ci(d, np.mean), f"pass@1 ({name})", "Test-time SAAR"
            )
            lines.append(label + f"bootstrap over {len(d)} problems: {said}")
    return lines
