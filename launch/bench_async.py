"""The step timeline, synchronous vs async rollouts (`rollout.max_staleness` S = 1, 2), on the
demo's task with tools in the real sandbox:

    python launch/bench_async.py --demo_dir=/tmp/cleaner_demo --out=/tmp/bench_async.json

`--demo_dir` is a `launch/demo.py` workdir: its task (assets/) and SFT model
(sft/hf_export/final), which calls the tool; without it a random tiny model on freshly prepared
assets (it rarely calls the tool). Every arm is a GRPO run of the `correction` arm (SAAR with
token TIS) for `--steps` steps; arms alternate run by run over `--reps` reps, and each run's
first `--warmup_steps` steps (compiles; a pipeline filling during the slow first step) are left
out. Per arm, the median over the timed steps of
all reps: step time, trainer idle (waiting for rollouts), producer idle (waiting on the bound),
sampler busy (engine prefill + decode calls), tools busy (a sandbox call running), update, and
the fractions of the step the sampler and the trainer were busy. Prints a table, writes JSON with
the machine facts and every step's row.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

from absl import app, flags

from cleaner_jax import benchmarking
from cleaner_jax.data import demo_assets
from cleaner_jax.runtime import trainer
from cleaner_jax.runtime.config import load_config
from cleaner_jax.runtime.metrics import read_metrics

_DEMO_DIR = flags.DEFINE_string("demo_dir", "", "A launch/demo.py workdir (assets + SFT model).")
_OUT = flags.DEFINE_string("out", "/tmp/bench_async.json", "Where the JSON goes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per run.")
_WARMUP = flags.DEFINE_integer(
    "warmup_steps",
    3,
    "Leading steps of each run not timed: compiles, and an async pipeline filling up (a producer "
    "S rounds ahead rolls out during the slow first step what later steps then only take).",
)
_REPS = flags.DEFINE_integer("reps", 2, "Runs per arm, alternating arm by arm.")
_ARMS = flags.DEFINE_list("arms", ["0", "1", "2"], "max_staleness values to compare.")
_MODE = flags.DEFINE_string("mode", "long", "The configs/demo.py mode the runs use.")

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")
KEYS = (
    "step_time_s",
    "time/wait_rollout",
    "async/producer_idle_s",
    "time/sampler_busy",
    "time/tools_busy",
    "time/update",
)


def _config(assets: dict, hf_path: str, staleness: int, steps: int):
    c = load_config(f"{CONFIG}:{_MODE.value},arm=correction,seed=0")
    c.tokenizer_path = assets["tokenizer"]
    c.model.hf_path = hf_path
    c.data.train_files = (assets["rl_train"],)
    c.data.val_files = ()
    c.validation.every = 0
    c.total_steps = steps
    c.checkpoint.every = 10**6
    c.checkpoint.export_hf = False
    c.rollout.max_staleness = staleness
    return c


def _trainer_idle(row: dict) -> float:
    """Seconds the trainer waited for rollouts: all of the rollout phase when synchronous."""
    if "time/wait_rollout" in row:
        return row["time/wait_rollout"]
    return sum(row.get(k, 0.0) for k in ("time/rollout", "time/reward", "time/exchange"))


def _assets() -> tuple[dict, str]:
    if _DEMO_DIR.value:
        d = _DEMO_DIR.value
        return demo_assets.asset_paths(os.path.join(d, "assets")), os.path.join(
            d, "sft", "hf_export", "final"
        )
    d = tempfile.mkdtemp(prefix="bench_async_assets_")
    return demo_assets.prepare_assets(d, n_sft=24, n_rl_train=64, n_test=4), ""


def main(argv):
    del argv
    facts = benchmarking.machine_facts()
    assets, hf_path = _assets()
    arms = [int(a) for a in _ARMS.value]
    rows: dict[int, list[dict]] = {a: [] for a in arms}
    for rep in range(_REPS.value):
        for s in arms:
            work = tempfile.mkdtemp(prefix=f"bench_async_s{s}_r{rep}_")
            trainer.run(_config(assets, hf_path, s, _STEPS.value), work)
            rows[s] += [r for r in read_metrics(work) if r["step"] > _WARMUP.value]
    out = {"machine": facts, "loadavg_end": os.getloadavg(), "demo_dir": _DEMO_DIR.value}
    out["arms"] = {}
    for s in arms:
        for r in rows[s]:
            r["time/wait_rollout"] = _trainer_idle(r)
        med = {k: statistics.median(r.get(k, 0.0) for r in rows[s]) for k in KEYS}
        step = med["step_time_s"]
        med["sampler_busy_frac"] = med["time/sampler_busy"] / step
        med["trainer_busy_frac"] = med["time/update"] / step
        med["steps_timed"] = len(rows[s])
        # Throughput: timed steps over their summed wall time (the median hides slow steps).
        med["steps_per_s"] = len(rows[s]) / sum(r["step_time_s"] for r in rows[s])
        out["arms"][f"S={s}"] = {"median": med, "rows": rows[s]}
    base = out["arms"][f"S={arms[0]}"]["median"]["step_time_s"]
    print(f"machine: {facts['cpu']}, {facts['cpu_count']} cpus; demo_dir={_DEMO_DIR.value or '-'}")
    head = ("arm", "step s", "speedup", "steps/s", "trainer idle", "producer idle", "sampler busy",
            "tools busy", "update", "sampler frac", "trainer frac")  # fmt: skip
    print(" | ".join(head))
    for name, arm in out["arms"].items():
        m = arm["median"]
        print(
            f"{name} | {m['step_time_s']:.2f} | {base / m['step_time_s']:.2f}x | "
            f"{m['steps_per_s']:.3f} | "
            f"{m['time/wait_rollout']:.2f} | {m['async/producer_idle_s']:.2f} | "
            f"{m['time/sampler_busy']:.2f} | {m['time/tools_busy']:.2f} | "
            f"{m['time/update']:.2f} | {m['sampler_busy_frac']:.2f} | {m['trainer_busy_frac']:.2f}"
        )
    with open(_OUT.value, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
