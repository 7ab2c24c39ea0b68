"""The phase tables of the benchmarks and of the accelerator check (`runtime/phase_tables.py`)."""

import math
import time

import jax
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import testing
from cleaner_jax.models.config import tiny_config
from cleaner_jax.rl.packing import TrainSample, pack
from cleaner_jax.rl.update import LossConfig, OptimConfig, Updater, make_optimizer
from cleaner_jax.runtime import phase_tables
from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams

CFG = tiny_config(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1)


def _check_row(row, flops=True):
    assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
    if flops:
        assert row["gflop"] > 0
        assert row["gflop_per_s"] == pytest.approx(row["gflop"] / row["median_s"])
        assert 0 < row["fraction_of_matmul_peak"] < math.inf


def test_sampler_phases_time_prefill_decode_and_extra_calls_against_the_matmul():
    model = testing.random_model(CFG, seed=0, scale=0.02)
    engine = Engine(
        model,
        EngineConfig(page_size=8, num_pages=32, max_slots=2, prefill_chunk=16, max_seq_len=48),
    )
    engine.warmup()
    runs = []

    def run_generate():
        engine.stats.clear()
        t0 = time.perf_counter()
        engine.generate_batch([[1, 2, 3], [4, 5]], SamplingParams(greedy=True, max_new_tokens=9))
        runs.append(time.perf_counter() - t0)
        return runs[-1]

    extra = {"a sleep": (lambda: time.sleep(1e-3), 1e6, 7)}
    out = phase_tables.sampler_phases(
        engine, 2, 24, 2, run_generate, phase_tables.matmul_call(64), extra
    )
    k = engine.config.decode_steps
    assert list(out["rows"]) == ["prefill_call", f"decode_call_{k}_steps", "a sleep"]
    for row in out["rows"].values():
        _check_row(row)
        assert len(row["reps_s"]) == 2
    assert out["rows"]["a sleep"]["min_s"] >= 1e-3
    assert out["rows"]["a sleep"]["tokens"] == 7
    assert out["rows"][f"decode_call_{k}_steps"]["tokens"] == 2 * k
    assert out["rows"]["prefill_call"]["host_s_per_call"] >= 0
    run = out["generate_run"]
    assert run["generate_batch_s"] == runs[-1]  # the host times come from that run's stats
    assert run["decode_calls"] >= 1 and run["prefill_calls"] >= 1
    assert out["matmul_peak_flops"] > 0


def test_train_phases_split_the_step_and_leave_the_callers_state_alone():
    graphdef, state = nnx.split(testing.random_model(CFG, seed=0, scale=0.02))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(state)]
    updater = Updater(graphdef, make_optimizer(OptimConfig(learning_rate=1e-2)), LossConfig("sft"))
    toks = np.arange(33, dtype=np.int32) % CFG.vocab_size
    packed = pack([TrainSample(toks, np.ones(33, np.float32))], 32)
    out = phase_tables.train_phases(
        updater, graphdef, state, packed, 2, phase_tables.matmul_call(64)
    )
    rows = out["phases"]
    for name in ("device: step (grad + AdamW), to ready", "alone: gradient program (_grad_step)"):
        _check_row(rows[name])
    _check_row(rows["host: batch arrays to device"], flops=False)
    assert (
        rows["the whole step call"]["median_s"] >= rows["host: dispatch of the step call"]["min_s"]
    )
    assert all(len(r["reps_s"]) == 2 for r in rows.values())
    assert len(out["step_host"]["minor_faults"]["reps"]) == 2
    # The step donates its inputs: the phases ran on copies, the caller's parameters are intact.
    after = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_format_table_prints_every_row():
    row = {"min_s": 0.001, "median_s": 0.002, "max_s": 0.003, "host": 0.0005}
    flops = {**row, "gflop": 1.0, "gflop_per_s": 500.0, "fraction_of_matmul_peak": 0.5}
    text = phase_tables.format_table("T", {"plain": row, "dense": flops}, host_key="host")
    lines = text.splitlines()
    assert lines[0] == "T" and "host ms" in lines[1]
    assert lines[2].startswith("plain") and "2.00" in lines[2] and "0.500" in lines[2]
    assert "50.0%" in lines[3] and "500.0" in lines[3]
