"""The premise check: hand-computed statistics on scripted outcomes, and the rollout plumbing on a
random tiny model through the real runtime (engine, sandbox, scorer)."""

import json
import math
import pathlib

import numpy as np
import pytest
from flax import nnx

from cleaner_jax.agent.tokenizer import build_tokenizer
from cleaner_jax.data import synthetic_task
from cleaner_jax.models import hf_io
from cleaner_jax.models.testing import random_model
from cleaner_jax.rl.credit import CallOutcome
from cleaner_jax.runtime import parts
from cleaner_jax.runtime.config import load_config
from cleaner_jax.study import premise

CLEAN_RIGHT = CallOutcome(correct=True, first_failed=False)
CLEAN_WRONG = CallOutcome(correct=False, first_failed=False)
REC_RIGHT = CallOutcome(correct=True, first_failed=True, recovered=True)
REC_WRONG = CallOutcome(correct=False, first_failed=True, recovered=True)
UNREC_WRONG = CallOutcome(correct=False, first_failed=True)


def _scripted():
    # Group 0: rewards (1, 1, -1, -1): GRPO advantages +-sqrt(3)/2 (std with ddof=1 is
    # sqrt(4/3)). Group 1: (1, -1, -1, -1): mean -0.5, std 1, advantages (1.5, -0.5, -0.5, -0.5).
    outcomes = [CLEAN_RIGHT, REC_RIGHT, UNREC_WRONG, CLEAN_WRONG]
    outcomes += [REC_RIGHT, REC_WRONG, CLEAN_WRONG, CLEAN_WRONG]
    rewards = [1.0 if o.correct else -1.0 for o in outcomes]
    no_tool = [False] * 7 + [True]
    return outcomes, rewards, no_tool


def test_summary_matches_hand_values():
    outcomes, rewards, no_tool = _scripted()
    s = premise.summarize(outcomes, rewards, 4, n_boot=4000, seed=0, no_tool=no_tool)
    half_root3 = math.sqrt(3) / 2
    # Recovered: group 0's second (+sqrt(3)/2), group 1's first two (+1.5, -0.5).
    e_rec = (half_root3 + 1.5 - 0.5) / 3
    assert s["adv_recovered"] == pytest.approx(e_rec, abs=1e-6)
    assert s["first_call_failure_rate"] == 0.5
    assert s["recovery_rate"] == 0.75
    assert s["recovered_frac"] == 3 / 8
    assert s["accuracy"] == 3 / 8
    assert s["acc_clean"] == 0.25 and s["acc_recovered"] == pytest.approx(2 / 3)
    assert s["acc_unrecovered"] == 0.0
    assert s["mixed_group_frac"] == 1.0
    assert s["saar_push"] == pytest.approx(2 * 3 / 8 * e_rec, abs=1e-6)
    assert s["no_tool_frac"] == 1 / 8 and s["acc_no_tool"] == 0.0
    # Whole groups are resampled: a resample is {0,0} (E = sqrt(3)/2, p 1/4), {1,1} (E = 0.5,
    # p 1/4) or one of each (E = e_rec); the 2.5% and 97.5% percentiles fall on the extremes.
    # Resampling trajectories instead would reach 1.5 (group 1's first recovered alone).
    ci = s["adv_recovered_ci"]
    assert ci["groups"] == 2 and ci["level"] == 0.95
    assert ci["estimate"] == pytest.approx(e_rec, abs=1e-6)
    assert ci["low"] == pytest.approx(0.5, abs=1e-6)
    assert ci["high"] == pytest.approx(half_root3, abs=1e-6)
    assert s["premise_holds"]


def test_negative_credit_and_no_recovery():
    # Recovered trajectories wrong in groups that are otherwise right: E[A | recovered] < 0.
    outcomes = [REC_WRONG, CLEAN_RIGHT, CLEAN_RIGHT, CLEAN_WRONG] * 3
    rewards = [1.0 if o.correct else -1.0 for o in outcomes]
    s = premise.summarize(outcomes, rewards, 4, n_boot=200)
    assert s["adv_recovered"] < 0 and not s["premise_holds"]
    assert s["adv_recovered_ci"]["high"] < 0
    # Nothing recovered: no interval, and the premise does not hold.
    s = premise.summarize([CLEAN_RIGHT, CLEAN_WRONG, UNREC_WRONG, CLEAN_RIGHT], [1, -1, -1, 1], 2)
    assert s["adv_recovered_ci"] is None and not s["premise_holds"]
    assert math.isnan(s["adv_recovered"])


def test_bad_inputs_raise():
    outcomes, rewards, no_tool = _scripted()
    with pytest.raises(ValueError, match="rewards"):
        premise.summarize(outcomes, rewards[:-1], 4)
    with pytest.raises(ValueError, match="groups of n=3"):
        premise.summarize(outcomes, rewards, 3)
    with pytest.raises(ValueError, match="no_tool"):
        premise.summarize(outcomes, rewards, 4, no_tool=no_tool[:-1])


def test_premise_check_rolls_out_a_checkpoint(tmp_path):
    """A random tiny HF export on two synthetic prompts, n=2: the JSON holds every statistic."""
    problems = synthetic_task.make_problems("train", 2, 0)
    data = synthetic_task.write_rl_jsonl(problems, tmp_path / "rl.jsonl")
    texts = [json.dumps(synthetic_task.problem_messages(p)) for p in problems] * 4
    texts += ['<tool_call>{"name": "code_interpreter"}</tool_call> \\boxed{1}'] * 4
    tokenizer = build_tokenizer(texts, 300, out_dir=tmp_path / "tokenizer")
    c = load_config(f"{pathlib.Path(__file__).parents[2]}/configs/demo.py:runlocal")
    c.prepare_synthetic = False
    c.tokenizer_path = str(tmp_path / "tokenizer")
    c.rollout.update(dict(max_response_tokens=16, max_turns=2))
    c.rollout.engine.update(dict(max_seq_len=512, num_pages=64, max_slots=8, prefill_chunk=128))
    c.mesh.fsdp = -1
    c.reward.overlong_buffer = 4
    c.model.tiny.update(
        dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    )
    cfg = parts.model_config_for(c, len(tokenizer))
    hf_io.save_hf_checkpoint(nnx.split(random_model(cfg, seed=0))[1], cfg, str(tmp_path / "hf"))
    tokenizer.save_pretrained(str(tmp_path / "hf"))
    out = tmp_path / "premise.json"
    result = premise.run_premise_check(
        c, str(tmp_path / "hf"), [str(data)], str(out), prompts=2, n=2
    )
    saved = json.loads(out.read_text())
    assert saved["trajectories"] == 4 and saved["prompts"] == 2 and saved["n"] == 2
    assert sum(saved["terminations"].values()) == 4
    for key in ("accuracy", "first_call_failure_rate", "mixed_group_frac", "no_tool_frac"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["premise_holds"] is result["premise_holds"]
    assert np.isfinite(saved["wall_s"])
