"""Sampler benchmark: paged engine vs a dense-cache jitted loop vs HF `generate`, same weights.

  python launch/bench_sampler.py --out=/tmp/bench_sampler.json

Default model (CPU friendly, random fp32 weights): Qwen3-shaped, 4 layers, d=256, 4 heads /
2 kv heads x 64, mlp 768, vocab 4096. Measures decode tokens/s at batch 1/8/32, batch-32
end-to-end speedup over `transformers` torch `generate` (greedy, same weights, tokens checked
equal), decode time of the paged engine over a dense-cache jitted loop, and a 16-session x 6-turn
agent workload with appended tool outputs (prefill tokens / new tokens, speedup from the prefix
cache), and the per-decode-step time of the RL demo's model shape at batch 64. The dense loop is
measured twice: with a `max_seq_len` cache (what a fixed-shape dense sampler holds; the reported
`paged_over_dense_time`) and with a cache cut to exactly prompt + new tokens (the tightest dense
baseline, `paged_over_dense_time_tight_cache`). GPU-only keys are reported as not measured when no
GPU is present.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams

_OUT = flags.DEFINE_string("out", "/tmp/bench_sampler.json", "JSON output path")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "prompt tokens for the decode benchmarks")
_NEW = flags.DEFINE_integer("new_tokens", 64, "generated tokens for the decode benchmarks")
_STEPS = flags.DEFINE_integer("decode_steps", 1, "decode steps per device call")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "skip the HF torch comparison")

CFG = tiny_config(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
)
MAX_SEQ = 512
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


def _engine(model, slots: int, prefix_cache: bool = True, max_seq: int = MAX_SEQ) -> Engine:
    eng = Engine(
        model,
        EngineConfig(
            page_size=16,
            num_pages=slots * max_seq // 16 + 64,
            max_slots=slots,
            prefill_chunk=128,
            max_seq_len=max_seq,
            decode_steps=_STEPS.value,
            prefix_cache=prefix_cache,
        ),
    )
    eng.warmup()
    return eng


def _prompts(batch: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(0, CFG.vocab_size, _PROMPT.value))) for _ in range(batch)]


def _engine_decode(model, batch: int):
    eng = _engine(model, batch)
    params = SamplingParams(greedy=True, max_new_tokens=_NEW.value)
    eng.generate_batch(_prompts(batch, seed=99), params)  # compile
    eng.update_params(eng._state)
    eng.stats.clear()
    t0 = time.perf_counter()
    res = eng.generate_batch(_prompts(batch), params)
    total = time.perf_counter() - t0
    s = eng.stats
    return res, total, s["decode_tokens"] / s["decode_time"], s["decode_time"] / s["decode_calls"]


def _dense_decode(model, batch: int, cache_len: int) -> float:
    """Seconds per K-step decode call of a plain jitted dense-cache greedy loop (cache donated)."""
    graphdef, state = nnx.split(model)
    k = _STEPS.value

    @jax.jit
    def prefill(state, tokens_BT, cache):
        pos = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        logits, cache = nnx.merge(graphdef, state)(tokens_BT, pos, cache=cache)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache

    @functools.partial(jax.jit, donate_argnums=(3,))
    def decode(state, tok_B, pos, cache):
        def body(carry, _):
            tok_B, pos, cache = carry
            positions = jnp.full((tok_B.shape[0], 1), pos)
            logits, cache = nnx.merge(graphdef, state)(tok_B[:, None], positions, cache=cache)
            nxt = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
            return (nxt, pos + 1, cache), nxt

        (tok_B, pos, cache), toks = jax.lax.scan(body, (tok_B, pos, cache), None, length=k)
        return tok_B, pos, cache, toks

    def run():
        cache = DenseKVCache.zeros(CFG, batch, cache_len)
        tok, cache = prefill(state, jnp.asarray(_prompts(batch)), cache)
        pos = jnp.int32(_PROMPT.value)
        jax.block_until_ready(tok)
        t0 = time.perf_counter()
        calls = -(-(_NEW.value - 1) // k)
        for _ in range(calls):
            tok, pos, cache, toks = decode(state, tok, pos, cache)
            np.asarray(toks)  # the engine also reads tokens back every call
        return (time.perf_counter() - t0) / calls

    run()
    return run()


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


def _hf_generate(model, results) -> float | None:
    import torch
    from transformers import Qwen3ForCausalLM

    from cleaner_jax.models.hf_io import save_hf_checkpoint

    with tempfile.TemporaryDirectory() as d:
        save_hf_checkpoint(model, CFG, d)
        hf = Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompts = torch.tensor(_prompts(32))
    kw = dict(max_new_tokens=_NEW.value, min_new_tokens=_NEW.value, do_sample=False)
    with torch.no_grad():
        hf.generate(prompts[:2], max_new_tokens=4, do_sample=False)
        t0 = time.perf_counter()
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), **kw)
        elapsed = time.perf_counter() - t0
    hf_tokens = out[:, _PROMPT.value :].tolist()
    same = sum(h == r.tokens for h, r in zip(hf_tokens, results, strict=True))
    print(f"HF generate tokens identical to ours for {same}/32 rows")
    return elapsed


def _multiturn(model, prefix_cache: bool):
    eng = _engine(model, 16, prefix_cache)
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
    model = Qwen(CFG, rngs=nnx.Rngs(0))
    out: dict = {
        "config": {
            "model": CFG.__dict__,
            "max_seq_len": MAX_SEQ,
            "page_size": 16,
            "decode_steps": _STEPS.value,
            "prompt_len": _PROMPT.value,
            "new_tokens": _NEW.value,
            "device": str(jax.devices()[0]),
        }
    }
    tps, per_call, e2e, res32 = {}, {}, {}, None
    for b in (1, 8, 32):
        res, total, tok_s, call_s = _engine_decode(model, b)
        tps[str(b)], per_call[b], e2e[b] = tok_s, call_s, total
        res32 = res if b == 32 else res32
        print(f"engine batch {b:2d}: {tok_s:9.1f} decode tok/s, end-to-end {total:.2f}s")
    out["decode_tokens_per_s"] = tps
    dense_call = _dense_decode(model, 32, MAX_SEQ)
    dense_tight = _dense_decode(model, 32, _PROMPT.value + _NEW.value)
    out["paged_over_dense_time"] = per_call[32] / dense_call
    out["paged_over_dense_time_tight_cache"] = per_call[32] / dense_tight
    out["decode_ms_per_call_batch32"] = {
        "paged": per_call[32] * 1e3,
        "dense_max_seq_cache": dense_call * 1e3,
        "dense_tight_cache": dense_tight * 1e3,
    }
    print(
        f"batch 32, ms per {_STEPS.value}-step decode call: paged {per_call[32] * 1e3:.1f}, "
        f"dense {MAX_SEQ}-cache {dense_call * 1e3:.1f}, dense tight cache {dense_tight * 1e3:.1f}"
    )
    if not _SKIP_HF.value:
        hf_s = _hf_generate(model, res32)
        out["hf_generate_seconds_batch32"] = hf_s
        out["engine_generate_seconds_batch32"] = e2e[32]
        out["decode_speedup_vs_hf_generate"] = hf_s / e2e[32]
    t_cache, ratio = _multiturn(model, True)
    t_nocache, ratio_nocache = _multiturn(model, False)
    out["multiturn_prefill_tokens_over_new_tokens"] = ratio
    out["multiturn_prefill_tokens_over_new_tokens_no_cache"] = ratio_nocache
    out["multiturn_speedup_vs_no_prefix_cache"] = t_nocache / t_cache
    demo = {f"prompt{p}_new{n}": _demo_decode_ms(p, n) for p, n in ((64, 64), (512, 64), (64, 576))}
    out["demo_model_decode_ms_per_step_batch64"] = demo
    gpu = any(d.platform == "gpu" for d in jax.devices())
    out["gpu_batch1_roofline_fraction"] = "not measured (no GPU)" if not gpu else None
    rows = [
        ("decode tok/s batch 1 / 8 / 32", " / ".join(f"{tps[k]:.0f}" for k in ("1", "8", "32"))),
        ("decode speedup vs HF generate (b32)", out.get("decode_speedup_vs_hf_generate")),
        ("paged / dense decode time (b32)", out["paged_over_dense_time"]),
        ("  same vs dense tight cache", out["paged_over_dense_time_tight_cache"]),
        ("multiturn prefill / new tokens", ratio),
        ("  same without prefix cache", ratio_nocache),
        ("multiturn speedup vs no prefix cache", out["multiturn_speedup_vs_no_prefix_cache"]),
        ("gpu_batch1_roofline_fraction", out["gpu_batch1_roofline_fraction"]),
    ] + [(f"demo model b64 decode ms/step {k}", v) for k, v in demo.items()]
    print(f"\n{'metric':<40} value")
    for name, val in rows:
        print(f"{name:<40} {val:.3f}" if isinstance(val, float) else f"{name:<40} {val}")
    with open(_OUT.value, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
