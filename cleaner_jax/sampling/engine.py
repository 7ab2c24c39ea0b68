"""The sampling engine: continuous batching over paged KV with a radix prefix cache.

Requests (`generate`, `score`) are awaited by many coroutines on one asyncio loop; a background
task steps the engine while any are pending. A step admits waiting requests into free slots
(reusing cached prefix pages), prefills every admitted prompt in packed calls (chunks of
`prefill_chunk` tokens shared by the prefilling slots, oldest first, in `prefill_blocks` blocks;
see `engine_steps.py`), then runs one decode call of `decode_steps` steps over all slots. Stop
tokens and token budgets are checked on device, so a slot stops inside the call at its stop token
and the host reads the call's tokens once. Attention runs through the backend's paged-attention
kernel where there is one (`EngineConfig.attention`, see `attention_kernels.py`). The device
sees only int32 page tables and positions, so the programs never recompile in steady state. The
decode page table is cut to the smallest of a few width buckets
(`EngineConfig.decode_width_buckets`: the full width halved repeatedly) that holds the longest
running sequence, so decode attends over the pages in use, not `max_seq_len`; prefill does the
same with the longest packed row; each bucket compiles once per program. When the pool runs dry
the engine evicts unreferenced cached pages, then preempts the most recently admitted request
(its written K/V goes into the prefix cache and it is recomputed later, with identical results:
sampling randomness depends on seed and position).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.sampling.engine_steps import engine_steps_for, resolve_num_pages
from cleaner_jax.sampling.engine_types import (
    EngineConfig,
    EngineRequest,
    GenerationResult,
    RequestTooLargeError,
    SamplingParams,
    SamplingRows,
)
from cleaner_jax.sampling.paged_cache import PagedKVCache
from cleaner_jax.sampling.placement import SamplerPlacement, sampler_placement
from cleaner_jax.sampling.radix_cache import PageManager, SequencePages


class Engine:
    """Paged, prefix-cached, continuously batched sampler for a `Qwen` model."""

    def __init__(
        self,
        model_or_graphdef_and_state: Any,
        config: EngineConfig,
        placement: SamplerPlacement | None = None,
    ):
        """`placement`: the devices the sampler runs on (`placement.sampler_placement`; default
        this process's first local device). The weights are put there (a no-op when the caller
        already did, as `rl.distributed.sampler_replica` does), the pool is allocated there and
        the attention kernel is the one of its platform."""
        if isinstance(model_or_graphdef_and_state, nnx.Module):
            graphdef, state = nnx.split(model_or_graphdef_and_state)
        else:
            graphdef, state = model_or_graphdef_and_state
        self.model_config = nnx.merge(graphdef, state).cfg
        self.config = c = config
        self.placement = placement or sampler_placement(self.model_config, jax.local_devices()[:1])
        self.num_pages = num_pages = resolve_num_pages(c, self.model_config, self.placement)
        self.pages_per_seq = -(-c.max_seq_len // c.page_size)
        self.decode_widths = sorted(
            {-(-self.pages_per_seq // 2**i) for i in range(c.decode_width_buckets)}
        )
        self._state = self.placement.put(state, self.model_config)
        self._steps = engine_steps_for(graphdef, c, self.placement)
        self.attention = self._steps.impl
        logging.info(
            "sampler attention: %s on %d %s device(s), megacore=%s",
            self.attention,
            self.placement.tp,
            self.placement.platform,
            self.placement.megacore,
        )
        pool = PagedKVCache.zeros(
            self.model_config,
            num_pages,
            c.page_size,
            impl=self.attention,
            interpret=c.interpret_kernels,
            sharding=self.placement.pool_sharding,
        )
        self._k, self._v = pool.k_pages, pool.v_pages
        self.pages = PageManager(num_pages, c.page_size)
        self._slots: list[EngineRequest | None] = [None] * c.max_slots
        self._waiting: collections.deque[EngineRequest] = collections.deque()
        self._arrivals = itertools.count()
        self._driver: asyncio.Task | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        # The version of the weights held: each sampled token records it (`update_params` sets it).
        self.policy_version = 0

    # ------------------------------------------------------------------ public API
    @property
    def trace_counts(self) -> dict[str, int]:
        """How many times each device program was traced (each trace is a compile)."""
        return dict(self._steps.trace_counts)

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams | None = None
    ) -> GenerationResult:
        """Sample a continuation of `prompt_tokens`."""
        params = params or SamplingParams()
        prompt = self._check_tokens(prompt_tokens, min_len=1)
        if len(prompt) >= self.config.max_seq_len:
            raise RequestTooLargeError(
                f"prompt has {len(prompt)} tokens, max_seq_len={self.config.max_seq_len} leaves "
                "no room for a new token: raise EngineConfig.max_seq_len or shorten the prompt"
            )
        if len(params.stop_token_ids) > self.config.max_stop_tokens:
            raise ValueError(
                f"{len(params.stop_token_ids)} stop tokens exceed EngineConfig.max_stop_tokens="
                f"{self.config.max_stop_tokens}: raise it or pass fewer stop_token_ids"
            )
        need = min(len(prompt) + params.max_new_tokens, self.config.max_seq_len)
        self._check_fits(need)
        return await self._submit("generate", prompt, params, start=0)

    async def score(
        self, tokens: Sequence[int], start: int, temperature: float = 1.0
    ) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i in [start, len(tokens)), reusing cached pages."""
        toks = self._check_tokens(tokens, min_len=1)
        if not 1 <= start <= len(toks):
            raise ValueError(f"start={start} must be in [1, {len(toks)}] (token 0 has no context)")
        if len(toks) > self.config.max_seq_len:
            raise RequestTooLargeError(
                f"{len(toks)} tokens exceed max_seq_len={self.config.max_seq_len}"
            )
        if start == len(toks):
            return []
        self._check_fits(len(toks))
        params = SamplingParams(temperature=temperature or 1.0, max_new_tokens=1)
        return await self._submit("score", toks, params, start=start)

    def warmup(self) -> None:
        """Compile every device program variant now (prefill and decode per width bucket, page
        copy) with inputs that write nothing, so that no request pays a compile later."""
        b, c = self.config.max_slots, self.config.prefill_chunk
        inactive_B = np.full((b,), -1, np.int32)
        stop_BX = np.full((b, self.config.max_stop_tokens), -1, np.int32)
        for width in self.decode_widths:
            table = np.zeros((b, width), np.int32)
            *_, self._k, self._v = self._steps.decode(
                self._state,
                self._k,
                self._v,
                table,
                inactive_B,
                inactive_B,
                SamplingRows.build(b),
                np.zeros((b,), np.int32),
                stop_BX,
            )
        j = self.config.prefill_blocks
        u = c // j
        for width in self.decode_widths:
            *_, self._k, self._v = self._steps.prefill(
                self._state,
                self._k,
                self._v,
                np.zeros((j, width), np.int32),
                np.zeros((j, u), np.int32),
                np.full((j, u), -1, np.int32),
                np.zeros((j, u), np.int32),
                np.zeros((j,), np.int32),
                np.zeros((j,), np.int32),
                np.zeros((j,), np.int32),
                SamplingRows.build(j),
            )
        # The null page onto itself: a copy that changes nothing anyone reads.
        self._k, self._v = self._steps.copy(self._k, self._v, jnp.int32(0), jnp.int32(0))

    def update_params(
        self, state: Any, version: int | None = None, reprefill: bool = False
    ) -> None:
        """Swap the weights and invalidate the prefix cache. `state` should already be on the
        placement (`rl.distributed.sampler_replica`). `version`: the new weights' policy
        version (default: the previous one + 1); tokens sampled from now on record it.

        In-flight requests continue: with `reprefill` False on the K/V their earlier tokens left
        under the old weights; with True they are preempted first and prefill again under the new
        weights (a generation's next token then follows the new policy exactly). Call it between
        engine steps (on the loop that drives the engine) or when nothing is in flight."""
        if reprefill:
            for req in list(filter(None, self._slots)):
                self._preempt(req, reason="weight push")
        self._state = self.placement.put(state, self.model_config)
        self.pages.reset()
        self.policy_version = self.policy_version + 1 if version is None else int(version)

    def release(self, tokens: Sequence[int], position: int) -> int:
        """Free cached pages holding positions >= `position` of `tokens` (a SAAR rollback's
        abandoned branch); pages still in use are kept. Returns the number freed."""
        return self.pages.release(list(tokens), position)

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Synchronous `generate` over many prompts (runs its own event loop)."""
        plist = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        calls = [self.generate(p, q) for p, q in zip(prompts, plist, strict=True)]
        return asyncio.run(_gather(calls))

    def score_batch(self, items: Sequence[tuple[Sequence[int], int]]) -> list[list[float]]:
        return asyncio.run(_gather([self.score(t, s) for t, s in items]))

    def abandon(self) -> None:
        """Drops every pending request (the loop awaiting them stopped), freeing its pages."""
        for req in list(filter(None, self._slots)):
            self._finish(req, None)
        self._waiting.clear()

    # ------------------------------------------------------------------ submission
    def _check_tokens(self, tokens: Sequence[int], min_len: int) -> list[int]:
        toks = [int(t) for t in tokens]
        if len(toks) < min_len:
            raise ValueError(f"need at least {min_len} token(s), got {len(toks)}")
        v = self.model_config.vocab_size
        bad = [t for t in toks if not 0 <= t < v]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the vocabulary [0, {v})")
        return toks

    def _check_fits(self, num_positions: int) -> None:
        need = -(-num_positions // self.config.page_size)
        if need > self.pages.allocator.capacity:
            raise RequestTooLargeError(
                f"request needs {need} KV pages but the pool has {self.pages.allocator.capacity}:"
                " raise EngineConfig.num_pages (or memory_fraction) or shorten the request"
            )

    async def _submit(self, kind, tokens, params, start):
        loop = asyncio.get_running_loop()
        req = EngineRequest(
            kind, tokens, params, loop.create_future(), next(self._arrivals), len(tokens), start
        )
        self._waiting.append(req)
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        return await req.future

    async def _drive(self) -> None:
        try:
            while self._waiting or any(self._slots):
                self.step()
                await asyncio.sleep(0)
        except Exception as e:
            logging.exception("sampling engine step failed; failing all pending requests")
            for req in [*self._waiting, *filter(None, self._slots)]:
                if not req.future.done():
                    req.future.set_exception(e)
            self._waiting.clear()
            self._slots = [None] * self.config.max_slots

    # ------------------------------------------------------------------ scheduling
    def step(self) -> None:
        """Admit, prefill the admitted prompts in packed chunks, then one decode call (K steps)."""
        for req in list(filter(None, self._slots)):
            if req.future.done():  # its awaiter was cancelled: stop spending compute on it
                self._finish(req, None)
        self._admit()
        # Prefill every admitted prompt before decoding: a decode call costs the same for any
        # number of running slots, so decoding while prompts trickle in wastes calls (32 prompts
        # in 4-per-call prefills cost 21 instead of 14 8-step decode calls, measured).
        while any(r is not None and r.prefilling for r in self._slots):
            self._prefill_packed()
        if any(r is not None and not r.prefilling for r in self._slots):
            self._decode()

    def _admit(self) -> None:
        while self._waiting and None in self._slots:
            req = self._waiting[0]
            if req.future.done():  # cancelled by its awaiter
                self._waiting.popleft()
                continue
            max_cached = len(req.tokens) - 1 if req.kind == "generate" else req.start - 1
            if not self.config.prefix_cache:
                max_cached = 0
            seq, copy = self.pages.begin(req.tokens, max_cached)
            self._copy(copy)
            if not self.pages.reserve(seq, len(req.tokens)):
                self.pages.finish(seq, req.tokens)
                if not any(self._slots):
                    raise RuntimeError("request does not fit an empty pool (accounting bug)")
                return
            self._waiting.popleft()
            req.seq, req.prefilling = seq, True
            req.slot = self._slots.index(None)
            self._slots[req.slot] = req
            if req.cached is None:
                req.cached = seq.num_cached
            self.stats["cached_tokens"] += seq.num_cached

    def _copy(self, copy) -> None:
        if copy is not None:
            src, dst = (jnp.int32(x) for x in copy)
            self._k, self._v = self._steps.copy(self._k, self._v, src, dst)

    def _table_row(self, seq: SequencePages) -> np.ndarray:
        row = np.zeros((self.pages_per_seq,), np.int32)
        row[: len(seq.pages)] = seq.pages
        return row

    def _prefill_packed(self) -> None:
        """One prefill call over the prefilling slots, oldest first: each takes whole blocks of
        the chunk (as many as its remaining prompt needs, while blocks last)."""
        t0 = time.perf_counter()
        j = self.config.prefill_blocks
        u = self.config.prefill_chunk // j
        reqs = sorted(
            (r for r in self._slots if r is not None and r.prefilling), key=lambda r: r.arrival
        )
        tokens, targets = np.zeros((j * u,), np.int32), np.zeros((j * u,), np.int32)
        positions = np.full((j * u,), -1, np.int32)
        table = np.zeros((j, self.pages_per_seq), np.int32)
        last, block_row = np.zeros((j,), np.int32), np.zeros((j,), np.int32)
        sample_pos = np.zeros((j,), np.int32)
        packed, block = [], 0  # (request, row, first position, end position, flat offset)
        for req in reqs:
            if block == j:
                break
            row, toks = len(packed), req.tokens
            begin = req.seq.num_written
            end = min(begin + (j - block) * u, len(toks))
            n, off = end - begin, block * u
            blocks = -(-n // u)
            tokens[off : off + n] = toks[begin:end]
            positions[off : off + n] = np.arange(begin, end)
            nxt = toks[begin + 1 : end + 1]
            targets[off : off + len(nxt)] = nxt
            table[block : block + blocks] = self._table_row(req.seq)
            block_row[block : block + blocks] = row
            last[row], sample_pos[row] = off + n - 1, end
            packed.append((req, row, begin, end, off))
            block += blocks
        t1 = time.perf_counter()
        # Like decode, attend over the smallest width bucket holding the packed rows' ends, not
        # `max_seq_len`: a block's gather and attention cost its table width.
        need = -(-max(end for _, _, _, end, _ in packed) // self.config.page_size)
        width = next(w for w in self.decode_widths if w >= need)
        tok, lp, target_lp, self._k, self._v = self._steps.prefill(
            self._state,
            self._k,
            self._v,
            table[:, :width],
            tokens.reshape(j, u),
            positions.reshape(j, u),
            targets.reshape(j, u),
            last,
            sample_pos,
            block_row,
            SamplingRows.build(j, ((row, req.params) for req, row, *_ in packed)),
        )
        tok, lp, target_lp = np.asarray(tok), np.asarray(lp), np.asarray(target_lp)
        self.stats["prefill_device_time"] += time.perf_counter() - t1
        self.stats["prefill_padding"] += j * u - sum(hi - lo for _, _, lo, hi, _ in packed)
        self.stats["prefill_calls"] += 1
        for req, row, begin, end, off in packed:
            seq, toks = req.seq, req.tokens
            seq.num_written = end
            self.stats["prefill_tokens"] += end - begin
            if req.kind == "score":
                for p in range(max(begin, req.start - 1), min(end, len(toks) - 1)):
                    req.scores[p + 1] = float(target_lp[off + p - begin])
            if end == len(toks):
                req.prefilling = False
                self.pages.commit(seq, toks)
                if req.kind == "score":
                    self._finish(req, None)
                else:
                    self._accept(req, int(tok[row]), float(lp[row]))
        self.stats["prefill_time"] += time.perf_counter() - t0

    def _accept(self, req: EngineRequest, token: int, logprob: float) -> bool:
        """Append a sampled token; finish the request if it is done. True if it continues."""
        req.tokens.append(token)
        req.generated.append(token)
        req.logprobs.append(logprob)
        req.versions.append(self.policy_version)
        if token in req.params.stop_token_ids:
            self._finish(req, "stop")
        elif len(req.generated) >= req.params.max_new_tokens:
            self._finish(req, "length")
        elif len(req.tokens) >= self.config.max_seq_len:
            self._finish(req, "length")
        else:
            return True
        return False

    def _finish(self, req: EngineRequest, reason: str | None) -> None:
        self.pages.finish(req.seq, req.tokens)
        self._slots[req.slot] = None
        req.seq, req.slot = None, -1
        if req.future.done():
            return
        if req.kind == "score":
            out = [req.scores[i] for i in range(req.start, len(req.tokens))]
            req.future.set_result(out)
        else:
            req.future.set_result(
                GenerationResult(
                    list(req.generated), list(req.logprobs), reason, req.cached, list(req.versions)
                )
            )

    def _preempt(self, req: EngineRequest, reason: str = "KV pool exhausted") -> None:
        logging.info("%s: preempting request %d for recompute", reason, req.arrival)
        self.stats["preemptions"] += 1
        self.pages.finish(req.seq, req.tokens)
        self._slots[req.slot] = None
        req.seq, req.slot, req.prefilling = None, -1, True
        req.scores.clear()
        self._waiting.appendleft(req)

    def _reserve_decode(self) -> tuple[list[EngineRequest], int]:
        """Reserve pages for the next K positions of every decoding slot (preempting when the
        pool is short). Returns the running requests and the positions the longest one needs."""
        k = self.config.decode_steps
        while True:
            running = [r for r in self._slots if r is not None and not r.prefilling]
            short, longest = None, 0
            for req in running:
                remaining = req.params.max_new_tokens - len(req.generated)
                last = len(req.tokens) - 1
                upto = min(last + min(k, remaining), self.config.max_seq_len)
                if not self.pages.reserve(req.seq, upto):
                    short = req
                    break
                longest = max(longest, upto)
            if short is None:
                return running, longest
            victims = [r for r in self._slots if r is not None]
            self._preempt(max(victims, key=lambda r: r.arrival))

    def _decode(self) -> None:
        t0 = time.perf_counter()
        running, longest = self._reserve_decode()
        if not running:
            return
        c = self.config
        b = c.max_slots
        # Positions past the bucket are neither written nor read; only finished rows get there.
        need = -(-longest // c.page_size)
        width = next(w for w in self.decode_widths if w >= need)
        table = np.zeros((b, width), np.int32)
        tokens, budget = np.zeros((b,), np.int32), np.zeros((b,), np.int32)
        positions = np.full((b,), -1, np.int32)
        stop = np.full((b, c.max_stop_tokens), -1, np.int32)
        for req in running:
            s, p = req.slot, req.params
            pages = req.seq.pages[:width]
            table[s, : len(pages)] = pages
            tokens[s], positions[s] = req.tokens[-1], len(req.tokens) - 1
            budget[s] = min(p.max_new_tokens - len(req.generated), c.max_seq_len - len(req.tokens))
            stop[s, : len(p.stop_token_ids)] = p.stop_token_ids
        t1 = time.perf_counter()
        toks_KB, lps_KB, self._k, self._v = self._steps.decode(
            self._state,
            self._k,
            self._v,
            table,
            tokens,
            positions,
            SamplingRows.build(b, ((req.slot, req.params) for req in running)),
            budget,
            stop,
        )
        toks_KB, lps_KB = np.asarray(toks_KB), np.asarray(lps_KB)
        t2 = time.perf_counter()
        self.stats["decode_calls"] += 1
        # The device stopped each slot at its budget or stop token (-1 after): one read per call.
        for req in running:
            s = req.slot
            for i in range(toks_KB.shape[0]):
                if toks_KB[i, s] < 0:
                    break
                req.seq.num_written = len(req.tokens)
                self.stats["decode_tokens"] += 1
                if not self._accept(req, int(toks_KB[i, s]), float(lps_KB[i, s])):
                    break
        t3 = time.perf_counter()
        self.stats["decode_time"] += t3 - t0
        self.stats["decode_device_time"] += t2 - t1


async def _gather(calls):
    return await asyncio.gather(*calls)
