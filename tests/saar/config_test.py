"""SaarConfig/RolloutLimits validation, stats aggregation, and the no-JAX import guarantee."""

import dataclasses
import subprocess
import sys

import pytest

from cleaner_jax.saar import RolloutLimits, SaarConfig, TrajectoryStats, aggregate_stats


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": 1.5}, "gamma"),
        ({"max_retries": -1}, "max_retries"),
        ({"rollback_probability": 2.0}, "rollback_probability"),
        ({"similarity_on": "ast"}, "similarity_on"),
        ({"similarity": "rapidfuzz"}, "similarity"),
    ],
)
def test_saar_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaarConfig(**kwargs)


@pytest.mark.parametrize("name", ["max_turns", "max_response_tokens", "max_calls_per_turn"])
@pytest.mark.parametrize("value", [0, 1.5])
def test_rollout_limits_reject_bad_values(name, value):
    with pytest.raises(ValueError, match=name):
        RolloutLimits(**{name: value})


@pytest.mark.parametrize("name", ["max_tool_attempts", "max_tool_response_chars"])
@pytest.mark.parametrize("value", [-1, 1.5])
def test_rollout_limits_where_zero_means_off_reject_bad_values(name, value):
    RolloutLimits(**{name: 0})
    with pytest.raises(ValueError, match=name):
        RolloutLimits(**{name: value})


def test_reference_switches_reject_bad_values():
    with pytest.raises(ValueError, match="extra_calls"):
        RolloutLimits(extra_calls="drop")
    with pytest.raises(ValueError, match="max_rounds_before_disable"):
        SaarConfig(max_rounds_before_disable=-1)
    with pytest.raises(ValueError, match="exhaustion_note"):
        SaarConfig(exhaustion_note="verl")
    with pytest.raises(ValueError, match="similarity_on"):
        SaarConfig(similarity_on="turn")


def test_tool_attempt_cap_is_a_rollout_limit_only():
    """One definition: the cap applies with SAAR on or off, so it is not a SAAR setting."""
    assert "max_tool_attempts" not in {f.name for f in dataclasses.fields(SaarConfig)}
    with pytest.raises(TypeError):
        SaarConfig(max_tool_attempts=2)


def test_defaults_are_the_papers():
    c = SaarConfig()
    assert (c.gamma, c.max_retries, c.rollback_probability) == (0.5, 3, 1.0)
    assert (c.similarity_on, c.similarity, c.disable_after_exhaustion) == ("code", "tokens", True)
    limits = RolloutLimits()
    assert (limits.max_turns, limits.max_response_tokens, limits.max_tool_attempts) == (
        16,
        20480,
        30,
    )


def test_aggregate_stats_golden():
    a = TrajectoryStats(
        saar_enabled=True,
        turns=4,
        tool_calls=3,
        first_attempt_calls=2,
        first_attempt_successes=1,
        rollbacks_triggered=1,
        rollbacks_recovered=1,
        shallow=1,
        failure_types={"NameError": 1},
    )
    b = TrajectoryStats(
        turns=2,
        tool_calls=1,
        first_attempt_calls=2,
        first_attempt_successes=2,
        final_tool_failures=1,
        failure_types={"NameError": 1, "Timeout": 2},
    )
    out = aggregate_stats([a, b])
    assert out["trajectories"] == 2
    assert out["tool_calls_sum"] == 4 and out["tool_calls_per_traj"] == 2
    assert out["first_attempt_success_rate"] == 0.75
    assert out["first_attempt_failure_rate"] == 0.25
    assert out["rollback_recovery_rate"] == 1.0
    assert out["shallow_frac"] == 1.0
    assert out["saar_enabled_frac"] == 0.5
    assert out["final_tool_failures_per_traj"] == 0.5
    assert out["failure_type/NameError"] == 2 and out["failure_type/Timeout"] == 2
    assert aggregate_stats([]) == {"trajectories": 0.0}


def test_saar_imports_without_jax_or_numpy():
    code = (
        "import sys, cleaner_jax.saar, cleaner_jax.saar.bench, cleaner_jax.saar.testing;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'numpy',"
        " 'transformers', 'torch')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_runs_small():
    from cleaner_jax.saar.bench import bench_rollback_host_time, bench_similarity

    out = bench_rollback_host_time(n_tokens=3000, events=2, repeats=1)
    assert out["rollback_events"] == 2 and out["saar_ms_per_rollback_20k"] > 0
    sim = bench_similarity(lengths=(200,), repeats=1)
    assert sim["similarity_tokens_score_200"] > 0.9
