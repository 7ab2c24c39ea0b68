"""The multi-turn tool-use rollout with the SAAR rollback controller (DESIGN §1 steps 1-10).

One coroutine per trajectory: sample an assistant turn, parse its tool calls, execute them,
append the tool message, repeat until the turn answers without a call or a budget runs out.
With SAAR on, a turn whose calls fail with a *model* error is not kept as is:

  1. checkpoint = the context before the failing turn;
  2. the error is shown as a tool message and a retry turn is sampled (the self-correction);
  3. the retry's call is compared with the failed call: similarity >= gamma -> shallow (keep the
     failing turn's reasoning tokens, replace its call tokens), else deep (replace the turn);
  4. the context is rolled back to the checkpoint and the spliced turn takes the failed turn's
     place; its calls are executed. Success: continue from the purified context (the failed call
     and its error are gone). Failure: back to 2 with the spliced turn as the failing turn;
  5. after `max_retries` failed retries the last failed turn and its error stay, with an
     exhaustion note when the position failed >= 2 times; rollback is then off
     (`disable_after_exhaustion`);
  6. a retry without a tool call keeps failed turn + error + that answer, rollback off; a budget
     hit during a retry restores the checkpoint and ends the trajectory.

Several calls in one turn: they are executed concurrently (results in call order) and answered
by one tool message; the turn failed if any call has a model error; SAAR compares the first
failed call with every call of the retry and uses the highest similarity, and the call part
replaced by a shallow splice runs from the first call to the end of the turn.

Budgets: every generated token and every tool-message token counts against
`max_response_tokens`, including retries and error messages that are rolled back, so a
trajectory never exceeds it. Every generation, retries included, counts against `max_turns`.
Infrastructure failures are shown to the model but are not model errors: no rollback.

Spliced segments were sampled after the error message, so their behaviour log-probs are stale;
they are re-scored under the purified context with `Policy.score` right after the splice (the
engine needs that prefill for the next turn anyway) or left marked stale.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from .config import RolloutLimits, SaarConfig
from .protocols import Policy, ToolRunner, TurnCodec
from .similarity import call_similarity, is_shallow
from .stats import TrajectoryStats
from .types import (
    ATTEMPT_LIMIT_ERROR,
    FORMAT_ERROR,
    TOO_MANY_CALLS_ERROR,
    Generation,
    Provenance,
    Segment,
    ToolCall,
    ToolResult,
    Trajectory,
    head_segments,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def is_model_error(result: ToolResult) -> bool:
    """A failure the model caused (SAAR rolls these back); infra failures and the global
    attempt cap are not the model's fault."""
    return not result.ok and not result.infra_failure and result.error_type != ATTEMPT_LIMIT_ERROR


def draw_saar_enabled(seed: int | str, rollback_probability: float) -> bool:
    """The per-trajectory Bernoulli draw: same seed, same decision, in any process."""
    if rollback_probability >= 1.0:
        return True
    if rollback_probability <= 0.0:
        return False
    return random.Random(seed).random() < rollback_probability


class _Rollout:
    """State of one trajectory's rollout."""

    def __init__(
        self,
        policy: Policy,
        tools: ToolRunner,
        codec: TurnCodec,
        saar: SaarConfig | None,
        limits: RolloutLimits,
        seed: int | str,
    ) -> None:
        self.policy, self.tools, self.codec, self.saar, self.limits = (
            policy,
            tools,
            codec,
            saar,
            limits,
        )
        enabled = saar is not None and draw_saar_enabled(seed, saar.rollback_probability)
        self.stats = TrajectoryStats(saar_enabled=enabled)
        self.rollback_on = enabled
        self.attempt_cap = limits.max_tool_attempts
        self.segments: list[Segment] = []
        self.tokens_used = 0
        self.turns_used = 0
        self.attempts = 0
        self.termination = ""
        # Time spent awaiting the policy/tools, subtracted from SAAR's host time.
        self.awaited_s = 0.0

    async def _timed(self, awaitable: Awaitable[_T]) -> _T:
        t0 = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.awaited_s += time.perf_counter() - t0

    def _context(self) -> list[int]:
        out: list[int] = []
        for seg in self.segments:
            out.extend(seg.tokens)
        return out

    def _out_of_budget(self, extra_tokens: int = 0) -> str:
        """Why no further generation fits after `extra_tokens` more tokens ("" if one does)."""
        if self.tokens_used + extra_tokens >= self.limits.max_response_tokens:
            return "length"
        if self.turns_used >= self.limits.max_turns:
            return "max_turns"
        return ""

    async def _generate(self, context: list[int]) -> Generation:
        remaining = self.limits.max_response_tokens - self.tokens_used
        gen = await self._timed(self.policy.generate(context, remaining))
        if len(gen.tokens) > remaining:
            raise ValueError(
                f"Policy.generate returned {len(gen.tokens)} tokens for max_new_tokens="
                f"{remaining}; the policy must respect max_new_tokens or the response budget "
                "cannot be guaranteed."
            )
        self.tokens_used += len(gen.tokens)
        self.turns_used += 1
        return gen

    async def _execute(self, calls: Sequence[ToolCall], first_attempt: bool) -> list[ToolResult]:
        results: list[ToolResult | None] = [None] * len(calls)
        counted: list[int] = []
        to_run: list[int] = []
        for i, call in enumerate(calls):
            if i >= self.limits.max_calls_per_turn:
                self.stats.tool_calls += 1
                counted.append(i)
                results[i] = ToolResult(
                    ok=False,
                    text=(
                        f"[tool_call_error] {len(calls)} tool calls in one turn; only the first "
                        f"{self.limits.max_calls_per_turn} were executed. Make at most "
                        f"{self.limits.max_calls_per_turn} calls per turn."
                    ),
                    error_type=TOO_MANY_CALLS_ERROR,
                )
                continue
            if self.attempts >= self.attempt_cap:
                self.stats.attempt_cap_hits += 1
                results[i] = ToolResult(
                    ok=False,
                    text=(
                        f"[tool_call_error] Tool call limit reached ({self.attempt_cap} calls in "
                        "this conversation); the call was not executed. Answer without tools."
                    ),
                    error_type=ATTEMPT_LIMIT_ERROR,
                )
                continue
            self.attempts += 1
            self.stats.tool_calls += 1
            self.stats.repaired_calls += int(call.repaired)
            counted.append(i)
            if call.error is not None:
                results[i] = ToolResult(
                    ok=False, text=call.error, error_type=call.error_type or FORMAT_ERROR
                )
            else:
                to_run.append(i)
        if to_run:
            ran = await self._timed(asyncio.gather(*(self.tools.run(calls[i]) for i in to_run)))
            for i, result in zip(to_run, ran, strict=True):
                results[i] = result
        final = [r for r in results if r is not None]
        if len(final) != len(calls):
            raise RuntimeError("internal error: a tool call got no result")
        for i in counted:
            result = final[i]
            if first_attempt:
                self.stats.first_attempt_calls += 1
                self.stats.first_attempt_successes += int(result.ok)
            if result.infra_failure:
                self.stats.infra_failures += 1
            elif is_model_error(result):
                self.stats.count_failure(result.error_type)
        return final

    def _append_tool_message(self, results: Sequence[ToolResult], note: str | None) -> bool:
        tokens = self.codec.encode_tool_response([r.text for r in results], note)
        if self.tokens_used + len(tokens) > self.limits.max_response_tokens:
            return False
        self.tokens_used += len(tokens)
        failures = sum(is_model_error(r) for r in results)
        self.segments.append(Segment.tool(tokens, failures))
        self.last_tool_failed = failures > 0
        return True

    async def run(self, prompt_tokens: Sequence[int]) -> Trajectory:
        self.segments = [Segment.prompt(prompt_tokens)]
        self.last_tool_failed = False
        while True:
            self.termination = self._out_of_budget()
            if self.termination:
                break
            context = self._context()
            gen = await self._generate(context)
            self.segments.append(gen.segment())
            if gen.finish_reason == "length":
                self.termination = "length"
                break
            calls = self.codec.parse_calls(gen.tokens)
            if not calls:
                self.termination = "answer"
                break
            if self.turns_used >= self.limits.max_turns:
                # No turn left to read the results: like the reference, do not execute.
                self.termination = "max_turns"
                break
            # A call written right after a visible tool failure is a correction, in either arm.
            results = await self._execute(calls, first_attempt=not self.last_tool_failed)
            note = None
            if self.rollback_on and any(is_model_error(r) for r in results):
                outcome = await self._rollback(context, calls, results)
                if outcome is None:
                    break
                results, note = outcome
            if not self._append_tool_message(results, note):
                self.termination = "length"
                break
        return self._finish()

    def _finish(self) -> Trajectory:
        traj = Trajectory(
            segments=self.segments,
            termination=self.termination,
            saar_enabled=self.stats.saar_enabled,
            stats=self.stats,
        )
        n_response = len(traj.response_tokens)
        if n_response > self.limits.max_response_tokens or n_response > self.tokens_used:
            raise RuntimeError(
                f"internal error: response of {n_response} tokens with {self.tokens_used} spent "
                f"and a budget of {self.limits.max_response_tokens}"
            )
        self.stats.turns = self.turns_used
        self.stats.response_tokens_spent = self.tokens_used
        self.stats.discarded_tokens = self.tokens_used - n_response
        self.stats.final_tool_failures = traj.tool_failures()
        return traj

    async def _rollback(
        self, base_tokens: list[int], calls: list[ToolCall], results: list[ToolResult]
    ) -> tuple[list[ToolResult], str | None] | None:
        """SAAR at one failing position (`base_tokens`: the context the failing turn was sampled
        from, i.e. the checkpoint). Returns the results (and note) of the turn that now stands
        at the position, or None when the trajectory terminated."""
        t0, awaited0 = time.perf_counter(), self.awaited_s
        try:
            return await self._rollback_steps(base_tokens, calls, results)
        finally:
            elapsed = time.perf_counter() - t0 - (self.awaited_s - awaited0)
            self.stats.saar_host_seconds += elapsed

    async def _rollback_steps(
        self, base_tokens: list[int], calls: list[ToolCall], results: list[ToolResult]
    ) -> tuple[list[ToolResult], str | None] | None:
        saar = self.saar
        assert saar is not None  # rollback_on implies a config
        if saar.max_retries == 0 or self.attempts >= self.attempt_cap:
            return results, None
        self.stats.rollbacks_triggered += 1
        checkpoint = len(self.segments) - 1
        base = self.segments[:checkpoint]
        turn = [self.segments[-1]]
        turn_tokens = list(self.segments[-1].tokens)
        failed_attempts = 1
        retries = 0
        while retries < saar.max_retries and self.attempts < self.attempt_cap:
            feedback = self.codec.encode_tool_response([r.text for r in results])
            budget_hit = self._out_of_budget(len(feedback))
            if budget_hit:
                return self._terminate_at_checkpoint(base, budget_hit)
            self.tokens_used += len(feedback)
            gen = await self._generate(base_tokens + turn_tokens + feedback)
            retries += 1
            self.stats.retries += 1
            if gen.finish_reason == "length":
                return self._terminate_at_checkpoint(base, "length")
            new_calls = self.codec.parse_calls(gen.tokens)
            if not new_calls:
                failures = sum(is_model_error(r) for r in results)
                answer = gen.segment()
                self.segments = [*base, *turn, Segment.tool(feedback, failures), answer]
                self.rollback_on = False
                self.stats.rollbacks_failed += 1
                self.termination = "answer"
                logger.debug("SAAR retry answered without a call; rollback off")
                return None
            failed_call = next(c for c, r in zip(calls, results, strict=True) if is_model_error(r))
            similarity = max(call_similarity(failed_call, c, saar) for c in new_calls)
            old_start = self.codec.call_start(turn_tokens)
            new_start = self.codec.call_start(gen.tokens)
            if (
                is_shallow(similarity, saar.gamma)
                and old_start is not None
                and new_start is not None
            ):
                kept = head_segments(turn, old_start)
                spliced = gen.segment(
                    new_start, provenance=Provenance.SPLICED_SHALLOW, stale_logprobs=True
                )
                turn = [*kept, spliced]
                score_context = base_tokens + turn_tokens[:old_start]
                self.stats.shallow += 1
            else:
                spliced = gen.segment(provenance=Provenance.SPLICED_DEEP, stale_logprobs=True)
                turn = [spliced]
                score_context = base_tokens
                self.stats.deep += 1
            logger.debug("SAAR splice %s (similarity %.3f)", spliced.provenance.value, similarity)
            if saar.recompute_spliced_logprobs:
                await self._rescore(score_context, spliced)
            turn_tokens = [t for seg in turn for t in seg.tokens]
            self.segments = [*base, *turn]
            calls = new_calls
            results = await self._execute(calls, first_attempt=False)
            failed_attempts += 1
            if not any(is_model_error(r) for r in results):
                self.stats.rollbacks_recovered += 1
                return results, None
        # Retries (or the global attempt cap) exhausted: the last failed turn stays.
        self.stats.rollbacks_failed += 1
        if retries >= saar.max_retries:
            self.stats.exhaustions += 1
        if saar.disable_after_exhaustion:
            self.rollback_on = False
        note = self.codec.exhaustion_note(failed_attempts) if failed_attempts >= 2 else None
        return results, note

    def _terminate_at_checkpoint(self, base: list[Segment], reason: str) -> None:
        self.segments = list(base)
        self.termination = reason
        self.stats.rollbacks_failed += 1
        logger.debug("SAAR budget hit during a retry (%s): checkpoint restored", reason)
        return None

    async def _rescore(self, context: list[int], segment: Segment) -> None:
        logprobs = await self._timed(self.policy.score(context, segment.tokens))
        if len(logprobs) != len(segment.tokens):
            raise ValueError(
                f"Policy.score returned {len(logprobs)} log-probs for {len(segment.tokens)} "
                "tokens; it must return one per scored token."
            )
        segment.logprobs = list(logprobs)
        segment.stale_logprobs = False
        # The weights that rescored the segment (a policy that reports versions has them).
        version = getattr(self.policy, "policy_version", None)
        segment.versions = None if version is None else [int(version)] * len(logprobs)
        self.stats.rescored_tokens += len(logprobs)


async def rollout(
    prompt_tokens: Sequence[int],
    policy: Policy,
    tools: ToolRunner,
    codec: TurnCodec,
    *,
    saar: SaarConfig | None = None,
    limits: RolloutLimits | None = None,
    seed: int | str = 0,
) -> Trajectory:
    """Roll out one trajectory from `prompt_tokens` (chat-formatted, ending with the assistant
    header). `saar=None` is the baseline; with a config, SAAR is on when the trajectory's
    Bernoulli(rollback_probability) draw from `seed` says so. Evaluation with SAAR is the same
    call with a config (and rollback_probability 1.0)."""
    state = _Rollout(policy, tools, codec, saar, limits or RolloutLimits(), seed)
    return await state.run(prompt_tokens)
