"""`runtime/host_malloc.py`: the auto rule, refusals, and that `reuse` really stops the per-call
page faults of a large XLA temporary (in fresh processes: mallopt must not touch the test's)."""

import json
import statistics
import subprocess
import sys

import pytest

from cleaner_jax.runtime import host_malloc

# A jitted call whose temporary is one ~200 MB block (an outer product reduced), called 12 times;
# prints what configure put in effect and the minor page faults of the last call.
_PROBE = r"""
import json, resource, sys
from cleaner_jax.runtime import host_malloc
mode = host_malloc.configure(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x[:, None] * x[None, :]), axis=0))
x = jnp.linspace(0.0, 1.0, 7000)
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
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


def test_reuse_stops_the_page_faults_of_a_large_temporary():
    default, reuse = _probe("default"), _probe("reuse")
    assert default["mode"] == "default" and reuse["mode"] == "reuse"
    # 7000^2 float32 = 196 MB = ~48k pages of 4 KiB, mapped afresh by every default call. With
    # reuse most calls fault nothing; some still do while the heap grows around what stays live
    # between calls (XLA's aligned allocations leave slack: measured 6 of 30 calls, Dec 2026).
    assert min(default["faults"][1:]) > 20_000, default
    assert statistics.median(reuse["faults"][1:]) < 2_000, reuse


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
