"""Where GRPO's credit goes on failed tool calls: the quantity SAAR changes.

Under outcome reward a trajectory "failed call -> recovery -> answer" gets the advantage of its
answer, and the failed call's tokens get that credit too. SAAR replaces the failed call of a
recovered trajectory with the successful correction, so that credit goes to a clean call instead.
Whether this lowers the first-call failure rate therefore depends on the sign of the credit the
baseline gives recovered trajectories, E[A | recovered]: the paper's premise ("erroneous actions
are reinforced alongside successful outcomes") is E[A | recovered] > 0. If recovering costs the
answer (a recovered trajectory is right less often than a clean one), E[A | recovered] < 0: the
baseline already pushes against failed calls through those trajectories, and SAAR, by purifying
them, takes that push away.

`credit_diagnostics` measures this on one batch of rollouts: the trainer logs it every step as
`credit/*` in both arms. In the baseline arm, `failed_call_credit_baseline` is the mean of
A * [a failed call is in the trained trajectory] (negative: GRPO pushes against failed calls)
and `failed_call_credit_saar` what it would be had SAAR purified the recovered ones, holding the
outcomes fixed. (With SAAR the continuation after a spliced call is generated from the clean
context, so real outcomes differ; this is the credit assignment effect alone.) In the SAAR arm,
"recovered" means SAAR spliced a successful retry in, and `adv_recovered` is the credit the
clean correction gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cleaner_jax.rl.advantages import grpo_advantages


@dataclasses.dataclass(frozen=True)
class CallOutcome:
    """One trajectory: its answer, and its tool calls' fate."""

    correct: bool
    first_failed: bool  # a call written without a failure in sight failed
    recovered: bool = False  # ... and a later call of the trajectory succeeded


def call_outcome(trajectory, correct: bool) -> CallOutcome:
    """`trajectory` (a `saar.Trajectory`, purified or not) and its answer's correctness as a
    CallOutcome: "failed" is a failed first-attempt call (`saar/stats.py`); "recovered" is a
    SAAR splice when SAAR ran, else a successful call after the first failing one."""
    st = trajectory.stats
    failed = st.first_attempt_calls > st.first_attempt_successes
    if st.saar_enabled:
        recovered = st.rollbacks_recovered > 0
    else:
        tools = [seg.failures for seg in trajectory.segments if seg.role == "tool"]
        first = next((i for i, f in enumerate(tools) if f), len(tools))
        recovered = any(f == 0 for f in tools[first + 1 :])
    return CallOutcome(correct=bool(correct), first_failed=failed, recovered=failed and recovered)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def credit_diagnostics(
    outcomes: Sequence[CallOutcome],
    n: int,
    advantages: Sequence[float] | None = None,
    eps: float = 1e-6,
) -> dict:
    """Summary of `outcomes`, grouped n per prompt in order (as the trainer's rollouts are).
    `advantages`: the ones trained on; by default GRPO's (`rl/advantages.py`) of the outcomes'
    correctness. Means over no trajectory are NaN."""
    if n < 1 or len(outcomes) % n:
        raise ValueError(f"{len(outcomes)} outcomes do not split into groups of n={n}")
    if any(o.recovered and not o.first_failed for o in outcomes):
        raise ValueError("an outcome is marked recovered without a failed first call")
    acc = np.array([o.correct for o in outcomes], float).reshape(-1, n)
    bug = np.array([o.first_failed for o in outcomes]).reshape(-1, n)
    rec = np.array([o.recovered for o in outcomes]).reshape(-1, n)
    unrec = bug & ~rec
    if advantages is None:
        adv = grpo_advantages(acc.reshape(-1), n, eps).reshape(-1, n)
    elif len(advantages) != len(outcomes):
        raise ValueError(f"{len(advantages)} advantages for {len(outcomes)} outcomes")
    else:
        adv = np.asarray(advantages, float).reshape(-1, n)
    mean_acc = acc.mean(1)
    return {
        "trajectories": int(acc.size),
        "groups": int(acc.shape[0]),
        "accuracy": _mean(acc),
        "mixed_group_frac": _mean((mean_acc > 0) & (mean_acc < 1)),
        "first_call_failure_rate": _mean(bug),
        "recovery_rate": float(rec.sum() / bug.sum()) if bug.any() else float("nan"),
        "acc_clean": _mean(acc[~bug]),
        "acc_recovered": _mean(acc[rec]),
        "acc_unrecovered": _mean(acc[unrec]),
        "adv_clean": _mean(adv[~bug]),
        "adv_recovered": _mean(adv[rec]),
        "adv_unrecovered": _mean(adv[unrec]),
        # Mean over trajectories of A * [the trained trajectory holds a failed call]: negative
        # means GRPO pushes against failed calls. Without SAAR every failed first call stays in;
        # with it only the unrecovered ones do.
        "failed_call_credit_baseline": float((adv * bug).mean()),
        "failed_call_credit_saar": float((adv * unrec).mean()),
    }
