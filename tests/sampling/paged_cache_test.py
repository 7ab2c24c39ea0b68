"""Paged KV cache == dense KV cache == full forward, on the tiny model (fp32), for the jnp path
and the GPU Pallas decode kernel in interpret mode (prefill chunks, then T=1 decode steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.sampling.paged_cache import PagedKVCache


def _forward(graphdef):
    @jax.jit
    def f(state, tokens_BT, positions_BT, cache):
        return nnx.merge(graphdef, state)(tokens_BT, positions_BT, cache=cache)

    return f


# pallas_tpu is left out here: its CPU interpreter rounds matmul inputs to bfloat16, so it is
# checked on bfloat16-representable inputs in attention_kernels_test.py instead.
@pytest.mark.parametrize("impl", ["jnp", "pallas_gpu"])
def test_paged_equals_dense_equals_full_forward(impl):
    cfg = tiny_config()
    graphdef, state = nnx.split(Qwen(cfg, rngs=nnx.Rngs(1)))
    fwd = _forward(graphdef)
    rng = np.random.default_rng(0)
    lengths, page_size, pages_per_row, num_pages = (13, 7), 4, 4, 12
    tokens = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
    # Rows own scattered pages of a shared pool; unused entries are the null page 0.
    perm = rng.permutation(np.arange(1, num_pages))
    table = np.zeros((2, pages_per_row), np.int32)
    table[0, :4], table[1, :2] = perm[:4], perm[4:6]
    paged = PagedKVCache.zeros(cfg, num_pages, page_size, impl=impl, interpret=True)
    paged = paged.replace(page_table_BM=jnp.array(table))
    dense = DenseKVCache.zeros(cfg, 2, pages_per_row * page_size)
    # Causal: right-padding row 1 leaves its first 7 logits untouched.
    padded = np.zeros((2, max(lengths)), np.int32)
    for r, t in enumerate(tokens):
        padded[r, : len(t)] = t
    full, _ = fwd(state, padded, np.broadcast_to(np.arange(max(lengths)), padded.shape), None)
    full = np.asarray(full)
    # Chunks of 5 with per-row padding (-1), crossing page boundaries; the last 3 positions go
    # one token per call (decode, the kernel path), row 1 padded there.
    starts = [(s, 5) for s in range(0, 10, 5)] + [(s, 1) for s in range(10, max(lengths))]
    for start, width in starts:
        tok = np.zeros((2, width), np.int32)
        pos = np.full((2, width), -1, np.int32)
        for r, t in enumerate(tokens):
            seg = t[start : start + width]
            tok[r, : len(seg)] = seg
            pos[r, : len(seg)] = np.arange(start, start + len(seg))
        lp, paged = fwd(state, tok, pos, paged)
        ld, dense = fwd(state, tok, pos, dense)
        valid = pos >= 0
        np.testing.assert_allclose(np.asarray(lp)[valid], np.asarray(ld)[valid], atol=1e-5)
        for r, t in enumerate(tokens):
            n = min(len(t), start + width)
            if n <= start:
                continue
            got = np.asarray(lp)[r, : n - start]
            np.testing.assert_allclose(got, full[r, start:n], atol=1e-5)
    # Padding wrote nothing: the null page and the pages no row owns are still zero.
    untouched = np.setdiff1d(np.arange(num_pages), table[table > 0])
    for k, v in zip(paged.k_pages, paged.v_pages, strict=True):
        assert not np.asarray(k)[:, untouched].any()
        assert not np.asarray(v)[:, untouched].any()
