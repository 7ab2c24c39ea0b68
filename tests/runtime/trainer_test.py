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


def test_a_batch_whose_every_reward_check_failed_stops_the_run(assets, tmp_path, monkeypatch):
    from cleaner_jax.rl import rewards

    def broken(self, items):
        return [rewards.RewardResult(0.0, False, {}, error="verifier worker did not start")] * len(
            items
        )

    monkeypatch.setattr(rewards.RewardScorer, "score_batch_sync", broken)
    c = _config(assets, 1)
    c.validation.every = 0
    with pytest.raises(RuntimeError, match="every reward check .* failed.*did not start"):
        trainer.run(c, str(tmp_path))
    metrics = tmp_path / "metrics.jsonl"  # nothing was trained on it, so no step was logged
    assert not metrics.exists() or metrics.read_text().strip() == ""
