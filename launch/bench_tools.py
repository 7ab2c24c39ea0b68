"""Benchmark of the tool side: sandbox pool vs a fresh interpreter per call, plus SAAR host time.

    python launch/bench_tools.py --out=/tmp/bench_tools.json

Side by side in one run, for trivial snippets at concurrency 1, 2 and 8:
  * `sandbox`: `SandboxPool` (warm workers, one fork per call) awaited from asyncio;
  * `fresh`: a fresh `python -c <snippet>` subprocess per call (bare interpreter);
  * `fresh_preimport`: a fresh `python -c` that first imports what the pool's workers pre-import
    (math, numpy, sympy), i.e. the same environment the policy's code gets from the pool (the
    reference code-judge service also starts one interpreter per call).
Latency is per call from submission to result (queueing included when concurrency exceeds the
worker count); calls/s is calls over wall time. Then the SAAR section (cleaner_jax/saar/bench.py):
host milliseconds per rollback event on a ~20k-token trajectory with typical (~700-character)
calls, the same with ~3k-character calls under each similarity mode ("tokens", the default, and
"reference", difflib with autojunk as the reference computes it), and the similarity timings.
Every SAAR number is a median over --saar_repeats runs (>= 5). `--skip_tools` runs the SAAR
section alone:

    python launch/bench_tools.py --skip_tools --out=/tmp/bench_saar.json

Keys include `sandbox_speedup_vs_fresh_process` (fresh_preimport p50 / sandbox p50 at
concurrency 1; target >= 10), `sandbox_speedup_vs_bare_python_c` (same against bare `python -c`),
`sandbox_p50_ms_c1` (target <= 20 ms on 2 cores), `saar_ms_per_rollback_20k` and
`saar_ms_per_rollback_3k_tokens` (target <= 1 ms each). The JSON records the machine (CPU model,
cores, load average before and after, Python version).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool

_OUT = flags.DEFINE_string("out", "bench_tools.json", "Where to write the JSON results.")
_CALLS = flags.DEFINE_integer("calls", 200, "Sandbox calls per concurrency level.")
_FRESH_CALLS = flags.DEFINE_integer("fresh_calls", 40, "Bare fresh-process calls per level.")
_FRESH_PREIMPORT_CALLS = flags.DEFINE_integer(
    "fresh_preimport_calls", 8, "Fresh-process-with-preimports calls per level (slow)."
)
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "2", "8"], "Concurrency levels.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Sandbox pool workers.")
_SKIP_SAAR = flags.DEFINE_bool("skip_saar", False, "Skip the SAAR host-time section.")
_SKIP_TOOLS = flags.DEFINE_bool("skip_tools", False, "Skip the sandbox section (SAAR only).")
_SAAR_REPEATS = flags.DEFINE_integer(
    "saar_repeats", 5, "Runs per SAAR measurement (the median is reported); at least 5."
)
flags.register_validator("saar_repeats", lambda n: n >= 5, "--saar_repeats must be >= 5.")

SNIPPETS = (
    "1 + 1",
    "print(sum(range(100)))",
    "x = [i * i for i in range(50)]\nx[-1]",
    "import math\nmath.factorial(20)",
)
PREIMPORT_HEADER = "import math, itertools, collections\nimport numpy as np\nimport sympy as sp\n"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def _drive(call, n: int, concurrency: int) -> tuple[list[float], float]:
    """Runs `n` calls of `call(i)` with at most `concurrency` in flight."""
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    wall = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, time.perf_counter() - wall


async def _sandbox_call(pool: SandboxPool, i: int) -> None:
    res = await pool.run(SNIPPETS[i % len(SNIPPETS)])
    if not res.ok:
        raise RuntimeError(f"benchmark snippet failed in the sandbox: {res}")


async def _fresh_call(i: int, header: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        header + SNIPPETS[i % len(SNIPPETS)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"fresh interpreter failed: {err.decode()[-500:]}")


def _summarise(prefix: str, c: int, latencies: list[float], wall: float) -> dict[str, float]:
    return {
        f"{prefix}_calls_per_s_c{c}": len(latencies) / wall,
        f"{prefix}_p50_ms_c{c}": 1e3 * statistics.median(latencies),
        f"{prefix}_p99_ms_c{c}": 1e3 * _percentile(latencies, 99),
        # The floor is what the machine gives without contention from other processes.
        f"{prefix}_min_ms_c{c}": 1e3 * min(latencies),
    }


def _bench_tools(levels: list[int]) -> dict:
    results: dict = {}
    config = SandboxConfig(num_workers=_NUM_WORKERS.value)
    with SandboxPool(config) as pool:
        results["sandbox_mode"] = pool.sandbox_mode
        results["sandbox_preimported"] = pool.preimported

        async def warmup():
            await asyncio.gather(*(pool.run("1") for _ in range(4 * config.num_workers)))

        asyncio.run(warmup())
        for c in levels:
            lat, wall = asyncio.run(_drive(lambda i: _sandbox_call(pool, i), _CALLS.value, c))
            results.update(_summarise("sandbox", c, lat, wall))
        results["sandbox_infra_failures"] = pool.infra_failures
    for c in levels:
        lat, wall = asyncio.run(_drive(lambda i: _fresh_call(i, ""), _FRESH_CALLS.value, c))
        results.update(_summarise("fresh", c, lat, wall))
        n = _FRESH_PREIMPORT_CALLS.value
        lat, wall = asyncio.run(_drive(lambda i: _fresh_call(i, PREIMPORT_HEADER), n, c))
        results.update(_summarise("fresh_preimport", c, lat, wall))
    c0 = levels[0]
    results["sandbox_speedup_vs_fresh_process"] = (
        results[f"fresh_preimport_p50_ms_c{c0}"] / results[f"sandbox_p50_ms_c{c0}"]
    )
    results["sandbox_speedup_vs_bare_python_c"] = (
        results[f"fresh_p50_ms_c{c0}"] / results[f"sandbox_p50_ms_c{c0}"]
    )
    results["sandbox_speedup_vs_bare_python_c_min"] = (
        results[f"fresh_min_ms_c{c0}"] / results[f"sandbox_min_ms_c{c0}"]
    )
    for c in levels:
        results[f"sandbox_throughput_speedup_vs_fresh_process_c{c}"] = (
            results[f"sandbox_calls_per_s_c{c}"] / results[f"fresh_preimport_calls_per_s_c{c}"]
        )
    return results


# =============================================================================================
# SAAR section (host time of the rollback controller); provided by cleaner_jax/saar/bench.py.
# =============================================================================================
def _bench_saar(repeats: int) -> dict:
    from cleaner_jax.saar.bench import (
        bench_rollback_host_time,
        bench_rollback_host_time_3k,
        bench_similarity,
    )

    results = dict(bench_rollback_host_time(repeats=repeats))
    results.update(bench_rollback_host_time_3k(repeats=repeats))
    results.update(bench_similarity(repeats=repeats))
    results["saar_repeats"] = repeats
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _print_saar_table(results: dict) -> None:
    print(f"\nSAAR host time per rollback (median of {results['saar_repeats']} runs)")
    header = f"{'calls':<22}{'similarity':<12}{'ms/rollback':>12}{'max':>9}{'traj tokens':>13}"
    print(header)
    print("-" * len(header))
    typical = f"typical ({results['code_chars']:.0f} chars)"
    long = f"long ({results['code_chars_3k']:.0f} chars)"
    print(
        f"{typical:<22}{'tokens':<12}"
        f"{results['saar_ms_per_rollback_20k']:>12.3f}{results['saar_ms_per_rollback_max']:>9.3f}"
        f"{results['trajectory_tokens']:>13.0f}"
    )
    for mode in ("tokens", "reference"):
        print(
            f"{long:<22}{mode:<12}"
            f"{results[f'saar_ms_per_rollback_3k_{mode}']:>12.3f}"
            f"{results[f'saar_ms_per_rollback_3k_{mode}_max']:>9.3f}"
            f"{results['trajectory_tokens_3k']:>13.0f}"
        )
    print("target: <= 1 ms per rollback with the default similarity (tokens)")
    cases = sorted({k.rsplit("_", 1)[1] for k in results if k.startswith("similarity_tokens_ms_")})
    header = f"{'similarity case':<18}{'tokens ms':>11}{'score':>8}{'reference ms':>14}{'score':>8}"
    print("\n" + header)
    print("-" * len(header))
    for case in cases:
        print(
            f"{case:<18}{results[f'similarity_tokens_ms_{case}']:>11.3f}"
            f"{results[f'similarity_tokens_score_{case}']:>8.3f}"
            f"{results[f'similarity_reference_ms_{case}']:>14.3f}"
            f"{results[f'similarity_reference_score_{case}']:>8.3f}"
        )


def _print_tools_table(results: dict, levels: list[int]) -> None:
    print(
        f"\nsandbox mode: {results['sandbox_mode']}  (workers: {_NUM_WORKERS.value}, "
        f"cpus: {os.cpu_count()}, load average at start: {results['load_average_start']})"
    )
    header = f"{'arm':<18}{'conc':>5}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'min ms':>10}"
    print(header)
    print("-" * len(header))
    for arm in ("sandbox", "fresh", "fresh_preimport"):
        for c in levels:
            print(
                f"{arm:<18}{c:>5}{results[f'{arm}_calls_per_s_c{c}']:>10.1f}"
                f"{results[f'{arm}_p50_ms_c{c}']:>10.2f}{results[f'{arm}_p99_ms_c{c}']:>10.2f}"
                f"{results[f'{arm}_min_ms_c{c}']:>10.2f}"
            )
    print(
        f"\nsandbox_speedup_vs_fresh_process (same pre-imports, p50, c={levels[0]}): "
        f"{results['sandbox_speedup_vs_fresh_process']:.1f}x   (target >= 10)"
    )
    print(
        f"sandbox_speedup_vs_bare_python_c (p50, c={levels[0]}): "
        f"{results['sandbox_speedup_vs_bare_python_c']:.1f}x"
    )
    print(
        f"sandbox_speedup_vs_bare_python_c_min (fastest call of each, c={levels[0]}): "
        f"{results['sandbox_speedup_vs_bare_python_c_min']:.1f}x"
    )
    print(
        f"sandbox_p50_ms_c{levels[0]}: {results[f'sandbox_p50_ms_c{levels[0]}']:.2f} ms   "
        "(target <= 20 ms on 2 cores)"
    )


def main(argv: list[str]) -> None:
    del argv
    levels = [int(c) for c in _CONCURRENCY.value]
    results: dict = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "snippets": list(SNIPPETS),
    }
    if not _SKIP_TOOLS.value:
        results.update(_bench_tools(levels))
    if not _SKIP_SAAR.value:
        results.update(_bench_saar(_SAAR_REPEATS.value))
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {results['cpu_model']}, {results['cpus']} cpus, {results['platform']}")
    if not _SKIP_TOOLS.value:
        _print_tools_table(results, levels)
    if not _SKIP_SAAR.value:
        _print_saar_table(results)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(f"\nwrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
