"""Tests for runtime.metrics: JSONL round trip, resume de-dup, TensorBoard, aggregation."""

import dataclasses
import json
import logging
import math
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from cleaner_jax.runtime import metrics as metrics_lib


def _tb_scalars(workdir, tag):
    """(step, value) of ``tag`` as TensorBoard shows them, read from the raw event files.

    Event files are TFRecords (u64 length, masked crc, Event proto, masked crc), read in name
    order. TensorBoard's restart rule is applied: a SessionLog START at step s hides the earlier
    events with step >= s (what ``purge_step`` relies on).
    """
    points = []
    files = sorted((workdir / metrics_lib.TENSORBOARD_SUBDIR).glob("events.out.tfevents.*"))
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            assert length_crc == masked_crc32c(data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + length]
            (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert payload_crc == masked_crc32c(payload)
            pos += 16 + length
            event = event_pb2.Event.FromString(payload)
            if event.session_log.status == event_pb2.SessionLog.START:
                points = [(s, v) for s, v in points if s < event.step]
            for value in event.summary.value:
                if value.tag == tag:
                    points.append((event.step, value.simple_value))
    return points


def test_jsonl_round_trip_keeps_types_and_values(tmp_path):
    rows = [
        {"loss": np.float32(0.5), "tokens": np.int64(1200), "ok": True, "acc": jnp.asarray(0.25)},
        {
            "loss": jnp.asarray(0.125, jnp.bfloat16),
            "tokens": jnp.asarray(1300, jnp.int32),
            "ok": np.bool_(False),
            "acc": float("nan"),
        },
    ]
    with metrics_lib.MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step, row in enumerate(rows, start=1):
            writer.write(step, row)
    got = metrics_lib.read_metrics(tmp_path)
    assert got[0] == {"step": 1, "loss": 0.5, "tokens": 1200, "ok": 1, "acc": 0.25}
    assert isinstance(got[0]["tokens"], int) and isinstance(got[0]["loss"], float)
    assert got[1]["loss"] == 0.125 and isinstance(got[1]["tokens"], int)
    assert got[1]["tokens"] == 1300 and got[1]["ok"] == 0 and math.isnan(got[1]["acc"])


def test_each_write_is_on_disk_before_close(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False)
    writer.write(1, {"reward": 1.0})
    assert metrics_lib.read_metrics(tmp_path) == [{"step": 1, "reward": 1.0}]
    writer.close()


def test_resume_drops_steps_from_the_first_new_write_and_torn_line(tmp_path, caplog):
    with metrics_lib.MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.write(step, {"reward": float(step)})
    # A crash mid-write leaves a torn last line.
    with open(tmp_path / metrics_lib.METRICS_FILENAME, "a") as f:
        f.write('{"step": 6, "rew')

    # Resumed from the checkpoint of step 3: the run redoes step 4 onwards.
    with caplog.at_level(logging.WARNING), metrics_lib.MetricsWriter(tmp_path) as writer:
        assert metrics_lib.read_metrics(tmp_path)[-1]["step"] == 5, "nothing dropped before a write"
        writer.write(4, {"reward": -4.0})
        assert any("dropping 2 logged steps >= 4" in r.getMessage() for r in caplog.records)
        with pytest.raises(ValueError, match="not after"):
            writer.write(4, {"reward": 0.0})
        for step in range(5, 8):
            writer.write(step, {"reward": -float(step)})

    rows = metrics_lib.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["reward"] for r in rows] == [1.0, 2.0, 3.0, -4.0, -5.0, -6.0, -7.0]
    # TensorBoard purges the replaced steps too: one value per step, the resumed run's.
    assert _tb_scalars(tmp_path, "reward") == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, -4.0), (5, -5.0), (6, -6.0), (7, -7.0)
    ]  # fmt: skip


def test_fresh_run_in_a_used_workdir_starts_an_empty_file(tmp_path):
    with metrics_lib.MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"x": 1.0})
    with metrics_lib.MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"x": 2.0})
    assert metrics_lib.read_metrics(tmp_path) == [{"step": 1, "x": 2.0}]


def test_tensorboard_event_file_has_the_scalars(tmp_path):
    with metrics_lib.MetricsWriter(tmp_path) as writer:
        writer.write(1, {"saar/rollbacks": 2, "loss": 0.5})
        writer.write(2, {"saar/rollbacks": 0, "loss": 0.25})
    assert list((tmp_path / metrics_lib.TENSORBOARD_SUBDIR).glob("events.out.tfevents.*"))
    assert _tb_scalars(tmp_path, "loss") == [(1, 0.5), (2, 0.25)]
    assert _tb_scalars(tmp_path, "saar/rollbacks") == [(1, 2.0), (2, 0.0)]


def test_console_line_is_compact_and_selectable(tmp_path, caplog):
    values = {"reward": 0.53125, "acc": 0.25, "tokens": 1234, "time/rollout": 3.21987}
    line = metrics_lib.format_console_line(7, values, keys=["reward", "tokens", "missing"])
    assert line == "step 7 | reward 0.5312 | tokens 1234"
    with (
        caplog.at_level(logging.INFO),
        metrics_lib.MetricsWriter(tmp_path, tensorboard=False, console_every=2) as writer,
    ):
        writer.write(1, values)
        writer.write(2, values)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert logged == ["step 2 | reward 0.5312 | acc 0.25 | tokens 1234 | time/rollout 3.22"]


@pytest.mark.parametrize(
    "bad", [np.zeros(2), "text", None, {"nested": 1.0}], ids=["vector", "str", "none", "dict"]
)
def test_non_scalar_metric_is_rejected_with_its_name(tmp_path, bad):
    with metrics_lib.MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises((ValueError, TypeError), match="policy/kl"):
            writer.write(1, {"policy/kl": bad})


def test_disabled_writer_writes_nothing(tmp_path):
    with metrics_lib.MetricsWriter(tmp_path / "run", enabled=False) as writer:
        writer.write(1, {"x": 1.0})
    assert not (tmp_path / "run").exists()


def test_read_metrics_rejects_corruption_before_the_last_line(tmp_path):
    (tmp_path / metrics_lib.METRICS_FILENAME).write_text('{"step": 1}\n{bad\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        metrics_lib.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="MetricsWriter"):
        metrics_lib.read_metrics(tmp_path / "nowhere")


@dataclasses.dataclass
class _Stats:
    tool_calls: int
    first_attempt_calls: int
    first_attempt_successes: int
    rollbacks: int
    truncated: bool


def test_phase_timer_accumulates_per_phase_and_resets():
    timer = metrics_lib.PhaseTimer()
    for _ in range(2):
        with timer("rollout"):
            time.sleep(0.02)
    with pytest.raises(RuntimeError), timer("update"):
        raise RuntimeError("a failing phase still records its time")
    assert 0.04 <= timer.seconds("rollout") < 1.0
    assert timer.seconds("never_ran") == 0.0
    got = timer.metrics()
    assert got == {"time/rollout": timer.seconds("rollout"), "time/update": timer.seconds("update")}
    assert timer.pop() == got
    assert timer.pop() == {}


def test_jsonl_lines_are_plain_json_objects(tmp_path):
    with metrics_lib.MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(10, {"a": 1})
    text = (tmp_path / metrics_lib.METRICS_FILENAME).read_text()
    assert text.endswith("\n") and json.loads(text) == {"step": 10, "a": 1}
