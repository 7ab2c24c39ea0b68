"""Per-row next-token sampling: temperature, top-k, top-p, greedy, and the reported log-prob.

Every row carries its own parameters so one jitted call serves a batch of unrelated requests.
Randomness is a function of (seed, position of the sampled token) only, so a request gives the
same tokens whatever else shares its batch, and after a preemption and recompute.

The returned log-prob is log softmax(logits / temperature)[token] over the FULL vocabulary: the
quantity the trainer's importance ratio uses, not the truncated top-k/top-p distribution.
Tokens tied with the top-k / top-p threshold value are all kept.

The vocabulary sort that top-k/top-p need and the random draw are skipped (`lax.cond`) when no
row of the batch needs them: on CPU the sort costs more than a small model's whole forward.
Skipping never changes a result: rows with top_k <= 0 and top_p >= 1 keep every token either way.

Letters: B batch rows, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def truncation_mask(scaled_BV: jax.Array, top_p_B: jax.Array, top_k_B: jax.Array) -> jax.Array:
    """Boolean [B, V]: tokens kept by top-k (k <= 0: all) then top-p (p >= 1: all)."""
    v = scaled_BV.shape[-1]
    sorted_BV = -jnp.sort(-scaled_BV, axis=-1)
    kth_B = jnp.take_along_axis(sorted_BV, jnp.clip(top_k_B - 1, 0, v - 1)[:, None], axis=-1)[:, 0]
    k_thresh_B = jnp.where(top_k_B > 0, kth_B, -jnp.inf)
    in_k_BV = sorted_BV >= k_thresh_B[:, None]
    probs_BV = jax.nn.softmax(jnp.where(in_k_BV, sorted_BV, -jnp.inf), axis=-1)
    # Keep a sorted token while the mass strictly before it is < top_p (the first is always kept).
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # top_p >= 1 keeps all explicitly: the float cumsum can reach 1 before the tail of the vocab.
    keep_p_BV = (before_BV < top_p_B[:, None]) | (jnp.arange(v) == 0) | (top_p_B[:, None] >= 1.0)
    keep_BV = in_k_BV & keep_p_BV
    n_keep_B = jnp.sum(keep_BV, axis=-1)
    p_thresh_B = jnp.take_along_axis(sorted_BV, (n_keep_B - 1)[:, None], axis=-1)[:, 0]
    return scaled_BV >= jnp.maximum(k_thresh_B, p_thresh_B)[:, None]


def _first_argmax(x_BV: jax.Array) -> jax.Array:
    """`argmax` (first maximal index) as a max then a min over indices: two plain reductions,
    which XLA's CPU backend runs 2.4x faster than its (value, index) argmax reduction."""
    v = x_BV.shape[-1]
    hit_BV = x_BV == jnp.max(x_BV, axis=-1, keepdims=True)
    first_B = jnp.min(jnp.where(hit_BV, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
    return jnp.minimum(first_B, v - 1)  # a NaN row matches nothing


def sample_tokens(
    logits_BV: jax.Array,
    seeds_B: jax.Array,
    positions_B: jax.Array,
    temperature_B: jax.Array,
    top_p_B: jax.Array,
    top_k_B: jax.Array,
    greedy_B: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(token ids [B] int32, log-probs [B] float32) of one sampling step."""
    scaled_BV = logits_BV.astype(jnp.float32) / temperature_B[:, None]
    logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    argmax_B = _first_argmax(logits_BV)

    def truncated(x_BV):
        return jnp.where(truncation_mask(x_BV, top_p_B, top_k_B), x_BV, -jnp.inf)

    def sampled():
        truncating = jnp.any(~greedy_B & ((top_k_B > 0) | (top_p_B < 1.0)))
        masked_BV = jax.lax.cond(truncating, truncated, lambda x: x, scaled_BV)
        keys = jax.vmap(lambda s, p: jax.random.fold_in(jax.random.key(s), p))(seeds_B, positions_B)
        sampled_B = jax.vmap(jax.random.categorical)(keys, masked_BV).astype(jnp.int32)
        return jnp.where(greedy_B, argmax_B, sampled_B)

    tokens_B = jax.lax.cond(jnp.all(greedy_B), lambda: argmax_B, sampled)
    return tokens_B, jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]
