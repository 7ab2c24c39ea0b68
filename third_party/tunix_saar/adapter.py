"""SAAR rollouts whose output is what Tunix's agentic GRPO learner consumes.

Tunix (google-tunix 0.1.7, `tunix.rl.agentic`) collects a trajectory with
`TrajectoryCollectEngine.collect(mode="Token")`, which returns one dict per trajectory with the
keys in `TUNIX_TOKEN_KEYS` (prompt ids, the concatenated assistant/environment ids, their loss
mask, the sampler's old log-probs, a `TrajectoryStatus` name, the trajectory reward, ...). That
engine cannot roll a context back: its agent appends chat messages and re-templates them. SAAR
needs token-level checkpoints, so this adapter replaces the collection step instead of hooking
into it: `collect_token_dicts` runs `cleaner_jax.saar.rollout` per prompt and converts each
purified trajectory into the same dict, so the rest of a Tunix learner (advantages, loss,
update) is unchanged. Nothing from Tunix is imported or copied; the key names and status names
follow its public API.

What the host supplies, as plain callables (sync or async), which is also what EasyDeL- or
MaxText-style loops have at hand:
  sample_fn(context_ids, max_new_tokens) -> (ids, logprobs, finished)   one assistant turn,
      stopping at the end-of-turn token (included) when `finished`;
  score_fn(context_ids, ids) -> logprobs        optional; re-scores spliced turns under the
      purified context (without it they are marked stale for the trainer to recompute);
  execute_fn(code) -> (ok, text, error_type)    the tool; raise or return error_type
      "InfraError" for sandbox failures, which are never rolled back;
  a `saar.TurnCodec` (`cleaner_jax.agent.loop.ChatTurnCodec` serves Qwen-format HF tokenizers).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cleaner_jax import saar

# The dict `TrajectoryCollectEngine.collect(mode="Token")` returns in Tunix 0.1.7.
TUNIX_TOKEN_KEYS = (
    "conversation_text",
    "prompt_tokens",
    "conversation_tokens",
    "conversation_masks",
    "status",
    "trajectory_reward",
    "env_time",
    "reward_time",
    "old_logprobs",
    "policy_version",
    "original_input",
    "group_id",
)

INFRA_ERROR = "InfraError"
_PAPER_SAAR = saar.SaarConfig()

_STATUS = {
    "answer": "SUCCEEDED",
    "length": "MAX_CONTEXT_LIMIT_REACHED",
    "max_turns": "MAX_STEPS_REACHED",
}


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class CallablePolicy:
    """`saar.Policy` over a turn-sampling callable (and optionally a scoring callable)."""

    def __init__(self, sample_fn: Callable[..., Any], score_fn: Callable[..., Any] | None = None):
        self.sample_fn = sample_fn
        self.score_fn = score_fn

    async def generate(self, context_tokens: Sequence[int], max_new_tokens: int) -> saar.Generation:
        ids, logprobs, finished = await _maybe_await(
            self.sample_fn(list(context_tokens), max_new_tokens)
        )
        return saar.Generation(
            [int(t) for t in ids], [float(x) for x in logprobs], "stop" if finished else "length"
        )

    async def score(self, context_tokens: Sequence[int], tokens: Sequence[int]) -> list[float]:
        if self.score_fn is None:
            raise RuntimeError(
                "CallablePolicy has no score_fn; pass one, or set "
                "SaarConfig(recompute_spliced_logprobs=False) and recompute stale log-probs in "
                "the trainer"
            )
        out = await _maybe_await(self.score_fn(list(context_tokens), list(tokens)))
        return [float(x) for x in out]


class CallableToolRunner:
    """`saar.ToolRunner` over `execute_fn(code) -> (ok, text, error_type)`.

    An exception from `execute_fn`, or error_type "InfraError", is an infrastructure failure:
    shown to the model, never counted as its error, never rolled back.
    """

    def __init__(self, execute_fn: Callable[[str], Any]):
        self.execute_fn = execute_fn

    async def run(self, call: saar.ToolCall) -> saar.ToolResult:
        try:
            ok, text, error_type = await _maybe_await(self.execute_fn(call.code))
        except Exception as e:  # noqa: BLE001 - reported to the model as an infra failure
            return saar.ToolResult(
                ok=False,
                text=f"Tool call failure\nreason: executor_error\nstdout: \nstderr: {e}",
                error_type=INFRA_ERROR,
                infra_failure=True,
            )
        return saar.ToolResult(
            ok=bool(ok),
            text=str(text),
            error_type=None if ok else (error_type or "Error"),
            infra_failure=error_type == INFRA_ERROR,
        )


def tunix_status(traj: saar.Trajectory) -> str:
    """Tunix `TrajectoryStatus` name for how the rollout ended."""
    if traj.termination not in _STATUS:
        raise ValueError(f"trajectory has unknown termination {traj.termination!r}")
    return _STATUS[traj.termination]


def trajectory_to_token_dict(
    traj: saar.Trajectory,
    reward: float,
    *,
    group_id: Any = None,
    policy_version: Any = None,
    original_input: Any = None,
    codec: saar.TurnCodec | None = None,
) -> dict[str, Any]:
    """One purified trajectory as Tunix's Token-mode dict (plus SAAR's `saar_stats`,
    `stale_mask`).

    `conversation_tokens/masks/old_logprobs` cover the response (assistant and tool tokens);
    tokens SAAR rolled back are absent, spliced turns carry mask 1 and re-scored log-probs.
    """
    stale = traj.response_stale
    return {
        "conversation_text": codec.decode(traj.response_tokens) if codec is not None else None,
        "prompt_tokens": np.asarray(traj.prompt_tokens, np.int32),
        "conversation_tokens": np.asarray(traj.response_tokens, np.int32),
        "conversation_masks": np.asarray(traj.response_loss_mask, np.int32),
        "status": tunix_status(traj),
        "trajectory_reward": float(reward),
        "env_time": {},
        "reward_time": {},
        "old_logprobs": np.asarray(traj.response_logprobs, np.float32),
        "policy_version": policy_version,
        "original_input": original_input,
        "group_id": group_id,
        "stale_mask": np.asarray(stale, bool),
        "saar_stats": traj.stats,
    }


async def collect_token_dicts(
    prompts: Sequence[Sequence[int]],
    policy: saar.Policy,
    tools: saar.ToolRunner,
    codec: saar.TurnCodec,
    *,
    reward_fn: Callable[[int, saar.Trajectory], Any],
    saar_config: saar.SaarConfig | None = _PAPER_SAAR,
    limits: saar.RolloutLimits | None = None,
    group_ids: Sequence[Any] | None = None,
    seeds: Sequence[int | str] | None = None,
    policy_version: Any = None,
) -> list[dict[str, Any]]:
    """Roll out every prompt with SAAR (concurrently) and return Tunix Token-mode dicts in order.

    `reward_fn(prompt_index, trajectory)` (sync or async) gives the outcome reward.
    `saar_config=None` is the baseline rollout.
    """
    n = len(prompts)
    for name, seq in (("group_ids", group_ids), ("seeds", seeds)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {len(seq)} {name} for {n} prompts; pass one per prompt")
    seeds = list(seeds) if seeds is not None else list(range(n))

    async def one(i: int) -> dict[str, Any]:
        traj = await saar.rollout(
            prompts[i], policy, tools, codec, saar=saar_config, limits=limits, seed=seeds[i]
        )
        reward = await _maybe_await(reward_fn(i, traj))
        return trajectory_to_token_dict(
            traj,
            reward,
            group_id=None if group_ids is None else group_ids[i],
            policy_version=policy_version,
            original_input=list(prompts[i]),
            codec=codec,
        )

    return list(await asyncio.gather(*(one(i) for i in range(n))))
