"""SAAR as the rollout of Tunix's agentic GRPO learner (google-tunix 0.1.7 exactly).

Tunix 0.1.7 collects each trajectory with an engine built by
`RolloutOrchestrator(engine_cls=TrajectoryCollectEngine, engine_kwargs=...)`, whose
`collect("Token")` returns the dict `GRPOLearner._process_results` trains on. Its engine keeps
chat messages and re-templates them, so there is no token checkpoint to roll back to. The
learner offers no public hook to change the engine class; the narrowest override is
`_build_orchestrator` (private), which `SaarGRPOLearner` overrides to swap `engine_cls` for
`SaarCollectEngine` and keep Tunix's engine kwargs. Everything else (advantages, loss, update,
weight sync, evaluation, the sampler-IS correction) is Tunix's own. Tunix's `train()` builds the
training orchestrator first and one more per evaluation; the evaluation ones roll out without
SAAR unless `SaarRollout.saar_in_eval` (the paper validates without rollback). The override
is checked against the installed version at import: on any other version this module raises
ImportError instead of running a private hook whose contract may have changed.

Semantics, read from Tunix's config instead of restated:
  * response budget: `GRPOConfig.max_response_length` is SAAR's `max_response_tokens` (retries
    and rolled-back error messages included); `SaarRollout.limits=None` derives the limits from
    it, an explicit `RolloutLimits` that disagrees is refused;
  * prompt budget: a prompt longer than `RolloutConfig.max_prompt_length` is refused (Tunix
    would cut its head off without a word);
  * reward: `SaarRollout.reward_fn(row, trajectory)` is the trajectory reward and Tunix's
    `reward_fns` must be None (Tunix would add them on top of it);
  * overlong filter: with `overlong_filter=True` a trajectory whose status is in
    `filter_statuses` gets loss mask 0 and reward 0, as Tunix's engine does;
  * behaviour log-probs (μ, Token-mode `old_logprobs`): sampled tokens carry the sampler's,
    spliced spans the score function's re-scoring under the purified context, tool tokens 0
    (loss mask 0). With `use_rollout_logps=True` (Tunix's default) Tunix trains against them,
    and with `sampler_is="token"` it weights each token by min(π_prox / μ, threshold), so
    spliced spans must be re-scored (`SaarConfig(recompute_spliced_logprobs=True)` and a policy
    with a score function, e.g. `tunix_score_fn(rl_cluster)`); otherwise construction fails;
  * `metric_fns` get the dataset row's own keys, as under Tunix's engine (the policy version is
    stamped on the environment's task, not on the row returned as `original_input`).
`episode_timeout` is not applied to SAAR rollouts (bound the sandbox's per-call timeout).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cleaner_jax import saar
from third_party.tunix_saar.adapter import CallablePolicy, trajectory_to_token_dict, tunix_status

SUPPORTED_TUNIX = "0.1.7"


def _check_tunix_version() -> None:
    try:
        found = importlib.metadata.version("google-tunix")
    except importlib.metadata.PackageNotFoundError as e:
        raise ImportError(
            "third_party.tunix_saar.tunix_learner needs google-tunix=="
            f"{SUPPORTED_TUNIX}; see third_party/tunix_saar/README.md (Install)"
        ) from e
    if found != SUPPORTED_TUNIX:
        raise ImportError(
            f"third_party.tunix_saar.tunix_learner overrides GRPOLearner._build_orchestrator, "
            f"a private method, as it is in google-tunix {SUPPORTED_TUNIX}; found {found}. "
            "Check that method and RolloutOrchestrator(engine_cls=...) in the new version, then "
            "update SUPPORTED_TUNIX."
        )


_check_tunix_version()

# Imported after the version check on purpose.
from flax import nnx  # noqa: E402
from tunix.rl import common as tunix_common  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.agentic import agentic_grpo_learner  # noqa: E402
from tunix.rl.agentic.agents import agent_types  # noqa: E402

# Tunix's own default for `filter_statuses` (TrajectoryCollectEngine.__init__).
_DEFAULT_FILTER_STATUSES = frozenset(
    {
        agent_types.TrajectoryStatus.MAX_STEPS_REACHED,
        agent_types.TrajectoryStatus.MAX_CONTEXT_LIMIT_REACHED,
        agent_types.TrajectoryStatus.TIMEOUT,
        agent_types.TrajectoryStatus.ENV_TIMEOUT,
    }
)


@dataclasses.dataclass(frozen=True)
class SaarRollout:
    """What SAAR needs besides Tunix's learner.

    Attributes:
      policy: a `saar.Policy` (e.g. `CallablePolicy(sample_fn, tunix_score_fn(rl_cluster))`).
      tools: a `saar.ToolRunner` (e.g. `CallableToolRunner(execute_fn)`).
      codec: a `saar.TurnCodec` for the tokenizer's chat format.
      prompt_tokens_fn: dataset row (the dict Tunix's environment holds, values batched with
        length 1) -> chat-formatted prompt token ids ending with the assistant header.
      reward_fn: (row, trajectory) -> float, the whole GRPO reward of the trajectory.
      saar_config: None for the baseline rollout.
      limits: None (default) derives SAAR's budgets from Tunix: `RolloutLimits`'s defaults with
        `max_response_tokens = GRPOConfig.max_response_length`. An explicit `RolloutLimits` is
        used as given and its `max_response_tokens` must equal `max_response_length`.
      saar_in_eval: roll out Tunix's evaluation with SAAR too; False (default) evaluates with
        the baseline rollout, as the paper validates.
    """

    policy: saar.Policy
    tools: saar.ToolRunner
    codec: saar.TurnCodec
    prompt_tokens_fn: Callable[[Mapping[str, Any]], Sequence[int]]
    reward_fn: Callable[[Mapping[str, Any], saar.Trajectory], float]
    saar_config: saar.SaarConfig | None = saar.SaarConfig()
    limits: saar.RolloutLimits | None = None
    saar_in_eval: bool = False


def _rollout_limits(limits: saar.RolloutLimits | None, max_response_length: int):
    """SAAR's budgets: derived from Tunix's response budget when None, else checked against it."""
    if limits is None:
        return saar.RolloutLimits(max_response_tokens=max_response_length)
    if not isinstance(limits, saar.RolloutLimits):
        raise TypeError(f"SaarRollout.limits must be a saar.RolloutLimits or None, got {limits!r}")
    if limits.max_response_tokens != max_response_length:
        raise ValueError(
            f"RolloutLimits.max_response_tokens={limits.max_response_tokens} disagrees with "
            f"Tunix's GRPOConfig.max_response_length={max_response_length}; Tunix would cut "
            "longer trajectories and keep their reward. Pass limits=None (derived from Tunix) "
            f"or RolloutLimits(max_response_tokens={max_response_length}, ...)."
        )
    return limits


def _rescores_spliced(saar_rollout: SaarRollout) -> bool:
    """Whether every spliced span gets a behaviour log-prob re-scored under the purified
    context (SAAR off, or rescoring on with a policy that can score)."""
    config, policy = saar_rollout.saar_config, saar_rollout.policy
    if config is None:
        return True
    if not config.recompute_spliced_logprobs:
        return False
    return not (isinstance(policy, CallablePolicy) and policy.score_fn is None)


class SaarCollectEngine:
    """Stands where `TrajectoryCollectEngine` stands: built per (agent, env) with Tunix's engine
    kwargs, `collect("Token")` returns Tunix's Token-mode dict for one SAAR rollout of the
    environment's task (`saar_config=None`: the baseline rollout, as for evaluation). The
    agent is unused (SAAR talks to the policy in tokens)."""

    def __init__(
        self,
        agent: Any,
        env: Any,
        *,
        saar_rollout: SaarRollout,
        saar_config: saar.SaarConfig | None,
        limits: saar.RolloutLimits,
        policy_version_fn: Callable[[], int],
        max_prompt_length: int,
        allow_stale_logprobs: bool,
        overlong_filter: bool = False,
        filter_statuses: set | None = None,
        **tunix_engine_kwargs: Any,
    ):
        del agent, tunix_engine_kwargs  # model_call, tokenizer, chat_parser, timeout, perf_v2
        self.env = env
        self.saar_rollout = saar_rollout
        self.saar_config = saar_config
        self.limits = limits
        self.policy_version_fn = policy_version_fn
        self.max_prompt_length = max_prompt_length
        self.allow_stale_logprobs = allow_stale_logprobs
        self.overlong_filter = overlong_filter
        self.filter_statuses = frozenset(filter_statuses or _DEFAULT_FILTER_STATUSES)

    async def collect(self, mode: str = "Token") -> dict[str, Any]:
        if mode != "Token":
            raise ValueError(f"SaarCollectEngine only produces mode='Token' output, got {mode!r}")
        r = self.saar_rollout
        # Tunix's agent keeps a copy of the task taken at reset as `original_input`, before
        # its _model_call stamps the policy version on the environment's task: metric_fns
        # receive exactly the row's keys.
        row = copy.deepcopy(self.env.task)
        group_id = self.env.extra_kwargs["group_id"]
        pair_index = self.env.extra_kwargs["pair_index"]
        policy_version = self.policy_version_fn()
        self.env.task["policy_version"] = policy_version
        prompt = [int(t) for t in r.prompt_tokens_fn(row)]
        if len(prompt) > self.max_prompt_length:
            raise ValueError(
                f"prompt of {len(prompt)} tokens exceeds RolloutConfig.max_prompt_length="
                f"{self.max_prompt_length}; Tunix would drop its first tokens. Raise the limit "
                "or filter the dataset."
            )
        try:
            traj = await saar.rollout(
                prompt,
                r.policy,
                r.tools,
                r.codec,
                saar=self.saar_config,
                limits=self.limits,
                seed=f"{group_id}/{pair_index}",
            )
        finally:
            await asyncio.to_thread(self.env.close)
        status = agent_types.TrajectoryStatus[tunix_status(traj)]
        masked_out = self.overlong_filter and status in self.filter_statuses
        reward = 0.0 if masked_out else float(await _maybe_call(r.reward_fn, row, traj))
        prompts = np.asarray(row["prompts"]).reshape(-1)
        return trajectory_to_token_dict(
            traj,
            reward,
            codec=r.codec,
            original_input=row,
            group_id=group_id,
            policy_version=policy_version,
            prompt_messages=[{"role": "user", "content": str(prompts[0])}],
            allow_stale_logprobs=self.allow_stale_logprobs,
            masked_out=masked_out,
        )


async def _maybe_call(fn: Callable[..., Any], *args: Any) -> Any:
    out = fn(*args)
    return await out if asyncio.iscoroutine(out) else out


class SaarGRPOLearner(agentic_grpo_learner.GRPOLearner):
    """Tunix's agentic `GRPOLearner` whose rollouts are SAAR rollouts.

    Same constructor as `GRPOLearner` plus `saar_rollout`; `reward_fns` must be None (the reward
    is `saar_rollout.reward_fn`), agent_class/env_class stay Tunix's defaults (the environment
    only carries the dataset row). `GRPOConfig.sampler_is` needs every spliced span re-scored.
    """

    def __init__(
        self,
        rl_cluster: rl_cluster_lib.RLCluster,
        algo_config: agentic_grpo_learner.GRPOConfig,
        saar_rollout: SaarRollout,
        *,
        reward_fns: Any = None,
        chat_parser: Any | None = None,
        metric_fns: Sequence[Any] | None = None,
    ):
        if reward_fns is not None:
            raise ValueError(
                "SaarGRPOLearner takes the reward from saar_rollout.reward_fn; Tunix would add "
                "reward_fns on top of it. Fold them into reward_fn and pass reward_fns=None."
            )
        self.saar_limits = _rollout_limits(saar_rollout.limits, algo_config.max_response_length)
        if algo_config.sampler_is is not None and not _rescores_spliced(saar_rollout):
            raise ValueError(
                f"GRPOConfig.sampler_is={algo_config.sampler_is!r} weights each token by "
                "pi_prox / mu, and with SAAR on a spliced span has a valid mu only when it is "
                "re-scored under the purified context. Set SaarConfig("
                "recompute_spliced_logprobs=True) with a policy that scores (CallablePolicy("
                "sample_fn, score_fn=tunix_score_fn(rl_cluster))), or sampler_is=None."
            )
        recompute = (
            saar_rollout.saar_config is None or saar_rollout.saar_config.recompute_spliced_logprobs
        )
        if algo_config.use_rollout_logps and not recompute:
            raise ValueError(
                "GRPOConfig.use_rollout_logps=True trains on the rollout's log-probs, and "
                "SaarConfig(recompute_spliced_logprobs=False) leaves spliced turns with stale "
                "ones. Set recompute_spliced_logprobs=True with a score function "
                "(tunix_score_fn(rl_cluster)), or use_rollout_logps=False."
            )
        policy = saar_rollout.policy
        if (
            algo_config.use_rollout_logps
            and saar_rollout.saar_config is not None
            and isinstance(policy, CallablePolicy)
            and policy.score_fn is None
        ):
            raise ValueError(
                "SAAR re-scores spliced turns under the purified context and this CallablePolicy "
                "has no score_fn; pass score_fn=tunix_score_fn(rl_cluster) (built from your "
                "Tunix model), or set GRPOConfig.use_rollout_logps=False."
            )
        self.saar_rollout = saar_rollout
        self._saar_train_orchestrator_built = False
        super().__init__(
            rl_cluster=rl_cluster,
            algo_config=algo_config,
            reward_fns=None,
            chat_parser=chat_parser,
            metric_fns=metric_fns,
        )

    def train(self, train_dataset: Any, eval_dataset: Any = None, skip_jit: bool = False) -> None:
        """Tunix's `train()`; the first orchestrator it builds is the training one."""
        self._saar_train_orchestrator_built = False
        return super().train(train_dataset, eval_dataset, skip_jit)

    def _build_orchestrator(self):
        # The one private override: Tunix's orchestrator with SAAR's engine class. Tunix 0.1.7's
        # train() builds the training orchestrator before its loop and a fresh one for each
        # evaluation inside it, with no mode argument; the first call per train() is training.
        training = not self._saar_train_orchestrator_built
        self._saar_train_orchestrator_built = True
        r = self.saar_rollout
        saar_config = r.saar_config if training or r.saar_in_eval else None
        mode = rl_cluster_lib.Mode.TRAIN if training else rl_cluster_lib.Mode.EVAL
        orchestrator = super()._build_orchestrator()
        rollout_config = self.rl_cluster.get_rollout_config(mode=mode)
        orchestrator.engine_cls = functools.partial(
            SaarCollectEngine,
            saar_rollout=r,
            saar_config=saar_config,
            limits=self.saar_limits,
            policy_version_fn=lambda: int(self.policy_version),
            max_prompt_length=rollout_config.max_prompt_length,
            allow_stale_logprobs=not self.algo_config.use_rollout_logps,
        )
        return orchestrator


def tunix_score_fn(rl_cluster: rl_cluster_lib.RLCluster) -> Callable[..., Any]:
    """`score_fn(context_ids, ids) -> log-probs` from the Tunix rollout model (the weights that
    sample), computed by Tunix's own `common.compute_per_token_logps` at the rollout temperature,
    i.e. exactly how Tunix's trainer recomputes old log-probs.

    Context and ids are padded to fixed lengths (max_prompt_length + max_tokens_to_generate, and
    max_tokens_to_generate) so it compiles once. The pad id must not occur in real tokens (as in
    Tunix's own batches). Async: the forward runs in a worker thread.
    """
    config = rl_cluster.get_rollout_config(mode=rl_cluster_lib.Mode.TRAIN)
    response_len = config.max_tokens_to_generate
    context_len = config.max_prompt_length + response_len
    pad_id = rl_cluster.rollout.pad_id()
    eos_id = rl_cluster.rollout.eos_id()

    def score(context_ids: Sequence[int], ids: Sequence[int]) -> np.ndarray:
        if len(context_ids) > context_len or len(ids) > response_len:
            raise ValueError(
                f"cannot score {len(ids)} tokens after {len(context_ids)}: limits are "
                f"{response_len} and {context_len} (max_prompt_length + max_tokens_to_generate)"
            )
        if pad_id in context_ids or pad_id in ids:
            raise ValueError(f"pad id {pad_id} occurs in the tokens to score")
        prompt = np.full((1, context_len), pad_id, np.int32)
        prompt[0, context_len - len(context_ids) :] = context_ids
        completion = np.full((1, response_len), pad_id, np.int32)
        completion[0, : len(ids)] = ids
        graphdef, state = nnx.split(rl_cluster.rollout.model())
        logps = tunix_common.compute_per_token_logps(
            graphdef,
            state,
            prompt_tokens=prompt,
            completion_tokens=completion,
            pad_id=pad_id,
            eos_id=eos_id,
            stop_gradient=True,
            return_logits=False,
            temperature=config.temperature,
        )
        return np.asarray(logps)[0, : len(ids)]

    async def score_async(context_ids: Sequence[int], ids: Sequence[int]) -> np.ndarray:
        return await asyncio.to_thread(score, context_ids, ids)

    score_async.sync = score  # for samplers that score in the same thread
    return score_async
