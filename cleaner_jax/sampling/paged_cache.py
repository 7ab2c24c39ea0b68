"""Paged KV cache on device: page pool arrays, paged attention (jnp or a kernel), pool sizing.

The pool is one K and one V array per layer (kept as L-tuples, so a layer's scatter and gather
touch only that layer's buffer and donation updates each in place); a row's page table `[B, M]`
lists its pages in position order (unused entries point at the null page 0). The layout follows
the attention implementation (`PagedKVCache.impl`, see `attention_kernels.py`):
- "jnp" (the CPU path and the reference): K pages `[K, P, H, S]`, V pages `[K, P, S, H]`. That
  is what XLA's CPU matmuls want without copying the gathered keys: per kv head, the gathered
  `[B, M, H, S]` keys contract with the queries over H as `bqh,bmhs->bqms`, and the gathered
  `[B, M * S, H]` values as a plain batched matmul (K stored `[.., S, H]` costs an extra
  transpose of every gathered key, 1.6x slower decode attention on CPU).
- "pallas_gpu" / "pallas_tpu": K and V pages both `[K, P, S, H]`, what the Pallas paged-attention
  kernels read. Decode (T == 1) runs the kernel; prefill chunks (T > 1) run the jnp gather in
  this layout, since those kernels take one query per row.
- multi-step decode on the "jnp" path: `DecodeViewCache`, each row's pages gathered once per
  call into contiguous keys `[K, B, H, T]` / values `[K, B, T, H]` (T = M * S), the call's steps
  run on that view, then the new positions are written back to the pool. Per step, the gathered
  `[B, M, H, S]` keys above are still copied to `[B, H, M * S]` for the matmul (profiled); the
  view pays that once per call.
`PagedKVCache.update_and_attend` is what the model calls per layer: it writes each token's K/V at
`(table[row, pos // S], pos % S)` (position -1 = padding, not written) and attends over the row's
pages masked `key_pos <= query_pos`, which gives exactly the dense cache's semantics
(`cleaner_jax.models.kv_cache.DenseKVCache` is the oracle in the tests); a padding query gets
zeros on every path.

The page-table width M bounds the attention: callers pass only as many table columns as the
longest row needs (the engine picks one of a few width buckets), so a step costs what the live
sequences hold, not `max_seq_len`. Positions at or beyond `M * S` are not written.

Letters: L layers, P pages in the pool, S tokens per page, M pages per row (page-table width),
B batch rows, T new tokens, N query heads, K kv heads, G = N // K, H head dim, Q = T * G.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.sampling.attention_kernels import (
    KERNEL_IMPLS,
    kernel_decode_attention,
    resolve_attention,
)
from cleaner_jax.sampling.placement import TENSOR_AXIS

# Same masked-logit value as the model's dense attention, so both paths round identically.
_NEG_INF = -1e30


def _grouped_attention(q_BTNH, keys, values_BSH, positions_BT, spec):
    """Causal GQA attention over per-kv-head gathered keys/values (float32 logits and softmax).

    `keys[j]` is kv head j's keys `[B, M, H, S]` (spec "bqh,bmhs->bqms") or `[B, M, S, H]`
    ("bqh,bmsh->bqms"), `values_BSH[j]` its values `[B, M * S, H]`; key s is visible to a query at
    position p iff s <= p. A query with no visible key (padding, p = -1) gets zeros."""
    b, t, n, h = q_BTNH.shape
    kh = len(keys)
    ms = values_BSH[0].shape[1]
    g = n // kh
    mask_BTS = jnp.arange(ms)[None, None, :] <= positions_BT[:, :, None]
    # Queries of one kv head grouped as Q = (t, g) so one batched matmul serves the whole group.
    mask_BQS = jnp.repeat(mask_BTS, g, axis=1)
    q_BTKGH = q_BTNH.reshape(b, t, kh, g, h)
    out_KBTGH = []
    for j in range(kh):
        q_BQH = q_BTKGH[:, :, j].reshape(b, t * g, h)
        logits_BQMS = jnp.einsum(spec, q_BQH, keys[j], preferred_element_type=jnp.float32)
        logits_BQS = logits_BQMS.reshape(b, t * g, ms) * (h**-0.5)
        logits_BQS = jnp.where(mask_BQS, logits_BQS, _NEG_INF)
        probs_BQS = jax.nn.softmax(logits_BQS, axis=-1)
        probs_BQS = jnp.where(mask_BQS, probs_BQS, 0.0)
        v_BSH = values_BSH[j]
        out_BQH = jnp.einsum(
            "bqs,bsh->bqh", probs_BQS.astype(v_BSH.dtype), v_BSH, preferred_element_type=jnp.float32
        )
        out_KBTGH.append(out_BQH.reshape(b, t, g, h))
    out_BTNH = jnp.stack(out_KBTGH, axis=2).reshape(b, t, n, h)
    return out_BTNH.astype(q_BTNH.dtype)


def paged_attention(
    q_BTNH: jax.Array,
    k_pages: jax.Array,
    v_KPSH: jax.Array,
    page_table_BM: jax.Array,
    positions_BT: jax.Array,
    *,
    keys_hs: bool = True,
) -> jax.Array:
    """Causal GQA attention of each row's queries over its pages of one layer (jnp reference).

    `k_pages` is `[K, P, H, S]` if `keys_hs` (the "jnp" layout), else `[K, P, S, H]`.
    float32 logits and softmax; a query with no visible key (padding) gets zeros.
    """
    b = q_BTNH.shape[0]
    kh, _, s, h = v_KPSH.shape
    m = page_table_BM.shape[1]
    # One gather per head from the whole layer array: slicing the head out first
    # (`k_pages[j][table]`) makes XLA's TPU compiler materialize the slices, a copy of the layer.
    keys = [k_pages[j, page_table_BM] for j in range(kh)]
    values = [v_KPSH[j, page_table_BM].reshape(b, m * s, h) for j in range(kh)]
    spec = "bqh,bmhs->bqms" if keys_hs else "bqh,bmsh->bqms"
    return _grouped_attention(q_BTNH, keys, values, positions_BT, spec)


def _write_index(page_table_BM, positions_BT, num_pages, page_size):
    """(page [B, T], offset [B, T]) where each token's K/V goes; padding (position -1) and
    positions past the table get page `num_pages` (out of bounds: a `mode="drop"` scatter skips
    them)."""
    m = page_table_BM.shape[1]
    valid_BT = (positions_BT >= 0) & (positions_BT < m * page_size)
    pos_BT = jnp.clip(positions_BT, 0, m * page_size - 1)
    page_BT = jnp.take_along_axis(page_table_BM, pos_BT // page_size, axis=1)
    return jnp.where(valid_BT, page_BT, num_pages), pos_BT % page_size


def _write_pages(k_pages, v_KPSH, page_BT, off_BT, k_BTKH, v_BTKH, keys_hs: bool):
    """Scatter tokens' K/V into one layer's pages at (page, offset); out-of-bounds pages drop.

    Every dim but H is a scatter index (the kv head too), so each update is one H-vector, and
    H is already the minor dim of the pool's TPU layout (that of the Pallas kernel's operands).
    Indexing only (page, offset) made the kv head a second window dim; XLA's TPU layout
    assignment then wanted the pool as [P, S, K, H] for the scatter, so the decode loop carried
    it in that layout: a copy of the pool into and out of the loop and, every step, one back to
    the kernel's layout (temporaries of the pool's size)."""
    kh = v_KPSH.shape[0]
    b, t = page_BT.shape
    head_KBT = jnp.broadcast_to(jnp.arange(kh)[:, None, None], (kh, b, t))
    page_KBT = jnp.broadcast_to(page_BT[None], (kh, b, t))
    off_KBT = jnp.broadcast_to(off_BT[None], (kh, b, t))
    k_KBTH = k_BTKH.transpose(2, 0, 1, 3).astype(k_pages.dtype)
    v_KBTH = v_BTKH.transpose(2, 0, 1, 3).astype(v_KPSH.dtype)
    if keys_hs:
        # Non-adjacent index arrays put their [K, B, T] dims first: the update is [K, B, T, H].
        k_pages = k_pages.at[head_KBT, page_KBT, :, off_KBT].set(k_KBTH, mode="drop")
    else:
        k_pages = k_pages.at[head_KBT, page_KBT, off_KBT].set(k_KBTH, mode="drop")
    v_KPSH = v_KPSH.at[head_KBT, page_KBT, off_KBT].set(v_KBTH, mode="drop")
    return k_pages, v_KPSH


def pool_shapes(
    cfg: ModelConfig, num_pages: int, page_size: int, dtype=None, impl: str = "jnp", sharding=None
) -> tuple[tuple[jax.ShapeDtypeStruct, ...], tuple[jax.ShapeDtypeStruct, ...]]:
    """The pool's (K pages, V pages) L-tuples as ShapeDtypeStructs (layout per resolved `impl`,
    `sharding` the placement's pool sharding or None): what `zeros` allocates and what AOT
    compiles (`sampling.aot`) take."""
    kh, h = cfg.num_kv_heads, cfg.head_dim
    dtype = jnp.dtype(dtype or cfg.jnp_dtype)
    kshape = (kh, num_pages, h, page_size) if impl == "jnp" else (kh, num_pages, page_size, h)
    vshape = (kh, num_pages, page_size, h)
    k = tuple(jax.ShapeDtypeStruct(kshape, dtype, sharding=sharding) for _ in range(cfg.num_layers))
    v = tuple(jax.ShapeDtypeStruct(vshape, dtype, sharding=sharding) for _ in range(cfg.num_layers))
    return k, v


def _update_and_attend_local(
    impl, interpret, megacore, k_pages, v_KPSH, table_BM, q_BTNH, k_BTKH, v_BTKH, positions_BT
):
    """One layer's write + attention on the kv heads at hand (all of them, or one shard's)."""
    p, s = v_KPSH.shape[1:3]
    m = table_BM.shape[1]
    page_BT, off_BT = _write_index(table_BM, positions_BT, p, s)
    k_pages, v_KPSH = _write_pages(
        k_pages, v_KPSH, page_BT, off_BT, k_BTKH, v_BTKH, keys_hs=impl == "jnp"
    )
    if impl in KERNEL_IMPLS and q_BTNH.shape[1] == 1:
        # Keys at positions <= pos are visible: length pos + 1 (0 for padding), capped at the
        # table like the jnp mask.
        lengths_B = jnp.clip(positions_BT[:, 0] + 1, 0, m * s)
        out_BNH = kernel_decode_attention(
            impl,
            q_BTNH[:, 0],
            k_pages,
            v_KPSH,
            table_BM,
            lengths_B,
            interpret=interpret,
            megacore=megacore,
        )
        out_BTNH = out_BNH[:, None].astype(q_BTNH.dtype)
    else:
        out_BTNH = paged_attention(
            q_BTNH, k_pages, v_KPSH, table_BM, positions_BT, keys_hs=impl == "jnp"
        )
    return out_BTNH, k_pages, v_KPSH


@struct.dataclass
class PagedKVCache:
    """The pool (L-tuples of K and V page arrays, layout per `impl`, see the module docstring)
    plus the page table of the rows in flight. Static fields: `impl` "jnp", "pallas_gpu" or
    "pallas_tpu" (never "auto": `zeros` resolves it); `interpret` runs the kernel in Pallas
    interpret mode (CPU tests); `mesh` (the sampler placement's, tp > 1): the pool is sharded
    on kv heads over its `tensor` axis and each layer's write + attention runs per shard in a
    `jax.shard_map` (a Pallas call is opaque to GSPMD; every kv head's queries, keys and values
    sit on one device); `megacore` splits the TPU kernel over a v5p chip's two cores."""

    k_pages: tuple[jax.Array, ...]
    v_pages: tuple[jax.Array, ...]
    page_table_BM: jax.Array
    impl: str = struct.field(pytree_node=False, default="jnp")
    interpret: bool = struct.field(pytree_node=False, default=False)
    mesh: Mesh | None = struct.field(pytree_node=False, default=None)
    megacore: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def zeros(
        cls,
        cfg: ModelConfig,
        num_pages: int,
        page_size: int,
        dtype=None,
        impl: str = "jnp",
        interpret: bool = False,
        sharding=None,
    ) -> PagedKVCache:
        """An empty pool; `sharding`: where its arrays live (the placement's pool sharding)."""
        impl = resolve_attention(impl, interpret=interpret)
        k, v = pool_shapes(cfg, num_pages, page_size, dtype, impl)
        kw = {} if sharding is None else {"device": sharding}
        k = tuple(jnp.zeros(x.shape, x.dtype, **kw) for x in k)
        v = tuple(jnp.zeros(x.shape, x.dtype, **kw) for x in v)
        return cls(k, v, jnp.zeros((1, 1), jnp.int32), impl, interpret)

    def update_and_attend(self, layer, q_BTNH, k_BTKH, v_BTKH, positions_BT):
        local = functools.partial(
            _update_and_attend_local, self.impl, self.interpret, self.megacore
        )
        if self.mesh is not None:
            heads = PartitionSpec(None, None, TENSOR_AXIS, None)
            pool = PartitionSpec(TENSOR_AXIS)
            local = jax.shard_map(
                local,
                mesh=self.mesh,
                in_specs=(pool, pool, PartitionSpec(), heads, heads, heads, PartitionSpec()),
                out_specs=(heads, pool, pool),
                check_vma=False,
            )
        out_BTNH, k_pages, v_KPSH = local(
            self.k_pages[layer],
            self.v_pages[layer],
            self.page_table_BM,
            q_BTNH,
            k_BTKH,
            v_BTKH,
            positions_BT,
        )
        k_all = self.k_pages[:layer] + (k_pages,) + self.k_pages[layer + 1 :]
        v_all = self.v_pages[:layer] + (v_KPSH,) + self.v_pages[layer + 1 :]
        return out_BTNH, self.replace(k_pages=k_all, v_pages=v_all)


@struct.dataclass
class DecodeViewCache:
    """A contiguous copy of the rows' pages for one multi-step decode call on the "jnp" path.

    `gather` copies each row's pages out of the pool once per call into per-layer views, keys
    `[K, B, H, T]` and values `[K, B, T, H]` (T = M * S: what XLA's CPU batched matmuls read
    without a copy); each decode step then writes its token into the view and attends over it
    with one batched matmul per layer for all kv heads. That is the paged attention without the
    per-step gather and key transpose, which were most of a CPU decode step. `write_back` scatters
    the positions written during the call into the pool. The view costs a dense cache's bytes at
    the call's table width."""

    k_views: tuple[jax.Array, ...]
    v_views: tuple[jax.Array, ...]

    @classmethod
    def gather(cls, k_pages, v_pages, page_table_BM) -> DecodeViewCache:
        """Views of the rows' pages; keys from the "jnp" layout `[K, P, H, S]`."""
        b, m = page_table_BM.shape
        kh, _, h, s = k_pages[0].shape
        k_views = tuple(
            k[:, page_table_BM].transpose(0, 1, 3, 2, 4).reshape(kh, b, h, m * s) for k in k_pages
        )
        v_views = tuple(v[:, page_table_BM].reshape(kh, b, m * s, h) for v in v_pages)
        return cls(k_views, v_views)

    @staticmethod
    def _index(positions_BT, length):
        rows_BT = jnp.broadcast_to(jnp.arange(positions_BT.shape[0])[:, None], positions_BT.shape)
        valid_BT = (positions_BT >= 0) & (positions_BT < length)
        return rows_BT, jnp.where(valid_BT, positions_BT, length)

    def update_and_attend(self, layer, q_BTNH, k_BTKH, v_BTKH, positions_BT):
        k_KBHT, v_KBTH = self.k_views[layer], self.v_views[layer]
        kh, b, length, h = v_KBTH.shape
        rows_BT, pos_BT = self._index(positions_BT, length)
        # Non-adjacent index arrays put their [B, T] dims first: the key update is [B, T, K, H].
        k_KBHT = k_KBHT.at[:, rows_BT, :, pos_BT].set(k_BTKH.astype(k_KBHT.dtype), mode="drop")
        v_KBTH = v_KBTH.at[:, rows_BT, pos_BT].set(
            v_BTKH.transpose(2, 0, 1, 3).astype(v_KBTH.dtype), mode="drop"
        )
        _, t, n, _ = q_BTNH.shape
        g = n // kh
        q_KBQH = q_BTNH.reshape(b, t, kh, g, h).transpose(2, 0, 1, 3, 4).reshape(kh, b, t * g, h)
        mask_BQS = jnp.repeat(jnp.arange(length)[None, None, :] <= positions_BT[:, :, None], g, 1)
        logits_KBQS = jnp.einsum(
            "kbqh,kbhs->kbqs", q_KBQH, k_KBHT, preferred_element_type=jnp.float32
        ) * (h**-0.5)
        logits_KBQS = jnp.where(mask_BQS, logits_KBQS, _NEG_INF)
        probs_KBQS = jnp.where(mask_BQS, jax.nn.softmax(logits_KBQS, axis=-1), 0.0)
        out_KBQH = jnp.einsum(
            "kbqs,kbsh->kbqh",
            probs_KBQS.astype(v_KBTH.dtype),
            v_KBTH,
            preferred_element_type=jnp.float32,
        )
        out_BTNH = out_KBQH.reshape(kh, b, t, g, h).transpose(1, 2, 0, 3, 4).reshape(b, t, n, h)
        k_all = self.k_views[:layer] + (k_KBHT,) + self.k_views[layer + 1 :]
        v_all = self.v_views[:layer] + (v_KBTH,) + self.v_views[layer + 1 :]
        return out_BTNH.astype(q_BTNH.dtype), self.replace(k_views=k_all, v_views=v_all)

    def write_back(self, k_pages, v_pages, page_table_BM, positions_BT):
        """The pool with the view's tokens at `positions_BT` (-1: none) written into it."""
        rows_BT, vpos_BT = self._index(positions_BT, self.v_views[0].shape[2])
        p, s = v_pages[0].shape[1:3]
        page_BT, off_BT = _write_index(page_table_BM, positions_BT, p, s)
        k_out, v_out = [], []
        for k, v, kv, vv in zip(k_pages, v_pages, self.k_views, self.v_views, strict=True):
            k_BTKH = kv.at[:, rows_BT, :, vpos_BT].get(mode="fill", fill_value=0)
            v_KBTH = vv.at[:, rows_BT, vpos_BT].get(mode="fill", fill_value=0)
            k, v = _write_pages(k, v, page_BT, off_BT, k_BTKH, v_KBTH.transpose(1, 2, 0, 3), True)
            k_out.append(k)
            v_out.append(v)
        return tuple(k_out), tuple(v_out)


def copy_page(k_pages, v_pages, src: jax.Array, dst: jax.Array):
    """Copy one page (all layers) from src to dst; jit with the pool donated. Every layout has
    kv heads first and pages second, so one indexing serves all."""
    return (
        tuple(k.at[:, dst].set(k[:, src]) for k in k_pages),
        tuple(v.at[:, dst].set(v[:, src]) for v in v_pages),
    )


def bytes_per_page(cfg: ModelConfig, page_size: int, dtype=None, shards: int = 1) -> int:
    """Bytes of one page (all layers, K and V) on one device when the kv heads are split over
    `shards` devices (tensor-parallel sampler)."""
    itemsize = jnp.dtype(dtype or cfg.jnp_dtype).itemsize
    kv_heads = -(-cfg.num_kv_heads // shards)
    return 2 * cfg.num_layers * page_size * kv_heads * cfg.head_dim * itemsize


def pages_for_memory(
    limit_bytes: int,
    in_use_bytes: int,
    reserve_bytes: int,
    memory_fraction: float,
    page_bytes: int,
) -> int:
    """Pages of `page_bytes` (per device) such that what is in use, what the update will still
    allocate (`reserve_bytes`) and the pool together take at most `memory_fraction` of the
    device: floor(max(limit * fraction - in_use - reserve, 0) / page_bytes). The rest of the
    device (1 - fraction) stays free for what no estimate counts (fragmentation, the largest
    program's temporaries beyond the reserve, metrics)."""
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction={memory_fraction} must be in (0, 1]")
    budget = int(limit_bytes * memory_fraction) - in_use_bytes - reserve_bytes
    return max(budget, 0) // page_bytes


def device_memory(device: jax.Device) -> tuple[int, int] | None:
    """(bytes_limit, bytes_in_use) of `device`, or None if it reports no memory stats."""
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]), int(stats.get("bytes_in_use", 0))


def num_pages_from_memory(
    cfg: ModelConfig,
    page_size: int,
    memory_fraction: float,
    device: jax.Device | None = None,
    *,
    shards: int = 1,
    reserve_bytes: int = 0,
    dtype=None,
) -> int | None:
    """Pages such that the device's memory in use, `reserve_bytes` and the pool take at most
    `memory_fraction` of it (`pages_for_memory`), or None if the device reports no memory.

    Call this after the weights are on the device so that they count as used memory. CPU and
    some TPU runtimes report nothing; callers then need an explicit page count.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction={memory_fraction} must be in (0, 1]")
    device = device or jax.local_devices()[0]
    memory = device_memory(device)
    if memory is None:
        return None
    limit, in_use = memory
    page = bytes_per_page(cfg, page_size, dtype, shards)
    pages = pages_for_memory(limit, in_use, reserve_bytes, memory_fraction, page)
    logging.info(
        "KV pool from device memory: (%d bytes x %.2f - %d in use - %d reserved for training) "
        "/ %d bytes per page per device -> %d pages of %d tokens",
        limit,
        memory_fraction,
        in_use,
        reserve_bytes,
        page,
        pages,
        page_size,
    )
    return pages
