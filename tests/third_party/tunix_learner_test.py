"""A real google-tunix 0.1.7 GRPO step on SAAR rollouts (needs the `tunix` extra).

A tiny random Tunix Qwen3 scores every token; the turn texts are scripted (a random model writes
no tool calls) but their log-probs are the model's, so Tunix's own recomputation must agree
with them. One group of two: trajectory "A" writes a buggy call, SAAR rolls it back (shallow
splice) and it answers right; trajectory "B" answers wrong. One `SaarGRPOLearner.train()` step
(Tunix's `GRPOLearner.train`, only the collect engine swapped) must change the parameters and
train on exactly our tokens, masks and behaviour log-probs (spliced spans re-scored under the
purified context), with and without Tunix's sampler-IS correction; evaluation rolls out without
SAAR unless asked.
"""

import asyncio
import itertools

import numpy as np
import pytest

pytest.importorskip("tunix")

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tunix.generate import tokenizer_adapter  # noqa: E402
from tunix.models.qwen3 import model as qwen3  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.agentic import agentic_grpo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402

from cleaner_jax import saar  # noqa: E402
from cleaner_jax.saar.testing import IM_END, CharCodec, ScriptedPolicy, call_text  # noqa: E402
from third_party.tunix_saar import (  # noqa: E402
    TUNIX_TOKEN_KEYS,
    CallablePolicy,
    CallableToolRunner,
)
from third_party.tunix_saar.tunix_learner import (  # noqa: E402
    SaarCollectEngine,
    SaarGRPOLearner,
    SaarRollout,
    tunix_score_fn,
)

CODEC = CharCodec()
PAD = 15  # unused by CharCodec (specials 0-5, characters from 16)
VOCAB = 160
MAX_PROMPT, MAX_RESPONSE = 48, 384
QUESTION, EVAL_QUESTION = "What is 1+1?", "What is 2+0?"  # same length: one prompt length


def _prompt_ids(question):
    return CODEC.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


PROMPT_IDS = _prompt_ids(QUESTION)
BUGGY, FIXED = "print(x+1)", "print(1+1)"
SCRIPTS = {
    "A": [
        "A: compute " + call_text(BUGGY) + "<|im_end|>",
        "fix " + call_text(FIXED) + "<|im_end|>",
        "so \\boxed{2}<|im_end|>",
    ],
    "B": ["B: \\boxed{3}<|im_end|>"],
}


class _CharTokenizer:
    """CharCodec with the methods Tunix's TokenizerAdapter asks for."""

    def encode(self, text, **kwargs):
        return CODEC.encode(text)

    def decode(self, ids, **kwargs):
        return CODEC.decode([int(i) for i in ids if int(i) != PAD])

    def bos_id(self):
        return None

    def eos_id(self):
        return IM_END

    def pad_id(self):
        return PAD


def _execute(code):
    if code == BUGGY:
        return False, "Tool call failure\nstderr: NameError", "NameError"
    return True, "Tool call success\nstdout: 2", None


class _ScriptedSampler:
    """Token-in sampler: scripted turn texts, log-probs from the Tunix model under the context.

    New rollouts alternate A, B; a rollout's turn follows from what its context shows."""

    def __init__(self, score):
        self.score = score
        self.order = itertools.cycle(["A", "B"])
        self.sampled = []  # (context, ids, logprobs) per turn

    async def __call__(self, context, max_new_tokens):
        response = CODEC.decode(context[len(PROMPT_IDS) :])
        key = next(self.order) if not response else response[0]
        turn = 2 if "Tool call success" in response else 1 if "NameError" in response else 0
        ids = CODEC.encode(SCRIPTS[key][turn])[:max_new_tokens]
        logprobs = await self.score(context, ids)
        self.sampled.append((list(context), ids, np.asarray(logprobs)))
        return ids, logprobs, ids[-1] == IM_END


def _cluster(learning_rate=0.1):
    config = qwen3.ModelConfig(
        num_layers=1,
        vocab_size=VOCAB,
        embed_dim=32,
        hidden_dim=64,
        num_heads=2,
        head_dim=16,
        num_kv_heads=1,
        rope_theta=10_000,
        norm_eps=1e-6,
    )
    model = qwen3.Qwen3(config, rngs=nnx.Rngs(0))
    mesh = jax.make_mesh(
        (1, 1),
        ("fsdp", "tp"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=jax.devices()[:1],
    )
    roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role: mesh for role in roles},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.sgd(learning_rate),
            eval_every_n_steps=100,
            max_steps=1,
            mini_batch_size=1,
            train_micro_batch_size=1,
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_prompt_length=MAX_PROMPT,
            max_tokens_to_generate=MAX_RESPONSE,
            return_logprobs=True,
            temperature=1.0,
            kv_cache_size=MAX_PROMPT + MAX_RESPONSE,
        ),
    )
    return rl_cluster_lib.RLCluster(
        actor=model,
        tokenizer=tokenizer_adapter.TokenizerAdapter(_CharTokenizer()),
        cluster_config=cluster_config,
    )


def _grpo_config(**overrides):
    kwargs = dict(
        num_generations=2,
        max_response_length=MAX_RESPONSE,
        beta=0.0,
        max_concurrency=2,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_agg_mode="token-mean",
    )
    kwargs.update(overrides)
    return agentic_grpo_learner.GRPOConfig(**kwargs)


def _reward(row, traj):
    assert "prompts" in row
    return 1.0 if "\\boxed{2}" in CODEC.decode(traj.response_tokens) else -1.0


def _row(question):
    return {"prompts": np.array([question]), "answer": np.array(["2"])}


def _saar_rollout(cluster, saar_config, *, score=True, limits=None, saar_in_eval=False):
    """The rollout and the trajectories its reward saw, by question ("A"/"B" inside)."""
    score_fn = tunix_score_fn(cluster)
    recorded = {QUESTION: [], EVAL_QUESTION: []}

    def reward(row, traj):
        assert "policy_version" not in row  # the row as the dataset gave it
        recorded[str(row["prompts"][0])].append(traj)
        return _reward(row, traj)

    rollout = SaarRollout(
        policy=CallablePolicy(_ScriptedSampler(score_fn), score_fn if score else None),
        tools=CallableToolRunner(_execute),
        codec=CODEC,
        prompt_tokens_fn=lambda row: _prompt_ids(str(row["prompts"][0])),
        reward_fn=reward,
        saar_config=saar_config,
        limits=limits,
        saar_in_eval=saar_in_eval,
    )
    return rollout, recorded


def _metric_fn(prompts, completions, advantages, rewards, answer):
    """A Tunix metric_fn taking exactly the row's keys (prompts, answer), no **kwargs."""
    return {"test/completions": (len(completions), np.mean)}


def _train_one_step(
    saar_config, *, sampler_is=None, eval_dataset=None, saar_in_eval=False, learning_rate=0.1
):
    cluster = _cluster(learning_rate)
    rollout, trajectories = _saar_rollout(cluster, saar_config, saar_in_eval=saar_in_eval)
    learner = SaarGRPOLearner(
        cluster, _grpo_config(sampler_is=sampler_is), rollout, metric_fns=[_metric_fn]
    )
    batches, trainer_logps, token_dicts = [], [], []
    update_actor = cluster.update_actor
    process_results = learner._process_results

    def capture_dicts(trajectories, mode, expected_step=None):
        # The Token-mode dicts Tunix receives, old_logprobs (mu) included.
        token_dicts.extend((mode, item.traj) for item in trajectories)
        return process_results(trajectories=trajectories, mode=mode, expected_step=expected_step)

    def capture(train_ds, eval_ds, skip_jit=False):
        for ex in train_ds:
            batches.append(jax.tree.map(np.asarray, ex))
            # Tunix's own old-log-prob recomputation on its training batch, before the update.
            trainer_logps.append(
                np.asarray(
                    cluster.get_actor_per_token_logps(
                        ex.prompt_ids, ex.completion_ids, pad_id=PAD, eos_id=IM_END
                    )
                )
            )
        return update_actor(train_ds, eval_ds, skip_jit)

    cluster.update_actor = capture
    learner._process_results = capture_dicts
    before = jax.tree.map(np.array, nnx.state(cluster.actor_trainer.model, nnx.Param))
    learner.train([_row(QUESTION)], eval_dataset)
    after = jax.tree.map(np.array, nnx.state(cluster.actor_trainer.model, nnx.Param))
    return dict(
        batches=batches,
        trainer_logps=trainer_logps,
        token_dicts=token_dicts,
        trajectories=trajectories,
        sampler=rollout.policy.sample_fn,
        score=tunix_score_fn(cluster).sync,
        changed=jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)),
    )


def _by_key(trajectories):
    return {CODEC.decode(t.response_tokens[:1]): t for t in trajectories}


@pytest.mark.parametrize("arm", ["saar", "saar_sampler_is", "baseline"])
def test_one_tunix_grpo_step_trains_on_saar_rollouts(arm):
    saar_config = None if arm == "baseline" else saar.SaarConfig()
    sampler_is = "token" if arm == "saar_sampler_is" else None
    run = _train_one_step(saar_config, sampler_is=sampler_is)
    batches, trainer_logps = run["batches"], run["trainer_logps"]
    trajectories = run["trajectories"][QUESTION]

    assert len(batches) == 1 and len(trajectories) == 2
    batch, recomputed = batches[0], trainer_logps[0]
    assert any(run["changed"]), "one GRPO step left every parameter unchanged"

    by_key = _by_key(trajectories)
    a = by_key["A"]
    text_a = CODEC.decode(a.response_tokens)
    if arm != "baseline":
        assert a.stats.rollbacks_triggered == a.stats.rollbacks_recovered == a.stats.shallow == 1
        assert a.stats.rescored_tokens > 0 and not any(a.response_stale)
        assert BUGGY not in text_a and "NameError" not in text_a
    else:
        assert a.stats.rollbacks_triggered == 0 and BUGGY in text_a and "NameError" in text_a
    for row in range(2):
        ids = batch.completion_ids[row]
        traj = by_key[CODEC.decode(ids[:1])]
        n = len(traj.response_tokens)
        np.testing.assert_array_equal(ids[:n], traj.response_tokens)
        assert np.all(ids[n:] == PAD)
        np.testing.assert_array_equal(batch.completion_mask[row][:n], traj.response_loss_mask)
        assert not batch.completion_mask[row][n:].any()
        mask = np.asarray(traj.response_loss_mask, bool)
        mu = np.float32(traj.response_logprobs)
        # Tunix receives mu (sampled: the sampler's; spliced: re-scored) as old_logprobs ...
        received = {d["conversation_tokens"][0]: d for _, d in run["token_dicts"]}
        np.testing.assert_array_equal(received[ids[0]]["old_logprobs"], mu)
        if sampler_is is None:
            # ... and clips the ratio against it ...
            np.testing.assert_array_equal(batch.old_per_token_logps[row][:n], mu)
            assert batch.sampler_is_weights is None
        else:
            # ... or, with sampler_is="token", clips against its own recompute (pi_prox) and
            # weights each policy token by min(pi_prox / mu, 2): 1 here, spliced spans
            # included, because mu is what the trainer's weights give under the purified
            # context.
            np.testing.assert_array_equal(batch.old_per_token_logps[row], recomputed[row])
            weights = np.asarray(batch.sampler_is_weights[row])
            np.testing.assert_allclose(weights[:n][mask], 1.0, atol=1e-5)
            assert not weights[:n][~mask].any() and not weights[n:].any()
        # The behaviour log-probs are what Tunix's trainer computes for these tokens: the
        # ratio starts at 1.
        np.testing.assert_allclose(recomputed[row][:n][mask], mu[mask], atol=1e-5)
        np.testing.assert_array_equal(batch.prompt_ids[row][-len(PROMPT_IDS) :], PROMPT_IDS)
    rewards = {k: _reward({"prompts": 0}, t) for k, t in by_key.items()}
    assert rewards == {"A": 1.0, "B": -1.0}
    assert batch.policy_version.tolist() == [0, 0]
    # The metric_fn without **kwargs ran on the training group (it would raise TypeError on
    # any key the row does not have).
    assert {k for _, d in run["token_dicts"] for k in d["original_input"]} == {"prompts", "answer"}


def _spans(traj):
    """(start, segment) of each response segment."""
    start = 0
    for seg in traj.response_segments:
        yield start, seg
        start += len(seg.tokens)


def test_tunix_receives_spliced_spans_rescored_under_the_purified_context():
    # Learning rate 0: the weights after train() are the ones that rolled out and re-scored.
    run = _train_one_step(saar.SaarConfig(), sampler_is="token", learning_rate=0.0)
    assert not any(run["changed"])
    a = _by_key(run["trajectories"][QUESTION])["A"]
    received = {d["conversation_tokens"][0]: d for _, d in run["token_dicts"]}[a.response_tokens[0]]
    spliced = [
        (start, seg)
        for start, seg in _spans(a)
        if seg.provenance in (saar.Provenance.SPLICED_SHALLOW, saar.Provenance.SPLICED_DEEP)
    ]
    assert len(spliced) == 1
    start, seg = spliced[0]
    mu = received["old_logprobs"][start : start + len(seg.tokens)]
    purified_context = list(a.prompt_tokens) + list(a.response_tokens[:start])
    np.testing.assert_allclose(mu, run["score"](purified_context, seg.tokens), atol=1e-5)
    # Why re-scoring matters: the retry sampled these tokens under the dirty context, with
    # other log-probs (this also tells re-scored from passed-through ones).
    (sampled,) = [
        lp for _, ids, lp in run["sampler"].sampled if CODEC.decode(ids).startswith("fix")
    ]
    assert np.max(np.abs(mu - sampled[-len(seg.tokens) :])) > 1e-3


@pytest.mark.parametrize("saar_in_eval", [False, True])
def test_evaluation_rolls_out_without_saar_unless_asked(saar_in_eval):
    run = _train_one_step(
        saar.SaarConfig(), eval_dataset=[_row(EVAL_QUESTION)], saar_in_eval=saar_in_eval
    )
    train, evaluation = (
        _by_key(run["trajectories"][QUESTION]),
        _by_key(run["trajectories"][EVAL_QUESTION]),
    )
    assert set(evaluation) == {"A", "B"}, "Tunix ran no evaluation"
    assert train["A"].stats.rollbacks_triggered == 1  # training always rolls back
    text = CODEC.decode(evaluation["A"].response_tokens)
    if saar_in_eval:
        assert evaluation["A"].stats.rollbacks_triggered == 1 and BUGGY not in text
    else:
        assert evaluation["A"].stats.rollbacks_triggered == 0 and "NameError" in text
    modes = [mode for mode, _ in run["token_dicts"]]
    assert modes.count(rl_cluster_lib.Mode.EVAL) == modes.count(rl_cluster_lib.Mode.TRAIN) == 2


def test_budget_mismatch_is_refused():
    cluster = _cluster()
    rollout, _ = _saar_rollout(
        cluster, saar.SaarConfig(), limits=saar.RolloutLimits(max_response_tokens=MAX_RESPONSE * 2)
    )
    with pytest.raises(ValueError, match="max_response_length"):
        SaarGRPOLearner(cluster, _grpo_config(), rollout)


def test_explicit_limits_are_told_from_unset():
    cluster = _cluster()
    # Unset: derived from Tunix's max_response_length.
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig())
    learner = SaarGRPOLearner(cluster, _grpo_config(), rollout)
    assert learner.saar_limits == saar.RolloutLimits(max_response_tokens=MAX_RESPONSE)
    # An explicit RolloutLimits equal to the default is explicit: its response budget
    # disagrees with Tunix's and is refused, not silently replaced.
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(), limits=saar.RolloutLimits())
    with pytest.raises(ValueError, match="max_response_length"):
        SaarGRPOLearner(cluster, _grpo_config(), rollout)
    # An explicit, agreeing one is used as given.
    limits = saar.RolloutLimits(max_turns=3, max_response_tokens=MAX_RESPONSE)
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(), limits=limits)
    assert SaarGRPOLearner(cluster, _grpo_config(), rollout).saar_limits is limits


def test_sampler_is_without_rescoring_is_refused():
    cluster = _cluster()
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(), score=False)
    with pytest.raises(ValueError, match="sampler_is"):
        SaarGRPOLearner(cluster, _grpo_config(sampler_is="token"), rollout)
    # Refused even where Tunix recomputes the old log-probs (use_rollout_logps=False).
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(recompute_spliced_logprobs=False))
    config = _grpo_config(sampler_is="token", use_rollout_logps=False)
    with pytest.raises(ValueError, match="sampler_is"):
        SaarGRPOLearner(cluster, config, rollout)
    # Without SAAR there is nothing to re-score.
    rollout, _ = _saar_rollout(cluster, None, score=False)
    SaarGRPOLearner(cluster, _grpo_config(sampler_is="token"), rollout)


def test_stale_logprobs_without_score_function_are_refused():
    cluster = _cluster()
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(), score=False)
    with pytest.raises(ValueError, match="no score_fn"):
        SaarGRPOLearner(cluster, _grpo_config(), rollout)
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig(recompute_spliced_logprobs=False))
    with pytest.raises(ValueError, match="stale"):
        SaarGRPOLearner(cluster, _grpo_config(), rollout)


def test_tunix_reward_fns_are_refused():
    cluster = _cluster()
    rollout, _ = _saar_rollout(cluster, saar.SaarConfig())
    with pytest.raises(ValueError, match="reward_fns"):
        SaarGRPOLearner(cluster, _grpo_config(), rollout, reward_fns=lambda **kw: [0.0, 0.0])


class _Env:
    """What SaarCollectEngine reads from Tunix's TaskEnvironment: the row and the group ids."""

    def __init__(self):
        self.task = _row(QUESTION)
        self.extra_kwargs = {"group_id": 3, "pair_index": 1}
        self.closed = False

    def close(self):
        self.closed = True


def _engine(turns, *, prompt=PROMPT_IDS, max_response=MAX_RESPONSE, **kwargs):
    rollout = SaarRollout(
        policy=ScriptedPolicy(CODEC, turns),
        tools=CallableToolRunner(_execute),
        codec=CODEC,
        prompt_tokens_fn=lambda row: prompt,
        reward_fn=_reward,
    )
    env = _Env()
    engine = SaarCollectEngine(
        None,
        env,
        saar_rollout=rollout,
        saar_config=saar.SaarConfig(),
        limits=saar.RolloutLimits(max_response_tokens=max_response),
        policy_version_fn=lambda: 5,
        max_prompt_length=MAX_PROMPT,
        allow_stale_logprobs=False,
        **kwargs,
    )
    return engine, env


def test_engine_returns_tunix_types():
    engine, env = _engine(SCRIPTS["A"])
    out = asyncio.run(engine.collect("Token"))
    assert set(TUNIX_TOKEN_KEYS) <= set(out) and env.closed
    # As Tunix's engine: the version is stamped on the environment's task, and the row
    # returned as original_input has the dataset's keys only.
    assert env.task["policy_version"] == 5 and set(out["original_input"]) == {"prompts", "answer"}
    assert out["policy_version"] == 5 and out["group_id"] == 3
    roles = [m["role"] for m in out["conversation_text"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert out["conversation_text"][0]["content"] == QUESTION
    assert out["conversation_text"][1]["content"].startswith("A: compute <tool_call>")
    assert FIXED in out["conversation_text"][1]["content"]  # the shallow splice, one message
    assert out["status"] == "SUCCEEDED" and out["trajectory_reward"] == 1.0


def test_engine_applies_tunix_overlong_filter():
    turns = ["A: " + "x" * 40 + "<|im_end|>"]
    engine, _ = _engine(turns, max_response=20, overlong_filter=True)
    out = asyncio.run(engine.collect("Token"))
    assert out["status"] == "MAX_CONTEXT_LIMIT_REACHED" and len(out["conversation_tokens"]) == 20
    assert out["trajectory_reward"] == 0.0 and not out["conversation_masks"].any()
    engine, _ = _engine(turns, max_response=20, overlong_filter=False)
    out = asyncio.run(engine.collect("Token"))
    assert out["trajectory_reward"] == -1.0 and out["conversation_masks"].all()


def test_engine_refuses_a_prompt_over_tunix_prompt_budget():
    engine, _ = _engine(SCRIPTS["B"], prompt=[20] * (MAX_PROMPT + 1))
    with pytest.raises(ValueError, match="max_prompt_length"):
        asyncio.run(engine.collect("Token"))
