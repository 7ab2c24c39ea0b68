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

import ml_collections
import numpy as np

from cleaner_jax.agent.chat import ChatFormat
from cleaner_jax.agent.loop import ChatTurnCodec, EnginePolicy, SandboxToolRunner
from cleaner_jax.agent.tools import TOOLS
from cleaner_jax.data.readers import Example
from cleaner_jax.rl.packing import TrainSample
from cleaner_jax.rl.rewards import RewardInput
from cleaner_jax.saar import Provenance, RolloutLimits, SaarConfig, Trajectory, rollout
from cleaner_jax.sampling import EngineConfig


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (hash() is salted per process; this is not)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclasses.dataclass
class Rollout:
    example: Example
    group: int
    trajectory: Trajectory
    prompt_len: int

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
        t = self.trajectory
        return TrainSample(
            tokens=np.asarray(t.tokens, np.int32),
            loss_mask=np.asarray(t.loss_mask, np.float32),
            logprobs=np.asarray(t.logprobs, np.float32),
            advantage=advantage,
            group=self.group,
            prompt_len=self.prompt_len,
        )

    @property
    def has_stale_logprobs(self) -> bool:
        return any(s.stale_logprobs for s in self.trajectory.segments)

    @property
    def spliced_tokens(self) -> int:
        spliced = (Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP)
        return sum(len(s.tokens) for s in self.trajectory.segments if s.provenance in spliced)


def saar_config_from(config: ml_collections.ConfigDict) -> SaarConfig:
    s = config.saar
    return SaarConfig(
        gamma=s.gamma,
        max_retries=s.max_retries,
        rollback_probability=s.rollback_probability,
        similarity_on=s.similarity_on,
        similarity=s.similarity,
        disable_after_exhaustion=s.disable_after_exhaustion,
        max_tool_attempts=config.rollout.max_tool_attempts,
        recompute_spliced_logprobs=s.recompute_spliced_logprobs,
    )


def engine_config_from(config: ml_collections.ConfigDict) -> EngineConfig:
    """The sampler's `EngineConfig` from `rollout.engine` (trainer and evaluation alike).

    `num_pages` 0 (or None) means "size the page pool from free device memory" (the engine's
    None; on backends that report no memory, enough pages for `max_slots` full sequences).
    """
    e = config.rollout.engine
    if e.num_pages and e.num_pages < 2:
        raise ValueError(
            f"rollout.engine.num_pages={e.num_pages}: need at least 2 (page 0 is the null page), "
            "or 0 to size the pool from device memory"
        )
    return EngineConfig(
        page_size=e.page_size,
        num_pages=e.num_pages or None,
        max_slots=e.max_slots,
        prefill_chunk=e.prefill_chunk,
        max_seq_len=e.max_seq_len,
        attention=e.attention,
    )


class Collector:
    """Rolls out groups of trajectories with the live engine and sandbox."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, engine, sandbox_pool):
        self.config = config
        self.chat = ChatFormat(tokenizer)
        self.engine = engine
        self.codec = ChatTurnCodec(self.chat)
        self.tools = SandboxToolRunner(sandbox_pool)
        r = config.rollout
        self.limits = RolloutLimits(
            max_turns=r.max_turns,
            max_response_tokens=r.max_response_tokens,
            max_tool_attempts=r.max_tool_attempts,
        )
        self.saar = saar_config_from(config)

    def prompt_tokens(self, example: Example) -> list[int]:
        tools = (example.extra.get("tools") or TOOLS) if self.config.data.tools_in_prompt else None
        return self.chat.prompt_tokens(example.messages, tools)

    async def _one(self, example, group, prompt, sampling, saar, seed) -> Rollout:
        policy = EnginePolicy(
            self.engine, stop_token_ids=self.chat.stop_token_ids, seed=seed, **sampling
        )
        traj = await rollout(
            prompt, policy, self.tools, self.codec, saar=saar, limits=self.limits, seed=seed
        )
        return Rollout(example, group, traj, len(prompt))

    async def _collect(self, examples, n, sampling_kw, saar, tag, group_offset) -> list[Rollout]:
        jobs = []
        for g, ex in enumerate(examples, start=group_offset):
            prompt = self.prompt_tokens(ex)
            for k in range(n):
                seed = derive_seed(self.config.seed, tag, g, ex.id, k)
                jobs.append(self._one(ex, g, prompt, sampling_kw, saar, seed))
        return list(await asyncio.gather(*jobs))

    def collect(
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
        of a larger batch: seeds and `Rollout.group` then match a single-process run.
        """
        r = self.config.rollout
        enabled = self.config.saar.enabled if saar_enabled is None else saar_enabled
        sampling_kw = dict(
            temperature=r.temperature if temperature is None else temperature,
            top_p=r.top_p if top_p is None else top_p,
            top_k=r.top_k,
        )
        out = asyncio.run(
            self._collect(
                list(examples), n, sampling_kw, self.saar if enabled else None, tag, group_offset
            )
        )
        logging.debug("collected %d rollouts (tag %s)", len(out), tag)
        return out
