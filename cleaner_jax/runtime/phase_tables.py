"""Phase tables: where the sampler's and the train step's time goes (issue #19).

One row per device call: its wall time in steady state (median, min-max over reps of the second
of two back-to-back calls; the calls alternate rep by rep), its FLOPs from XLA's compiled cost
analysis, the fraction of a matmul's rate timed in the same alternation (the "peak"), and
the host time around it. `launch/bench_sampler.py` and `launch/bench_train.py` print these on the
CPU shapes of #19; `launch/gpu_check.py` ("phases") on the accelerator's.

- `sampler_phases`: one packed prefill call (every block full of prompt tokens, the best case of
  the packing) and one multi-step decode call (every slot at the middle of the context, in the
  engine's width bucket for it), plus any extra calls given (e.g. a dense-cache loop), then a
  real `generate` run whose engine stats give the host time per prefill / decode call.
- `train_phases`: one `Updater` step (gradient and AdamW in one program) split into the host's
  batch arrays, the dispatch, the device call to ready and the metrics' transfer; and, alone, the
  gradient program and the optimizer program. It ends with the minor page faults and kernel CPU
  time per step.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cleaner_jax.benchmarking import alternate_in_blocks, compiled_flops, summary


def matmul_call(n: int = 1024, dtype=jnp.float32) -> tuple[Callable[[], None], float]:
    """(a zero-arg n x n matmul, compiled and warm; its FLOPs): the rate the tables divide by."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    return (lambda: jax.block_until_ready(f(a, a))), 2.0 * n**3


def _alternate(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds of each call in steady state: per rep, each call twice back to back, the second
    timed (`alternate_in_blocks` with blocks of 2). A call right after another program can be
    much slower (Dec 2026, 2-core EPYC: the dense-cache decode loop 2.5x), which is not what a
    loop of one kind of call meets."""
    return {n: r["timed"] for n, r in alternate_in_blocks(calls, reps, block=2).items()}


def _row(seconds: list[float], flops: float | None, peak: float, **extra) -> dict:
    row = {**summary(seconds), **extra}
    if flops is not None:
        row["gflop"] = flops / 1e9
        row["gflop_per_s"] = flops / row["median_s"] / 1e9
        row["fraction_of_matmul_peak"] = flops / row["median_s"] / peak
    return row


def sampler_phases(
    engine,
    batch: int,
    context: int,
    reps: int,
    run_generate: Callable[[], float],
    matmul: tuple[Callable[[], None], float],
    extra: dict[str, tuple[Callable[[], None], float, int]] | None = None,
) -> dict:
    """Prefill and decode calls of a warm `Engine` with `batch` slots at `context` tokens.

    `run_generate()` runs one real generation on the engine and returns its seconds; the
    engine's stats of that run give the host time per call. `extra`: name -> (zero-arg call,
    its FLOPs, its tokens), timed in the same alternation. Returns the rows, the run's figures
    and the matmul rate.
    """
    from cleaner_jax.sampling import SamplingParams
    from cleaner_jax.sampling.engine_types import SamplingRows

    c, steps = engine.config, engine._steps
    j, u, k = c.prefill_blocks, c.prefill_chunk // c.prefill_blocks, c.decode_steps
    greedy = SamplingParams(greedy=True)
    # Prefill: every block full of real tokens, in the engine's width bucket for a block.
    pw = next(w for w in engine.decode_widths if w * c.page_size >= u)
    table_J = np.arange(1, 1 + j * pw, dtype=np.int32).reshape(j, pw)
    tokens = np.ones((j, u), np.int32)
    positions = np.broadcast_to(np.arange(u, dtype=np.int32), (j, u)).copy()
    samp_J = SamplingRows.build(j, ((row, greedy) for row in range(j)))
    sample_pos, block_row = np.full((j,), u, np.int32), np.arange(j, dtype=np.int32)
    last = np.arange(j, dtype=np.int32) * u + u - 1
    pre_rest = (table_J, tokens, positions, tokens, last, sample_pos, block_row, samp_J)
    pre_flops = compiled_flops(
        steps.prefill.lower(engine._state, engine._k, engine._v, *pre_rest).compile()
    )
    # Decode: every slot at the middle of the context, the width bucket that holds it.
    width = next(w for w in engine.decode_widths if w * c.page_size >= context)
    pages = max(1, c.num_pages - 1)
    table_B = np.arange(batch * width, dtype=np.int32).reshape(batch, width) % min(64, pages) + 1
    samp_B = SamplingRows.build(batch, ((row, greedy) for row in range(batch)))
    dec_rest = (
        table_B,
        np.ones((batch,), np.int32),
        np.full((batch,), context // 2, np.int32),
        samp_B,
        np.full((batch,), k, np.int32),
        np.full((batch, c.max_stop_tokens), -1, np.int32),
    )
    # XLA's cost analysis counts a loop body once: K steps cost K times the scan body.
    dec_flops = k * compiled_flops(
        steps.decode.lower(engine._state, engine._k, engine._v, *dec_rest).compile()
    )

    def call(fn, rest):
        def run():
            out = fn(engine._state, engine._k, engine._v, *rest)
            *_, engine._k, engine._v = out
            np.asarray(out[0])

        return run

    mm, mm_flops = matmul
    calls = {
        "prefill_call": call(steps.prefill, pre_rest),
        f"decode_call_{k}_steps": call(steps.decode, dec_rest),
        **{name: fn for name, (fn, _, _) in (extra or {}).items()},
        "matmul (the peak)": mm,
    }
    seconds = _alternate(calls, reps)
    peak = mm_flops / statistics.median(seconds["matmul (the peak)"])
    total = run_generate()  # host time around the device calls of a real run
    s = engine.stats

    def host(kind):
        return (s[f"{kind}_time"] - s[f"{kind}_device_time"]) / max(s[f"{kind}_calls"], 1)

    rows = {
        "prefill_call": _row(
            seconds["prefill_call"], pre_flops, peak, tokens=j * u, host_s_per_call=host("prefill")
        ),
        f"decode_call_{k}_steps": _row(
            seconds[f"decode_call_{k}_steps"],
            dec_flops,
            peak,
            tokens=batch * k,
            host_s_per_call=host("decode"),
        ),
    }
    for name, (_, flops, toks) in (extra or {}).items():
        rows[name] = _row(seconds[name], flops, peak, tokens=toks, host_s_per_call=float("nan"))
    for row in rows.values():
        row["tokens_per_s"] = row["tokens"] / row["median_s"]
    real = s["prefill_tokens"]
    run = {
        "generate_batch_s": total,
        "prefill_calls": s["prefill_calls"],
        "prefill_padding_fraction": s["prefill_padding"] / max(s["prefill_padding"] + real, 1),
        "prefill_s": s["prefill_time"],
        "decode_calls": s["decode_calls"],
        "decode_s": s["decode_time"],
        "decode_ms_per_token_step": 1e3 * s["decode_time"] / max(s["decode_tokens"] / batch, 1),
    }
    return {
        "batch": batch,
        "context": context,
        "decode_steps": k,
        "rows": rows,
        "generate_run": run,
        "matmul_peak_flops": peak,
    }


def train_phases(updater, graphdef, state, packed, reps: int, matmul) -> dict:
    """The phases of `updater`'s step on one packed micro-batch (module docstring).

    Takes its own copies of `state` (the step donates its inputs): expect about three times the
    parameters and optimizer state in memory while it runs.
    """
    from cleaner_jax.rl.update import _grad_step, _token_count

    state = jax.tree.map(jnp.copy, state)
    opt_state = updater.init(state)
    loss_cfg = updater.loss_cfg
    arrays = updater._device_arrays(packed)
    num_tokens = jnp.float32(max(_token_count([packed]), 1.0))
    grads, _ = _grad_step(state, graphdef, arrays, num_tokens, loss_cfg)
    fused_args = (graphdef, arrays, num_tokens, loss_cfg)
    flops = {
        "step": compiled_flops(updater._fused_step.lower(state, opt_state, *fused_args).compile()),
        "grad": compiled_flops(
            _grad_step.lower(state, graphdef, arrays, num_tokens, loss_cfg).compile()
        ),
        "apply": compiled_flops(updater._apply.lower(state, opt_state, grads).compile()),
    }
    box = {
        "state": state,
        "opt": opt_state,
        "apply": (jax.tree.map(jnp.copy, state), updater.init(state)),
    }
    rec = {k: [] for k in ("arrays", "dispatch", "device", "to_host", "whole")}
    host = {"minor_faults": [], "sys_s": []}

    def step():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        arr = updater._device_arrays(packed)
        nt = jnp.float32(max(_token_count([packed]), 1.0))
        t1 = time.perf_counter()
        box["state"], box["opt"], out = updater._fused_step(
            box["state"], box["opt"], graphdef, arr, nt, loss_cfg
        )
        t2 = time.perf_counter()
        jax.block_until_ready(out)
        t3 = time.perf_counter()
        jax.device_get(out)
        t4 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        host["minor_faults"].append(r1.ru_minflt - r0.ru_minflt)
        host["sys_s"].append(r1.ru_stime - r0.ru_stime)
        for k, v in zip(rec, (t1 - t0, t2 - t1, t3 - t1, t4 - t3, t4 - t0), strict=True):
            rec[k].append(v)

    def grad():
        jax.block_until_ready(_grad_step(box["state"], graphdef, arrays, num_tokens, loss_cfg))

    def apply():
        s, o, *_ = updater._apply(*box["apply"], grads)
        jax.block_until_ready(s)
        box["apply"] = (s, o)

    mm, mm_flops = matmul
    seconds = _alternate({"step": step, "grad": grad, "apply": apply, "matmul": mm}, reps)
    for v in (*rec.values(), *host.values()):
        v[:] = v[2::2]  # step()'s calls: a warm-up, then per rep one after a switch, one timed
    peak = mm_flops / statistics.median(seconds["matmul"])
    table = {
        "host: batch arrays to device": _row(rec["arrays"], None, peak),
        "host: dispatch of the step call": _row(rec["dispatch"], None, peak),
        "device: step (grad + AdamW), to ready": _row(rec["device"], flops["step"], peak),
        "host: metrics to host (one transfer)": _row(rec["to_host"], None, peak),
        "the whole step call": _row(rec["whole"], flops["step"], peak),
        "alone: gradient program (_grad_step)": _row(seconds["grad"], flops["grad"], peak),
        "alone: optimizer program (_apply)": _row(seconds["apply"], flops["apply"], peak),
        "matmul (the peak)": _row(seconds["matmul"], mm_flops, peak),
    }
    box.clear()
    return {
        "matmul_peak_gflop_per_s": peak / 1e9,
        "phases": table,
        "step_host": {k: {"median": statistics.median(v), "reps": v} for k, v in host.items()},
    }


def format_table(title: str, rows: dict[str, dict], host_key: str | None = None) -> str:
    """A printed phase table: ms median [min-max], GFLOP, GFLOP/s, % of peak (and host ms)."""
    head = f"{'phase':44s} {'ms':>9s} {'min-max':>17s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'peak':>6s}"
    lines = [title, head + (f" {'host ms':>8s}" if host_key else "")]
    for name, r in rows.items():
        span = f"{r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f}"
        line = f"{name:44s} {r['median_s'] * 1e3:9.2f} {span:>17s}"
        if "gflop" in r:
            frac = r["fraction_of_matmul_peak"]
            line += f" {r['gflop']:8.3f} {r['gflop_per_s']:8.1f} {frac:6.1%}"
        else:
            line += " " * 24
        if host_key:
            line += f" {r[host_key] * 1e3:8.3f}"
        lines.append(line)
    return "\n".join(lines)
