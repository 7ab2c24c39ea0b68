"""The three interfaces the SAAR rollout needs from its host codebase.

`Policy` samples assistant turns and re-scores spliced tokens, `ToolRunner` executes well-formed
tool calls, `TurnCodec` maps between token ids and the chat format (where a tool call starts,
which calls a turn contains, how a tool message is tokenized). Any object with these methods
works (structural typing); the SAAR core never sees a model, a tokenizer or a sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .types import Generation, ToolCall, ToolResult


@runtime_checkable
class Policy(Protocol):
    """The sampler, seen as an async function of token contexts."""

    async def generate(self, context_tokens: Sequence[int], max_new_tokens: int) -> Generation:
        """Sample one assistant turn continuing `context_tokens`.

        Must stop after at most `max_new_tokens` tokens (finish_reason "length") or at the end of
        the assistant turn (finish_reason "stop", the stop token included in `tokens`).
        """
        ...

    async def score(self, context_tokens: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """Log-probs of `tokens` given `context_tokens` (one per token), under current weights
        and at the temperature `generate` samples at (they become the spliced tokens' behaviour
        log-probs, which an off-policy correction compares with the trainer's).

        Used to replace the stale behaviour log-probs of spliced segments by their log-probs under
        the purified context; an engine with a prefix cache serves this with one prefill of
        `tokens` that the next turn needs anyway. A policy may also expose an int attribute
        `policy_version` (its weights' version): rescored segments then record it per token,
        as `Generation.versions` does for sampled ones.
        """
        ...


@runtime_checkable
class ToolRunner(Protocol):
    """Executes a well-formed tool call (malformed calls never reach the runner)."""

    async def run(self, call: ToolCall) -> ToolResult:
        """Execute `call`; infrastructure problems are retried inside and, if they persist,
        reported with `infra_failure=True`, never as the model's error."""
        ...


@runtime_checkable
class TurnCodec(Protocol):
    """Token-level view of the chat format."""

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of `tokens` (special tokens included)."""
        ...

    def call_start(self, turn_tokens: Sequence[int]) -> int | None:
        """Index of the first token of the first tool call in an assistant turn, None if none.

        Tokens before it are the turn's reasoning, tokens from it on are the call part. Must be
        O(len(turn_tokens)) (see saar.boundary).
        """
        ...

    def parse_calls(self, turn_tokens: Sequence[int]) -> list[ToolCall]:
        """All tool calls in an assistant turn, malformed ones included (with `error` set)."""
        ...

    def encode_tool_response(self, texts: Sequence[str], note: str | None = None) -> list[int]:
        """Tokens of one tool message carrying `texts` (one per call, in call order), with
        `note` appended after the last text when given.

        The tokens close the assistant turn that precedes them (whatever follows the stop token)
        and open the next assistant turn's header, so a context ending with them is ready for
        `Policy.generate`.
        """
        ...

    def exhaustion_note(self, attempts: int) -> str:
        """Text telling the model this call failed `attempts` times and to change approach."""
        ...
