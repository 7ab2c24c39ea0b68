"""The agent loop: the real sampler, sandbox and tokenizer behind the SAAR core's protocols.

  EnginePolicy       `saar.Policy` over the sampling engine (`engine.generate`, `engine.score`)
  SandboxToolRunner  `saar.ToolRunner` over `agent.sandbox.SandboxPool` (reference-format text)
  ChatTurnCodec      `saar.TurnCodec` over `agent.chat.ChatFormat` and `agent.parser`
  run_rollouts       many trajectories concurrently on one asyncio event loop

The multi-turn logic itself (turns, budgets, SAAR) lives in `cleaner_jax.saar.rollout`; this
module only adapts components. Evaluation with SAAR ("test-time SAAR") is `run_rollouts` with a
`SaarConfig`; the baseline is `saar=None`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from cleaner_jax.agent.chat import ChatFormat
from cleaner_jax.agent.parser import CODE_INTERPRETER, OPEN_TAG, parse_tool_calls
from cleaner_jax.saar import (
    Generation,
    Policy,
    RolloutLimits,
    SaarConfig,
    ToolCall,
    ToolResult,
    ToolRunner,
    Trajectory,
    TurnCodec,
    find_marker_in_pieces,
    find_token,
    rollout,
)


class EnginePolicy:
    """`Policy` over the sampling engine.

    The engine API used: `await engine.generate(prompt_tokens, sampling)` returning an object
    with `.tokens`, `.logprobs`, `.finish_reason` ("stop" | "length"), and
    `await engine.score(tokens, start)` returning the log-probs of `tokens[start:]`.

    Args:
      engine: the sampling engine.
      stop_token_ids: ids that end an assistant turn (`ChatFormat.stop_token_ids`).
      temperature, top_p, top_k: sampling settings (top_k 0 or -1 = off, as the engine defines).
      seed: base seed; request i gets `seed + i` so a run is reproducible. None = engine's choice.
      sampling_params_cls: the engine's `SamplingParams` class; imported from
        `cleaner_jax.sampling.engine` when not given.
    """

    def __init__(
        self,
        engine: Any,
        stop_token_ids: Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        seed: int | None = None,
        sampling_params_cls: Callable[..., Any] | None = None,
    ) -> None:
        if sampling_params_cls is None:
            # Imported here so the agent package does not pull in JAX until a policy is built.
            from cleaner_jax.sampling.engine import SamplingParams

            sampling_params_cls = SamplingParams
        self.engine = engine
        self._make_params = sampling_params_cls
        self.stop_token_ids = tuple(stop_token_ids)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self._seeds = itertools.count(seed) if seed is not None else None

    async def generate(self, context_tokens: Sequence[int], max_new_tokens: int) -> Generation:
        params = self._make_params(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            seed=None if self._seeds is None else next(self._seeds),
        )
        out = await self.engine.generate(list(context_tokens), params)
        versions = getattr(out, "versions", None) or None
        return Generation(
            list(out.tokens), [float(x) for x in out.logprobs], out.finish_reason, versions
        )

    async def score(self, context_tokens: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """Log-probs of `tokens` after `context_tokens` at the sampling temperature (what the
        spliced tokens' behaviour log-probs must be: `generate` reports its log-probs at it)."""
        full = [*context_tokens, *tokens]
        lps = await self.engine.score(full, len(context_tokens), temperature=self.temperature)
        return [float(x) for x in lps]

    @property
    def policy_version(self) -> int | None:
        """The engine's weight version (recorded on rescored segments), None if it has none."""
        return getattr(self.engine, "policy_version", None)


class SandboxToolRunner:
    """`ToolRunner` over a `SandboxPool`: runs the call's code, reference-format text.

    The pool retries infrastructure failures itself and reports persistent ones with
    `infra_failure=True`, which passes through (SAAR never rolls those back).
    """

    def __init__(self, pool: Any, timeout_s: float | None = None) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        # Wall seconds during which at least one call was running (the rollout timeline).
        self.busy_seconds = 0.0
        self._running, self._since = 0, 0.0

    async def run(self, call: ToolCall) -> ToolResult:
        if call.code is None:
            raise ValueError(
                "SandboxToolRunner got a call without code; malformed calls must be answered "
                "with their parse error (saar.rollout does this), not executed."
            )
        if self._running == 0:
            self._since = time.perf_counter()
        self._running += 1
        try:
            res = await self.pool.run(call.code, timeout_s=self.timeout_s)
        finally:
            self._running -= 1
            if self._running == 0:
                self.busy_seconds += time.perf_counter() - self._since
        return ToolResult(
            ok=res.ok,
            text=res.to_tool_response_text(),
            error_type=res.error_type,
            error_line=res.error_line,
            reason=res.reason,
            infra_failure=res.infra_failure,
        )


class ChatTurnCodec:
    """`TurnCodec` for Qwen-format chat over an HF tokenizer.

    The tool-call boundary is a scan for the `<tool_call>` id when that tag is one token (Qwen3,
    our tokenizer); otherwise (Qwen2.5) the tag is found in the turn's bytes and mapped back to a
    token through per-token byte lengths, both O(n).
    """

    def __init__(
        self,
        chat: ChatFormat,
        tool_names: Sequence[str] = (CODE_INTERPRETER,),
        execute_repaired: bool = False,
    ) -> None:
        self.chat = chat
        self.tool_names = tuple(tool_names)
        self.execute_repaired = execute_repaired
        self._byte_decoder = _byte_level_decoder()

    def decode(self, tokens: Sequence[int]) -> str:
        return self.chat.decode(tokens)

    def call_start(self, turn_tokens: Sequence[int]) -> int | None:
        if self.chat.tool_call_id is not None:
            return find_token(turn_tokens, self.chat.tool_call_id)
        return find_marker_in_pieces(self.token_bytes(turn_tokens), OPEN_TAG.encode())

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The bytes each token contributes to the decoded text."""
        pieces = self.chat.tokenizer.convert_ids_to_tokens(list(tokens))
        out = []
        for tok_id, piece in zip(tokens, pieces, strict=True):
            try:
                out.append(bytes(self._byte_decoder[ch] for ch in piece))
            except KeyError:
                # Not a byte-level piece (an added token or a non-byte-level vocabulary).
                out.append(self.chat.decode([tok_id]).encode("utf-8"))
        return out

    def parse_calls(self, turn_tokens: Sequence[int]) -> list[ToolCall]:
        return parse_tool_calls(self.decode(turn_tokens), self.tool_names, self.execute_repaired)

    def encode_tool_response(self, texts: Sequence[str], note: str | None = None) -> list[int]:
        texts = list(texts)
        if note is not None:
            texts[-1] = f"{texts[-1]}\n\n{note}"
        return self.chat.tool_response_tokens(texts)

    def exhaustion_note(self, attempts: int) -> str:
        return (
            f"Note: this approach has been attempted {attempts} times and failed each time. "
            "Try a different approach."
        )


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable character -> byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


async def run_rollouts(
    prompts: Sequence[Sequence[int]],
    policy: Policy | Sequence[Policy],
    tools: ToolRunner,
    codec: TurnCodec,
    saar_config: SaarConfig | None,
    limits: RolloutLimits | None = None,
    seeds: Sequence[int | str] | None = None,
    max_concurrency: int | None = None,
) -> list[Trajectory]:
    """Roll out one trajectory per prompt concurrently (results in prompt order).

    Args:
      prompts: chat-formatted prompt token ids (e.g. `ChatFormat.prompt_tokens`), n copies of a
        prompt for a GRPO group.
      policy: one policy for all, or one per prompt (e.g. each with its own sampling seed).
      saar_config: SAAR settings, or None for the baseline.
      seeds: one per prompt, for the per-trajectory rollback draw (default: the prompt index;
        pass e.g. f"{step}/{index}" so draws differ between steps).
      max_concurrency: trajectories in flight at once (default: all).
    """
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts; pass one per prompt.")
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    policies = list(policy) if isinstance(policy, Sequence) else [policy] * len(prompts)
    if len(policies) != len(prompts):
        raise ValueError(f"got {len(policies)} policies for {len(prompts)} prompts")
    gate = asyncio.Semaphore(max_concurrency or max(1, len(prompts)))

    async def one(prompt: Sequence[int], pol: Policy, seed: int | str) -> Trajectory:
        async with gate:
            return await rollout(
                prompt, pol, tools, codec, saar=saar_config, limits=limits, seed=seed
            )

    jobs = (one(*args) for args in zip(prompts, policies, seeds, strict=True))
    return list(await asyncio.gather(*jobs))
