"""Configuration of SAAR (`SaarConfig`) and of the multi-turn rollout budgets (`RolloutLimits`).

Defaults are the paper's (CLEANER, arXiv 2601.15141): gamma 0.5, 3 retries per tool-call
position, SAAR on for every trajectory, rollback off after a position exhausts its retries, a
global cap of 30 tool attempts, 16 assistant turns and a 20480-token response budget.

Fields marked "reference:" select what the CLEANER reference implementation (Open-CLEANER @91e40ad,
verl's `tool_agent_loop.py`) does where it differs from our default (`configs/paper.py:reference`
sets them all).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

SIMILARITY_ON = ("code", "call_text", "turn_tail")
EXHAUSTION_NOTES = ("ours", "reference")
EXTRA_CALLS = ("fail", "ignore")


@dataclasses.dataclass(frozen=True)
class SaarConfig:
    """Similarity-Aware Adaptive Rollback settings.

    Attributes:
      gamma: similarity threshold; a correction with similarity >= gamma to the failed call is
        spliced shallow (old reasoning kept, call replaced), below it deep (whole turn replaced).
      max_retries: re-samples allowed at one failing tool-call position (K).
      rollback_probability: probability that SAAR is on for a trajectory, drawn once per
        trajectory from its seed (paper: 1.0 for Qwen3-4B, 0.7 for Qwen2.5-7B).
      similarity_on: "code" compares the extracted `code` arguments of the first failed call and
        of each retry call (highest score), "call_text" their whole `<tool_call>...</tool_call>`
        texts; "turn_tail" (reference) the decoded turns from their first tool-call token to the
        end (all calls, trailing text and stop token, special tokens kept), tail against tail; a
        turn without a call marker then goes deep.
      similarity: "tokens" = the exact LCS ratio 2 * LCS / (len(a) + len(b)) over lexical
        tokens (default; never below difflib's ratio over the same tokens, <= 1 ms at 3k chars);
        "reference" = difflib's character ratio with default autojunk, exactly as the reference
        computes it (scores long near-identical pairs ~0; for replication only).
      disable_after_exhaustion: turn rollback off for the rest of a trajectory once a position
        has used all its retries without recovering.
      recompute_spliced_logprobs: re-score spliced segments with `Policy.score` under the purified
        context as soon as they are spliced (otherwise they stay marked stale for the trainer).
      infra_failures_roll_back: count infrastructure failures (sandbox crash, service timeout,
        after the pool's own retries) as errors that trigger a rollback, like model errors
        (reference: every tool text without "Tool call success" does). Default False: they are
        shown to the model but never rolled back.
      max_rounds_before_disable: once a trajectory has executed more than this many tool rounds
        (turns whose calls ran, retries included), rollback turns off; a position that is
        mid-retry then ends as if its retries were exhausted (reference: 30, its
        `MAX_TOOL_ATTEMPTS_BEFORE_DISABLE`). 0 = never (default; our global cap is
        `RolloutLimits.max_tool_attempts`).
      exhaustion_note: the note appended to the last error when a position exhausts its retries:
        "ours" = "attempted N times" with N the failed executions, shown when N >= 2;
        "reference" = the reference's wording with N the retries, shown when N >= 2.
    """

    gamma: float = 0.5
    max_retries: int = 3
    rollback_probability: float = 1.0
    similarity_on: Literal["code", "call_text"] = "code"
    similarity: Literal["tokens", "reference"] = "tokens"
    disable_after_exhaustion: bool = True
    recompute_spliced_logprobs: bool = True
    infra_failures_roll_back: bool = False
    max_rounds_before_disable: int = 0
    exhaustion_note: Literal["ours", "reference"] = "ours"

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"SaarConfig.gamma must be in [0, 1], got {self.gamma}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(
                f"SaarConfig.max_retries must be an int >= 0, got {self.max_retries!r}."
            )
        if not 0.0 <= self.rollback_probability <= 1.0:
            raise ValueError(
                "SaarConfig.rollback_probability must be in [0, 1], got "
                f"{self.rollback_probability}."
            )
        if self.similarity_on not in SIMILARITY_ON:
            raise ValueError(
                f"SaarConfig.similarity_on must be one of {SIMILARITY_ON}, got "
                f"{self.similarity_on!r}."
            )
        if self.similarity not in ("tokens", "reference"):
            raise ValueError(
                f"SaarConfig.similarity must be 'tokens' or 'reference', got {self.similarity!r}."
            )
        rounds = self.max_rounds_before_disable
        if not isinstance(rounds, int) or rounds < 0:
            raise ValueError(
                "SaarConfig.max_rounds_before_disable must be an int >= 0 (0 = never), got "
                f"{self.max_rounds_before_disable!r}."
            )
        if self.exhaustion_note not in EXHAUSTION_NOTES:
            raise ValueError(
                f"SaarConfig.exhaustion_note must be one of {EXHAUSTION_NOTES}, got "
                f"{self.exhaustion_note!r}."
            )


@dataclasses.dataclass(frozen=True)
class RolloutLimits:
    """Budgets of one multi-turn rollout.

    Attributes:
      max_turns: assistant generations per trajectory, SAAR retries included (a retry is a turn
        the sampler pays for) unless `retries_count_as_turns` is False.
      max_response_tokens: every response token counts, including discarded retries and discarded
        error messages, so the final trajectory never exceeds it.
      max_calls_per_turn: calls beyond this in one turn are not executed; see `extra_calls`.
      extra_calls: what happens to the calls past `max_calls_per_turn`: "fail" = each is answered
        with a visible error (a model error, rolled back); "ignore" = dropped silently, not
        executed and not answered (reference, with max_calls_per_turn=1: its
        `max_parallel_calls`).
      max_tool_attempts: global cap on executed tool calls per trajectory, SAAR retries
        included, with SAAR on or off; calls past it are answered with a visible
        `ATTEMPT_LIMIT_ERROR` message (not a model error, so never rolled back). 0 = no cap
        (reference; its 30 only turns rollback off: `SaarConfig.max_rounds_before_disable`).
      max_tool_response_chars: each call's tool text longer than this is cut to its first and
        last `max_tool_response_chars // 2` characters around "...(truncated)..." (reference: 256,
        its `max_tool_response_length` with the middle cut), also in the retry's error feedback.
        0 = no cut here (default; the sandbox still cuts each stream).
      retries_count_as_turns: a SAAR retry counts against `max_turns` (default). False
        (reference): only the turns kept in the trajectory count, and a retry sampled when the
        kept turns plus the retry reach `max_turns` ends the trajectory at the checkpoint when it
        calls a tool.
    """

    max_turns: int = 16
    max_response_tokens: int = 20480
    max_calls_per_turn: int = 4
    extra_calls: Literal["fail", "ignore"] = "fail"
    max_tool_attempts: int = 30
    max_tool_response_chars: int = 0
    retries_count_as_turns: bool = True

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_response_tokens", "max_calls_per_turn"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RolloutLimits.{name} must be an int >= 1, got {value!r}.")
        for name in ("max_tool_attempts", "max_tool_response_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"RolloutLimits.{name} must be an int >= 0 (0 = off), got {value!r}."
                )
        if self.extra_calls not in EXTRA_CALLS:
            raise ValueError(
                f"RolloutLimits.extra_calls must be one of {EXTRA_CALLS}, got {self.extra_calls!r}."
            )
