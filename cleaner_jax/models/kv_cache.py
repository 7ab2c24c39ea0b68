"""A dense (contiguous) KV cache: the simple path, and the oracle for the sampler's paged cache.

Cache slot s of row b holds the K/V of the token at position s. A call writes each token's K/V at
its position (position -1 = padding, not written) and attends over slots `s <= position`, so a
row truncated to length n (SAAR rollback) needs no cleanup: rewriting from position n on
overwrites every slot a later query can see.

Letters: L layers, B batch, S cache length, T new tokens, N query heads, K kv heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.models.qwen import attention_weights_mask


@struct.dataclass
class DenseKVCache:
    k_LBSKH: jax.Array
    v_LBSKH: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> DenseKVCache:
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.jnp_dtype
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def update_and_attend(self, layer, q_BTNH, k_BTKH, v_BTKH, positions_BT):
        b, t = positions_BT.shape
        s = self.k_LBSKH.shape[2]
        # Padding (-1) goes out of bounds and is dropped by the scatter.
        idx_BT = jnp.where(positions_BT >= 0, positions_BT, s)
        rows_BT = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
        k_BSKH = (
            self.k_LBSKH[layer]
            .at[rows_BT, idx_BT]
            .set(k_BTKH.astype(self.k_LBSKH.dtype), mode="drop")
        )
        v_BSKH = (
            self.v_LBSKH[layer]
            .at[rows_BT, idx_BT]
            .set(v_BTKH.astype(self.v_LBSKH.dtype), mode="drop")
        )
        mask_BTS = jnp.arange(s)[None, None, :] <= positions_BT[:, :, None]
        out_BTNH = attention_weights_mask(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
        cache = DenseKVCache(self.k_LBSKH.at[layer].set(k_BSKH), self.v_LBSKH.at[layer].set(v_BSKH))
        return out_BTNH, cache
