"""The GRPO trainer end to end on a tiny model: real sandbox, sampler, SAAR, checkpoints, logs.

Crash safety: a run stopped after step 1 and resumed from its checkpoint logs exactly the step-2
metrics of an uninterrupted run (rollout seeds derive from (seed, step), the sampler's randomness
from (seed, position), and params/optimizer state/data position come back from orbax).
"""

import json
import os
import pathlib

import numpy as np
import pytest

from cleaner_jax.data import demo_assets
from cleaner_jax.runtime import trainer
from cleaner_jax.runtime.config import load_config
from cleaner_jax.runtime.metrics import read_metrics

pytestmark = pytest.mark.slow
DEMO = pathlib.Path(__file__).parents[2] / "configs" / "demo.py"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    return demo_assets.prepare_assets(str(d), n_sft=24, n_rl_train=16, n_test=4)


def _config(assets, total_steps, arm="cleaner"):
    c = load_config(f"{DEMO}:arm={arm},runlocal")
    c.prepare_synthetic = False
    c.tokenizer_path = assets["tokenizer"]
    c.data.train_files = (assets["rl_train"],)
    c.data.val_files = (assets["test"],)
    c.total_steps = total_steps
    c.rollout.max_response_tokens = 64
    c.rollout.engine.max_seq_len = 320
    c.validation.every = 2
    c.validation.n = 1
    c.validation.max_prompts = 2
    c.checkpoint.export_hf = True
    c.train.old_logprobs = "recompute"  # the demo's "sampler" would skip the mismatch metrics
    return c


def _deterministic(row):
    return {
        k: v
        for k, v in row.items()
        if not k.startswith("time/")
        and k not in ("step_time_s", "rollout_tokens_per_s")
        and "seconds" not in k
    }


def test_resume_after_crash_matches_uninterrupted_run(assets, tmp_path):
    straight = tmp_path / "straight"
    trainer.run(_config(assets, 2), str(straight))
    resumed = tmp_path / "resumed"
    trainer.run(_config(assets, 1), str(resumed))
    assert sorted(os.listdir(resumed / "checkpoints")) == ["1"]
    trainer.run(_config(assets, 2), str(resumed))

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b, strict=True):
        da, db = _deterministic(ra), _deterministic(rb)
        assert da.keys() == db.keys()
        for k in da:
            np.testing.assert_allclose(db[k], da[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # What a run leaves behind: checkpoints, JSONL, TensorBoard, the HF export.
    assert (straight / "tensorboard").is_dir()
    with open(straight / "hf_export" / "step_2" / "config.json") as f:
        assert json.load(f)["architectures"] == ["Qwen3ForCausalLM"]
    row = a[1]
    for key in (
        "reward/mean",
        "train/loss",
        "saar/first_attempt_failure_rate",
        "credit/first_call_failure_rate",
        "credit/failed_call_credit_saar",
        "logprob_mismatch/mean_abs",
        "time/rollout",
        "time/update",
    ):
        assert key in row, key
    assert row["credit/accuracy"] == pytest.approx(row["reward/acc"])
    # Sampler and trainer log-probs agree on non-spliced tokens (fp32, same weights).
    assert row["logprob_mismatch/max_abs"] < 1e-4


def test_validation_runs_without_saar_by_default(assets, tmp_path):
    c = _config(assets, 1, arm="cleaner")
    c.validation.every = 1
    c.validation.max_prompts = 2
    trainer.run(c, str(tmp_path))
    rows = read_metrics(tmp_path)
    assert rows[0]["val/saar_enabled_frac"] == rows[1]["val/saar_enabled_frac"] == 0.0
    assert rows[1]["saar/saar_enabled_frac"] == 1.0  # training rollouts do use it


def test_saar_switched_on_mid_training(assets, tmp_path):
    """saar.start_step = 1: train step 0 and the validation before it run without SAAR, train
    step 1 and the validations after step 1 with it (test-time SAAR follows the same rule)."""
    c = _config(assets, 2, arm="switch")
    assert c.saar.start_step == 1
    c.validation.every = 1
    c.validation.saar = True
    c.checkpoint.export_hf = False
    trainer.run(c, str(tmp_path))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["saar/active"] for r in rows[1:]] == [0.0, 1.0]
    assert [r["saar/saar_enabled_frac"] for r in rows[1:]] == [0.0, 1.0]
    assert [r["val/saar_enabled_frac"] for r in rows] == [0.0, 1.0, 1.0]


def test_a_batch_whose_every_reward_check_failed_stops_the_run(assets, tmp_path, monkeypatch):
    from cleaner_jax.rl import rewards

    async def broken(self, items):
        return [rewards.RewardResult(0.0, False, {}, error="verifier worker did not start")] * len(
            items
        )

    monkeypatch.setattr(rewards.RewardScorer, "score_batch", broken)
    c = _config(assets, 1)
    c.validation.every = 0
    with pytest.raises(RuntimeError, match="every reward check .* failed.*did not start"):
        trainer.run(c, str(tmp_path))
    metrics = tmp_path / "metrics.jsonl"  # nothing was trained on it, so no step was logged
    assert not metrics.exists() or metrics.read_text().strip() == ""


def test_dynamic_sampling_refills_the_batch_from_further_rounds(assets, tmp_path, monkeypatch):
    """DAPO dynamic sampling in the loop, with scripted rewards (2 prompts x 2 samples a round):
    round 1 has one flat group and one informative group, round 2 two informative groups of which
    one fits; the step trains on the 2 kept groups and logs every sampled rollout."""
    from cleaner_jax.rl import rewards

    scores = iter([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    calls = []

    async def scripted(self, items):
        batch = next(scores)
        calls.append(len(items))
        return [rewards.RewardResult(s, s > 0, {}) for s in batch]

    monkeypatch.setattr(rewards.RewardScorer, "score_batch", scripted)
    seen = []
    real_advantages = trainer.compute_advantages
    monkeypatch.setattr(
        trainer,
        "compute_advantages",
        lambda r, n, est: seen.append(np.asarray(r).copy()) or real_advantages(r, n, est),
    )
    c = _config(assets, 1)
    c.validation.every = 0
    c.advantage.dynamic_sampling = True
    trainer.run(c, str(tmp_path))
    row = read_metrics(tmp_path)[0]
    assert calls == [4, 4]  # two rounds of 2 groups x 2 samples
    assert (row["dynamic_sampling/rounds"], row["dynamic_sampling/kept_groups"]) == (2.0, 2.0)
    assert row["dynamic_sampling/dropped_groups"] == 1.0
    # Trained on round 1's second group and round 2's first: [1, 0] and [0, 1].
    np.testing.assert_array_equal(seen[0], [1.0, 0.0, 0.0, 1.0])
    assert np.isfinite(row["train/loss"])
    assert row["reward/mean"] == pytest.approx(5 / 8)  # over all 8 sampled rollouts
