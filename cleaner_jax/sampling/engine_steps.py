"""The engine's jitted device programs: chunked prefill, multi-step decode, page copy.

Shapes are fixed by the engine config (chunk C, slots B, decode steps K) except the decode
page-table width M, which the engine takes from a few buckets; so each program compiles once per
variant. `trace_counts` counts traces per variant ("prefill", "decode/M=8", "copy"): a count above
1 is an unexpected recompile, which tests check. The page pool (L-tuples of K and V page
arrays) is donated to every call and updated in place.

Letters: L layers, P pages, S tokens per page, M pages per row, B slots, C prefill chunk,
K decode steps per call, V vocab.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cleaner_jax.sampling.paged_cache import PagedKVCache, copy_page
from cleaner_jax.sampling.token_sampling import sample_tokens


class EngineSteps:
    """Jitted prefill / decode / copy for one model graph (weights passed per call)."""

    def __init__(self, graphdef: Any, decode_steps: int):
        self.graphdef = graphdef
        self.decode_steps = decode_steps
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self.prefill = jax.jit(self._prefill, donate_argnums=(1, 2))
        self.decode = jax.jit(self._decode, donate_argnums=(1, 2))
        self.copy = jax.jit(self._copy, donate_argnums=(0, 1))

    def _copy(self, k_LKPHS, v_LKPSH, src, dst):
        self.trace_counts["copy"] += 1
        return copy_page(k_LKPHS, v_LKPSH, src, dst)

    def _prefill(
        self,
        state,
        k_LKPHS,
        v_LKPSH,
        table_1M,
        tokens_1C,
        positions_1C,
        targets_1C,
        last_index,
        sampling,
    ):
        """One chunk of one row: K/V written, log-probs of `targets_1C`, a sampled next token.

        `sampling` = (seed, position of the token to sample, temperature, top_p, top_k, greedy),
        each shaped [1]. Target log-probs use the same temperature (score passes 1.0 or the
        sampling temperature the trainer's ratio needs).
        """
        self.trace_counts["prefill"] += 1
        model = nnx.merge(self.graphdef, state)
        cache = PagedKVCache(k_LKPHS, v_LKPSH, table_1M)
        logits_1CV, cache = model(tokens_1C, positions_1C, cache=cache)
        seed, pos, temperature, top_p, top_k, greedy = sampling
        logp_1CV = jax.nn.log_softmax(logits_1CV / temperature[:, None, None], axis=-1)
        target_lp_1C = jnp.take_along_axis(logp_1CV, targets_1C[..., None], axis=-1)[..., 0]
        last_1V = jax.lax.dynamic_index_in_dim(logits_1CV[0], last_index, keepdims=True)
        token_1, lp_1 = sample_tokens(last_1V, seed, pos, temperature, top_p, top_k, greedy)
        return token_1, lp_1, target_lp_1C, cache.k_LKPHS, cache.v_LKPSH

    def _decode(self, state, k_LKPHS, v_LKPSH, table_BM, tokens_B, positions_B, sampling):
        """K decode steps for all slots; inactive slots have position -1 and write nothing.

        Returns tokens [K, B], log-probs [K, B], and the pool. A slot that finishes early keeps
        writing K/V past its end; the host discards those tokens and never reads those positions.
        """
        self.trace_counts[f"decode/M={table_BM.shape[1]}"] += 1
        model = nnx.merge(self.graphdef, state)
        seeds_B, temperature_B, top_p_B, top_k_B, greedy_B = sampling
        active_B = positions_B >= 0

        def one_step(carry, _):
            k, v, tok_B, pos_B = carry
            cache = PagedKVCache(k, v, table_BM)
            logits_B1V, cache = model(tok_B[:, None], pos_B[:, None], cache=cache)
            new_B, lp_B = sample_tokens(
                logits_B1V[:, 0], seeds_B, pos_B + 1, temperature_B, top_p_B, top_k_B, greedy_B
            )
            next_pos_B = jnp.where(active_B, pos_B + 1, -1)
            return (cache.k_LKPHS, cache.v_LKPSH, new_B, next_pos_B), (new_B, lp_B)

        (k_LKPHS, v_LKPSH, _, _), (tokens_KB, lps_KB) = jax.lax.scan(
            one_step, (k_LKPHS, v_LKPSH, tokens_B, positions_B), None, length=self.decode_steps
        )
        return tokens_KB, lps_KB, k_LKPHS, v_LKPSH
