"""`SandboxPool`: warm sandbox workers shared by many agent coroutines.

Each slot holds one worker process (`worker.py`, under bubblewrap when usable) that forks a fresh
child per call. Calls run in a small thread pool, so `await pool.run(code)` never blocks the
event loop and any number of coroutines may await calls concurrently (they queue for a slot).

Infrastructure failures (the worker died, a pipe broke, the reply was garbage or never came, a
replacement failed to start) are never reported as the model's error: the worker is killed and
replaced and the call retried up to `max_infra_retries` times; after that the call returns an
`ExecResult` with `infra_failure=True` and reason 'internal_error'.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref

from cleaner_jax.agent.sandbox import _contain, bwrap
from cleaner_jax.agent.sandbox import worker as wire
from cleaner_jax.agent.sandbox.config import SandboxConfig
from cleaner_jax.agent.sandbox.result import (
    REASON_NONE,
    REASON_TIMEOUT,
    ExecResult,
    infra_failure_result,
    truncate_output,
)

logger = logging.getLogger(__name__)


class SandboxStartError(RuntimeError):
    """A worker could not be started (see the message for the worker's stderr)."""


class SandboxClosedError(RuntimeError):
    """The pool was used after `close()`."""


class _InfraError(Exception):
    """Internal: the current attempt failed for reasons that are not the code's."""


class _Worker:
    def __init__(self, proc: subprocess.Popen, stderr_file, info: dict, workdir: str | None):
        self.proc = proc
        self.stderr_file = stderr_file
        self.info = info
        self.workdir = workdir
        self.calls = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        # The worker is a child subreaper, so every process a call left behind is still in its
        # subtree; kill the subtree first (bubblewrap's PID namespace would also take it down).
        for pid in reversed(_descendants(self.proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.error("sandbox worker %d did not exit after SIGKILL", self.proc.pid)
        self.stderr_file.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self.stderr_file.seek(0)
            return self.stderr_file.read().decode("utf-8", errors="replace")[-limit:]
        except (OSError, ValueError):
            return ""


class SandboxPool:
    """A pool of warm Python sandbox workers.

    Usage:
      with SandboxPool(SandboxConfig(num_workers=2)) as pool:
          res = pool.run_sync("1 + 1")            # or: res = await pool.run("1 + 1")
          res.to_tool_response_text()             # 'Tool call success\\nstdout: 2\\n'

    Attributes:
      sandbox_mode: 'bwrap' or 'fallback'.
      containment: 'bwrap'; in fallback mode 'namespaces' (private mount and network
        namespaces: read-only filesystem, private /tmp, no network) or 'guarded' (private
        scratch directory, IP sockets refused, writes outside the scratch directory refused by
        a Python-level guard). See `_contain.py`.
      degraded_reason: why the pool runs without bubblewrap (None in 'bwrap' mode).
      preimported: modules bound in the code's globals.
      infra_failures: infrastructure failures seen so far (each retried or reported).
      workers_replaced: workers killed and restarted after a failure.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._closed = False
        self._lock = threading.Lock()
        self._live: set[_Worker] = set()
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        self._call_ids = itertools.count()
        self.infra_failures = 0
        self.workers_replaced = 0
        self.degraded_reason: str | None = bwrap.bwrap_unusable_reason(self.config)
        self.sandbox_mode = "fallback" if self.degraded_reason else "bwrap"
        # Spawning from one long-lived thread: a parent-death signal fires when the *thread*
        # that created the child exits, so workers must not be created from transient threads.
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, "sandbox-spawn")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.config.num_workers, "sandbox-call"
        )
        self._finalizer = weakref.finalize(
            self, SandboxPool._shutdown, self._live, self._spawner, self._executor
        )
        try:
            workers = self._spawner.submit(self._start_all).result()
        except BaseException:
            self.close()
            raise
        for w in workers:
            self._slots.put(w)
        self.preimported: list[str] = workers[0].info.get("preimported", [])
        self.privilege_drop: str = workers[0].info.get("privilege_drop", "unknown")
        if self.privilege_drop == "failed":
            logger.warning(
                "SANDBOX: could not run code as uid %s (capset/setuid failed); code runs as "
                "root inside the sandbox and RLIMIT_NPROC does not apply to it.",
                self.config.sandbox_uid,
            )
        self.containment: str = workers[0].info.get("tier", "unknown")
        if self.degraded_reason:
            logger.warning(
                "SANDBOX DEGRADED: running %d Python workers WITHOUT bubblewrap (%s). Code runs "
                "with rlimits, its own process group%s; %s Install bubblewrap or fix its error "
                "for full isolation.",
                self.config.num_workers,
                self.degraded_reason,
                " and an unprivileged uid" if self._drop_uid(workers[0]) is not None else "",
                _contain.describe(workers[0].info),
            )

    # ---------------------------------------------------------------------------------------
    # Public API.
    # ---------------------------------------------------------------------------------------
    async def run(
        self, code: str, stdin: str | None = None, timeout_s: float | None = None
    ) -> ExecResult:
        """Runs `code` in a fresh sandboxed child; never blocks the event loop."""
        self._check_open()
        loop = asyncio.get_running_loop()
        call = functools.partial(self._run_blocking, code, stdin, timeout_s)
        return await loop.run_in_executor(self._executor, call)

    def run_sync(
        self, code: str, stdin: str | None = None, timeout_s: float | None = None
    ) -> ExecResult:
        """Blocking variant of `run` for synchronous callers (not from inside an event loop)."""
        self._check_open()
        return self._executor.submit(self._run_blocking, code, stdin, timeout_s).result()

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (the outer bwrap process in 'bwrap' mode)."""
        with self._lock:
            return sorted(w.pid for w in self._live)

    def close(self) -> None:
        """Kills all workers and their processes; idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    # Calls.
    # ---------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError("SandboxPool.run called after close(); create a new pool")

    def _run_blocking(self, code: str, stdin: str | None, timeout_s: float | None) -> ExecResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        timeout = float(timeout_s if timeout_s is not None else self.config.timeout_s)
        if not timeout > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        start = time.monotonic()
        last_error = "no attempt made"
        attempts = 0
        for attempts in range(1, self.config.max_infra_retries + 2):
            self._check_open()
            worker = self._slots.get()
            try:
                if worker is None:
                    worker = self._respawn()
                reply = self._call(worker, code, stdin, timeout)
            except _InfraError as exc:
                last_error = str(exc)
                self._note_infra_failure(worker, last_error, attempts)
                self._slots.put(None)  # respawned lazily by the next call that takes the slot
                continue
            except BaseException:
                self._slots.put(worker)
                raise
            self._slots.put(worker)
            return self._to_result(reply, time.monotonic() - start, attempts)
        return infra_failure_result(
            f"sandbox failed {attempts} times; last error: {last_error}",
            time.monotonic() - start,
            attempts,
        )

    def _respawn(self) -> _Worker:
        try:
            worker = self._spawner.submit(self._spawn, self._use_bwrap()).result()
        except SandboxStartError as exc:
            raise _InfraError(f"replacement worker failed to start: {exc}") from exc
        with self._lock:
            self._live.add(worker)
        return worker

    def _note_infra_failure(self, worker: _Worker | None, error: str, attempt: int) -> None:
        with self._lock:
            self.infra_failures += 1
        if worker is None:
            logger.error("sandbox worker failed to start (attempt %d): %s", attempt, error)
            return
        logger.warning(
            "sandbox infrastructure failure (attempt %d, worker %d): %s; worker stderr: %r. "
            "Replacing the worker and retrying.",
            attempt,
            worker.pid,
            error,
            worker.stderr_tail(500),
        )
        with self._lock:
            self._live.discard(worker)
            self.workers_replaced += 1
        worker.kill()

    def _call(self, worker: _Worker, code: str, stdin: str | None, timeout: float) -> dict:
        call_id = next(self._call_ids)
        limits = {
            "address_space_bytes": worker.info["vm_size_bytes"]
            + self.config.memory_limit_mb * 1024 * 1024,
            "file_size_bytes": self.config.max_file_size_mb * 1024 * 1024,
            "max_processes": self.config.max_processes,
            "drop_to_uid": self._drop_uid(worker),
        }
        request = {
            "call_id": call_id,
            "code": code,
            "stdin": stdin,
            "timeout_s": timeout,
            "capture_bytes": 4 * self.config.max_output_chars + 64,
            "limits": limits,
        }
        try:
            _write_frame(worker.proc.stdin.fileno(), wire.encode_frame(request))
        except OSError as exc:
            raise _InfraError(f"could not send the request to the worker: {exc!r}") from exc
        deadline = time.monotonic() + timeout + self.config.reply_grace_s
        reply = _read_frame(worker.proc, deadline)
        worker.calls += 1
        if reply.get("kind") != "result" or reply.get("call_id") != call_id:
            raise _InfraError(f"unexpected reply from the worker: {str(reply)[:200]}")
        return reply

    def _to_result(self, reply: dict, duration: float, attempts: int) -> ExecResult:
        cfg = self.config
        try:
            status = reply["status"]
            if status not in ("ok", "error", "timeout"):
                raise ValueError(f"unknown status {status!r}")
            stdout = truncate_output(
                str(reply["stdout"]),
                bool(reply["stdout_cut"]),
                cfg.max_output_chars,
                cfg.truncation_marker,
            )
            stderr = truncate_output(
                str(reply["stderr"]),
                bool(reply["stderr_cut"]),
                cfg.max_output_chars,
                cfg.truncation_marker,
            )
            line = reply.get("error_line")
            return ExecResult(
                ok=status == "ok",
                stdout=stdout,
                stderr=stderr,
                error_type=reply.get("error_type") if status != "ok" else None,
                error_line=line if isinstance(line, int) else None,
                reason=REASON_TIMEOUT if status == "timeout" else REASON_NONE,
                infra_failure=False,
                duration_s=duration,
                error_message=reply.get("error_message") if status != "ok" else None,
                attempts=attempts,
            )
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed reply is a worker bug, not a code error; say so instead of guessing.
            with self._lock:
                self.infra_failures += 1
            return infra_failure_result(f"malformed worker reply: {exc!r}", duration, attempts)

    # ---------------------------------------------------------------------------------------
    # Workers.
    # ---------------------------------------------------------------------------------------
    def _use_bwrap(self) -> bool:
        return self.sandbox_mode == "bwrap"

    def _drop_uid(self, worker: _Worker) -> int | None:
        if worker.info.get("privilege_drop") != "ok":
            return None
        return self.config.sandbox_uid

    def _start_all(self) -> list[_Worker]:
        n = self.config.num_workers
        if self._use_bwrap():
            try:
                first = self._spawn(use_bwrap=True)
            except SandboxStartError as exc:
                if self.config.require_bwrap:
                    raise
                self.degraded_reason = f"bubblewrap failed to start a worker: {exc}"
                self.sandbox_mode = "fallback"
            else:
                self._live.add(first)
                rest = [self._spawn(use_bwrap=True, wait=False) for _ in range(n - 1)]
                workers = [first] + [self._await_ready(*pending) for pending in rest]
                self._live.update(workers)
                return workers
        elif self.config.require_bwrap:
            raise SandboxStartError(
                f"SandboxConfig(require_bwrap=True) but bubblewrap is unusable: "
                f"{self.degraded_reason}"
            )
        pending = [self._spawn(use_bwrap=False, wait=False) for _ in range(n)]
        workers = [self._await_ready(*p) for p in pending]
        self._live.update(workers)
        return workers

    def _spawn(self, use_bwrap: bool, wait: bool = True):
        workdir = None
        if not use_bwrap:
            workdir = tempfile.mkdtemp(prefix="cleaner-sandbox-")
            os.chmod(workdir, 0o1777)  # the child may run as an unprivileged uid
        stderr_file = tempfile.TemporaryFile()
        cmd = bwrap.worker_command(self.config, use_bwrap, workdir)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                env=bwrap.worker_env(use_bwrap, workdir),
                start_new_session=True,
                bufsize=0,
                cwd="/",
            )
        except OSError as exc:
            stderr_file.close()
            raise SandboxStartError(f"could not execute {cmd[0]!r}: {exc}") from exc
        pending = (proc, stderr_file, workdir)
        return self._await_ready(*pending) if wait else pending

    def _await_ready(self, proc, stderr_file, workdir) -> _Worker:
        deadline = time.monotonic() + self.config.worker_start_timeout_s
        worker = _Worker(proc, stderr_file, {}, workdir)
        try:
            ready = _read_frame(proc, deadline)
            if ready.get("kind") != "ready" or not isinstance(ready.get("vm_size_bytes"), int):
                raise _InfraError(f"bad ready message {str(ready)[:200]}")
        except _InfraError as exc:
            tail = worker.stderr_tail()
            worker.kill()
            raise SandboxStartError(
                f"worker did not start ({exc}); its stderr: {tail.strip()!r}"
            ) from exc
        worker.info = ready
        return worker

    @staticmethod
    def _shutdown(live: set[_Worker], spawner, executor) -> None:
        for worker in list(live):
            worker.kill()
        live.clear()
        spawner.shutdown(wait=False)
        executor.shutdown(wait=False)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(proc: subprocess.Popen, deadline: float) -> dict:
    fd = proc.stdout.fileno()
    header = _read_exact(proc, fd, wire.HEADER.size, deadline)
    (length,) = wire.HEADER.unpack(header)
    if length > wire.MAX_FRAME_BYTES:
        raise _InfraError(f"protocol garbage: frame length {length}")
    payload = _read_exact(proc, fd, length, deadline)
    try:
        return wire.decode_payload(payload)
    except ValueError as exc:
        raise _InfraError(f"protocol garbage: {exc}") from exc


def _read_exact(proc: subprocess.Popen, fd: int, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _InfraError("worker did not answer in time (hung or overloaded)")
        if not poller.poll(remaining * 1000):
            continue
        try:
            chunk = os.read(fd, n - got)
        except OSError as exc:
            raise _InfraError(f"reading from the worker failed: {exc!r}") from exc
        if not chunk:
            code = proc.poll()
            raise _InfraError(f"worker exited unexpectedly (exit status {code})")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _descendants(pid: int) -> list[int]:
    """PIDs below `pid` in the process tree, parents before children (from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    order, frontier = [], [pid]
    while frontier:
        nxt = []
        for p in frontier:
            kids = children.get(p, [])
            order.extend(kids)
            nxt.extend(kids)
        frontier = nxt
    return order
