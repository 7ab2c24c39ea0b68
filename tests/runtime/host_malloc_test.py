"""`runtime/host_malloc.py`: the auto rule, refusals, and that `reuse` makes glibc keep a large
freed block for the next allocation (in fresh processes: mallopt must not touch the test's)."""

import json
import subprocess
import sys

import pytest

from cleaner_jax.runtime import host_malloc

# A 200 MB block malloc'ed, written and freed 6 times in a second thread, as XLA's CPU client
# does with a call's temporaries from its worker threads; prints what configure put in effect
# and the minor page faults of each round. As glibc comes, a block that large is a fresh mmap
# each time (200 MB / 4 KiB = 51,200 faults); with reuse it stays in the main arena's heap.
# (XLA itself reuses less reliably: its aligned allocations leave slack that small live buffers
# take, so the heap sometimes grows; see the module docstring. Hence a plain malloc here.)
_PROBE = r"""
import ctypes, json, resource, sys, threading
from cleaner_jax.runtime import host_malloc
mode = host_malloc.configure(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 200 << 20, []
def rounds():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps({"mode": mode, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reuse_keeps_a_large_freed_block():
    default, reuse = _probe("default"), _probe("reuse")
    assert default["mode"] == "default" and reuse["mode"] == "reuse"
    assert min(default["faults"]) > 40_000, default  # mapped afresh every round
    assert max(reuse["faults"][1:]) < 1_000, reuse  # faulted in once, then reused


def test_auto_is_reuse_on_a_cpu_host():
    assert _probe("auto")["mode"] == "reuse"


def test_jax_runs_on_cpu_rule(tmp_path):
    none = (str(tmp_path / "nvidia[0-9]*"),)
    assert host_malloc.jax_runs_on_cpu({}, none)
    assert host_malloc.jax_runs_on_cpu({"JAX_PLATFORMS": "cpu"}, none)
    assert not host_malloc.jax_runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, none)
    assert not host_malloc.jax_runs_on_cpu({"JAX_PLATFORMS": "tpu"}, none)
    (tmp_path / "nvidia0").touch()
    assert not host_malloc.jax_runs_on_cpu({}, none)  # a GPU device node: not the CPU
    assert host_malloc.jax_runs_on_cpu({"JAX_PLATFORMS": "cpu"}, none)  # unless told so


def test_refusals():
    with pytest.raises(ValueError, match="unknown"):
        host_malloc.configure("fast")
    started = r"""
import jax
jax.devices()
from cleaner_jax.runtime import host_malloc
try:
    host_malloc.configure("reuse")
except RuntimeError as e:
    print("refused:", e)
host_malloc._applied = None
print("auto:", host_malloc.configure("auto"))
"""
    out = subprocess.run(
        [sys.executable, "-c", started],
        capture_output=True,
        text=True,
        timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: --host_malloc=reuse cannot take effect: jax's backends" in out.stdout
    assert "auto: default" in out.stdout  # auto falls back, with a warning, instead of failing
