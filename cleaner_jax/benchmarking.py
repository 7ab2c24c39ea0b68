"""What the benchmark scripts in launch/ share: machine facts, compiled FLOPs, how arms alternate.

Each script prints a table and writes JSON; these helpers make the JSON say where it ran (CPU
model, cores, versions, load) and summarise repetitions the same way everywhere.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable

import jax


def cpu_model() -> str:
    """The CPU model as `lscpu` names it (falls back to `platform.processor()`)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(x.split(":", 1)[1].strip() for x in out.splitlines() if "Model name" in x)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor()


def machine_facts(torch: bool = False) -> dict:
    """CPU, cores, backend, device, versions and the load average now; torch's when asked."""
    facts = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.local_devices()[0]),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }
    if torch:
        try:
            import torch as torch_lib
            import transformers

            facts["torch"] = torch_lib.__version__
            facts["torch_threads"] = torch_lib.get_num_threads()
            facts["transformers"] = transformers.__version__
        except ImportError:
            facts["torch"] = None
    return facts


def compiled_flops(compiled) -> float:
    """FLOPs of a compiled program from XLA's cost analysis (a loop body counts once)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


def alternate_in_blocks(
    arms: dict[str, Callable[[], object]], reps: int, block: int, settle_s: float = 0.0
) -> dict[str, dict[str, list]]:
    """Times arms that alternate in blocks: per rep, each arm runs `block` calls back to back.

    One untimed warm-up call per arm first. With `block` >= 2 the first call of each block (just
    after another arm ran) is recorded apart from the rest: a training or rollout loop runs one
    framework's steps back to back, while the call after a switch pays for what the other arm
    left behind. Measured on the 2-core EPYC (Dec 2026): our train step right after torch's ran a
    few percent slower and sometimes took a page-fault storm (glibc's one heap is shared, so
    torch's freed tensors take the space XLA's block of temporaries would reuse); our
    `generate_batch` after HF `generate` ran 5-10% slower than back to back. `settle_s` idles
    before every call (a pool that just finished keeps spinning; a sleeping one must be woken).

    Returns, per arm: seconds of the timed calls ("timed") and of the calls after a switch
    ("after_switch"; empty with `block` 1, where every call is timed), and the process's minor
    page faults during each ("timed_faults", "after_switch_faults").
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    for fn in arms.values():
        fn()
    keys = ("timed", "after_switch", "timed_faults", "after_switch_faults")
    rec = {n: {k: [] for k in keys} for n in arms}
    for _ in range(reps):
        for n, fn in arms.items():
            for i in range(block):
                time.sleep(settle_s)
                seconds, faults = timed_call(fn)
                kind = "after_switch" if block > 1 and i == 0 else "timed"
                rec[n][kind].append(seconds)
                rec[n][f"{kind}_faults"].append(faults)
    return rec


def timed_call(fn: Callable[[], object]) -> tuple[float, int]:
    """(wall seconds, this process's minor page faults) of one call of `fn`."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


# A call with more minor page faults than this grew the heap (a "storm"; runtime/host_malloc.py).
STORM_FAULTS = 1000


def fault_storms(faults: list[int]) -> int:
    """How many calls, by their minor page faults, were page-fault storms."""
    return sum(f > STORM_FAULTS for f in faults)


def summary(seconds: list[float]) -> dict:
    """Median, min, max, mean and every rep of a list of seconds."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "mean_s": statistics.mean(seconds),
        "reps_s": list(seconds),
    }


def block_summary(rec: dict[str, list]) -> dict:
    """`summary` of one arm of `alternate_in_blocks`: its timed calls, their page faults and,
    under "after_switch", the same of the calls just after a switch (when there were any)."""
    out = {**summary(rec["timed"]), "minor_faults": rec["timed_faults"]}
    if rec["after_switch"]:
        out["after_switch"] = {
            **summary(rec["after_switch"]),
            "minor_faults": rec["after_switch_faults"],
        }
    return out
