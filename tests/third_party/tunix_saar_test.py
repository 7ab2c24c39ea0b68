"""The Tunix adapter without Tunix: SAAR behind plain callables, Token-mode dicts in Tunix's types.

The real learner step is in tunix_learner_test.py (needs the `tunix` extra); these run
everywhere.
"""

import asyncio

import numpy as np
import pytest

from cleaner_jax import saar
from cleaner_jax.saar.testing import IM_END, CharCodec, call_text, scored_logprobs
from third_party.tunix_saar import (
    TUNIX_TOKEN_KEYS,
    CallablePolicy,
    CallableToolRunner,
    collect_token_dicts,
    trajectory_to_token_dict,
    tunix_status,
)

CODEC = CharCodec()
BUGGY, FIXED = "print(x + 1)", "print(1 + 1)"
ANSWER = "so \\boxed{2}<|im_end|>"
ROW = {"prompts": np.array(["What is 1+1?"]), "answer": np.array(["2"])}
TURNS = [
    "let me compute " + call_text(BUGGY) + "<|im_end|>",
    "fix " + call_text(FIXED) + "<|im_end|>",
    ANSWER,
]


class _Scripted:
    """A synchronous sample_fn replaying turn texts."""

    def __init__(self, turns):
        self.turns = list(turns)
        self.calls = 0

    def __call__(self, context, max_new_tokens):
        ids = CODEC.encode(self.turns[self.calls])[:max_new_tokens]
        self.calls += 1
        return ids, [-0.5] * len(ids), bool(ids) and ids[-1] == IM_END


def _score(ctx, ids):
    return scored_logprobs(len(ctx), len(ids))


def _execute(code):
    if code == BUGGY:
        return (
            False,
            "Tool call failure\nreason: \nstdout: \nstderr: NameError at line 1",
            "NameError",
        )
    return True, f"Tool call success\nstdout: {eval(code.removeprefix('print'))}\nstderr: ", None


def _run(turns, saar_config, execute=_execute, score_fn=_score):
    prompt = CODEC.encode("<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")
    return asyncio.run(
        collect_token_dicts(
            [ROW],
            [prompt],
            CallablePolicy(_Scripted(turns), score_fn),
            CallableToolRunner(execute),
            CODEC,
            reward_fn=lambda row, traj: 1.0,
            saar_config=saar_config,
            group_ids=[4],
            policy_version=7,
        )
    )[0]


def test_saar_purifies_the_failed_call_in_the_tunix_dict():
    out = _run(TURNS, saar.SaarConfig())
    assert set(TUNIX_TOKEN_KEYS) <= set(out)
    text = CODEC.decode(out["conversation_tokens"].tolist())
    assert BUGGY not in text and "NameError" not in text  # rolled back
    assert "let me compute " + call_text(FIXED) in text  # shallow splice keeps the reasoning
    assert out["status"] == "SUCCEEDED" and out["trajectory_reward"] == 1.0
    # Tunix's types: the row itself, int ids, chat messages.
    assert out["original_input"] is ROW and out["group_id"] == 4 and out["policy_version"] == 7
    assert [m["role"] for m in out["conversation_text"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    n = len(out["conversation_tokens"])
    assert out["conversation_masks"].shape == out["old_logprobs"].shape == (n,)
    # Mask 1 exactly on assistant text: tool tokens (the success message) are 0.
    masked = CODEC.decode(out["conversation_tokens"][out["conversation_masks"] == 0].tolist())
    assert "Tool call success" in masked and "boxed" not in masked
    stats = out["saar_stats"]
    assert (stats.rollbacks_triggered, stats.rollbacks_recovered, stats.shallow) == (1, 1, 1)
    # The spliced call was re-scored through score_fn, so nothing is left stale.
    assert not out["stale_mask"].any()
    assert np.all(out["old_logprobs"][out["conversation_masks"] == 0] == 0.0)


def test_baseline_keeps_the_error_visible():
    out = _run(TURNS, None)
    text = CODEC.decode(out["conversation_tokens"].tolist())
    assert BUGGY in text and "NameError" in text
    assert out["saar_stats"].final_tool_failures == 1


def test_stale_logprobs_are_refused_not_passed():
    with pytest.raises(ValueError, match="stale log-probs"):
        _run(TURNS, saar.SaarConfig(recompute_spliced_logprobs=False), score_fn=None)


def test_non_tunix_types_are_refused():
    traj = asyncio.run(
        saar.rollout(
            CODEC.encode("hi"),
            CallablePolicy(_Scripted([ANSWER])),
            CallableToolRunner(_execute),
            CODEC,
        )
    )
    common = dict(codec=CODEC, original_input=ROW, group_id=0, policy_version=0)
    trajectory_to_token_dict(traj, 1.0, **common)
    with pytest.raises(TypeError, match="group_id must be an int"):
        trajectory_to_token_dict(traj, 1.0, **{**common, "group_id": "g0"})
    with pytest.raises(TypeError, match="policy_version must be an int"):
        trajectory_to_token_dict(traj, 1.0, **{**common, "policy_version": None})
    with pytest.raises(TypeError, match="dataset row"):
        trajectory_to_token_dict(traj, 1.0, **{**common, "original_input": [1, 2]})


def test_executor_exception_is_an_infra_failure_not_rolled_back():
    def broken(code):
        raise ConnectionError("sandbox down")

    out = _run([call_text(FIXED) + "<|im_end|>", ANSWER], saar.SaarConfig(), execute=broken)
    stats = out["saar_stats"]
    assert stats.infra_failures == 1 and stats.rollbacks_triggered == 0
    assert "sandbox down" in CODEC.decode(out["conversation_tokens"].tolist())


def test_length_budget_maps_to_tunix_status():
    prompt = CODEC.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    traj = asyncio.run(
        saar.rollout(
            prompt,
            CallablePolicy(_Scripted(["a" * 50])),
            CallableToolRunner(_execute),
            CODEC,
            limits=saar.RolloutLimits(max_response_tokens=10),
        )
    )
    assert tunix_status(traj) == "MAX_CONTEXT_LIMIT_REACHED"


def test_mismatched_group_ids_are_rejected():
    with pytest.raises(ValueError, match="one per prompt"):
        asyncio.run(
            collect_token_dicts(
                [ROW, ROW],
                [[1], [2]],
                CallablePolicy(_Scripted([])),
                CallableToolRunner(_execute),
                CODEC,
                reward_fn=lambda row, t: 0.0,
                group_ids=[0],
                policy_version=0,
            )
        )
