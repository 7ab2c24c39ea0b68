"""Per-step training metrics: a JSONL file, TensorBoard scalars and a compact console line.

``MetricsWriter`` appends one JSON object per step to ``<workdir>/metrics.jsonl`` (flushed and
fsynced on every write, so a crash loses nothing already logged) and writes the same scalars to
TensorBoard under ``<workdir>/tensorboard``. Resuming needs no bookkeeping from the caller: the
first ``write(s, ...)`` of a writer drops the lines with step >= s (a run resumed from the
checkpoint of step s - 1 redoes them) and tells TensorBoard to purge its events from step s, so
neither log shows a step twice. A fresh run in a used workdir thus starts a fresh log.

Also here: ``PhaseTimer`` (``with timer("rollout"):`` seconds per phase) and ``read_metrics`` for
report code. (Trajectory statistics are aggregated by ``saar.aggregate_stats``.)

JSON note: NaN/inf values are written as the bare tokens ``NaN``/``Infinity`` (Python's ``json``
reads them back); a NaN loss is worth recording.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorboardX
from absl import logging

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"

Scalar = float | int


class MetricsWriter:
    """Writes each step's flat dict of scalars to JSONL, TensorBoard and the console.

    Args:
      workdir: run directory (created if missing).
      console_keys: keys shown on the console line (all keys when ``None``).
      console_every: log a console line for steps divisible by this.
      tensorboard: also write TensorBoard event files.
      enabled: write anything at all; pass ``jax.process_index() == 0`` in multi-process runs so
        that only one process writes.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        console_keys: Sequence[str] | None = None,
        console_every: int = 1,
        tensorboard: bool = True,
        enabled: bool = True,
    ):
        if console_every < 1:
            raise ValueError(f"console_every must be >= 1, got {console_every}.")
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / METRICS_FILENAME
        self._console_keys = None if console_keys is None else tuple(console_keys)
        self._console_every = console_every
        self._enabled = enabled
        self._tensorboard = tensorboard
        self._last_step: int | None = None
        self._file = None
        self._tb = None
        self._closed = False

    def _open(self, first_step: int) -> None:
        """Opens the logs at the first write, dropping what was logged for steps >= first_step."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _drop_steps_from(self.path, first_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._tensorboard:
            # tensorboardX names event files by the second and opens them "wb": without a unique
            # suffix a run resumed within the same second would erase the previous file.
            self._tb = tensorboardX.SummaryWriter(
                str(self.workdir / TENSORBOARD_SUBDIR),
                purge_step=first_step,
                filename_suffix=f".{time.time_ns()}",
            )

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs ``metrics`` (scalars: Python/numpy numbers or 0-d arrays) for ``step``.

        Steps must increase within a writer; a repeated or older step raises ``ValueError`` (it
        would make the log ambiguous for the report code).
        """
        if self._closed:
            raise ValueError(f"MetricsWriter for {self.path} is closed.")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"Metrics step {step} is not after the last logged step {self._last_step}; "
                "steps must increase."
            )
        values = {key: _to_scalar(key, value) for key, value in metrics.items()}
        if "step" in values:
            raise ValueError("'step' is reserved in metrics; pass it as the step argument.")
        if not self._enabled:
            self._last_step = step
            return
        if self._file is None:
            self._open(step)
        self._last_step = step
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if step % self._console_every == 0:
            logging.info("%s", format_console_line(step, values, self._console_keys))

    def close(self) -> None:
        """Flushes and closes the files (idempotent)."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_console_line(
    step: int, values: Mapping[str, Scalar], keys: Sequence[str] | None = None
) -> str:
    """``step 12 | reward 0.531 | time/rollout 3.21`` with 4 significant digits."""
    shown = values if keys is None else {k: values[k] for k in keys if k in values}
    parts = [f"step {step}"] + [f"{k} {_format_number(v)}" for k, v in shown.items()]
    return " | ".join(parts)


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All logged steps of ``<workdir>/metrics.jsonl``, in file order.

    A torn last line (the process died mid-write) is skipped with a warning; an unreadable line
    anywhere else raises ``ValueError``.
    """
    path = pathlib.Path(workdir) / METRICS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"No {METRICS_FILENAME} in {workdir}; was MetricsWriter used?")
    rows, torn = _parse_lines(path)
    if torn:
        logging.warning("Skipping a torn last line in %s: %r", path, torn[:80])
    return rows


class PhaseTimer:
    """Accumulates wall seconds per named phase until ``pop``.

    JAX dispatches asynchronously: block on the phase's results inside the ``with`` block, or
    the device time lands in whichever phase blocks next.
    """

    def __init__(self, prefix: str = "time/"):
        self._prefix = prefix
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._seconds[phase] = self._seconds.get(phase, 0.0) + elapsed

    def seconds(self, phase: str) -> float:
        """Seconds accumulated in ``phase`` (0.0 if it never ran)."""
        return self._seconds.get(phase, 0.0)

    def metrics(self) -> dict[str, float]:
        """``{prefix + phase: seconds}`` for every phase that ran."""
        return {f"{self._prefix}{phase}": secs for phase, secs in self._seconds.items()}

    def pop(self) -> dict[str, float]:
        """``metrics()``, then resets the counters (one timer reused across steps)."""
        out = self.metrics()
        self._seconds = {}
        return out


def _to_scalar(key: str, value: Any) -> Scalar:
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    array = np.asarray(value)
    # ml_dtypes floats (bfloat16, float8) report kind "V".
    if array.shape != () or array.dtype.kind not in "biufV" or array.dtype.names:
        raise ValueError(
            f"Metric {key!r} must be a real scalar, got {type(value).__name__} with shape "
            f"{array.shape} and dtype {array.dtype}; reduce it (mean/sum) before logging."
        )
    return int(array) if array.dtype.kind in "biu" else float(array)


def _format_number(value: Scalar) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _flatten_stats(stats: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, float]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        stats = dataclasses.asdict(stats)
    if not isinstance(stats, Mapping):
        raise TypeError(f"Trajectory stats must be a mapping or dataclass, got {type(stats)}.")
    flat: dict[str, float] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_stats(value, f"{name}/"))
        elif isinstance(value, str):
            flat[f"{name}/{value}"] = 1.0
        else:
            flat[name] = float(_to_scalar(name, value))
    return flat


def _parse_lines(path: pathlib.Path) -> tuple[list[dict[str, Any]], str]:
    """Parses a metrics file; returns (rows, torn last line or "")."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        try:
            if not line.endswith("\n"):
                raise ValueError("no trailing newline")
            rows.append(json.loads(line))
        except ValueError as e:
            if last:
                return rows, line
            raise ValueError(f"{path} line {i + 1} is not valid JSON ({e}): {line[:80]!r}") from e
    return rows, ""


def _drop_steps_from(path: pathlib.Path, first_step: int) -> None:
    """Rewrites ``path`` keeping only rows with step < first_step (and no torn last line)."""
    rows, torn = _parse_lines(path)
    kept = [r for r in rows if r["step"] < first_step]
    dropped = len(rows) - len(kept)
    if not dropped and not torn:
        return
    logging.warning(
        "%s: dropping %d logged steps >= %d%s (the run restarts there).",
        path,
        dropped,
        first_step,
        " and a torn last line" if torn else "",
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
