"""Per-trajectory SAAR/tool statistics and their aggregation over a batch.

Definitions (DESIGN §1 step 10):
  tool_calls: tool calls the model made, retries included (malformed ones too, since they are
    the model's error; calls refused by the attempt cap are not counted).
  first_attempt_calls / first_attempt_successes: calls written without a failed tool result in
    sight: neither SAAR retries nor, in either arm, the turn right after a visible tool failure
    (the baseline's in-context correction). The same footing for both arms: how often the
    model's uncorrected calls fail.
  rollbacks_triggered: failing positions at which SAAR sampled at least one retry.
  rollbacks_recovered: of those, positions where a retry succeeded and was spliced in.
  rollbacks_failed: positions left unrecovered (retries exhausted, retry answered without a call,
    budget hit during a retry).
  shallow / deep: splices of each kind (one per retry that contained a call).
  failure_types: model errors by type over every attempt.
  infra_failures: calls the executor could not run (never model errors).
  final_tool_failures: model errors still visible in the final trajectory (the paper's "tool
    failures per trajectory").
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass
class TrajectoryStats:
    saar_enabled: bool = False
    turns: int = 0
    retries: int = 0
    tool_calls: int = 0
    first_attempt_calls: int = 0
    first_attempt_successes: int = 0
    rollbacks_triggered: int = 0
    rollbacks_recovered: int = 0
    rollbacks_failed: int = 0
    shallow: int = 0
    deep: int = 0
    exhaustions: int = 0
    infra_failures: int = 0
    attempt_cap_hits: int = 0
    repaired_calls: int = 0
    rescored_tokens: int = 0
    discarded_tokens: int = 0
    response_tokens_spent: int = 0
    final_tool_failures: int = 0
    failure_types: dict[str, int] = dataclasses.field(default_factory=dict)
    saar_host_seconds: float = 0.0

    def count_failure(self, error_type: str | None) -> None:
        key = error_type or "unknown"
        self.failure_types[key] = self.failure_types.get(key, 0) + 1


_SUMMED = (
    "retries",
    "tool_calls",
    "first_attempt_calls",
    "first_attempt_successes",
    "rollbacks_triggered",
    "rollbacks_recovered",
    "rollbacks_failed",
    "shallow",
    "deep",
    "exhaustions",
    "infra_failures",
    "attempt_cap_hits",
    "repaired_calls",
    "rescored_tokens",
    "discarded_tokens",
    "final_tool_failures",
)


def aggregate_stats(stats: Sequence[TrajectoryStats]) -> dict[str, float]:
    """Batch metrics: sums of counters, per-trajectory means and the derived rates.

    Rates whose denominator is 0 are reported as 0.0 so a step without tool calls logs cleanly.
    """
    n = len(stats)
    out: dict[str, float] = {"trajectories": float(n)}
    if n == 0:
        return out
    for name in _SUMMED:
        total = float(sum(getattr(s, name) for s in stats))
        out[f"{name}_sum"] = total
        out[f"{name}_per_traj"] = total / n
    out["saar_enabled_frac"] = sum(s.saar_enabled for s in stats) / n
    out["turns_mean"] = sum(s.turns for s in stats) / n
    out["saar_host_seconds_sum"] = sum(s.saar_host_seconds for s in stats)

    def rate(num: str, den: str) -> float:
        d = out[f"{den}_sum"]
        return out[f"{num}_sum"] / d if d else 0.0

    out["first_attempt_success_rate"] = rate("first_attempt_successes", "first_attempt_calls")
    out["first_attempt_failure_rate"] = (
        1.0 - out["first_attempt_success_rate"] if out["first_attempt_calls_sum"] else 0.0
    )
    out["rollback_recovery_rate"] = rate("rollbacks_recovered", "rollbacks_triggered")
    splices = out["shallow_sum"] + out["deep_sum"]
    out["shallow_frac"] = out["shallow_sum"] / splices if splices else 0.0
    failures: collections.Counter[str] = collections.Counter()
    for s in stats:
        failures.update(s.failure_types)
    for error_type, count in sorted(failures.items()):
        out[f"failure_type/{error_type}"] = float(count)
    return out
