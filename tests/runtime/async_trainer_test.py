"""Async rollouts end to end (`rollout.max_staleness` = 1) on the tiny model with the real
sandbox: a run killed with SIGKILL mid-run and resumed keeps every trained token within one
version of the trainer, and the producer's rounds resume where training stood."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest

from cleaner_jax.data import demo_assets
from cleaner_jax.runtime import trainer
from cleaner_jax.runtime.config import load_config
from cleaner_jax.runtime.metrics import read_metrics

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).parents[2]
DEMO = ROOT / "configs" / "demo.py"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    return demo_assets.prepare_assets(str(d), n_sft=24, n_rl_train=16, n_test=4)


def _overrides(assets, total_steps):
    return {
        "prepare_synthetic": False,
        "tokenizer_path": assets["tokenizer"],
        "data.train_files": (assets["rl_train"],),
        "data.val_files": (),
        "total_steps": total_steps,
        "rollout.max_response_tokens": 64,
        "rollout.engine.max_seq_len": 320,
        "rollout.max_staleness": 1,
        "validation.every": 0,
        "checkpoint.every": 1,
        "checkpoint.export_hf": False,
    }


def _config(overrides: dict):
    c = load_config(f"{DEMO}:runlocal")
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def test_sigkill_mid_run_and_resume_keep_the_bound(assets, tmp_path):
    work = tmp_path / "run"
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
             for k, v in _overrides(assets, 4).items()]  # fmt: skip
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={DEMO}:runlocal",
           f"--workdir={work}", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    try:
        # Killed once step 2's checkpoint is written: the producer is then mid-round.
        while not (work / "checkpoints" / "2").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint 2 within 10 minutes"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    trainer.run(_config(_overrides(assets, 4)), str(work))

    rows = [r for r in read_metrics(work) if "async/staleness_max" in r]
    # Steps 1-2 (perhaps 3) from the killed run, then 3 and 4 resumed from checkpoint 2.
    assert {r["step"] for r in rows} == {1, 2, 3, 4} and [r["step"] for r in rows][-2:] == [3, 4]
    assert all(r["async/staleness_max"] <= 1 for r in rows)
    assert all(r["async/dropped_rounds"] == 0 for r in rows)
    assert any(r["async/staleness_max"] == 1 for r in rows)  # it did run ahead
    # The checkpoint records where training stood, not where the producer had got to: four
    # rounds of 2 prompts taken, the next round is round 4.
    meta = json.loads((work / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert (meta["round"], meta["data"]["index"]) == (4, 8)


def test_split_mesh_async_run_samples_and_trains_on_disjoint_devices(assets, tmp_path):
    """`mesh.rollout_devices` = 2 of the 8 forced CPU devices sample, 6 train; async (S = 1)
    with DAPO dynamic sampling, which takes rounds from the producer until its groups are full
    (the random model's groups mostly score alike: several rounds are taken a step)."""
    from cleaner_jax.runtime import parts as parts_lib
    from cleaner_jax.runtime.config import train_settings

    c = _config(
        {**_overrides(assets, 2), "mesh.rollout_devices": 2, "advantage.dynamic_sampling": True}
    )
    rt = parts_lib.build(c, "train", str(tmp_path))
    t = trainer.Trainer(rt, train_settings(c), str(tmp_path))
    try:
        t.fit()
    finally:
        t.close()
        rt.close()
    sampler, train = set(rt.placement.devices), set(rt.model.mesh.devices.flat)
    assert sampler and not sampler & train and len(train) == 6
    assert all(x.sharding.device_set == sampler for x in jax.tree.leaves(rt.sampler_state))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["async/staleness_max"] <= 1
    rounds = [r["dynamic_sampling/rounds"] for r in rows]  # up to max_sampling_rounds (3)
    assert all(1 <= x <= 3 for x in rounds) and max(rounds) > 1
