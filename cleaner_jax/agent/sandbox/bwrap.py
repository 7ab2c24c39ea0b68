"""Command lines that start a sandbox worker, under bubblewrap or in the degraded fallback.

Bubblewrap mode: read-only bind of `/`, a private tmpfs `/tmp`, fresh `/dev` and `/proc`, new
network namespace (no network; its own loopback reaches nothing on the host), new PID/IPC/UTS
namespaces, `--die-with-parent` and `--new-session`. Fallback mode: the same worker as a plain
process in its own session with a parent-death signal, which contains itself as far as the host
allows (`_contain.py`: private mount and network namespaces, else seccomp and audit guards); the
per-call child still gets rlimits, its own process group and (when root) an unprivileged uid.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from cleaner_jax.agent.sandbox.config import SandboxConfig

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")

# The environment the worker (and so the code) sees: nothing inherited from the trainer.
# BLAS thread pools must stay single-threaded: the worker forks, and a forked child cannot use a
# thread pool its parent started.
_WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "TMPDIR": "/tmp",
    "MPLBACKEND": "Agg",
}


def bwrap_unusable_reason(config: SandboxConfig) -> str | None:
    """Why bubblewrap cannot be used (None when it looks usable; starting a worker decides)."""
    if not config.use_bwrap:
        return "disabled by SandboxConfig(use_bwrap=False)"
    path = config.bwrap_path
    if not os.path.isabs(path):
        path = shutil.which(path) or path
    if not os.path.exists(path):
        return f"bubblewrap not found at {config.bwrap_path!r} (install the 'bubblewrap' package)"
    if not os.access(path, os.X_OK):
        return f"bubblewrap at {path!r} is not executable"
    return None


_BWRAP_PRIVATE_MOUNTS = ("/tmp", "/dev/shm")
# The fallback's 'namespaces' tier also hides /var/tmp (`_contain.PRIVATE_DIRS`).
_FALLBACK_PRIVATE_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm")


def _hidden_by_private_mounts(config: SandboxConfig, private_mounts: tuple[str, ...]) -> list[str]:
    """Paths the worker needs (its script, the interpreter, the venv and import path) that lie
    under `private_mounts`, which the sandbox replaces with empty tmpfs: a checkout or venv in
    /tmp would otherwise vanish inside the sandbox. They are bound back read-only."""
    wanted = {os.path.dirname(WORKER_SCRIPT), config.python_executable, sys.prefix}
    wanted.update(p for p in sys.path if p)
    found = set()
    for path in wanted:
        for candidate in (os.path.abspath(path), os.path.realpath(path)):
            inside = any(candidate == m or candidate.startswith(m + "/") for m in private_mounts)
            if inside and os.path.exists(candidate) and candidate not in private_mounts:
                found.add(candidate)
    # Keep only the outermost paths (a bind of /tmp/x already carries /tmp/x/y).
    return sorted(p for p in found if not any(p.startswith(q + "/") for q in found))


def worker_command(config: SandboxConfig, use_bwrap: bool, workdir: str | None) -> list[str]:
    """argv that starts one worker; `workdir` is the fallback mode's scratch directory."""
    private = _BWRAP_PRIVATE_MOUNTS if use_bwrap else _FALLBACK_PRIVATE_MOUNTS
    binds = _hidden_by_private_mounts(config, private)
    setup = {
        "mode": "bwrap" if use_bwrap else "fallback",
        "namespaces": not use_bwrap and config.fallback_namespaces,
        "preimport": list(config.preimport),
        "chmod_tmp": use_bwrap,
        "parent_death_signal": not use_bwrap,
        # Private to this worker in both modes, so it is wiped after every call (the fallback's
        # 'namespaces' tier replaces it with a private /tmp).
        "scratch_dir": "/tmp" if use_bwrap else workdir,
        "sandbox_uid": config.sandbox_uid,
        # Bound back into the private mounts: the per-call scratch wipe leaves them alone.
        "keep": binds,
    }
    python = [config.python_executable, "-s", "-B", WORKER_SCRIPT, json.dumps(setup)]
    if not use_bwrap:
        return python
    return [
        config.bwrap_path,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--tmpfs", "/dev/shm",
        *[arg for path in binds for arg in ("--ro-bind", path, path)],
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--chdir", "/tmp",
        "--",
        *python,
    ]  # fmt: skip


def worker_env(use_bwrap: bool, workdir: str | None) -> dict[str, str]:
    env = dict(_WORKER_ENV)
    if not use_bwrap and workdir is not None:
        env["HOME"] = env["TMPDIR"] = workdir
    return env
