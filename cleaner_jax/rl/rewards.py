"""Outcome rewards for finished trajectories: dispatch by ``data_source``, overlong penalty.

`RewardScorer.score_batch` turns `RewardInput`s into `RewardResult`s. The kind of check comes from
the example's ``data_source`` (substring rules, first match wins; ``extra["reward_kind"]``
overrides): ``math`` (math-verify, strict last-``\\boxed{}`` or lenient, +1/-1), ``gpqa`` (A–D
letter, +1/-1) or ``code`` (fraction of tests passed, -1 without a final ```python block or on a
SyntaxError). DAPO's soft overlong penalty is then added to the score (not to ``acc``).

Failure isolation: every check runs under a deadline (math in killable worker processes, code
under an overall timeout on top of the sandbox's per-test one) and any exception in one
trajectory's reward becomes a `RewardResult` with ``error`` set and the incorrect score; it never
raises through the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cleaner_jax.rl.rewards_code import CodeRunner, parse_code_tests, score_code_tests
from cleaner_jax.rl.rewards_math import MATH_MODES, MathVerifierPool, verify_choice

logger = logging.getLogger(__name__)

REWARD_KINDS: tuple[str, ...] = ("math", "gpqa", "code")

# Substring of the lower-cased data_source → reward kind; first match wins.
DEFAULT_DATA_SOURCE_RULES: tuple[tuple[str, str], ...] = (
    ("gpqa", "gpqa"),
    ("livecodebench", "code"),
    ("lcb", "code"),
    ("code", "code"),
    ("taco", "code"),
    ("apps", "code"),
    ("leetcode", "code"),
    ("codeforces", "code"),
    ("aime", "math"),
    ("amc", "math"),
    ("math", "math"),
    ("dapo", "math"),
    ("deepscaler", "math"),
    ("gsm8k", "math"),
    ("olympiad", "math"),
    ("numina", "math"),
)


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """One trajectory's reward. ``error`` is set when the check failed rather than the answer."""

    score: float
    acc: bool
    details: dict[str, Any]
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """What a reward needs from a finished trajectory.

    ``response`` is the text that is checked (the final assistant turn for math/GPQA/code).
    ``num_response_tokens`` counts every response token, tool outputs included;
    ``num_policy_tokens`` only those with loss mask 1 (used when the overlong penalty is set to
    count policy tokens only).
    """

    response: str
    data_source: str
    ground_truth: Any
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_response_tokens: int = 0
    num_policy_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class OverlongConfig:
    """DAPO soft overlong punishment; paper defaults."""

    enable: bool = True
    max_response_length: int = 20480
    buffer_length: int = 4096
    penalty_factor: float = 1.0
    # Tool outputs are not the policy's doing; counting them penalises tool-heavy solutions.
    count_policy_tokens_only: bool = False


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    math_mode: str = "strict"
    correct_score: float = 1.0
    incorrect_score: float = -1.0
    math_timeout_s: float = 10.0
    math_workers: int = 2
    code_test_timeout_s: float = 6.0
    code_total_timeout_s: float = 300.0
    code_max_concurrency: int = 4
    code_max_tests: int | None = None
    overlong: OverlongConfig = OverlongConfig()
    data_source_rules: tuple[tuple[str, str], ...] = DEFAULT_DATA_SOURCE_RULES
    # Kind for a data_source no rule matches; None makes such examples an error result.
    default_kind: str | None = None

    def __post_init__(self):
        if self.math_mode not in MATH_MODES:
            raise ValueError(f"math_mode {self.math_mode!r} is not one of {MATH_MODES}")
        kinds = [k for _, k in self.data_source_rules] + [self.default_kind or "math"]
        bad = sorted({k for k in kinds if k not in REWARD_KINDS})
        if bad:
            raise ValueError(f"unknown reward kinds {bad}; use one of {REWARD_KINDS}")


def overlong_penalty(
    num_tokens: int,
    *,
    max_response_length: int = 20480,
    buffer_length: int = 4096,
    penalty_factor: float = 1.0,
) -> float:
    """DAPO soft overlong penalty: 0 up to ``max - buffer`` tokens, then linear down to -factor.

    ``min(-(n - (max - buffer)) / buffer * factor, 0)``, as in DAPO/verl (not clamped below, but
    generation never exceeds ``max_response_length``).
    """
    if buffer_length <= 0 or buffer_length > max_response_length:
        raise ValueError(
            f"overlong buffer_length must be in (0, max_response_length={max_response_length}], "
            f"got {buffer_length}"
        )
    exceed = num_tokens - (max_response_length - buffer_length)
    return min(-exceed / buffer_length * penalty_factor, 0.0)


def reward_kind(
    data_source: str,
    extra: Mapping[str, Any] | None = None,
    rules: Sequence[tuple[str, str]] = DEFAULT_DATA_SOURCE_RULES,
    default_kind: str | None = None,
) -> str:
    """Reward kind for an example; raises ValueError when nothing matches and no default."""
    if extra and extra.get("reward_kind"):
        kind = str(extra["reward_kind"])
        if kind not in REWARD_KINDS:
            raise ValueError(f"extra['reward_kind']={kind!r} is not one of {REWARD_KINDS}")
        return kind
    source = data_source.lower()
    for pattern, kind in rules:
        if pattern in source:
            return kind
    if default_kind is not None:
        return default_kind
    raise ValueError(
        f"no reward rule matches data_source {data_source!r}; add a (substring, kind) rule to "
        "RewardConfig.data_source_rules, set default_kind, or set extra['reward_kind']"
    )


class RewardScorer:
    """Scores trajectories; owns a `MathVerifierPool` unless one is passed in.

    ``code_runner`` (the sandbox pool) is needed only for code examples; without it they come
    back as error results.
    """

    def __init__(
        self,
        config: RewardConfig | None = None,
        *,
        code_runner: CodeRunner | None = None,
        math_verifier: MathVerifierPool | None = None,
    ):
        self.config = config or RewardConfig()
        self.code_runner = code_runner
        self._owns_verifier = math_verifier is None
        self._math_verifier = math_verifier

    @property
    def math_verifier(self) -> MathVerifierPool:
        if self._math_verifier is None:
            self._math_verifier = MathVerifierPool(
                num_workers=self.config.math_workers, timeout_s=self.config.math_timeout_s
            )
        return self._math_verifier

    def _penalty(self, item: RewardInput) -> float:
        ov = self.config.overlong
        if not ov.enable:
            return 0.0
        n = item.num_response_tokens
        if ov.count_policy_tokens_only:
            if item.num_policy_tokens is None:
                raise ValueError(
                    "overlong.count_policy_tokens_only is set but RewardInput.num_policy_tokens "
                    "is None; pass the loss-mask token count"
                )
            n = item.num_policy_tokens
        return overlong_penalty(
            n,
            max_response_length=ov.max_response_length,
            buffer_length=ov.buffer_length,
            penalty_factor=ov.penalty_factor,
        )

    async def _score_outcome(self, item: RewardInput, kind: str) -> RewardResult:
        cfg = self.config
        if kind in ("math", "gpqa"):
            if kind == "math":
                verdict = await asyncio.to_thread(
                    self.math_verifier.verify,
                    item.response,
                    str(item.ground_truth),
                    cfg.math_mode,
                )
            else:
                verdict = verify_choice(item.response, str(item.ground_truth))
            score = cfg.correct_score if verdict.correct else cfg.incorrect_score
            details = {"pred": verdict.pred, "timed_out": verdict.timed_out}
            return RewardResult(score, verdict.correct, details, error=verdict.error)
        if self.code_runner is None:
            raise RuntimeError("code reward needs a sandbox: pass code_runner= to RewardScorer")
        tests = parse_code_tests(item.ground_truth, item.extra.get("fn_name"))
        result = await asyncio.wait_for(
            score_code_tests(
                item.response,
                tests,
                self.code_runner,
                timeout_s=cfg.code_test_timeout_s,
                max_concurrency=cfg.code_max_concurrency,
                max_tests=cfg.code_max_tests,
            ),
            timeout=cfg.code_total_timeout_s,
        )
        return RewardResult(result.score, result.passed == result.total, dict(result.details))

    async def score(self, item: RewardInput) -> RewardResult:
        """One trajectory's reward; never raises (errors become ``RewardResult.error``)."""
        cfg = self.config
        kind = "unknown"
        try:
            kind = reward_kind(
                item.data_source, item.extra, cfg.data_source_rules, cfg.default_kind
            )
            outcome = await self._score_outcome(item, kind)
        except Exception as e:  # noqa: BLE001 - isolated per trajectory, recorded and logged
            error = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            logger.warning(
                "reward check failed for data_source=%r (%s): %s", item.data_source, kind, error
            )
            outcome = RewardResult(cfg.incorrect_score, False, {}, error=error)
        try:
            penalty = self._penalty(item)
        except ValueError as e:
            logger.warning("overlong penalty failed: %s", e)
            return dataclasses.replace(outcome, error=outcome.error or str(e))
        details = {**outcome.details, "kind": kind, "overlong_penalty": penalty}
        return RewardResult(outcome.score + penalty, outcome.acc, details, outcome.error)

    async def score_batch(self, items: Sequence[RewardInput]) -> list[RewardResult]:
        """Scores all items concurrently; the result list is aligned with `items`."""
        return list(await asyncio.gather(*(self.score(item) for item in items)))

    def score_batch_sync(self, items: Sequence[RewardInput]) -> list[RewardResult]:
        """`score_batch` for callers without a running event loop."""
        return asyncio.run(self.score_batch(items))

    def close(self) -> None:
        if self._owns_verifier and self._math_verifier is not None:
            self._math_verifier.close()
            self._math_verifier = None

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reward_metrics(results: Sequence[RewardResult]) -> dict[str, float]:
    """Batch summary for logging: mean score/accuracy, error and timeout counts, overlong stats."""
    n = max(len(results), 1)
    penalties = [r.details.get("overlong_penalty", 0.0) for r in results]
    return {
        "reward/mean": sum(r.score for r in results) / n,
        "reward/acc": sum(r.acc for r in results) / n,
        "reward/errors": float(sum(r.error is not None for r in results)),
        "reward/timeouts": float(sum(bool(r.details.get("timed_out")) for r in results)),
        "reward/overlong_penalty_mean": sum(penalties) / n,
        "reward/overlong_frac": sum(p < 0 for p in penalties) / n,
    }
