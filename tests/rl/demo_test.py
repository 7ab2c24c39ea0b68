"""The embedded default's quick mode end to end: assets, SFT, both GRPO arms, the report."""

import os

import pytest

from cleaner_jax.data import synthetic_task
from cleaner_jax.rl import demo
from cleaner_jax.rl.metrics import read_metrics


@pytest.mark.slow
def test_quick_mode_produces_the_report(tmp_path):
    stages = []
    path = demo.run_demo("quick", str(tmp_path), progress=stages.append)
    assert [s.split()[0] for s in stages] == ["1/4", "2/4", "3/4", "3/4", "4/4"]
    text = open(path).read()
    for run in ("baseline_seed0", "cleaner_seed0"):
        assert f"| {run} |" in text
        rows = read_metrics(tmp_path / run)
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert "val/reward/acc" in rows[-1] and "saar/first_attempt_failure_rate" in rows[1]
        assert "credit/accuracy" in rows[1]
    assert "## Credit on failed calls" in text
    # Validation runs without SAAR: both arms start from the same checkpoint and seeds.
    first = [read_metrics(tmp_path / run)[0] for run in ("baseline_seed0", "cleaner_seed0")]
    assert first[0]["val/reward/acc"] == first[1]["val/reward/acc"]
    assert first[0]["val/tool_calls_per_traj"] == first[1]["val/tool_calls_per_traj"]
    assert os.path.exists(tmp_path / "saar_first_attempt_failure_rate.png")
    assert os.path.exists(tmp_path / "sft" / "hf_export" / "final" / "model.safetensors")
    # Re-running skips every finished stage.
    again = []
    demo.run_demo("quick", str(tmp_path), progress=again.append)
    assert [s.split()[0] for s in again] == ["1/4", "4/4"]


@pytest.mark.parametrize("mode", sorted(demo.MODES))
def test_task_sizes_fit_the_demo_ranges(mode):
    """Every mode's problem counts can be drawn, and every question number and answer is below
    1000, so the demo tokenizer (digit groups of 3) makes each one a single token."""
    m = demo.MODES[mode]
    task = dict(ranges=demo.TASK_RANGES, templates=demo.TEMPLATES)
    train = synthetic_task.make_problems("train", m.n_sft + m.n_rl_train, 0, **task)
    test = synthetic_task.make_problems("test", m.n_test, 1, **task)
    for p in train + test:
        assert int(p.answer) < 1000 and all(v < 1000 for v in p.params.values()), p
