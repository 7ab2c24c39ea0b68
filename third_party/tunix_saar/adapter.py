"""SAAR rollouts as the per-trajectory dicts Tunix's agentic learner consumes (no Tunix import).

Tunix (google-tunix 0.1.7, `tunix.rl.agentic`) collects a trajectory with
`TrajectoryCollectEngine.collect(mode="Token")`, which returns one dict per trajectory with the
keys in `TUNIX_TOKEN_KEYS`; `GRPOLearner._process_results` reads them. This module builds that
dict from a purified `saar.Trajectory`, in the types Tunix reads:

  conversation_text  list of chat messages {"role", "content"} (Tunix takes the first
                     assistant message's content as the "completion" it logs);
  prompt_tokens      int32 ids (Tunix left-pads them to `RolloutConfig.max_prompt_length`);
  conversation_tokens / conversation_masks / old_logprobs
                     the response: assistant and tool tokens, mask 1 on policy tokens (spliced
                     retries included), behaviour log-probs (0 on tool tokens);
  status             a `TrajectoryStatus` name;
  trajectory_reward  float; with `reward_fns=None` it is the whole GRPO reward;
  policy_version     int, the learner's policy version when the rollout started;
  original_input     the dataset row (dict with "prompts"), as Tunix's environment holds it;
  group_id           int.

`tunix_learner.SaarGRPOLearner` (which imports Tunix) plugs this into a real learner. The
callable wrappers here (`CallablePolicy`, `CallableToolRunner`) serve any host codebase.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
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
    """`saar.Policy` over a turn-sampling callable and a scoring callable (sync or async).

    sample_fn(context_ids, max_new_tokens) -> (ids, logprobs, finished): one assistant turn,
        ending with the end-of-turn token when `finished`;
    score_fn(context_ids, ids) -> logprobs: log p(ids | context) under the weights that sample;
        SAAR re-scores every spliced turn with it. None only where stale log-probs are never
        used as old log-probs (the trainer recomputes them all).
    """

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
                "CallablePolicy has no score_fn; pass one (tunix_learner.tunix_score_fn builds it "
                "from a Tunix RLCluster), or set SaarConfig(recompute_spliced_logprobs=False) "
                "where the trainer recomputes every old log-prob"
            )
        out = await _maybe_await(self.score_fn(list(context_tokens), list(tokens)))
        return [float(x) for x in np.asarray(out).reshape(-1)]


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


def conversation_messages(
    traj: saar.Trajectory, codec: saar.TurnCodec, prompt_messages: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """The purified conversation as chat messages: `prompt_messages`, then one "assistant"
    message per assistant turn (a shallow splice's kept reasoning and new call are one turn) and
    one "tool" message per tool segment, each holding the decoded text of its tokens."""
    messages = [dict(m) for m in prompt_messages]
    run: list[int] = []
    for seg in traj.response_segments:
        if seg.role == "assistant":
            run.extend(seg.tokens)
            continue
        if run:
            messages.append({"role": "assistant", "content": codec.decode(run)})
            run = []
        messages.append({"role": "tool", "content": codec.decode(seg.tokens)})
    if run:
        messages.append({"role": "assistant", "content": codec.decode(run)})
    return messages


def trajectory_to_token_dict(
    traj: saar.Trajectory,
    reward: float,
    *,
    codec: saar.TurnCodec,
    original_input: Mapping[str, Any],
    group_id: int,
    policy_version: int,
    prompt_messages: Sequence[Mapping[str, str]] | None = None,
    allow_stale_logprobs: bool = False,
    masked_out: bool = False,
) -> dict[str, Any]:
    """One purified trajectory as Tunix's Token-mode dict, plus `stale_mask` and `saar_stats`.

    Tokens SAAR rolled back are absent; spliced turns carry mask 1 and the log-probs they were
    re-scored with. A trajectory that still has stale log-probs is refused unless
    `allow_stale_logprobs` (only right where the trainer recomputes all old log-probs, i.e.
    Tunix's `use_rollout_logps=False`). `masked_out` applies Tunix's overlong filter: loss mask
    all 0 and reward 0, as Tunix's own engine does for a filtered status.
    """
    if not isinstance(original_input, Mapping) or "prompts" not in original_input:
        raise TypeError(
            "original_input must be the dataset row (a dict with a 'prompts' key) that Tunix's "
            f"environment holds; got {type(original_input).__name__}"
        )
    for name, value in (("group_id", group_id), ("policy_version", policy_version)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int (Tunix does arithmetic on it); got {value!r}")
    stale = np.asarray(traj.response_stale, bool)
    if stale.any() and not allow_stale_logprobs:
        raise ValueError(
            f"{int(stale.sum())} response tokens have stale log-probs (spliced by SAAR without "
            "re-scoring) and Tunix would train on them as old log-probs; give the policy a "
            "score_fn with SaarConfig(recompute_spliced_logprobs=True), or set Tunix's "
            "use_rollout_logps=False so the trainer recomputes them"
        )
    if prompt_messages is None:
        prompt_messages = [{"role": "user", "content": codec.decode(traj.prompt_tokens)}]
    mask = np.asarray(traj.response_loss_mask, np.int32)
    return {
        "conversation_text": conversation_messages(traj, codec, prompt_messages),
        "prompt_tokens": np.asarray(traj.prompt_tokens, np.int32),
        "conversation_tokens": np.asarray(traj.response_tokens, np.int32),
        "conversation_masks": np.zeros_like(mask) if masked_out else mask,
        "status": tunix_status(traj),
        "trajectory_reward": 0.0 if masked_out else float(reward),
        "env_time": {},
        "reward_time": {},
        "old_logprobs": np.asarray(traj.response_logprobs, np.float32),
        "policy_version": int(policy_version),
        "original_input": original_input,
        "group_id": int(group_id),
        "stale_mask": stale,
        "saar_stats": traj.stats,
    }


async def collect_token_dicts(
    rows: Sequence[Mapping[str, Any]],
    prompts: Sequence[Sequence[int]],
    policy: saar.Policy,
    tools: saar.ToolRunner,
    codec: saar.TurnCodec,
    *,
    reward_fn: Callable[[Mapping[str, Any], saar.Trajectory], Any],
    group_ids: Sequence[int],
    policy_version: int,
    saar_config: saar.SaarConfig | None = _PAPER_SAAR,
    limits: saar.RolloutLimits | None = None,
    seeds: Sequence[int | str] | None = None,
) -> list[dict[str, Any]]:
    """Roll out `prompts[i]` (the token ids of dataset row `rows[i]`) with SAAR, concurrently,
    and return Token-mode dicts in order; for loops that collect outside a Tunix learner.

    Inside a Tunix learner use `tunix_learner.SaarGRPOLearner`, which does this per trajectory
    and reads the budgets from Tunix's config. `reward_fn(row, trajectory)` (sync or async)
    gives the outcome reward; `saar_config=None` is the baseline rollout.
    """
    n = len(prompts)
    for name, seq in (("rows", rows), ("group_ids", group_ids), ("seeds", seeds)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {len(seq)} {name} for {n} prompts; pass one per prompt")
    seeds = list(seeds) if seeds is not None else list(range(n))

    async def one(i: int) -> dict[str, Any]:
        traj = await saar.rollout(
            prompts[i], policy, tools, codec, saar=saar_config, limits=limits, seed=seeds[i]
        )
        reward = await _maybe_await(reward_fn(rows[i], traj))
        return trajectory_to_token_dict(
            traj,
            reward,
            codec=codec,
            original_input=rows[i],
            group_id=group_ids[i],
            policy_version=policy_version,
        )

    return list(await asyncio.gather(*(one(i) for i in range(n))))
