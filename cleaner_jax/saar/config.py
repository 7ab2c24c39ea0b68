"""Configuration of SAAR (`SaarConfig`) and of the multi-turn rollout budgets (`RolloutLimits`).

Defaults are the paper's (CLEANER, arXiv 2601.15141): gamma 0.5, 3 retries per tool-call
position, SAAR on for every trajectory, rollback off after a position exhausts its retries, a
global cap of 30 tool attempts, 16 assistant turns and a 20480-token response budget.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class SaarConfig:
    """Similarity-Aware Adaptive Rollback settings.

    Attributes:
      gamma: similarity threshold; a correction with similarity >= gamma to the failed call is
        spliced shallow (old reasoning kept, call replaced), below it deep (whole turn replaced).
      max_retries: re-samples allowed at one failing tool-call position (K).
      rollback_probability: probability that SAAR is on for a trajectory, drawn once per
        trajectory from its seed (paper: 1.0 for Qwen3-4B, 0.7 for Qwen2.5-7B).
      similarity_on: "code" compares the extracted `code` arguments, "call_text" the whole call
        text (what the reference compares).
      similarity: "tokens" = difflib ratio over lexical tokens with autojunk off (default);
        "reference" = difflib's character ratio with default autojunk, exactly as the reference
        computes it (scores long near-identical pairs ~0; for replication only).
      disable_after_exhaustion: turn rollback off for the rest of a trajectory once a position
        has used all its retries without recovering.
      recompute_spliced_logprobs: re-score spliced segments with `Policy.score` under the purified
        context as soon as they are spliced (otherwise they stay marked stale for the trainer).
    """

    gamma: float = 0.5
    max_retries: int = 3
    rollback_probability: float = 1.0
    similarity_on: Literal["code", "call_text"] = "code"
    similarity: Literal["tokens", "reference"] = "tokens"
    disable_after_exhaustion: bool = True
    recompute_spliced_logprobs: bool = True

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
        if self.similarity_on not in ("code", "call_text"):
            raise ValueError(
                f"SaarConfig.similarity_on must be 'code' or 'call_text', got "
                f"{self.similarity_on!r}."
            )
        if self.similarity not in ("tokens", "reference"):
            raise ValueError(
                f"SaarConfig.similarity must be 'tokens' or 'reference', got {self.similarity!r}."
            )


@dataclasses.dataclass(frozen=True)
class RolloutLimits:
    """Budgets of one multi-turn rollout.

    Attributes:
      max_turns: assistant generations per trajectory, SAAR retries included (a retry is a turn
        the sampler pays for).
      max_response_tokens: every response token counts, including discarded retries and discarded
        error messages, so the final trajectory never exceeds it.
      max_calls_per_turn: calls beyond this in one turn are not executed and fail visibly.
      max_tool_attempts: global cap on executed tool calls per trajectory, SAAR retries
        included, with SAAR on or off; calls past it are answered with a visible
        `ATTEMPT_LIMIT_ERROR` message (not a model error, so never rolled back).
    """

    max_turns: int = 16
    max_response_tokens: int = 20480
    max_calls_per_turn: int = 4
    max_tool_attempts: int = 30

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_response_tokens", "max_calls_per_turn", "max_tool_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RolloutLimits.{name} must be an int >= 1, got {value!r}.")
