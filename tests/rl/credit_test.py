"""credit_diagnostics and call_outcome: hand-computed golden values and input checks."""

import math

import pytest

from cleaner_jax.rl.credit import CallOutcome, call_outcome, credit_diagnostics
from cleaner_jax.saar.stats import TrajectoryStats
from cleaner_jax.saar.types import Provenance, Segment, Trajectory

CLEAN_RIGHT = CallOutcome(correct=True, first_failed=False)
RECOVERED_RIGHT = CallOutcome(correct=True, first_failed=True, recovered=True)
RECOVERED_WRONG = CallOutcome(correct=False, first_failed=True, recovered=True)
UNRECOVERED = CallOutcome(correct=False, first_failed=True)


def test_golden_values():
    # Group 1: acc (1, 1, 1, 0): mean 3/4, sample std (GRPO's, ddof=1) 1/2,
    # A = (1/2, 1/2, 1/2, -3/2). Group 2: all right, every A = 0 (no signal), one recovered.
    d = credit_diagnostics(
        [CLEAN_RIGHT, CLEAN_RIGHT, RECOVERED_RIGHT, UNRECOVERED]
        + [CLEAN_RIGHT, CLEAN_RIGHT, CLEAN_RIGHT, RECOVERED_RIGHT],
        n=4,
    )
    up, down = 0.5, 1.5
    assert d["trajectories"] == 8 and d["groups"] == 2
    assert d["mixed_group_frac"] == 0.5
    assert d["first_call_failure_rate"] == pytest.approx(3 / 8)
    assert d["recovery_rate"] == pytest.approx(2 / 3)
    assert d["acc_recovered"] == 1.0 and d["acc_unrecovered"] == 0.0
    assert d["adv_recovered"] == pytest.approx(up / 2, rel=1e-5)
    assert d["adv_unrecovered"] == pytest.approx(-down, rel=1e-5)
    # Baseline: the recovered-right call's +1/2 offsets part of the unrecovered -3/2.
    assert d["failed_call_credit_baseline"] == pytest.approx((up - down) / 8, rel=1e-5)
    assert d["failed_call_credit_saar"] == pytest.approx(-down / 8, rel=1e-5)


def test_recovery_that_costs_the_answer_makes_the_baseline_push_harder():
    # A recovered trajectory that ends wrong gives its failed call negative credit in the
    # baseline; SAAR would move it to the clean call, so the baseline's push is the larger one.
    d = credit_diagnostics([CLEAN_RIGHT, CLEAN_RIGHT, CLEAN_RIGHT, RECOVERED_WRONG], n=4)
    assert d["adv_recovered"] < 0
    assert d["failed_call_credit_baseline"] < d["failed_call_credit_saar"] == 0.0


def test_no_failures_and_bad_inputs():
    d = credit_diagnostics([CLEAN_RIGHT] * 4, n=2)
    assert math.isnan(d["recovery_rate"]) and math.isnan(d["adv_recovered"])
    assert d["failed_call_credit_baseline"] == 0.0
    with pytest.raises(ValueError, match="groups of n=3"):
        credit_diagnostics([CLEAN_RIGHT] * 4, n=3)
    with pytest.raises(ValueError, match="recovered without a failed"):
        credit_diagnostics([CallOutcome(True, first_failed=False, recovered=True)], n=1)


def test_given_advantages_are_used_as_trained():
    outcomes = [CLEAN_RIGHT, RECOVERED_WRONG, UNRECOVERED, CLEAN_RIGHT]
    d = credit_diagnostics(outcomes, n=2, advantages=[0.5, -0.5, -2.0, 2.0])
    assert d["adv_recovered"] == -0.5 and d["adv_unrecovered"] == -2.0
    assert d["failed_call_credit_baseline"] == pytest.approx(-2.5 / 4)
    assert d["failed_call_credit_saar"] == pytest.approx(-2.0 / 4)
    with pytest.raises(ValueError, match="3 advantages for 4"):
        credit_diagnostics(outcomes, n=2, advantages=[0.0] * 3)


def _traj(tool_failures, saar=False, **stats):
    segs = [Segment.prompt([1])]
    for f in tool_failures:
        segs.append(Segment("assistant", [2], Provenance.SAMPLED, [0.0]))
        segs.append(Segment.tool([3], f))
    return Trajectory(segs, "answer", saar, TrajectoryStats(saar_enabled=saar, **stats))


def test_call_outcome_from_trajectories():
    # Baseline: fail, then the in-context fix succeeds -> recovered.
    t = _traj([1, 0], first_attempt_calls=1, first_attempt_successes=0)
    assert call_outcome(t, True) == RECOVERED_RIGHT
    # Fails twice in a row: not recovered.
    t = _traj([1, 1], first_attempt_calls=1, first_attempt_successes=0)
    assert call_outcome(t, False) == UNRECOVERED
    # A success before the first failure does not count as its recovery.
    t = _traj([0, 1], first_attempt_calls=2, first_attempt_successes=1)
    assert call_outcome(t, False) == UNRECOVERED
    assert call_outcome(_traj([0], first_attempt_calls=1, first_attempt_successes=1), 1.0) == (
        CLEAN_RIGHT
    )
    # SAAR: the purified trajectory shows no failure; the stats say what happened.
    t = _traj([0], saar=True, first_attempt_calls=1, first_attempt_successes=0)
    t.stats.rollbacks_recovered = 1
    assert call_outcome(t, False) == RECOVERED_WRONG
    t.stats.rollbacks_recovered = 0
    assert call_outcome(t, False) == UNRECOVERED
