"""Benchmark one layer's paged decode attention: the jnp gather path vs the backend's kernel.

Prints a table and writes JSON. Run on the machine you want numbers for, e.g.::

    python launch/bench_decode_attention.py --out /tmp/decode_attention.json

On CPU only "jnp" runs (the kernels would run in the slow Pallas interpreter).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from cleaner_jax.sampling.attention_kernels import kernel_decode_attention, resolve_attention
from cleaner_jax.sampling.paged_cache import paged_attention


def _time(fn, *args, reps: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv_heads", type=int, default=8)
    ap.add_argument("--head_dim", type=int, default=128)
    ap.add_argument("--page_size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="decode_attention.json")
    a = ap.parse_args()
    dtype = jnp.dtype(a.dtype)
    m = a.context // a.page_size
    p = a.batch * m + 1
    rng = np.random.default_rng(0)
    q_BNH = jnp.asarray(rng.normal(size=(a.batch, a.heads, a.head_dim)), dtype)
    k_KPSH = jnp.asarray(rng.normal(size=(a.kv_heads, p, a.page_size, a.head_dim)), dtype)
    v_KPSH = jnp.asarray(rng.normal(size=(a.kv_heads, p, a.page_size, a.head_dim)), dtype)
    table_BM = jnp.asarray(rng.permutation(np.arange(1, p)).reshape(a.batch, m), jnp.int32)
    positions_B = jnp.asarray(rng.integers(a.context // 2, a.context, a.batch), jnp.int32)
    rows = []
    k_KPHS = k_KPSH.swapaxes(2, 3)
    jnp_fn = jax.jit(lambda q, k, v, t, pos: paged_attention(q[:, None], k, v, t, pos[:, None]))
    rows.append(("jnp", _time(jnp_fn, q_BNH, k_KPHS, v_KPSH, table_BM, positions_B)))
    impl = resolve_attention("auto")
    if impl != "jnp":
        kern = jax.jit(lambda q, k, v, t, pos: kernel_decode_attention(impl, q, k, v, t, pos + 1))
        rows.append((impl, _time(kern, q_BNH, k_KPSH, v_KPSH, table_BM, positions_B)))
    print(f"{'impl':<12} {'ms/call':>10}")
    for name, sec in rows:
        print(f"{name:<12} {sec * 1e3:>10.3f}")
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "backend": jax.default_backend(), "ms": dict(rows)}, f)


if __name__ == "__main__":
    main()
