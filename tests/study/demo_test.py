"""The embedded default's quick mode end to end: assets, SFT, premise, design, both GRPO arms,
held-out eval, the report."""

import json
import os
import re
import subprocess
import sys

import pytest

from cleaner_jax.data import demo_assets, synthetic_task
from cleaner_jax.runtime.config import load_config
from cleaner_jax.runtime.metrics import read_metrics

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_quick(workdir) -> list[str]:
    """The README's command in quick mode, in a fresh process with the machine's real devices
    (this suite forces 8 virtual CPU devices, which would shard the tiny model 8 ways and round
    its batches up to 8 rows); returns the stage lines it printed."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    if flags.strip():
        env["XLA_FLAGS"] = flags.strip()
    else:
        env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(_ROOT, "launch", "demo.py"),
            "--mode=quick",
            f"--workdir={workdir}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"outputs in {workdir}" in out.stdout
    return [m.group(1) for m in re.finditer(r"^\[\s*\d+s\] (\d/\d) ", out.stdout, re.M)]


@pytest.mark.slow
def test_quick_mode_produces_the_report(tmp_path):
    stages = _run_quick(tmp_path)
    assert stages == ["1/7", "2/7", "3/7", "4/7", "5/7", "5/7", "6/7", "6/7", "6/7", "7/7"]
    text = open(tmp_path / "report.md").read()
    for run in ("baseline_seed0", "cleaner_seed0"):
        assert f"| {run} |" in text
        rows = read_metrics(tmp_path / run)
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert "val/reward/acc" in rows[-1] and "saar/first_attempt_failure_rate" in rows[1]
        assert "credit/accuracy" in rows[1]
    assert "## Credit on failed calls" in text and "## Arms" in text
    # Validation runs without SAAR: both arms start from the same checkpoint and seeds.
    first = [read_metrics(tmp_path / run)[0] for run in ("baseline_seed0", "cleaner_seed0")]
    assert first[0]["val/reward/acc"] == first[1]["val/reward/acc"]
    assert first[0]["val/tool_calls_per_traj"] == first[1]["val/tool_calls_per_traj"]
    assert os.path.exists(tmp_path / "saar_first_attempt_failure_rate.png")
    assert os.path.exists(tmp_path / "sft" / "hf_export" / "final" / "model.safetensors")
    with open(tmp_path / "premise.json") as f:
        checked = json.load(f)
    assert checked["prompts"] == 4 and checked["n"] == 4 and checked["trajectories"] == 16
    with open(tmp_path / "design.json") as f:
        planned = json.load(f)  # stated before the GRPO runs, from the premise check's rate
    assert planned["p"] == pytest.approx(checked["first_call_failure_rate"], nan_ok=True)
    assert (planned["m"], planned["steps"], planned["seeds"]) == (16, 2, 1)
    assert planned["mde"] is None and "at least 2" in planned["mde_reason"]
    for name in ("sft", "baseline_seed0", "cleaner_seed0"):
        with open(tmp_path / "eval" / name / "summary.json") as f:
            summary = json.load(f)
        assert set(summary["modes"]) == {"off", "on"} and "saar_overhead" in summary
        assert summary["modes"]["on"]["problems"] == 4 and summary["modes"]["on"]["n"] == 2
    # The report gets the per-problem records: pass@1 with an interval over problems.
    assert "## Held-out pass@k" in text and "records not given" not in text
    assert os.listdir(tmp_path / "jax_cache")  # compiled programs are cached in the workdir
    with open(tmp_path / "timings.json") as f:
        timed = json.load(f)
    assert {"assets", "sft", "premise", "grpo/baseline_seed0", "eval/sft"} <= set(timed)
    # Re-running skips every finished stage and keeps the first run's wall times in the report.
    assert _run_quick(tmp_path) == ["1/7", "7/7"]
    assert (
        f"| grpo/cleaner_seed0 | {timed['grpo/cleaner_seed0']:.1f} |"
        in open(tmp_path / "report.md").read()
    )


@pytest.mark.parametrize("mode", ["quick", "full", "long", "correction"])
def test_task_sizes_fit_the_demo_ranges(mode):
    """Every mode's problem counts can be drawn, and every question number and answer is below
    1000, so the demo tokenizer (digit groups of 3) makes each one a single token."""
    m = load_config(f"{_ROOT}/configs/demo.py:{mode}").study
    task = dict(ranges=demo_assets.TASK_RANGES, templates=demo_assets.TEMPLATES)
    train = synthetic_task.make_problems("train", m.n_sft + m.n_rl_train, 0, **task)
    test = synthetic_task.make_problems("test", m.n_test, 1, **task)
    assert 0 < m.premise_prompts <= m.n_rl_train and m.premise_n >= 2
    for p in train + test:
        assert int(p.answer) < 1000 and all(v < 1000 for v in p.params.values()), p
