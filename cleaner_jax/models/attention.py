"""Training attention over packed rows, without a [T, T] mask (issue #15).

`attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, impl=...)` is causal self-attention in which
a token sees only earlier tokens (by index within the row) of its own segment; segment id 0 is
padding: a padding key is never seen and a padding query's output is zero. Grouped-query: N
query heads share K kv heads (G = N // K). Logits, softmax and accumulation are float32 whatever
the input dtype; the output has q's dtype; logits are scaled by H**-0.5. Implementations:

- "dense": `attention_weights_mask` over a [B, T, T] boolean mask. Float32 logits [B, K, G, T, T]
  (~129 GiB per layer at T=23,040): the reference, and the KV cache's attention.
- "blockwise": pure-JAX flash attention: online softmax over kv blocks, a `jax.custom_vjp` that
  saves q, k, v, out and the per-query log-sum-exp and recomputes block logits in the backward
  (FlashAttention-2), in a kv-head-major layout ([B, K, T, G, H]; see `_blockwise`). Masks are
  built per block from indices and segment ids; kv blocks above the diagonal are never visited.
  Memory is linear in T. Runs on every backend.
- "pallas_gpu" (GPU): jax's Pallas Triton flash kernel,
  `jax.experimental.pallas.ops.gpu.attention.mha(q, k, v, segment_ids, sm_scale, causal,
  block_sizes, interpret)`, with its own fused Triton backward. It takes [B, T, N, H] q, k, v
  with equal head counts (kv heads are repeated G times here; the repeat's transpose sums
  dk / dv over the group), one [B, T] segment-id array for queries and keys, T a multiple of
  every block, power-of-two blocks >= 16 (Triton's `tl.dot`), and pads the head dim to a power
  of two itself. Logits and accumulation are float32, P is rounded to v's dtype before P @ V
  (as in "blockwise"), the output has q's dtype; float32 inputs get TF32 products on GPU (its
  `plgpu.dot` default), like XLA's default float32 dots. Its segment mask lets padding see
  padding, so padding query rows are zeroed here, which zeroes their cotangents too: nothing
  flows back into padding. `block_q` / `block_kv` cap the forward blocks (powers of two in
  [16, 128], 128 the kernel's default); backward blocks are min(32, both), equal as the fused
  backward requires; T is padded to the larger block with segment 0. The module is identical
  in jax 0.10.2 and 0.11.0; later jax deprecates it (a DeprecationWarning on import) in favour
  of tokamax, which is not a dependency here.
- "cudnn" (GPU): `jax.nn.dot_product_attention(..., implementation="cudnn")`. Its public API
  (jax 0.10.2, jax/_src/nn/functions.py) has no segment ids: `is_causal` with
  `query_seq_lengths` / `key_value_seq_lengths` is PADDING_CAUSAL, one sequence at the start of
  each row then padding, and a dense `mask` is a [T, T] array again. The private
  `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention` takes packed rows
  (`q_offsets` / `kv_offsets`) but only on Hopper+ and is not public API, so it is not used.
  cuDNN also needs fp16/bf16 and a head dim that is a multiple of 8 and <= 256 (<= 128 before
  Hopper). So "cudnn" runs cuDNN when, at run time, every row is one segment then padding, and
  otherwise (`lax.cond`) "pallas_gpu" ("blockwise" for head dims under 16); float32 or an
  unsupported head dim raise `ValueError`. Its branch logic is tested on CPU with XLA standing
  in for cuDNN and pallas_gpu in interpret mode.
- "splash" (TPU): Pallas `splash_attention` with `SegmentIds` and a causal `MultiHeadMask`;
  grouped-query through its mha kernel (N a multiple of K). Blocks are rounded up to multiples
  of 128 (the kernel requires it) and T is padded to them. It is built for one device
  (`make_splash_mha_single_device`) and vmapped over the batch.
- "auto": `resolve_impl` picks splash on TPU, pallas_gpu on GPU (blockwise for head dims under
  16), blockwise elsewhere; blockwise under "auto" on CPU caps both blocks at `CPU_BLOCK` (128)
  for rows longer than CPU_BLOCK. Measured on a 2-core EPYC (issue #19, 6-layer d=256 train
  step, arms alternating): at T=1024, 128-token blocks ran 13% faster than 512 (load ~1; 19-23%
  under load ~4), 64 was within noise of 128 and 32 slower; at T=256, after the kv-head-major
  layout, two blocks of 128 ran the whole train step 8-10% faster than one of 256 (64 was within
  noise of 128), so rows of 129-256 tokens are split too. An explicit "blockwise" uses the
  blocks it is given. Not cudnn: one segment per row is a run-time property and packed rows are
  the training norm, so it would mostly run its pallas_gpu fallback after a `lax.cond`; "cudnn"
  stays selectable for unpacked batches.

The Pallas kernels (splash, pallas_gpu) run on CPU in interpret mode (`interpret=True`, tested
against "dense"). They, and cuDNN, are opaque custom calls to XLA's SPMD partitioner, so under a
context mesh (`jax.set_mesh`, set by the trainer's update) they run in a `shard_map` over the
batch axes (and the tensor axis for heads): `_per_shard`.

Letters: B batch, T seq (queries and keys: self-attention), N query heads, K kv heads,
G = N // K, H head dim; Q / S a block of queries / keys; I the number of q blocks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from cleaner_jax.models import attention_fused as fused
from cleaner_jax.models.attention_fused import pad_rows as _pad_rows

IMPLEMENTATIONS = ("auto", "dense", "blockwise", "pallas_gpu", "cudnn", "splash")

_NEG_INF = -1e30
CPU_BLOCK = 128


def resolve_impl(name: str, *, head_dim: int | None = None) -> str:
    """The concrete implementation for `name` on the target platform ("auto" resolved).

    The target is the platform of the devices the program is compiled for
    (`models.platform.target_platform`: a TPU topology's abstract mesh gives splash on a CPU
    host), not `jax.default_backend()`.

    `head_dim` (of q) lets "auto" on GPU avoid pallas_gpu where Triton cannot run it (under 16);
    without it "auto" on GPU resolves to "pallas_gpu".
    """
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} unknown; use one of {IMPLEMENTATIONS}")
    if name != "auto":
        return name
    backend = fused.backend()
    if backend == "tpu":
        return "splash"
    if backend == "gpu":
        if head_dim is not None and fused.pallas_gpu_unsupported(head_dim):
            return "blockwise"
        return "pallas_gpu"
    return "blockwise"


def attention(
    q_BTNH: jax.Array,
    k_BTKH: jax.Array,
    v_BTKH: jax.Array,
    segment_ids_BT: jax.Array,
    *,
    impl: str = "auto",
    block_q: int = 512,
    block_kv: int = 512,
    interpret: bool = False,
) -> jax.Array:
    """Causal, segment-masked grouped-query self-attention of packed rows. Returns [B, T, N, H].

    `block_q` / `block_kv` are the blockwise blocks and caps on the Pallas kernels' blocks.
    `interpret=True` runs the Pallas kernels (splash, pallas_gpu, cudnn's pallas_gpu fallback)
    in Pallas interpret mode (CPU tests).
    """
    b, t, n, h = q_BTNH.shape
    if k_BTKH.shape != v_BTKH.shape or k_BTKH.shape[:2] != (b, t) or k_BTKH.shape[3] != h:
        raise ValueError(
            f"self-attention needs q [B, T, N, H] and k, v [B, T, K, H]: got q {q_BTNH.shape}, "
            f"k {k_BTKH.shape}, v {v_BTKH.shape}"
        )
    if n % k_BTKH.shape[2]:
        raise ValueError(f"{n} query heads are not a multiple of {k_BTKH.shape[2]} kv heads")
    if segment_ids_BT.shape != (b, t):
        raise ValueError(f"segment_ids_BT has shape {segment_ids_BT.shape}, expected {(b, t)}")
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_kv={block_kv}")
    auto = impl == "auto"
    impl = resolve_impl(impl, head_dim=h)
    if auto and impl == "blockwise" and fused.backend() == "cpu" and t > CPU_BLOCK:
        block_q, block_kv = min(block_q, CPU_BLOCK), min(block_kv, CPU_BLOCK)
    if impl == "dense":
        return attention_weights_mask(q_BTNH, k_BTKH, v_BTKH, packed_causal_mask(segment_ids_BT))
    if impl == "blockwise":
        return _blockwise(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block_q, block_kv)
    kernel = {
        "pallas_gpu": fused.pallas_gpu,
        "cudnn": functools.partial(fused.cudnn, packed_fallback=_blockwise),
        "splash": fused.splash,
    }[impl]
    fn = functools.partial(kernel, block_q=block_q, block_kv=block_kv, interpret=interpret)
    return _per_shard(fn, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)


# Mesh axes that shard the rows of a training batch (`models.sharding`'s "batch" rule) and the
# attention heads ("heads" / "kv_heads").
_BATCH_AXES = ("data", "fsdp")
_HEAD_AXIS = "tensor"


def _per_shard(fn, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT):
    """Runs a kernel on each device's rows (and heads) under the context mesh, if any.

    A Pallas / cuDNN call is opaque to XLA's SPMD partitioner, which would gather a sharded
    batch onto every device and run the whole of it there. Under `jax.set_mesh(mesh)` (the
    trainer's update sets it) the kernel runs in a `shard_map`: rows split over the mesh's batch
    axes, heads over its tensor axis when both head counts divide. Without a mesh, or on one
    device, it runs as is.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
    b, n, kh = q_BTNH.shape[0], q_BTNH.shape[2], k_BTKH.shape[2]
    batch = tuple(a for a in _BATCH_AXES if a in mesh.shape and mesh.shape[a] > 1)
    if b % math.prod(mesh.shape[a] for a in batch):
        raise ValueError(
            f"{b} rows cannot be split over the mesh's batch axes {batch} "
            f"({ {a: mesh.shape[a] for a in batch} }): round the rows up "
            "(rl.update.round_rows)"
        )
    tensor = mesh.shape.get(_HEAD_AXIS, 1)
    heads = _HEAD_AXIS if tensor > 1 and n % tensor == 0 and kh % tensor == 0 else None
    spec = jax.sharding.PartitionSpec(batch or None, None, heads, None)
    row_spec = jax.sharding.PartitionSpec(batch or None, None)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(spec, spec, spec, row_spec),
        out_specs=spec,
        check_vma=False,
    )(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)


def packed_causal_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """The [B, T, T] boolean mask of the dense path: causal, same segment, key not padding."""
    t = segment_ids_BT.shape[1]
    causal_TS = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return causal_TS[None] & same_BTS & (segment_ids_BT[:, None, :] != 0)


def attention_weights_mask(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """Grouped-query attention with a boolean mask; float32 softmax. Returns [B, T, N, H]."""
    b, t, n, h = q_BTNH.shape
    k = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    logits_BKGTS = jnp.einsum(
        "btkgh,bskh->bkgts", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) * (h**-0.5)
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, _NEG_INF)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
    # A query row with no visible key (padding) gets uniform weights; zero it instead.
    probs_BKGTS = jnp.where(mask_BTS[:, None, None], probs_BKGTS, 0.0)
    out_BTKGH = jnp.einsum(
        "bkgts,bskh->btkgh",
        probs_BKGTS.astype(v_BSKH.dtype),
        v_BSKH,
        preferred_element_type=jnp.float32,
    )
    return out_BTKGH.reshape(b, t, n, h).astype(q_BTNH.dtype)


# ---------------------------------------------------------------- blockwise (flash) attention


def _blocks(t: int, block_q: int, block_kv: int) -> tuple[int, int, int]:
    """(bq, bkv, padded T): blocks no larger than needed, T padded to a multiple of both.

    Equal blocks (the model's case) are shrunk to split T evenly, so T = 600 with blocks of 512
    runs as 2 x 304 (T padded to 608), not 2 x 512.
    """
    if block_q == block_kv:
        n = -(-t // block_q)
        b = -(-t // n)
        if block_q % 8 == 0:
            b = -(-b // 8) * 8  # sublane-aligned; still <= block_q, a multiple of 8
        return b, b, n * b
    bq, bkv = min(block_q, t), min(block_kv, t)
    step = math.lcm(bq, bkv)
    return bq, bkv, -(-t // step) * step


def _blockwise(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block_q, block_kv):
    b, t, n, h = q_BTNH.shape
    kh = k_BTKH.shape[2]
    bq, bkv, tp = _blocks(t, block_q, block_kv)
    # kv-head-major layout, [B, K, T, G, H] and [B, K, T, H]: a block is a contiguous run of
    # tokens per (row, kv head), every block product is a plain batched matmul over (B, K) with
    # the (Q, G) rows merged, and the per-block softmax math runs on arrays whose minor dim is S.
    # On CPU this ran the T=256 forward + backward 2.3x faster than [B, T, K, G, H] blocks (one
    # block) and 1.2-1.3x at T=1024 (128-token blocks), measured with arms alternating (#19).
    # Padded tokens get segment 0: never seen, and their (zero) outputs are sliced off.
    q_BKTGH = _pad_rows(q_BTNH, tp).reshape(b, tp, kh, n // kh, h).transpose(0, 2, 1, 3, 4)
    out_BKTGH = _flash(
        q_BKTGH,
        _pad_rows(k_BTKH, tp).transpose(0, 2, 1, 3),
        _pad_rows(v_BTKH, tp).transpose(0, 2, 1, 3),
        _pad_rows(segment_ids_BT, tp),
        bq,
        bkv,
    )
    return out_BKTGH.transpose(0, 2, 1, 3, 4)[:, :t].reshape(b, t, n, h)


def _block_mask(seg_BT, qi, kj, bq, bkv):
    """[B, 1, Q, 1, S] visibility of kv block `kj` from q block `qi` (indices are block starts)."""
    seg_q_BQ = jax.lax.dynamic_slice_in_dim(seg_BT, qi, bq, axis=1)
    seg_k_BS = jax.lax.dynamic_slice_in_dim(seg_BT, kj, bkv, axis=1)
    causal_QS = (qi + jnp.arange(bq))[:, None] >= (kj + jnp.arange(bkv))[None, :]
    mask_BQS = (
        causal_QS[None]
        & (seg_q_BQ[:, :, None] == seg_k_BS[:, None, :])
        & (seg_k_BS[:, None, :] != 0)
    )
    return mask_BQS[:, None, :, None, :]


def _num_kv_blocks(i, bq, bkv, n_kv):
    """kv blocks [0, this) hold every key that q block `i` can see (causal)."""
    return jnp.minimum(((i + 1) * bq - 1) // bkv + 1, n_kv)


def _flash_forward(q_BKTGH, k_BKTH, v_BKTH, seg_BT, bq, bkv):
    """(out [B, K, T, G, H] in q's dtype, lse [B, K, T, G] float32; both 0 on padding queries)."""
    b, kh, tp, g, h = q_BKTGH.shape
    scale = h**-0.5
    n_q, n_kv = tp // bq, tp // bkv

    def q_block(i):
        qi = i * bq
        q_BKQGH = jax.lax.dynamic_slice_in_dim(q_BKTGH, qi, bq, axis=2)

        def kv_step(j, carry):
            m_BKQG, l_BKQG, acc_BKQGH = carry
            kj = j * bkv
            k_BKSH = jax.lax.dynamic_slice_in_dim(k_BKTH, kj, bkv, axis=2)
            v_BKSH = jax.lax.dynamic_slice_in_dim(v_BKTH, kj, bkv, axis=2)
            s_BKQGS = (
                jnp.einsum("bkqgh,bksh->bkqgs", q_BKQGH, k_BKSH, preferred_element_type=jnp.float32)
                * scale
            )
            s_BKQGS = jnp.where(_block_mask(seg_BT, qi, kj, bq, bkv), s_BKQGS, _NEG_INF)
            m_new = jnp.maximum(m_BKQG, s_BKQGS.max(axis=-1))
            # Masked entries are not zeroed again: exp(_NEG_INF - m) is 0 once a row has seen a
            # key, and while it has not (m still _NEG_INF) the ones it sums are wiped by
            # alpha = exp(_NEG_INF - m) = 0 at the first block it sees. Every non-padding query
            # sees itself; padding queries are zeroed below.
            p_BKQGS = jnp.exp(s_BKQGS - m_new[..., None])
            alpha = jnp.exp(m_BKQG - m_new)
            l_new = alpha * l_BKQG + p_BKQGS.sum(axis=-1)
            pv = jnp.einsum(
                "bkqgs,bksh->bkqgh",
                p_BKQGS.astype(v_BKSH.dtype),
                v_BKSH,
                preferred_element_type=jnp.float32,
            )
            return m_new, l_new, alpha[..., None] * acc_BKQGH + pv

        init = (
            jnp.full((b, kh, bq, g), _NEG_INF, jnp.float32),
            jnp.zeros((b, kh, bq, g), jnp.float32),
            jnp.zeros((b, kh, bq, g, h), jnp.float32),
        )
        m, l_sum, acc = jax.lax.fori_loop(0, _num_kv_blocks(i, bq, bkv, n_kv), kv_step, init)
        seen = (jax.lax.dynamic_slice_in_dim(seg_BT, qi, bq, axis=1) != 0)[:, None, :, None]
        l_safe = jnp.where(seen, l_sum, 1.0)
        out_BKQGH = jnp.where(seen[..., None], acc / l_safe[..., None], 0.0)
        lse_BKQG = jnp.where(seen, m + jnp.log(l_safe), 0.0)
        return out_BKQGH.astype(q_BKTGH.dtype), lse_BKQG

    out_IBKQGH, lse_IBKQG = jax.lax.map(q_block, jnp.arange(n_q))
    out_BKTGH = out_IBKQGH.transpose(1, 2, 0, 3, 4, 5).reshape(b, kh, tp, g, h)
    lse_BKTG = lse_IBKQG.transpose(1, 2, 0, 3, 4).reshape(b, kh, tp, g)
    return out_BKTGH, lse_BKTG


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q_BKTGH, k_BKTH, v_BKTH, seg_BT, bq, bkv):
    return _flash_forward(q_BKTGH, k_BKTH, v_BKTH, seg_BT, bq, bkv)[0]


def _flash_fwd(q_BKTGH, k_BKTH, v_BKTH, seg_BT, bq, bkv):
    out_BKTGH, lse_BKTG = _flash_forward(q_BKTGH, k_BKTH, v_BKTH, seg_BT, bq, bkv)
    return out_BKTGH, (q_BKTGH, k_BKTH, v_BKTH, seg_BT, out_BKTGH, lse_BKTG)


def _flash_bwd(bq, bkv, res, dout_BKTGH):
    """FlashAttention-2 backward: for each kv block, the q blocks at or below the diagonal."""
    q_BKTGH, k_BKTH, v_BKTH, seg_BT, out_BKTGH, lse_BKTG = res
    b, kh, tp, g, h = q_BKTGH.shape
    scale = h**-0.5
    n_q, n_kv = tp // bq, tp // bkv
    # D_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij: the softmax-backward correction per query.
    # A multiply and a sum, not an einsum: XLA on CPU ran the einsum as a batched dot
    # (~4 ms a layer at T=256 against well under 1 ms for the fused reduction).
    delta_BKTG = jnp.sum(dout_BKTGH.astype(jnp.float32) * out_BKTGH.astype(jnp.float32), axis=-1)

    def kv_block(j, carry):
        dq_BKTGH, dk_BKTH, dv_BKTH = carry
        kj = j * bkv
        k_BKSH = jax.lax.dynamic_slice_in_dim(k_BKTH, kj, bkv, axis=2)
        v_BKSH = jax.lax.dynamic_slice_in_dim(v_BKTH, kj, bkv, axis=2)

        def q_step(i, inner):
            dq_BKTGH, dk_BKSH, dv_BKSH = inner
            qi = i * bq
            q_BKQGH = jax.lax.dynamic_slice_in_dim(q_BKTGH, qi, bq, axis=2)
            do_BKQGH = jax.lax.dynamic_slice_in_dim(dout_BKTGH, qi, bq, axis=2)
            lse_BKQG = jax.lax.dynamic_slice_in_dim(lse_BKTG, qi, bq, axis=2)
            delta_BKQG = jax.lax.dynamic_slice_in_dim(delta_BKTG, qi, bq, axis=2)
            mask = _block_mask(seg_BT, qi, kj, bq, bkv)
            s_BKQGS = (
                jnp.einsum("bkqgh,bksh->bkqgs", q_BKQGH, k_BKSH, preferred_element_type=jnp.float32)
                * scale
            )
            p_BKQGS = jnp.where(mask, jnp.exp(s_BKQGS - lse_BKQG[..., None]), 0.0)
            dv_BKSH = dv_BKSH + jnp.einsum(
                "bkqgs,bkqgh->bksh",
                p_BKQGS.astype(do_BKQGH.dtype),
                do_BKQGH,
                preferred_element_type=jnp.float32,
            )
            dp_BKQGS = jnp.einsum(
                "bkqgh,bksh->bkqgs", do_BKQGH, v_BKSH, preferred_element_type=jnp.float32
            )
            ds_BKQGS = (p_BKQGS * (dp_BKQGS - delta_BKQG[..., None]) * scale).astype(q_BKTGH.dtype)
            dk_BKSH = dk_BKSH + jnp.einsum(
                "bkqgs,bkqgh->bksh", ds_BKQGS, q_BKQGH, preferred_element_type=jnp.float32
            )
            dq_BKQGH = jnp.einsum(
                "bkqgs,bksh->bkqgh", ds_BKQGS, k_BKSH, preferred_element_type=jnp.float32
            )
            dq_BKTGH = jax.lax.dynamic_update_slice_in_dim(
                dq_BKTGH,
                jax.lax.dynamic_slice_in_dim(dq_BKTGH, qi, bq, axis=2) + dq_BKQGH,
                qi,
                axis=2,
            )
            return dq_BKTGH, dk_BKSH, dv_BKSH

        zeros_BKSH = jnp.zeros((b, kh, bkv, h), jnp.float32)
        first_q = kj // bq  # q blocks before this one end before key kj: causally blind to it
        dq_BKTGH, dk_BKSH, dv_BKSH = jax.lax.fori_loop(
            first_q, n_q, q_step, (dq_BKTGH, zeros_BKSH, zeros_BKSH)
        )
        dk_BKTH = jax.lax.dynamic_update_slice_in_dim(dk_BKTH, dk_BKSH, kj, axis=2)
        dv_BKTH = jax.lax.dynamic_update_slice_in_dim(dv_BKTH, dv_BKSH, kj, axis=2)
        return dq_BKTGH, dk_BKTH, dv_BKTH

    init = (
        jnp.zeros(q_BKTGH.shape, jnp.float32),
        jnp.zeros(k_BKTH.shape, jnp.float32),
        jnp.zeros(v_BKTH.shape, jnp.float32),
    )
    dq, dk, dv = jax.lax.fori_loop(0, n_kv, kv_block, init)
    return (
        dq.astype(q_BKTGH.dtype),
        dk.astype(k_BKTH.dtype),
        dv.astype(v_BKTH.dtype),
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)
