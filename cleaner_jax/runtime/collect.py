"""The rollout phase of a GRPO step: n trajectories per prompt through sampler + sandbox + SAAR.

All trajectories of a step run as coroutines on one event loop; the engine batches their
generation requests (continuous batching) and the sandbox pool runs their tool calls. Each
trajectory gets its own sampling seed and its own seeded SAAR draw, derived from (run seed, step,
prompt, sample), so a resumed run rolls out exactly what an uninterrupted one would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from cleaner_jax.agent.chat import ChatFormat
from cleaner_jax.agent.loop import ChatTurnCodec, EnginePolicy, SandboxToolRunner, run_rollouts
from cleaner_jax.agent.tools import TOOLS
from cleaner_jax.data.readers import Example, filter_overlong
from cleaner_jax.rl.off_policy import SPAN_DEEP, SPAN_NONE, SPAN_SAMPLED, SPAN_SHALLOW
from cleaner_jax.rl.packing import TrainSample
from cleaner_jax.rl.rewards import RewardInput
from cleaner_jax.saar import Provenance, RolloutLimits, SaarConfig, Trajectory


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (hash() is salted per process; this is not)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


_SPAN_KIND = {
    Provenance.SAMPLED: SPAN_SAMPLED,
    Provenance.SPLICED_SHALLOW: SPAN_SHALLOW,
    Provenance.SPLICED_DEEP: SPAN_DEEP,
}


@dataclasses.dataclass
class Rollout:
    example: Example
    group: int
    trajectory: Trajectory
    prompt_len: int
    temperature: float = 1.0  # the sampling temperature of its log-probs (and rescorings)

    def final_text(self, chat: ChatFormat) -> str:
        """The assistant text after the last tool message (what the reward checks)."""
        segs = self.trajectory.segments
        last_tool = max((i for i, s in enumerate(segs) if s.role == "tool"), default=0)
        toks = [t for s in segs[last_tool:] if s.role == "assistant" for t in s.tokens]
        return chat.decode(toks)

    def reward_input(self, chat: ChatFormat) -> RewardInput:
        mask = self.trajectory.response_loss_mask
        return RewardInput(
            response=self.final_text(chat),
            data_source=self.example.data_source,
            ground_truth=self.example.ground_truth,
            extra=self.example.extra,
            num_response_tokens=len(mask),
            num_policy_tokens=int(sum(mask)),
        )

    def train_sample(self, advantage: float) -> TrainSample:
        """The trajectory as the trainer sees it: its sampler log-probs are both the old
        log-probs (until a recompute replaces them) and μ, valid on policy tokens that are not
        stale; span kinds and policy versions per token."""
        t = self.trajectory
        kinds, valid = [], []
        for seg in t.segments:
            kinds += [_SPAN_KIND.get(seg.provenance, SPAN_NONE)] * len(seg.tokens)
            valid += [seg.loss_mask and not seg.stale_logprobs] * len(seg.tokens)
        logprobs = np.asarray(t.logprobs, np.float32)
        return TrainSample(
            tokens=np.asarray(t.tokens, np.int32),
            loss_mask=np.asarray(t.loss_mask, np.float32),
            logprobs=logprobs,
            advantage=advantage,
            group=self.group,
            prompt_len=self.prompt_len,
            behaviour_logprobs=logprobs.copy(),
            behaviour_mask=np.asarray(valid, np.float32),
            span_kinds=np.asarray(kinds, np.int8),
            versions=np.asarray(t.versions, np.int32),
        )

    @property
    def has_stale_logprobs(self) -> bool:
        return any(s.stale_logprobs for s in self.trajectory.segments)

    @property
    def spliced_tokens(self) -> int:
        spliced = (Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP)
        return sum(len(s.tokens) for s in self.trajectory.segments if s.provenance in spliced)


class Collector:
    """Rolls out groups of trajectories with the live engine and sandbox (`agent.run_rollouts`).

    Built by `parts.build` from the config: SAAR settings and rollout limits, default sampling
    (temperature, top_p, top_k), whether SAAR is on by default, the run seed the per-trajectory
    seeds derive from, whether prompts list the tools, and the prompt budget.
    """

    def __init__(
        self,
        chat: ChatFormat,
        engine,
        sandbox_pool,
        *,
        saar: SaarConfig,
        limits: RolloutLimits,
        sampling: dict,
        saar_enabled: bool,
        seed: int,
        tools_in_prompt: bool,
        max_prompt_tokens: int,
    ):
        self.chat, self.engine = chat, engine
        self.codec = ChatTurnCodec(chat)
        self.tools = SandboxToolRunner(sandbox_pool)
        self.saar, self.limits, self.sampling = saar, limits, dict(sampling)
        self.saar_enabled, self.seed, self.tools_in_prompt = saar_enabled, seed, tools_in_prompt
        self.max_prompt_tokens = max_prompt_tokens

    def prompt_tokens(self, example: Example) -> list[int]:
        tools = (example.extra.get("tools") or TOOLS) if self.tools_in_prompt else None
        return self.chat.prompt_tokens(example.messages, tools)

    def filter_prompts(self, examples: Sequence[Example]) -> tuple[list[Example], int]:
        """The examples whose prompt fits `max_prompt_tokens`, and how many were dropped."""
        count = lambda ex: len(self.prompt_tokens(ex))  # noqa: E731
        return filter_overlong(examples, count, self.max_prompt_tokens)

    def collect(self, examples: Sequence[Example], n: int, **kwargs) -> list[Rollout]:
        """`acollect` for callers without a running event loop."""
        return asyncio.run(self.acollect(examples, n, **kwargs))

    async def acollect(
        self,
        examples: Sequence[Example],
        n: int,
        *,
        tag: object,
        saar_enabled: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        group_offset: int = 0,
    ) -> list[Rollout]:
        """n rollouts per example, grouped example by example (rollouts[g*n:(g+1)*n]).

        `group_offset` is the global index of `examples[0]` when this process rolls out a share
        of a larger batch: seeds and `Rollout.group` then match a single-process run. Runs on
        the event loop that drives the engine (the caller's).
        """
        sampling = dict(self.sampling)
        if temperature is not None:
            sampling["temperature"] = temperature
        if top_p is not None:
            sampling["top_p"] = top_p
        enabled = self.saar_enabled if saar_enabled is None else saar_enabled
        groups, prompts, policies, seeds = [], [], [], []
        for g, ex in enumerate(examples, start=group_offset):
            prompt = self.prompt_tokens(ex)
            for k in range(n):
                seed = derive_seed(self.seed, tag, g, ex.id, k)
                groups.append((ex, g))
                prompts.append(prompt)
                policies.append(
                    EnginePolicy(
                        self.engine, stop_token_ids=self.chat.stop_token_ids, seed=seed, **sampling
                    )
                )
                seeds.append(seed)
        trajectories = await run_rollouts(
            prompts, policies, self.tools, self.codec, self.saar if enabled else None, self.limits,
            seeds,
        )  # fmt: skip
        out = [
            Rollout(ex, g, t, len(p), float(sampling.get("temperature", 1.0)))
            for (ex, g), t, p in zip(groups, trajectories, prompts, strict=True)
        ]
        logging.debug("collected %d rollouts (tag %s)", len(out), tag)
        return out
