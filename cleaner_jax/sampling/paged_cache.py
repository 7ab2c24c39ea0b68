"""Paged KV cache on device: page pool arrays, paged attention in pure jnp, pool sizing.

The pool is one K and one V array per model, stacked over layers, `[L, P, S, K, H]`; a row's page
table `[B, M]` lists its pages in position order (unused entries point at the null page 0).
`PagedKVCache.update_and_attend` is what the model calls per layer: it writes each token's K/V at
`(table[row, pos // S], pos % S)` (position -1 = padding, not written) and attends over the row's
gathered pages masked `key_pos <= query_pos`, which gives exactly the dense cache's semantics
(`cleaner_jax.models.kv_cache.DenseKVCache` is the oracle in the tests).

Letters: L layers, P pages in the pool, S tokens per page, M pages per row (page-table width),
B batch rows, T new tokens, N query heads, K kv heads, H head dim.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import struct

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.models.qwen import attention_weights_mask


def paged_attention(
    q_BTNH: jax.Array,
    k_LPSKH: jax.Array,
    v_LPSKH: jax.Array,
    layer: int,
    page_table_BM: jax.Array,
    positions_BT: jax.Array,
) -> jax.Array:
    """Causal GQA attention of each row's queries over its pages of `layer` (jnp reference)."""
    b, m = page_table_BM.shape
    s, kh, h = k_LPSKH.shape[2:]
    # One gather straight from the stacked pool: slicing the layer first can materialise it.
    k_BSKH = k_LPSKH[layer, page_table_BM].reshape(b, m * s, kh, h)
    v_BSKH = v_LPSKH[layer, page_table_BM].reshape(b, m * s, kh, h)
    mask_BTS = jnp.arange(m * s)[None, None, :] <= positions_BT[:, :, None]
    return attention_weights_mask(q_BTNH, k_BSKH, v_BSKH, mask_BTS)


@struct.dataclass
class PagedKVCache:
    k_LPSKH: jax.Array
    v_LPSKH: jax.Array
    page_table_BM: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, num_pages: int, page_size: int, dtype=None) -> PagedKVCache:
        shape = (cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.jnp_dtype
        table = jnp.zeros((1, 1), jnp.int32)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), table)

    def update_and_attend(self, layer, q_BTNH, k_BTKH, v_BTKH, positions_BT):
        p, s = self.k_LPSKH.shape[1:3]
        m = self.page_table_BM.shape[1]
        valid_BT = (positions_BT >= 0) & (positions_BT < m * s)
        pos_BT = jnp.clip(positions_BT, 0, m * s - 1)
        page_BT = jnp.take_along_axis(self.page_table_BM, pos_BT // s, axis=1)
        # Out-of-bounds page index: the scatter drops padding tokens.
        page_BT = jnp.where(valid_BT, page_BT, p)
        off_BT = pos_BT % s
        k_LPSKH = self.k_LPSKH.at[layer, page_BT, off_BT].set(
            k_BTKH.astype(self.k_LPSKH.dtype), mode="drop"
        )
        v_LPSKH = self.v_LPSKH.at[layer, page_BT, off_BT].set(
            v_BTKH.astype(self.v_LPSKH.dtype), mode="drop"
        )
        out_BTNH = paged_attention(
            q_BTNH, k_LPSKH, v_LPSKH, layer, self.page_table_BM, positions_BT
        )
        return out_BTNH, self.replace(k_LPSKH=k_LPSKH, v_LPSKH=v_LPSKH)


def copy_page(k_LPSKH: jax.Array, v_LPSKH: jax.Array, src: jax.Array, dst: jax.Array):
    """Copy one page (all layers) from src to dst; jit with the pool donated."""
    return k_LPSKH.at[:, dst].set(k_LPSKH[:, src]), v_LPSKH.at[:, dst].set(v_LPSKH[:, src])


def bytes_per_page(cfg: ModelConfig, page_size: int, dtype=None) -> int:
    itemsize = jnp.dtype(dtype or cfg.jnp_dtype).itemsize
    return 2 * cfg.num_layers * page_size * cfg.num_kv_heads * cfg.head_dim * itemsize


def num_pages_from_memory(
    cfg: ModelConfig, page_size: int, memory_fraction: float, device: jax.Device | None = None
) -> int | None:
    """Pages that fit in `memory_fraction` of the device's free memory, or None if unreported.

    Call this after the weights are on the device so that they count as used memory. CPU and
    some TPU runtimes report nothing; callers then need an explicit page count.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction={memory_fraction} must be in (0, 1]")
    device = device or jax.local_devices()[0]
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    pages = int(free * memory_fraction) // bytes_per_page(cfg, page_size)
    logging.info(
        "KV pool from device memory: %d free bytes x %.2f -> %d pages of %d tokens",
        free,
        memory_fraction,
        pages,
        page_size,
    )
    return pages
