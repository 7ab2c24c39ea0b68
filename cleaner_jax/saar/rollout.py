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
trajectory never exceeds it. Every generation, retries included, counts against `max_turns`
(unless `retries_count_as_turns=False`). Infrastructure failures are shown to the model but are
not model errors: no rollback (unless `infra_failures_roll_back`).

The reference implementation's behaviour where it differs is a switch (`SaarConfig`,
`RolloutLimits` fields marked "reference:"): infrastructure failures rolled back, no call cap
but rollback off after 30 tool rounds, one call per turn with extra calls ignored, the tool text
cut to 256 characters, the turn tails compared, the reference's exhaustion note, retries outside
the turn budget.

Spliced segments were sampled after the error message, so their behaviour log-probs are stale;
they are re-scored under the purified context with `Policy.score` right after the splice (the
engine needs that prefill for the next turn anyway) or left marked stale.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from .config import RolloutLimits, SaarConfig
from .protocols import Policy, ToolRunner, TurnCodec
from .similarity import call_similarity, is_shallow, text_similarity
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

TRUNCATION_MIDDLE = "...(truncated)..."


def is_model_error(result: ToolResult) -> bool:
    """A failure the model caused (SAAR rolls these back); infra failures and the global
    attempt cap are not the model's fault."""
    return not result.ok and not result.infra_failure and result.error_type != ATTEMPT_LIMIT_ERROR


def is_rollback_error(result: ToolResult, saar: SaarConfig | None) -> bool:
    """A failure SAAR rolls back: a model error, or any failure but the attempt cap when
    `saar.infra_failures_roll_back` (the reference's "no `Tool call success`" rule)."""
    if saar is not None and saar.infra_failures_roll_back and result.infra_failure:
        return True
    return is_model_error(result)


def truncate_middle(text: str, max_chars: int) -> str:
    """`text` longer than `max_chars`: its first and last `max_chars // 2` characters around
    "...(truncated)..." (the reference's middle cut of tool texts); 0 = unchanged."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + TRUNCATION_MIDDLE + text[len(text) - half :]


def reference_exhaustion_note(retries: int) -> str:
    """The reference's note after a position's `retries` re-samples all failed."""
    return (
        f"Note: This approach has been attempted {retries} times with the same type of error. "
        "Consider trying a different algorithm, method, or approach to solve this problem."
    )


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
        self.rounds = 0  # turns whose calls were executed, retries included
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

    def _error(self, result: ToolResult) -> bool:
        return is_rollback_error(result, self.saar)

    def _capped(self) -> bool:
        """The global attempt cap is reached (never with `max_tool_attempts=0`)."""
        return 0 < self.attempt_cap <= self.attempts

    def _rounds_exceeded(self) -> bool:
        """More tool rounds than `max_rounds_before_disable` (the reference's safeguard)."""
        limit = self.saar.max_rounds_before_disable if self.saar is not None else 0
        return 0 < limit < self.rounds

    def _parse(self, tokens: Sequence[int]) -> list[ToolCall]:
        """The turn's calls; with `extra_calls="ignore"` those past `max_calls_per_turn` are
        dropped here (never executed, never answered)."""
        calls = self.codec.parse_calls(tokens)
        if self.limits.extra_calls == "ignore":
            calls = calls[: self.limits.max_calls_per_turn]
        return calls

    async def _generate(self, context: list[int], counts_turn: bool = True) -> Generation:
        remaining = self.limits.max_response_tokens - self.tokens_used
        gen = await self._timed(self.policy.generate(context, remaining))
        if len(gen.tokens) > remaining:
            raise ValueError(
                f"Policy.generate returned {len(gen.tokens)} tokens for max_new_tokens="
                f"{remaining}; the policy must respect max_new_tokens or the response budget "
                "cannot be guaranteed."
            )
        self.tokens_used += len(gen.tokens)
        self.turns_used += int(counts_turn)
        return gen

    async def _execute(self, calls: Sequence[ToolCall], first_attempt: bool) -> list[ToolResult]:
        self.rounds += 1
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
            if self._capped():
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
        cut = self.limits.max_tool_response_chars
        final = [
            dataclasses.replace(r, text=truncate_middle(r.text, cut)) if cut else r
            for r in results
            if r is not None
        ]
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
        failures = sum(self._error(r) for r in results)
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
            calls = self._parse(gen.tokens)
            if not calls:
                self.termination = "answer"
                break
            if self.turns_used >= self.limits.max_turns:
                # No turn left to read the results: like the reference, do not execute.
                self.termination = "max_turns"
                break
            # A call written right after a visible tool failure is a correction, in either arm.
            results = await self._execute(calls, first_attempt=not self.last_tool_failed)
            if self.rollback_on and self._rounds_exceeded():
                self.rollback_on = False
                logger.debug("SAAR off after %d tool rounds", self.rounds)
            note = None
            if self.rollback_on and any(self._error(r) for r in results):
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
        if saar.max_retries == 0 or self._capped():
            return results, None
        self.stats.rollbacks_triggered += 1
        checkpoint = len(self.segments) - 1
        base = self.segments[:checkpoint]
        turn = [self.segments[-1]]
        turn_tokens = list(self.segments[-1].tokens)
        failed_attempts = 1
        retries = 0
        counts_turn = self.limits.retries_count_as_turns
        while retries < saar.max_retries and not self._capped() and not self._rounds_exceeded():
            feedback = self.codec.encode_tool_response([r.text for r in results])
            budget_hit = self._out_of_budget(len(feedback))
            if budget_hit:
                return self._terminate_at_checkpoint(base, budget_hit)
            self.tokens_used += len(feedback)
            gen = await self._generate(base_tokens + turn_tokens + feedback, counts_turn)
            retries += 1
            self.stats.retries += 1
            if gen.finish_reason == "length":
                return self._terminate_at_checkpoint(base, "length")
            new_calls = self._parse(gen.tokens)
            if new_calls and not counts_turn and self.turns_used + 1 >= self.limits.max_turns:
                # The reference's turn check on the retry (kept turns + the retry).
                return self._terminate_at_checkpoint(base, "max_turns")
            if not new_calls:
                failures = sum(self._error(r) for r in results)
                answer = gen.segment()
                self.segments = [*base, *turn, Segment.tool(feedback, failures), answer]
                self.rollback_on = False
                self.stats.rollbacks_failed += 1
                self.termination = "answer"
                logger.debug("SAAR retry answered without a call; rollback off")
                return None
            old_start = self.codec.call_start(turn_tokens)
            new_start = self.codec.call_start(gen.tokens)
            tails = None
            if old_start is not None and new_start is not None:
                tails = (turn_tokens[old_start:], gen.tokens[new_start:])
            similarity = self._similarity(calls, results, new_calls, tails)
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
            if not any(self._error(r) for r in results):
                self.stats.rollbacks_recovered += 1
                return results, None
        # Retries (or the global attempt cap) exhausted: the last failed turn stays.
        self.stats.rollbacks_failed += 1
        if retries >= saar.max_retries:
            self.stats.exhaustions += 1
        if saar.disable_after_exhaustion:
            self.rollback_on = False
        if saar.exhaustion_note == "reference":
            note = reference_exhaustion_note(retries) if retries >= 2 else None
        else:
            note = self.codec.exhaustion_note(failed_attempts) if failed_attempts >= 2 else None
        return results, note

    def _similarity(
        self,
        calls: list[ToolCall],
        results: list[ToolResult],
        new_calls: list[ToolCall],
        tails: tuple[Sequence[int], Sequence[int]] | None,
    ) -> float:
        """Similarity of the failing turn and the retry as `saar.similarity_on` says: the first
        failed call against each retry call (highest), or the two turns' tokens from their first
        call marker on, decoded ("turn_tail"; 0.0, i.e. deep, when a turn has no marker, as in
        the reference)."""
        saar = self.saar
        assert saar is not None
        if saar.similarity_on == "turn_tail":
            if tails is None:
                return 0.0
            old_tail, new_tail = (self.codec.decode(t) for t in tails)
            return text_similarity(old_tail, new_tail, saar)
        failed_call = next(c for c, r in zip(calls, results, strict=True) if self._error(r))
        return max(call_similarity(failed_call, c, saar) for c in new_calls)

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
