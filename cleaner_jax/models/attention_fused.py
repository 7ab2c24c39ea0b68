"""Training attention through fused kernels: Pallas Triton (GPU), cuDNN (GPU), splash (TPU).

What each kernel supports and how it is wrapped is described in `models/attention.py`'s
docstring (the one API, `attention.attention`, dispatches here). Each function takes packed rows
`q [B, T, N, H]`, `k, v [B, T, K, H]`, `segment_ids [B, T]` (0 = padding, whose outputs are
zero) and returns `[B, T, N, H]` in q's dtype, causal within segments, logits scaled by H**-0.5.

Letters: B batch, T seq, N query heads, K kv heads, G = N // K, H head dim.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from cleaner_jax.models.platform import target_platform

_LANES = 128
# pallas_gpu blocks: Triton's tl.dot needs >= 16 per side; 128 / 32 are the kernel's defaults
# for the forward / fused-backward blocks.
_TRITON_MIN_BLOCK = 16
_TRITON_MAX_BLOCK = 128
_TRITON_BWD_BLOCK = 32


def pad_rows(x, t_pad):
    """x [B, T, ...] zero-padded to T = t_pad (padding tokens get segment 0)."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, t_pad - x.shape[1])
    return jnp.pad(x, pad)


def backend() -> str:
    """The platform the program being traced is compiled for (`models.platform`: the context
    mesh's devices, not the host's default backend); a function, so CPU tests can pretend to be
    a GPU."""
    return target_platform()


# ---------------------------------------------------------------- Pallas Triton (GPU)


def pallas_gpu_unsupported(head_dim: int) -> str | None:
    """Why the Triton kernel cannot take this head dim on a GPU (None: it can)."""
    if head_dim < _TRITON_MIN_BLOCK:
        return f"Triton's dot needs head_dim >= {_TRITON_MIN_BLOCK}, got {head_dim}"
    return None


def _triton_block(cap: int, t: int) -> int:
    """A power of two in [16, 128], <= cap (when cap >= 16), no larger than T needs."""
    cap = max(_TRITON_MIN_BLOCK, min(cap, _TRITON_MAX_BLOCK))
    cap = 1 << (cap.bit_length() - 1)
    need = max(_TRITON_MIN_BLOCK, 1 << (t - 1).bit_length())
    return min(cap, need)


def pallas_gpu(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block_q, block_kv, interpret):
    t, n, h = q_BTNH.shape[1:]
    if not interpret:
        if backend() != "gpu":
            raise ValueError(
                f"attention impl 'pallas_gpu' needs a GPU target, this one is "
                f"{backend()!r}: use 'auto' or 'blockwise' (interpret=True runs the "
                "kernel in Pallas interpret mode, for tests)"
            )
        why = pallas_gpu_unsupported(h)
        if why:
            raise ValueError(f"attention impl 'pallas_gpu': {why}; use 'auto' or 'blockwise'")
    from jax.experimental.pallas.ops.gpu import attention as triton_attention

    bq, bkv = _triton_block(block_q, t), _triton_block(block_kv, t)
    bwd = min(_TRITON_BWD_BLOCK, bq, bkv)
    blocks = triton_attention.BlockSizes(
        block_q=bq,
        block_k=bkv,
        block_q_dkv=bwd,
        block_kv_dkv=bwd,
        block_q_dq=bwd,
        block_kv_dq=bwd,
    )
    # Powers of two: a multiple of the larger block is a multiple of every block.
    step = max(bq, bkv)
    tp = -(-t // step) * step
    g = n // k_BTKH.shape[2]
    # Query head n reads kv head n // G, as in the dense path's [K, G] split of N.
    k_BTNH = jnp.repeat(pad_rows(k_BTKH, tp), g, axis=2)
    v_BTNH = jnp.repeat(pad_rows(v_BTKH, tp), g, axis=2)
    out_BTNH = triton_attention.mha(
        pad_rows(q_BTNH, tp),
        k_BTNH,
        v_BTNH,
        pad_rows(segment_ids_BT, tp).astype(jnp.int32),
        sm_scale=h**-0.5,
        causal=True,
        block_sizes=blocks,
        interpret=interpret,
    )[:, :t]
    # Padding queries attend to earlier padding inside the kernel: zero them (and so their
    # cotangents, which keeps gradients out of padding keys and values).
    return jnp.where((segment_ids_BT != 0)[:, :, None, None], out_BTNH, 0).astype(q_BTNH.dtype)


# ---------------------------------------------------------------- cuDNN (GPU)


def _cudnn_unsupported(dtype, head_dim: int) -> str | None:
    """Why cuDNN flash attention cannot take these inputs (None: it can)."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN flash attention takes bfloat16/float16 inputs, got {jnp.dtype(dtype)}"
    if head_dim % 8 or head_dim > 256:
        return f"cuDNN flash attention needs head_dim a multiple of 8 and <= 256, got {head_dim}"
    return None


# The cuDNN call, a module attribute so CPU tests can stand the XLA implementation in for it.
cudnn_sdpa = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")


def cudnn(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block_q, block_kv, interpret, packed_fallback):
    """cuDNN where every row is one segment then padding, else pallas_gpu (or
    `packed_fallback`, the blockwise path, for head dims Triton cannot take)."""
    if backend() != "gpu":
        raise ValueError(
            f"attention impl 'cudnn' needs a GPU target, this one is "
            f"{backend()!r}: use 'auto' or 'blockwise'"
        )
    why = _cudnn_unsupported(q_BTNH.dtype, q_BTNH.shape[-1])
    if why:
        raise ValueError(f"attention impl 'cudnn': {why}; use 'auto' or 'blockwise'")
    t = segment_ids_BT.shape[1]
    real_BT = segment_ids_BT != 0
    length_B = real_BT.sum(axis=1).astype(jnp.int32)
    # cuDNN's PADDING_CAUSAL mask is "one sequence of `length` tokens, then padding".
    one_sequence_BT = jnp.where(jnp.arange(t)[None] < length_B[:, None], segment_ids_BT[:, :1], 0)
    expressible = jnp.all((segment_ids_BT == one_sequence_BT) & (length_B[:, None] > 0))

    def run_cudnn(q, k, v, seg):
        out_BTNH = cudnn_sdpa(
            q, k, v, is_causal=True, query_seq_lengths=length_B, key_value_seq_lengths=length_B
        )
        return jnp.where((seg != 0)[:, :, None, None], out_BTNH, 0).astype(q.dtype)

    def run_packed(q, k, v, seg):
        if pallas_gpu_unsupported(q.shape[-1]) and not interpret:
            return packed_fallback(q, k, v, seg, block_q, block_kv)
        return pallas_gpu(q, k, v, seg, block_q, block_kv, interpret)

    return jax.lax.cond(expressible, run_cudnn, run_packed, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)


# ---------------------------------------------------------------- splash (TPU)


def splash(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, block_q, block_kv, interpret):
    if backend() != "tpu" and not interpret:
        raise ValueError(
            f"attention impl 'splash' needs a TPU target, this one is "
            f"{backend()!r}: use 'auto' or 'blockwise' (interpret=True runs the "
            "kernel in Pallas interpret mode, for tests)"
        )
    from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

    b, t, n, h = q_BTNH.shape
    # The kernel's kv compute block must be a multiple of the 128 TPU lanes.
    bq, bkv = (-(-min(x, t) // _LANES) * _LANES for x in (block_q, block_kv))
    step = math.lcm(bq, bkv)
    tp = -(-t // step) * step
    seg_BT = pad_rows(segment_ids_BT, tp).astype(jnp.int32)
    # Splash does not scale the logits; scale q in float32 first.
    q_BNTH = (pad_rows(q_BTNH, tp).astype(jnp.float32) * h**-0.5).astype(q_BTNH.dtype)
    q_BNTH = q_BNTH.transpose(0, 2, 1, 3)
    k_BKTH = pad_rows(k_BTKH, tp).transpose(0, 2, 1, 3)
    v_BKTH = pad_rows(v_BTKH, tp).transpose(0, 2, 1, 3)
    mask = splash_lib.MultiHeadMask([splash_lib.CausalMask((tp, tp)) for _ in range(n)])
    blocks = splash_lib.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    kernel = splash_lib.make_splash_mha_single_device(mask, block_sizes=blocks, interpret=interpret)

    def one_row(q_NTH, k_KTH, v_KTH, seg_T):
        return kernel(q_NTH, k_KTH, v_KTH, segment_ids=splash_lib.SegmentIds(seg_T, seg_T))

    # Padding (segment 0) attends to earlier padding inside the kernel: zero those rows here.
    out_BNTH = jax.vmap(one_row)(q_BNTH, k_BKTH, v_BKTH, seg_BT)
    out_BTNH = out_BNTH.transpose(0, 2, 1, 3)[:, :t]
    return jnp.where((segment_ids_BT != 0)[:, :, None, None], out_BTNH, 0).astype(q_BTNH.dtype)
