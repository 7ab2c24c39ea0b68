"""Data types of the SAAR core: trajectory segments, generations, tool calls and tool results.

A trajectory is a list of token segments. Each segment carries its token ids, its behaviour
log-probs (the log-probs the sampler reported for them), a provenance tag and a flag saying
whether those log-probs are stale (sampled under a context that is no longer the segment's
context, which happens to every segment SAAR splices in). The loss mask follows from the
provenance: tokens the policy produced get 1, prompt and tool/feedback tokens get 0.

Standard library only: this module is part of the portable core and must not import JAX.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Literal

from .stats import TrajectoryStats


class Provenance(enum.Enum):
    """Where a segment's tokens came from."""

    PROMPT = "prompt"
    # Sampled by the policy under exactly the context that precedes it in the trajectory.
    SAMPLED = "sampled"
    # The call part of a retry turn grafted onto the old reasoning (similarity >= gamma).
    SPLICED_SHALLOW = "spliced_shallow"
    # A whole retry turn (reasoning + call) that replaced the failed turn (similarity < gamma).
    SPLICED_DEEP = "spliced_deep"
    # A tool message whose calls all succeeded (or failed only for infrastructure reasons).
    TOOL = "tool"
    # A tool message that shows the model at least one failure of its own (error kept in context).
    FEEDBACK = "feedback"


POLICY_PROVENANCES = frozenset(
    {Provenance.SAMPLED, Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP}
)

FinishReason = Literal["stop", "length"]

# `ToolResult.error_type` values of the core's own failures (parsers outside the core reuse
# FORMAT_ERROR for a malformed call that has no more specific class).
FORMAT_ERROR = "ToolCallFormatError"  # a malformed call, never executed
TOO_MANY_CALLS_ERROR = "TooManyToolCalls"  # a call beyond `RolloutLimits.max_calls_per_turn`
ATTEMPT_LIMIT_ERROR = "ToolAttemptLimit"  # `RolloutLimits.max_tool_attempts` hit: not a model error


@dataclasses.dataclass
class Segment:
    """A run of tokens with one provenance.

    Attributes:
      role: "prompt", "assistant" or "tool".
      tokens: token ids.
      provenance: where the tokens came from; decides the loss mask.
      logprobs: behaviour log-probs, one per token (0.0 for non-policy tokens).
      stale_logprobs: True while `logprobs` were computed under a context other than the one
        that now precedes the segment; the trainer must not use them as old log-probs.
      failures: for tool segments, how many model errors the message shows (drives the
        "tool failures per trajectory" metric).
      versions: per token, the policy version whose weights produced `logprobs` (sampled them,
        or rescored a spliced segment); None when the policy does not report versions.
    """

    role: str
    tokens: list[int]
    provenance: Provenance
    logprobs: list[float]
    stale_logprobs: bool = False
    failures: int = 0
    versions: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.tokens):
            raise ValueError(
                f"Segment({self.provenance.value}) has {len(self.tokens)} tokens but "
                f"{len(self.logprobs)} log-probs; pass one log-prob per token."
            )
        _check_versions("Segment", self.tokens, self.versions)

    @property
    def loss_mask(self) -> int:
        """1 for tokens the policy produced, 0 otherwise."""
        return 1 if self.provenance in POLICY_PROVENANCES else 0

    def head(self, n: int) -> Segment:
        """The first `n` tokens as a segment with the same provenance and staleness."""
        return self.slice(0, n)

    def slice(self, start: int, stop: int | None = None) -> Segment:
        """Tokens [start, stop) as a segment with the same provenance and staleness."""
        cut = slice(start, stop)
        versions = None if self.versions is None else self.versions[cut]
        return dataclasses.replace(
            self, tokens=self.tokens[cut], logprobs=self.logprobs[cut], versions=versions
        )

    @classmethod
    def prompt(cls, tokens: Sequence[int]) -> Segment:
        return cls("prompt", list(tokens), Provenance.PROMPT, [0.0] * len(tokens))

    @classmethod
    def tool(cls, tokens: Sequence[int], failures: int) -> Segment:
        provenance = Provenance.FEEDBACK if failures else Provenance.TOOL
        return cls("tool", list(tokens), provenance, [0.0] * len(tokens), failures=failures)


def _check_versions(what: str, tokens: Sequence[int], versions: Sequence[int] | None) -> None:
    if versions is not None and len(versions) != len(tokens):
        raise ValueError(
            f"{what} has {len(tokens)} tokens but {len(versions)} versions; pass one policy "
            "version per token or None."
        )


def head_segments(segments: Sequence[Segment], n: int) -> list[Segment]:
    """Copies of the segments covering the first `n` tokens, the last one cut at `n`."""
    out: list[Segment] = []
    left = n
    for seg in segments:
        if left <= 0:
            break
        out.append(seg.head(min(left, len(seg.tokens))))
        left -= len(seg.tokens)
    return out


@dataclasses.dataclass
class Trajectory:
    """A prompt followed by assistant and tool segments, plus how the rollout ended.

    `termination` is one of "answer" (a turn without tool call), "length" (response budget),
    "max_turns" (turn budget) or "" while the rollout runs.
    """

    segments: list[Segment]
    termination: str = ""
    saar_enabled: bool = False
    stats: TrajectoryStats | None = None

    @property
    def tokens(self) -> list[int]:
        out: list[int] = []
        for seg in self.segments:
            out.extend(seg.tokens)
        return out

    @property
    def loss_mask(self) -> list[int]:
        out: list[int] = []
        for seg in self.segments:
            out.extend([seg.loss_mask] * len(seg.tokens))
        return out

    @property
    def logprobs(self) -> list[float]:
        out: list[float] = []
        for seg in self.segments:
            out.extend(seg.logprobs)
        return out

    @property
    def prompt_tokens(self) -> list[int]:
        return [
            t for seg in self.segments if seg.provenance is Provenance.PROMPT for t in seg.tokens
        ]

    @property
    def response_segments(self) -> list[Segment]:
        return [seg for seg in self.segments if seg.provenance is not Provenance.PROMPT]

    @property
    def response_tokens(self) -> list[int]:
        return [t for seg in self.response_segments for t in seg.tokens]

    @property
    def response_loss_mask(self) -> list[int]:
        return [seg.loss_mask for seg in self.response_segments for _ in seg.tokens]

    @property
    def response_logprobs(self) -> list[float]:
        return [lp for seg in self.response_segments for lp in seg.logprobs]

    @property
    def response_stale(self) -> list[bool]:
        """Per response token: True where the behaviour log-prob is stale."""
        return [seg.stale_logprobs for seg in self.response_segments for _ in seg.tokens]

    @property
    def versions(self) -> list[int]:
        """Per token, the policy version behind its log-prob; -1 where none is known (prompt
        and tool tokens, policies that report no versions)."""
        out: list[int] = []
        for seg in self.segments:
            out.extend(seg.versions if seg.versions is not None else [-1] * len(seg.tokens))
        return out

    def stale_segments(self) -> list[int]:
        """Indices of segments whose log-probs must be recomputed before training."""
        return [i for i, seg in enumerate(self.segments) if seg.stale_logprobs]

    def tool_failures(self) -> int:
        """Model errors still visible in the trajectory (the paper's failures/trajectory)."""
        return sum(seg.failures for seg in self.segments)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One assistant turn as sampled: tokens (ending with the stop token when finish_reason is
    "stop"), their log-probs (at the sampling temperature), why sampling ended and, optionally,
    per token the policy version that sampled it."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    versions: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.logprobs):
            raise ValueError(
                f"Generation has {len(self.tokens)} tokens but {len(self.logprobs)} log-probs; "
                "the policy must return one log-prob per sampled token."
            )
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(
                f"finish_reason must be 'stop' or 'length', got {self.finish_reason!r}."
            )
        _check_versions("Generation", self.tokens, self.versions)

    def segment(self, start: int = 0, **kwargs) -> Segment:
        """Tokens [start:] as an assistant segment (provenance SAMPLED unless given)."""
        kwargs.setdefault("provenance", Provenance.SAMPLED)
        versions = None if self.versions is None else list(self.versions[start:])
        return Segment(
            "assistant",
            list(self.tokens[start:]),
            logprobs=list(self.logprobs[start:]),
            versions=versions,
            **kwargs,
        )


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A tool call as parsed from an assistant turn.

    Attributes:
      name: tool name as written by the model ("" when it could not be read).
      code: the `code` argument, or None when missing or unreadable.
      text: the raw call text including its tags (used by the reference similarity).
      error: None for a well-formed call; otherwise the visible failure message the policy will
        see instead of an execution result (malformed calls are never executed).
      error_type: short failure class for stats ("ToolCallFormatError", "UnknownTool", ...).
      repaired: the JSON was broken and was repaired to recover `code`.
    """

    name: str
    code: str | None
    text: str
    error: str | None = None
    error_type: str | None = None
    repaired: bool = False


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a tool call produced.

    Attributes:
      ok: the call succeeded.
      text: the text shown to the model inside the tool message.
      error_type: failure class (exception name, "Timeout", "ToolCallFormatError", ...).
      error_line: line of the failure in the code, when known.
      reason: executor reason string (reference format: "", "worker_timeout", ...).
      infra_failure: the executor itself failed (crash, full queue) after its own retries; this is
        never counted as a model error and never triggers a rollback.
    """

    ok: bool
    text: str
    error_type: str | None = None
    error_line: int | None = None
    reason: str = ""
    infra_failure: bool = False
