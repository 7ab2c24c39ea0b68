"""The warm sandbox worker: the process that runs *inside* the sandbox, one per pool slot.

Started by `pool.py` as `python worker.py` (under bubblewrap when available). It pre-imports the
common modules once (math, numpy, sympy, ...), then serves requests over its stdin/stdout with a
length-prefixed JSON protocol. The code of each call runs in a fresh child FORKED from this warm
process (`_child.py`), so no state leaks between calls and the warm imports are shared
copy-on-write. The next child is forked while the worker is idle, which keeps the fork off the
call's critical path. This process enforces the wall timeout, drains stdout/stderr with a byte
cap, and before serving the next call kills and reaps every process the previous one left (it is
a child subreaper, so orphans that escaped the child's process group are reparented here) and
wipes its private scratch directory.

Standard library only (plus the optional warm imports): it runs as a script, importing its sibling
`_child.py` directly. The framing helpers at the top are also imported by the parent side.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

if __package__:
    from cleaner_jax.agent.sandbox import _child, _contain
else:  # run as a script: the sibling modules are importable from the script's directory
    import _child
    import _contain

# ---------------------------------------------------------------------------------------------
# Framing, shared with the parent: 4-byte big-endian length, then a UTF-8 JSON object.
# ---------------------------------------------------------------------------------------------
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024

_READY_KIND = "ready"


def encode_frame(obj: dict) -> bytes:
    payload = json.dumps(obj, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict:
    obj = json.loads(payload.decode("utf-8", errors="replace"))
    if not isinstance(obj, dict):
        raise ValueError(f"frame is not a JSON object: {type(obj).__name__}")
    return obj


def _read_exact_blocking(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Warm state (worker process).
# ---------------------------------------------------------------------------------------------
# Names the reference template exposes to user code without an import (its auto-import table
# plus the template's own module-level imports); models trained on it sometimes rely on them.
_PRELUDE_IMPORTS = (
    ("math", "math", None),
    ("itertools", "itertools", None),
    ("collections", "collections", None),
    ("os", "os", None),
    ("sys", "sys", None),
    ("base64", "base64", None),
    ("ast", "ast", None),
    ("traceback", "traceback", None),
    ("numpy", "numpy", None),
    ("np", "numpy", None),
    ("sympy", "sympy", None),
    ("sp", "sympy", None),
    ("symbols", "sympy", "symbols"),
)


def _build_prelude(preimport: list[str]) -> tuple[dict, list[str]]:
    import importlib
    import typing

    prelude: dict = {name: getattr(typing, name) for name in typing.__all__}
    loaded = []
    for name, module_name, attr in _PRELUDE_IMPORTS:
        if module_name not in preimport and module_name not in ("os", "sys"):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        prelude[name] = getattr(module, attr) if attr else module
        loaded.append(module_name)
    for module_name in preimport:
        if module_name not in loaded:
            try:
                prelude[module_name] = importlib.import_module(module_name)
                loaded.append(module_name)
            except ImportError:
                pass
    return prelude, sorted(set(loaded))


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _set_child_subreaper() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Worker side: arm a child, hand it a request, drain, enforce the deadline, clean up.
# ---------------------------------------------------------------------------------------------
def _clean_scratch(path: str, keep: tuple[str, ...] = ()) -> None:
    """Empties `path`, except entries that are or lead to a `keep` path (the read-only binds of
    a checkout or venv under /tmp): walking those would cost a full tree walk per call."""
    import shutil

    for name in os.listdir(path):
        full = os.path.join(path, name)
        if any(k == full or k.startswith(full + "/") for k in keep):
            continue
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass


def _direct_children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        children = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        stat = f.read()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                        children.append(int(name))
                except (OSError, ValueError, IndexError):
                    pass
        return children


def _kill_all_descendants(pgid: int) -> None:
    """SIGKILLs and reaps every descendant (as subreaper, orphans come back to us)."""
    import signal

    _kill_quietly(pgid, signal.SIGKILL)
    for _ in range(10000):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return  # no children left, hence no descendants
        for pid in _direct_children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.0005)
    raise RuntimeError("could not reap the processes left by a call")


def _kill_quietly(pid: int, signum: int) -> None:
    # The child may not have reached setsid() yet, so its process group may not exist.
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signum)
        except OSError:
            pass


class _Capture:
    def __init__(self, fd: int, cap: int):
        self.fd, self.cap, self.data, self.total, self.open = fd, cap, bytearray(), 0, True
        os.set_blocking(fd, False)

    def read_some(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.open = False
            return
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]


def _arm(prelude: dict, scratch_dir: str, guards: dict | None = None) -> dict:
    """Forks the next child ahead of its request (the fork cost leaves the critical path).
    `guards` (the fallback's 'guarded' tier) says which guards the child installs."""
    req_r, req_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    child_fds = {
        "request": req_r,
        "stdout": out_w,
        "stderr": err_w,
        "result": res_w,
        "scratch_dir": scratch_dir,
        "guards": guards,
    }
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (req_w, out_r, err_r, res_r):
                os.close(fd)
            _child.child_wait_and_run(child_fds, prelude)
        finally:
            os._exit(70)
    for fd in (req_r, out_w, err_w, res_w):
        os.close(fd)
    return {
        "pid": pid,
        "pidfd": os.pidfd_open(pid),
        "request": req_w,
        "stdout": out_r,
        "stderr": err_r,
        "result": res_r,
    }


def _serve_call(request: dict, armed: dict) -> dict:
    import selectors
    import signal

    start = time.monotonic()
    pid, pidfd = armed["pid"], armed["pidfd"]
    cap = int(request["capture_bytes"])
    out, err = _Capture(armed["stdout"], cap), _Capture(armed["stderr"], cap)
    res = _Capture(armed["result"], 1 << 20)
    captures = {c.fd: c for c in (out, err, res)}
    try:
        _child.write_all(armed["request"], json.dumps(request).encode("utf-8", "surrogatepass"))
    except BrokenPipeError:
        pass  # the armed child died; its exit status below tells the story
    os.close(armed["request"])
    selector = selectors.DefaultSelector()
    for fd in captures:
        selector.register(fd, selectors.EVENT_READ)
    selector.register(pidfd, selectors.EVENT_READ)
    deadline = start + float(request["timeout_s"]) + 0.25
    killed_for_timeout = exited = False
    # Done when the child exited, or when it reported and closed every pipe (it does so right
    # before exiting, which spares us the wait for its address-space teardown).
    while not exited and (any(c.open for c in captures.values()) or not res.data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_for_timeout = True
            break
        for key, _ in selector.select(remaining):
            if key.fd == pidfd:
                exited = True
            else:
                captures[key.fd].read_some()
                if not captures[key.fd].open:
                    selector.unregister(key.fd)
    selector.close()
    os.close(pidfd)
    _kill_quietly(pid, signal.SIGKILL)
    main_status = None
    if any(c.open for c in captures.values()):
        # Something (the child or a process it forked) still holds a pipe: kill it all first so
        # the pipes reach EOF. The child's status is taken before the reaping loop eats it.
        _, main_status = os.waitpid(pid, 0)
        _kill_all_descendants(pid)
        for capture in captures.values():
            os.set_blocking(capture.fd, True)
            while capture.open:
                capture.read_some()
    for capture in captures.values():
        os.close(capture.fd)
    duration = time.monotonic() - start
    return _build_reply(out, err, res, pid, main_status, killed_for_timeout, duration)


def _build_reply(
    out: _Capture,
    err: _Capture,
    res: _Capture,
    pid: int,
    main_status: int | None,
    killed_for_timeout: bool,
    duration: float,
) -> dict:
    import signal

    reply = {
        "kind": "result",
        "stdout": out.data.decode("utf-8", errors="replace"),
        "stderr": err.data.decode("utf-8", errors="replace"),
        "stdout_cut": out.total > len(out.data),
        "stderr_cut": err.total > len(err.data),
        "duration_s": duration,
        "error_type": None,
        "error_line": None,
        "error_message": None,
    }
    try:
        reported = json.loads(bytes(res.data).decode("utf-8")) if res.data else None
    except ValueError:
        reported = None
    if not isinstance(reported, dict):
        reported = None
    status = reported.get("status") if reported else None
    if killed_for_timeout or status == "timeout":
        reply.update(
            status="timeout",
            error_type="TimeoutError",
            error_message="TimeoutError: execution exceeded the time limit",
        )
        return reply
    if status in ("ok", "error"):
        reply["status"] = status
        for key in ("error_type", "error_line", "error_message"):
            reply[key] = reported.get(key)
        if not isinstance(reply["error_line"], int):
            reply["error_line"] = None
        return reply
    # No trustworthy report: os._exit, a fatal signal (e.g. CPU limit, stack overflow), or code
    # that wrote over the result pipe. Still the code's doing; the exit status says what.
    wait_status = main_status if main_status is not None else os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        if signum == signal.SIGXCPU:
            reply.update(
                status="timeout",
                error_type="TimeoutError",
                error_message="TimeoutError: CPU time limit exceeded",
            )
            return reply
        name = signal.Signals(signum).name
        error_type, message = name, f"process killed by signal {name} ({signum})"
    else:
        exit_code = os.WEXITSTATUS(wait_status)
        if exit_code == 0:
            reply["status"] = "ok"
            return reply
        error_type, message = "SystemExit", f"process exited with code {exit_code}"
    text = f"{error_type}: {message}"
    stderr = reply["stderr"]
    reply["stderr"] = stderr + ("\n" if stderr and not stderr.endswith("\n") else "") + text + "\n"
    reply.update(status="error", error_type=error_type, error_message=text)
    return reply


# ---------------------------------------------------------------------------------------------
# Main loop.
# ---------------------------------------------------------------------------------------------
def _contain_fallback(setup: dict, scratch_dir: str, keep: tuple[str, ...]):
    """Picks the containment tier; returns (ready-message fields, dirs wiped after each call,
    the child's guards or None). Must run while the worker is still single-threaded."""
    if setup.get("mode") == "bwrap":
        return {"tier": "bwrap"}, [scratch_dir, "/dev/shm"], None
    note = "disabled by SandboxConfig(fallback_namespaces=False)"
    if setup.get("namespaces"):
        note = _contain.probe_namespaces(list(keep))
        if note == "ok":
            private = _contain.enter_namespaces(list(keep))
            os.environ["HOME"] = os.environ["TMPDIR"] = "/tmp"
            return {"tier": "namespaces"}, private, None
    seccomp = _contain.probe_seccomp()
    guards = {"dir": scratch_dir, "seccomp": seccomp == "ok"}
    fields = {"tier": "guarded", "namespaces_note": note, "seccomp": seccomp}
    return fields, [scratch_dir], guards


def main() -> None:
    # This directory holds the pool's own modules; user `import config` must not find them.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    setup = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if setup.get("parent_death_signal"):
        _child.set_parent_death_signal()
    # The protocol moves to private fds; 0/1 point at harmless places for stray writes.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    scratch_dir = setup.get("scratch_dir") or "/tmp"
    keep = tuple(setup.get("keep", ()))
    containment, wipe, guards = _contain_fallback(setup, scratch_dir, keep)
    if containment["tier"] == "namespaces":
        scratch_dir = "/tmp"
    if setup.get("chmod_tmp") and os.getuid() == 0:
        os.chmod(scratch_dir, 0o1777)
    subreaper = _set_child_subreaper()
    prelude, loaded = _build_prelude(list(setup.get("preimport", [])))
    import __future__  # noqa: F401 - warm for the child's compile flags

    import ast  # noqa: F401
    import gc
    import io  # noqa: F401
    import resource  # noqa: F401
    import selectors  # noqa: F401
    import shutil  # noqa: F401

    # Move the warm objects out of the collector's reach: a collection in a forked child would
    # touch every object header and copy much of the warm heap page by page.
    gc.collect()
    gc.freeze()
    drop_uid = setup.get("sandbox_uid")
    privilege_drop = "not root" if os.getuid() != 0 else "disabled"
    if drop_uid is not None and os.getuid() == 0:
        privilege_drop = _child.probe_privilege_drop(drop_uid)
    armed = _arm(prelude, scratch_dir, guards)
    ready = {
        **containment,
        "privilege_drop": privilege_drop,
        "kind": _READY_KIND,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "preimported": loaded,
        "vm_size_bytes": _vm_size_bytes(),
        "subreaper": subreaper,
        "python": sys.version.split()[0],
    }
    _child.write_all(proto_out, encode_frame(ready))
    while True:
        header = _read_exact_blocking(proto_in, HEADER.size)
        if header is None:
            os._exit(0)
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME_BYTES:
            os._exit(3)
        payload = _read_exact_blocking(proto_in, length)
        if payload is None:
            os._exit(0)
        request = decode_payload(payload)
        reply = _serve_call(request, armed)
        reply["call_id"] = request.get("call_id")
        _child.write_all(proto_out, encode_frame(reply))
        # After answering: reap the call's processes, wipe scratch, fork the next child.
        _kill_all_descendants(armed["pid"])
        for directory in wipe:
            _clean_scratch(directory, keep)
        armed = _arm(prelude, scratch_dir, guards)


if __name__ == "__main__":
    main()
