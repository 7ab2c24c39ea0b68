"""How glibc's malloc serves the host memory of a CPU process: `--host_malloc=auto|reuse|default`.

XLA on CPU allocates each call's temporaries as one block (~400 MB for `launch/bench_train.py`'s
train step). glibc serves a block that large with a fresh mmap and unmaps it when it is freed, so
every step page-faults all of it in again: ~103k minor faults and ~0.25 s of kernel CPU per step
on a 2-core EPYC, a quarter of the step (issue #19). "reuse" sets glibc, through `mallopt`, to
one arena for all threads, no mmap for large blocks and no trimming: freed memory is kept and the
next step reuses it (faults ~0 on most steps, step 753 -> 565 ms in bench_train). Not on every
step: XLA's aligned allocations leave slack that small live buffers take, so the heap sometimes
grows instead (a 196 MB temporary called 30 times: 6 calls faulted it in, 24 faulted nothing).
The process then holds its peak host memory until it ends, as a caching allocator does, and that
peak is higher (the same probe: max RSS 1.5 GB against 0.45 GB as glibc comes).

It must run before jax starts its CPU client (the first computation or `jax.devices()`): a
thread keeps the arena it got first, and a non-main arena maps a block over 64 MB with mmap
whatever the settings. `configure` checks that, and the launchers call it after parsing their
flags, before their `main` (`cli.run`); benchmarks call it first thing in `main`.

"auto" (the default) is "reuse" when jax will run on the CPU: `JAX_PLATFORMS` names cpu first,
or it is unset and the machine shows no accelerator device (/dev/nvidia*, /dev/accel*,
/dev/vfio/<n>). On a GPU or TPU host the large buffers live on the device, and many host threads
(sandboxes, data loading) would contend for one arena, so "auto" leaves malloc as it comes there.
The same settings from the environment, before the process starts:
`GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`.
"""

from __future__ import annotations

import ctypes
import glob
import os

from absl import flags, logging

MODES = ("auto", "reuse", "default")

HOST_MALLOC = flags.DEFINE_enum(
    "host_malloc",
    "auto",
    list(MODES),
    "glibc malloc for host memory: 'reuse' keeps freed memory (XLA's per-call temporaries on CPU "
    "are not page-faulted in again every step), 'default' as glibc comes, 'auto' reuse when jax "
    "runs on the CPU",
)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")

_applied: str | None = None


def jax_runs_on_cpu(environ=os.environ, device_globs=_ACCELERATOR_DEVICES) -> bool:
    """Whether jax's default backend will be the CPU, judged without starting it."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(glob.glob(pattern) for pattern in device_globs)


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge  # private; public jax has no such query
    except ImportError:
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check and check())


def configure(mode: str) -> str:
    """Applies `mode` (resolving "auto") and returns what is in effect: "reuse" or "default".

    Raises ValueError for an unknown mode, and RuntimeError when "reuse" is asked for explicitly
    but cannot take effect (not glibc, or jax's backends already started). Idempotent: a second
    call returns the first call's result.
    """
    global _applied
    if mode not in MODES:
        raise ValueError(f"host_malloc {mode!r} unknown; use one of {MODES}")
    if _applied is not None:
        return _applied
    want = mode
    if mode == "auto":
        want = "reuse" if jax_runs_on_cpu() else "default"
    if want == "reuse":
        problem = None
        if _backends_started():
            problem = "jax's backends have already started (their threads keep their arenas)"
        else:
            try:
                libc = ctypes.CDLL("libc.so.6")
                if not all(libc.mallopt(option, value) == 1 for option, value in SETTINGS):
                    problem = "glibc refused mallopt"
            except (OSError, AttributeError) as e:
                problem = f"no glibc mallopt ({e})"
        if problem:
            if mode == "reuse":
                raise RuntimeError(f"--host_malloc=reuse cannot take effect: {problem}")
            logging.warning("host malloc left as it comes: %s", problem)
            want = "default"
    _applied = want
    logging.info("host malloc: %s (asked: %s)", want, mode)
    return want


def applied() -> str | None:
    """What `configure` put in effect in this process, None before it ran."""
    return _applied
