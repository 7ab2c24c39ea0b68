"""What the benchmark scripts in launch/ share: machine facts, rep statistics, compiled FLOPs.

Each script prints a table and writes JSON; these helpers make the JSON say where it ran (CPU
model, cores, versions, load) and summarise repetitions the same way everywhere.
"""

from __future__ import annotations

import os
import platform
import subprocess

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
