"""Sampler benchmark: a phase table of the paged engine, and the engine side by side with HF.

  python launch/bench_sampler.py --out=/tmp/bench_sampler.json
  python launch/bench_sampler.py --batches=32 --reps=5 --noextras --profile_dir=/tmp/prof

Model (issue #19's shape, random fp32 weights): Qwen3-shaped, 6 layers, d=256, 8 / 4 heads x 32,
mlp 768, vocab 8192; prompts of 16 tokens + 112 new, greedy.

1. Phase table (batch `--phase_batch`, `cleaner_jax/runtime/phase_tables.py`): one packed
   prefill call (every block holding prompt tokens) and one decode call (`decode_steps` steps at
   the prompt + new context), each: wall time in steady state (median, min-max over `--reps`),
   FLOPs from the compiled program's cost analysis (a scan body
   counts once there, so decode's is multiplied by its steps), the fraction of a 1024^2 fp32
   matmul's rate timed in the same alternation, and the host time around the device
   calls of a real `generate_batch` (table building before the call, token bookkeeping after,
   from the engine's stats). A plain jitted dense-cache greedy loop at the same batch, context and
   steps per call gives `paged_over_dense_decode_time`.
2. Side by side with HF `generate` (transformers, torch CPU) at each of `--batches`: end to end
   (prefill included) tokens/s, and whether the greedy tokens are identical. Per rep each arm
   runs `--block` calls back to back, as a rollout loop would; the first after a switch is kept
   apart (`benchmarking.alternate_in_blocks` says why; the JSON has both, with page faults).
   Median and min-max over `--reps` of the rest, and of the per-rep ratio.
3. `--extras`: the prefix-cache multi-turn workload and the RL demo model's decode step, as before.
`--profile_dir`: a JAX profiler trace of a few decode calls; the table of its device ops (summed
per fusion kind and per op name) is printed and saved in the JSON.

The JSON holds every figure and the machine (CPU model, cores, jax/torch versions, load average
before and after). On a shared machine the load average says how much to trust the numbers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from cleaner_jax.benchmarking import (
    alternate_in_blocks,
    block_summary,
    compiled_flops,
    machine_facts,
)
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.runtime import host_malloc, phase_tables
from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams, sample_tokens
from cleaner_jax.sampling.engine_types import SamplingRows

_OUT = flags.DEFINE_string("out", "/tmp/bench_sampler.json", "JSON output path")
_PROMPT = flags.DEFINE_integer("prompt_len", 16, "prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 112, "generated tokens")
_STEPS = flags.DEFINE_integer("decode_steps", EngineConfig.decode_steps, "decode steps per call")
_BLOCKS = flags.DEFINE_integer("prefill_blocks", EngineConfig.prefill_blocks, "prefill blocks")
_CHUNK = flags.DEFINE_integer("prefill_chunk", 128, "prefill tokens per call")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "32", "64"], "batches for the HF comparison")
_PHASE_BATCH = flags.DEFINE_integer("phase_batch", 32, "batch of the phase table")
_REPS = flags.DEFINE_integer("reps", 5, "repetitions (median, min-max)")
_BLOCK = flags.DEFINE_integer(
    "block",
    2,
    "HF comparison: calls of one arm back to back per rep; the first after a switch is kept "
    "apart (benchmarking.alternate_in_blocks). 1: single calls alternating, each timed",
    lower_bound=1,
)
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "skip the HF torch comparison")
_EXTRAS = flags.DEFINE_bool("extras", True, "also the multi-turn and demo-model sections")
_PROFILE = flags.DEFINE_string("profile_dir", "", "write a JAX profiler trace of decode here")

CFG = tiny_config(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=768,
    num_layers=6,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
)
MAX_SEQ = 256
# The RL demo's policy shape and rollout engine (64 slots, sequences up to 640 tokens).
DEMO_CFG = tiny_config(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=384,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
)
DEMO_MAX_SEQ, DEMO_SLOTS = 640, 64


def _stats(xs) -> dict:
    xs = [float(x) for x in xs]
    return {"median": float(np.median(xs)), "min": min(xs), "max": max(xs), "n": len(xs)}


def _fmt(st: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (
        f"{st['median'] * scale:.{digits}f} "
        f"({st['min'] * scale:.{digits}f}-{st['max'] * scale:.{digits}f})"
    )


def _engine(model, slots: int, prefix_cache: bool = True, max_seq: int = MAX_SEQ) -> Engine:
    eng = Engine(
        model,
        EngineConfig(
            page_size=16,
            num_pages=slots * max_seq // 16 + 64,
            max_slots=slots,
            prefill_chunk=_CHUNK.value,
            prefill_blocks=_BLOCKS.value,
            max_seq_len=max_seq,
            decode_steps=_STEPS.value,
            prefix_cache=prefix_cache,
        ),
    )
    eng.warmup()
    return eng


def _prompts(batch: int, seed: int = 0, vocab: int = CFG.vocab_size) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(0, vocab, _PROMPT.value))) for _ in range(batch)]


def _greedy() -> SamplingParams:
    return SamplingParams(greedy=True, max_new_tokens=_NEW.value)


def _engine_run(eng: Engine, prompts) -> tuple[list, float]:
    eng.update_params(eng._state)  # empty prefix cache: every prompt is prefilled
    eng.stats.clear()
    t0 = time.perf_counter()
    res = eng.generate_batch(prompts, _greedy())
    return res, time.perf_counter() - t0


def _phase_table(model, batch: int) -> dict:
    """`phase_tables.sampler_phases` at `batch`, with a dense-cache loop's decode call beside."""
    eng = _engine(model, batch)
    k = eng.config.decode_steps
    context = _PROMPT.value + _NEW.value
    dense_call, dense_flops = _dense_decode(model, batch, context, k)
    dense = f"dense_loop_decode_call_{k}_steps"
    out = phase_tables.sampler_phases(
        eng,
        batch,
        context,
        max(_REPS.value, 5),
        run_generate=lambda: _engine_run(eng, _prompts(batch))[1],
        matmul=phase_tables.matmul_call(),
        extra={dense: (dense_call, dense_flops, batch * k)},
    )
    rows, run = out["rows"], out["generate_run"]
    print(f"1024^2 fp32 matmul: {out['matmul_peak_flops'] / 1e9:.0f} GFLOP/s")
    title = f"\nphase table, batch {batch}, context {context}, {k} decode steps per call"
    print(phase_tables.format_table(title, rows, host_key="host_s_per_call"))
    print(
        f"generate_batch({batch}) {run['generate_batch_s']:.3f}s: prefill {run['prefill_s']:.3f}s "
        f"in {run['prefill_calls']} calls ({100 * run['prefill_padding_fraction']:.0f}% padding), "
        f"decode {run['decode_s']:.3f}s in {run['decode_calls']} calls"
    )
    out["paged_over_dense_decode_time"] = (
        rows[f"decode_call_{k}_steps"]["median_s"] / rows[dense]["median_s"]
    )
    print(f"paged / dense decode call time: {out['paged_over_dense_decode_time']:.2f}")
    return out


def _dense_decode(model, batch: int, cache_len: int, k: int):
    """(a zero-arg K-step decode call of a plain jitted dense-cache greedy loop, its FLOPs)."""
    graphdef, state = nnx.split(model)
    z_B, one_B = jnp.zeros((batch,), jnp.int32), jnp.ones((batch,), jnp.float32)
    yes_B = jnp.ones((batch,), bool)

    @functools.partial(jax.jit, donate_argnums=(3,))
    def decode(state, tok_B, pos, cache):
        def body(carry, _):
            tok_B, pos, cache = carry
            positions = jnp.full((tok_B.shape[0], 1), pos)
            logits, cache = nnx.merge(graphdef, state)(tok_B[:, None], positions, cache=cache)
            # Same sampling as the engine (greedy with log-probs): only the cache differs.
            nxt, _ = sample_tokens(logits[:, 0], z_B, pos + 1 + z_B, one_B, one_B, z_B, yes_B)
            return (nxt, pos + 1, cache), nxt

        (tok_B, pos, cache), toks = jax.lax.scan(body, (tok_B, pos, cache), None, length=k)
        return tok_B, pos, cache, toks

    box = {"cache": DenseKVCache.zeros(CFG, batch, cache_len)}
    tok, pos = jnp.ones((batch,), jnp.int32), jnp.int32(cache_len // 2)
    flops = k * compiled_flops(
        decode.lower(state, tok, pos, box["cache"]).compile()
    )  # a loop body counts once

    def call():
        _, _, box["cache"], toks = decode(state, tok, pos, box["cache"])
        np.asarray(toks)

    return call, flops


def _hf_model(model):
    import torch
    from transformers import Qwen3ForCausalLM

    from cleaner_jax.models.hf_io import save_hf_checkpoint

    with tempfile.TemporaryDirectory() as d:
        save_hf_checkpoint(model, CFG, d)
        return Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def _compare_batch(model, hf, b: int) -> dict:
    """Ours vs HF `generate` at batch `b`, arms alternating in blocks (`--block`) rep by rep."""
    import torch

    kw = dict(max_new_tokens=_NEW.value, min_new_tokens=_NEW.value, do_sample=False)
    eng = _engine(model, b)
    prompts = _prompts(b)
    pt = torch.tensor(prompts)

    def ours():
        return [r.tokens for r in _engine_run(eng, prompts)[0]]

    def theirs():
        with torch.no_grad():
            o = hf.generate(pt, attention_mask=torch.ones_like(pt), **kw)
        return o[:, _PROMPT.value :].tolist()

    same = sum(a == h for a, h in zip(ours(), theirs(), strict=True))
    rec = alternate_in_blocks({"ours": ours, "hf": theirs}, _REPS.value, _BLOCK.value)
    tps = {n: _stats([b * _NEW.value / t for t in r["timed"]]) for n, r in rec.items()}
    # Per rep, the arms' timed calls in the same order: their ratio, and the ratio of medians.
    pairs = zip(rec["ours"]["timed"], rec["hf"]["timed"], strict=True)
    ratio = _stats([h / o for o, h in pairs])
    out = {
        "ours_tokens_per_s": tps["ours"],
        "hf_tokens_per_s": tps["hf"],
        "speedup_vs_hf": ratio,
        "speedup_vs_hf_of_medians": float(
            np.median(rec["hf"]["timed"]) / np.median(rec["ours"]["timed"])
        ),
        "identical_rows": same,
        "rows": b,
        "block": _BLOCK.value,
        "calls": {n: block_summary(r) for n, r in rec.items()},
        "loadavg": os.getloadavg(),
    }
    after = ""
    if rec["ours"]["after_switch"]:
        out["speedup_vs_hf_after_switch"] = float(
            np.median(rec["hf"]["after_switch"]) / np.median(rec["ours"]["after_switch"])
        )
        after = f" (after a switch {out['speedup_vs_hf_after_switch']:.2f})"
    print(
        f"batch {b:3d}: ours {_fmt(tps['ours'], 1, 0):>22} tok/s | "
        f"HF {_fmt(tps['hf'], 1, 0):>22} tok/s | ours/HF {_fmt(ratio)}{after} | "
        f"identical {same}/{b} | load {out['loadavg'][0]:.1f}"
    )
    return out


def _side_by_side(model, batches: list[int]) -> dict:
    hf = _hf_model(model)
    return {str(b): _compare_batch(model, hf, b) for b in batches}


def _profile(model, batch: int, logdir: str) -> dict:
    """Device op time per fusion kind and per op name over a few decode calls (profiler trace)."""
    eng = _engine(model, batch)
    prompts = _prompts(batch)
    eng.generate_batch(prompts, _greedy())
    eng.update_params(eng._state)
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        eng.generate_batch(prompts, _greedy())
    calls = max(eng.stats["decode_calls"] // 2, 1)
    trace = sorted(glob.glob(f"{logdir}/**/*.json.gz", recursive=True))[-1]
    events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
    hlo = eng._steps.decode.lower(
        eng._state,
        eng._k,
        eng._v,
        np.zeros((batch, eng.decode_widths[0]), np.int32),
        np.zeros((batch,), np.int32),
        np.zeros((batch,), np.int32),
        SamplingRows.build(batch, ((row, SamplingParams(greedy=True)) for row in range(batch))),
        np.zeros((batch,), np.int32),
        np.full((batch, eng.config.max_stop_tokens), -1, np.int32),
    )
    text = hlo.compile().as_text()
    op_names = {
        m.group(1): m.group(2).split("/")[-1]
        for m in re.finditer(r"^\s*%?(\S+) = .*?op_name=\"([^\"]+)\"", text, re.M)
    }
    kinds, ops = collections.Counter(), collections.Counter()
    for e in events:
        name = e["name"]
        if name.startswith(("$", "PjitFunction")) or " " in name or "::" in name:
            continue
        kinds[re.sub(r"[.\d]+$", "", name)] += e["dur"]
        ops[op_names.get(name, name)] += e["dur"]
    total = sum(kinds.values())
    print(
        f"\nprofile ({logdir}): device op time of one generate_batch({batch}), {total / 1e3:.1f} ms"
    )
    for label, counter in (("fusion kind", kinds), ("op", ops)):
        for name, us in counter.most_common(8):
            print(f"  {label:<12} {name:<40} {us / 1e3:8.2f} ms {100 * us / total:5.1f}%")
    return {
        "total_device_ms": total / 1e3,
        "by_kind_ms": {k: v / 1e3 for k, v in kinds.most_common(15)},
        "by_op_ms": {k: v / 1e3 for k, v in ops.most_common(15)},
        "decode_calls": calls,
    }


def _demo_decode_ms(prompt_len: int, new_tokens: int) -> float:
    """ms per decode call of the engine on the demo model, 64 slots, random fp32 weights."""
    model = Qwen(DEMO_CFG, rngs=nnx.Rngs(0))
    eng = _engine(model, DEMO_SLOTS, max_seq=DEMO_MAX_SEQ)
    rng = np.random.default_rng(2)
    prompts = [
        list(map(int, rng.integers(0, DEMO_CFG.vocab_size, prompt_len))) for _ in range(DEMO_SLOTS)
    ]
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    eng.generate_batch(prompts[:2], params)
    eng.stats.clear()
    eng.generate_batch(prompts, params)
    return 1e3 * eng.stats["decode_time"] / eng.stats["decode_calls"]


def _multiturn(model, prefix_cache: bool):
    eng = _engine(model, 16, prefix_cache, max_seq=512)
    rng = np.random.default_rng(1)
    sessions = [
        (
            list(map(int, rng.integers(0, CFG.vocab_size, 48))),
            [
                list(map(int, rng.integers(0, CFG.vocab_size, rng.integers(16, 48))))
                for _ in range(6)
            ],
        )
        for _ in range(16)
    ]
    params = SamplingParams(greedy=True, max_new_tokens=24)
    eng.generate_batch([s[0] for s in sessions[:2]], params)  # compile
    eng.update_params(eng._state)
    eng.stats.clear()
    new_tokens = 0

    async def session(prompt, tools):
        nonlocal new_tokens
        ctx = list(prompt)
        new_tokens += len(prompt)
        for turn, tool in enumerate(tools):
            r = await eng.generate(ctx, params)
            if turn < len(tools) - 1:
                ctx = ctx + r.tokens + tool
                new_tokens += len(tool)

    async def run():
        await asyncio.gather(*(session(p, t) for p, t in sessions))

    t0 = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t0, eng.stats["prefill_tokens"] / new_tokens


def main(argv):
    del argv
    malloc_mode = host_malloc.configure(host_malloc.HOST_MALLOC.value)  # before jax starts
    model = Qwen(CFG, rngs=nnx.Rngs(0))
    out: dict = {
        "machine": machine_facts(torch=True),
        "config": {
            "model": CFG.__dict__,
            "max_seq_len": MAX_SEQ,
            "page_size": 16,
            "decode_steps": _STEPS.value,
            "prefill_chunk": _CHUNK.value,
            "prefill_blocks": _BLOCKS.value,
            "prompt_len": _PROMPT.value,
            "new_tokens": _NEW.value,
            "reps": _REPS.value,
        },
        "host_malloc": malloc_mode,
    }
    m = out["machine"]
    print(f"{m['cpu']}, {m['cpu_count']} cores, jax {m['jax']}, torch {m['torch']}")
    out["phases"] = _phase_table(model, _PHASE_BATCH.value)
    if not _SKIP_HF.value:
        print(f"\nend to end vs HF generate, {_PROMPT.value} + {_NEW.value} tokens, greedy")
        out["vs_hf_generate"] = _side_by_side(model, [int(b) for b in _BATCHES.value])
    if _PROFILE.value:
        out["profile"] = _profile(model, _PHASE_BATCH.value, _PROFILE.value)
    if _EXTRAS.value:
        t_cache, ratio = _multiturn(model, True)
        t_nocache, ratio_nocache = _multiturn(model, False)
        out["multiturn_prefill_tokens_over_new_tokens"] = ratio
        out["multiturn_prefill_tokens_over_new_tokens_no_cache"] = ratio_nocache
        out["multiturn_speedup_vs_no_prefix_cache"] = t_nocache / t_cache
        demo = {
            f"prompt{p}_new{n}": _demo_decode_ms(p, n) for p, n in ((64, 64), (512, 64), (64, 576))
        }
        out["demo_model_decode_ms_per_call_batch64"] = demo
        print(f"\nmultiturn prefill / new tokens {ratio:.3f} (no prefix cache {ratio_nocache:.3f})")
        speedup = out["multiturn_speedup_vs_no_prefix_cache"]
        print(f"multiturn speedup vs no prefix cache {speedup:.2f}")
        print(f"demo model b64 decode ms per call {demo}")
    out["machine"]["loadavg_end"] = os.getloadavg()
    with open(_OUT.value, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
