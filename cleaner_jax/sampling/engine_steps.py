"""The engine's jitted device programs: packed chunked prefill, multi-step decode, page copy.

Shapes are fixed by the engine config (prefill blocks J x U, slots B, decode steps K) except the
page-table width M, which the engine takes from a few buckets; so each program compiles
once per variant. `trace_counts` counts traces per variant ("prefill/M=8", "decode/M=8", "copy"): a
count above 1 is an unexpected recompile, which tests check. The page pool (L-tuples of K and V
page arrays, layout per the attention impl, see `paged_cache.py`) is donated to every call and
updated in place.

Prefill packs several sequences into one call, ragged at block granularity: the chunk of C = J * U
tokens is J blocks of U tokens, each block owned by one sequence (a sequence's chunk spans
consecutive blocks, padding only in its last block). The model runs on `[J, U]` with the owner's
page table repeated per block, so attention costs C x (its row's keys), with no cross-row mask;
the projections and MLP cost C tokens whatever the mix of sequences.

Decode runs K steps per call (`lax.scan`) with the stop conditions on device: each slot carries
its remaining token budget and its stop tokens; a slot that emits a stop token or spends its
budget writes nothing more and emits -1 for the rest of the call, so the host syncs once per call,
not per token. On the "jnp" (CPU) path the call gathers each slot's pages once into a contiguous
view (`paged_cache.DecodeViewCache`), runs its K steps on the view and writes the new positions
back to the pool; a per-step page gather and key transpose cost more than the step's matmuls
there (profile: 6.4 of ~11 ms per step at batch 32). The kernel paths read the pool directly.

Letters: L layers, P pages, S tokens per page, M pages per row, B slots, J prefill blocks (also
the most rows one prefill packs), U tokens per block, C = J * U, K decode steps per call, V vocab,
X stop tokens per slot, R rows of a call (B or J).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from cleaner_jax.sampling.attention_kernels import KERNEL_IMPLS, resolve_attention
from cleaner_jax.sampling.engine_types import EngineConfig, SamplingRows
from cleaner_jax.sampling.paged_cache import (
    DecodeViewCache,
    PagedKVCache,
    copy_page,
    num_pages_from_memory,
)
from cleaner_jax.sampling.placement import SamplerPlacement
from cleaner_jax.sampling.token_sampling import sample_tokens


class EngineSteps:
    """Jitted prefill / decode / copy for one model graph (weights passed per call).

    `impl` is the resolved attention implementation of the pool ("jnp", "pallas_gpu",
    "pallas_tpu"); `interpret` runs its kernel in Pallas interpret mode (CPU tests);
    `decode_view` (jnp, one device only) decodes over a per-call contiguous view of the slots'
    pages; `mesh` (a tensor-parallel placement's, see `placement.py`) runs attention per kv-head
    shard; `megacore` splits the TPU kernel over a v5p chip's two cores."""

    def __init__(
        self,
        graphdef: Any,
        decode_steps: int,
        impl: str = "jnp",
        interpret: bool = False,
        decode_view: bool = True,
        mesh: Mesh | None = None,
        megacore: bool = False,
    ):
        self.graphdef = graphdef
        self.decode_steps = decode_steps
        self.decode_view = decode_view and impl not in KERNEL_IMPLS and mesh is None
        self.impl, self.interpret = impl, interpret
        self.mesh, self.megacore = mesh, megacore
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self.prefill = jax.jit(self._prefill, donate_argnums=(1, 2))
        self.decode = jax.jit(self._decode, donate_argnums=(1, 2))
        self.copy = jax.jit(self._copy, donate_argnums=(0, 1))

    def _cache(self, k_pages, v_pages, table) -> PagedKVCache:
        return PagedKVCache(
            k_pages, v_pages, table, self.impl, self.interpret, self.mesh, self.megacore
        )

    def _copy(self, k_pages, v_pages, src, dst):
        self.trace_counts["copy"] += 1
        return copy_page(k_pages, v_pages, src, dst)

    def _prefill(
        self,
        state,
        k_pages,
        v_pages,
        table_JM,
        tokens_JU,
        positions_JU,
        targets_JU,
        last_J,
        sample_pos_J,
        block_row_J,
        sampling_J: SamplingRows,
    ):
        """One packed chunk: K/V written, log-probs of `targets_JU`, a next token per row.

        Row j's last chunk token sits at flat index `last_J[j]` of the `[J * U]` chunk (rows
        past the packed ones: any index, results ignored); its next token is sampled at position
        `sample_pos_J[j]` with the row's settings in `sampling_J`. Block i belongs to row
        `block_row_J[i]`, whose temperature its target log-probs use (score passes 1.0 or the
        sampling temperature the trainer's ratio needs).
        """
        self.trace_counts[f"prefill/M={table_JM.shape[1]}"] += 1
        model = nnx.merge(self.graphdef, state)
        cache = self._cache(k_pages, v_pages, table_JM)
        logits_JUV, cache = model(tokens_JU, positions_JU, cache=cache)
        block_temp_J = sampling_J.temperature[block_row_J]
        logp_JUV = jax.nn.log_softmax(logits_JUV / block_temp_J[:, None, None], axis=-1)
        target_lp_JU = jnp.take_along_axis(logp_JUV, targets_JU[..., None], axis=-1)[..., 0]
        j, u, v = logits_JUV.shape
        last_JV = logits_JUV.reshape(j * u, v)[last_J]
        token_J, lp_J = _sample(last_JV, sample_pos_J, sampling_J)
        return token_J, lp_J, target_lp_JU.reshape(j * u), cache.k_pages, cache.v_pages

    def _decode(
        self,
        state,
        k_pages,
        v_pages,
        table_BM,
        tokens_B,
        positions_B,
        sampling_B: SamplingRows,
        budget_B=None,
        stop_BX=None,
    ):
        """Up to K decode steps for all slots; inactive slots have position -1 and write nothing.

        `budget_B`: tokens slot b may still emit (default K); `stop_BX`: its stop token ids
        (padded with -1). A slot stops on device after its budget or at a stop token (which is
        emitted): from the next step on it writes no K/V, attends nothing and emits -1, so the
        host reads each call's tokens once. Returns tokens [K, B] (-1: not emitted), their
        log-probs [K, B], and the pool. The "jnp" path decodes over a contiguous view of the
        rows' pages gathered once per call (`DecodeViewCache`) and writes the new positions
        back at the end; the kernel paths attend over the pool directly.
        """
        self.trace_counts[f"decode/M={table_BM.shape[1]}"] += 1
        model = nnx.merge(self.graphdef, state)
        if budget_B is None:
            budget_B = jnp.full(positions_B.shape, self.decode_steps, jnp.int32)
        if stop_BX is None:
            stop_BX = jnp.full((positions_B.shape[0], 1), -1, jnp.int32)
        use_view = self.decode_view
        cache0 = (
            DecodeViewCache.gather(k_pages, v_pages, table_BM)
            if use_view
            else self._cache(k_pages, v_pages, table_BM)
        )

        def one_step(carry, _):
            cache, tok_B, pos_B, left_B = carry
            logits_B1V, cache = model(tok_B[:, None], pos_B[:, None], cache=cache)
            new_B, lp_B = _sample(logits_B1V[:, 0], pos_B + 1, sampling_B)
            emitted_B = pos_B >= 0
            left_B = left_B - 1
            done_B = (left_B <= 0) | jnp.any(new_B[:, None] == stop_BX, axis=1)
            next_pos_B = jnp.where(emitted_B & ~done_B, pos_B + 1, -1)
            out_B = jnp.where(emitted_B, new_B, -1)
            return (cache, new_B, next_pos_B, left_B), (out_B, lp_B, pos_B)

        (cache, _, _, _), (tokens_KB, lps_KB, written_KB) = jax.lax.scan(
            one_step, (cache0, tokens_B, positions_B, budget_B), None, length=self.decode_steps
        )
        if use_view:
            k_pages, v_pages = cache.write_back(k_pages, v_pages, table_BM, written_KB.T)
        else:
            k_pages, v_pages = cache.k_pages, cache.v_pages
        return tokens_KB, lps_KB, k_pages, v_pages


def _sample(logits_RV, pos_R, rows: SamplingRows):
    """A token and its log-prob per row, with each row's settings, at positions `pos_R`."""
    return sample_tokens(
        logits_RV, rows.seed, pos_R, rows.temperature, rows.top_p, rows.top_k, rows.greedy
    )


def default_num_pages(config: EngineConfig) -> int:
    """The pool when no page count is given and the device reports no memory: `max_slots`
    full-length sequences plus the null page."""
    return config.max_slots * -(-config.max_seq_len // config.page_size) + 1


def resolve_num_pages(config: EngineConfig, cfg, placement: SamplerPlacement) -> int:
    """The pool's page count: `config.num_pages`, else from the placement's device memory
    (`paged_cache.num_pages_from_memory`, kv heads split over its tp devices), else (no memory
    stats: CPU) `default_num_pages`."""
    if config.num_pages is not None:
        return config.num_pages
    pages = num_pages_from_memory(
        cfg, config.page_size, config.memory_fraction, placement.devices[0], shards=placement.tp
    )
    if pages is None:
        pages = default_num_pages(config)
        logging.info("device reports no memory stats; KV pool = %d pages", pages)
    return pages


def engine_steps_for(graphdef: Any, config: EngineConfig, placement: SamplerPlacement):
    """The `EngineSteps` an engine with `config` runs on `placement` (also what `sampling.aot`
    compiles): attention resolved against the placement's platform."""
    impl = resolve_attention(config.attention, placement.platform, config.interpret_kernels)
    return EngineSteps(
        graphdef,
        config.decode_steps,
        impl,
        config.interpret_kernels,
        config.decode_view,
        mesh=placement.attention_mesh,
        megacore=placement.megacore and impl == "pallas_tpu",
    )
