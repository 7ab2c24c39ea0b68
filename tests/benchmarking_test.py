"""The benchmark scripts' shared alternation (`cleaner_jax.benchmarking.alternate_in_blocks`)."""

import mmap
import time

import pytest

from cleaner_jax import benchmarking


def _arms(log):
    return {name: (lambda name=name: log.append(name)) for name in ("a", "b")}


def test_blocks_run_back_to_back_and_keep_the_call_after_a_switch_apart():
    log = []
    rec = benchmarking.alternate_in_blocks(_arms(log), reps=2, block=3)
    # One warm-up call each, then per rep each arm's block in turn.
    assert "".join(log) == "ab" + "aaabbb" * 2
    for r in rec.values():
        assert len(r["timed"]) == len(r["timed_faults"]) == 4
        assert len(r["after_switch"]) == len(r["after_switch_faults"]) == 2
        assert all(s >= 0 for s in r["timed"] + r["after_switch"])
    summary = benchmarking.block_summary(rec["a"])
    assert summary["reps_s"] == rec["a"]["timed"]
    assert summary["min_s"] <= summary["median_s"] <= summary["max_s"]
    assert summary["after_switch"]["reps_s"] == rec["a"]["after_switch"]


def test_block_one_times_every_call_and_has_no_after_switch():
    log = []
    rec = benchmarking.alternate_in_blocks(_arms(log), reps=3, block=1)
    assert "".join(log) == "ab" + "ab" * 3
    assert [len(r["timed"]) for r in rec.values()] == [3, 3]
    assert not rec["a"]["after_switch"]
    assert "after_switch" not in benchmarking.block_summary(rec["a"])


def _touch():
    # A fresh anonymous mapping, one byte written per page: faults whatever malloc is set to.
    with mmap.mmap(-1, 16 << 20) as m:
        m[:: mmap.PAGESIZE] = b"x" * ((16 << 20) // mmap.PAGESIZE)


def test_page_faults_are_counted_per_call():
    rec = benchmarking.alternate_in_blocks({"touch": _touch, "idle": lambda: None}, 2, 2)
    assert min(rec["touch"]["timed_faults"]) >= (16 << 20) // mmap.PAGESIZE
    assert max(rec["idle"]["timed_faults"]) < 1000
    assert benchmarking.fault_storms(rec["touch"]["timed_faults"]) == 2
    assert benchmarking.fault_storms(rec["idle"]["timed_faults"]) == 0


def test_timed_call_returns_the_wall_time_and_the_faults_of_the_call():
    seconds, faults = benchmarking.timed_call(lambda: time.sleep(0.02))
    assert 0.02 <= seconds < 1.0 and faults < 1000
    _, faults = benchmarking.timed_call(_touch)
    assert faults >= (16 << 20) // mmap.PAGESIZE


def test_block_must_be_positive():
    with pytest.raises(ValueError, match="block"):
        benchmarking.alternate_in_blocks({"a": lambda: None}, 1, 0)
