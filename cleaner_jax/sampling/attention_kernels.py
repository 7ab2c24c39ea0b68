"""Paged decode attention through the Pallas kernels JAX ships, and the choice between them.

`resolve_attention("auto")` picks the kernel of the platform the program is compiled FOR (an
explicit `platform`, e.g. the sampler placement's devices, else `models.platform.target_platform()`:
the context mesh's devices, else the host backend), never just the host's default backend:
`"pallas_gpu"` on GPU (`jax.experimental.pallas.ops.gpu.paged_attention`, Triton), `"pallas_tpu"`
on TPU (`jax.experimental.pallas.ops.tpu.paged_attention`, Mosaic), `"jnp"` elsewhere (the gather
path in `paged_cache.py`, which is also the reference the kernels are tested against). A kernel
named explicitly for another platform is refused unless it runs in interpret mode.

Megacore (TPU v5p: two TensorCores per JAX device): the Mosaic kernel uses the second core only
when told (`megacore_mode`); `megacore_mode` picks "kv_head" when the (per-shard) kv heads are
even, else "batch" when the batch is even, else None (one core).

What the kernels take (read from the installed JAX's source):
- both: queries `[B, N, H]`, one per sequence (decode only), K and V pages both `[K, P, S, H]`,
  page table `[B, M]` int32, `lengths [B]` int32 (keys `< length` visible; length 0 -> zeros),
  GQA with N a multiple of K, no softmax scale (we scale the queries by `H ** -0.5`).
- gpu: `block_h` (query heads per kv head, padded up to it) a multiple of 16, M divisible by
  `k_splits`, `M / k_splits` divisible by `pages_per_compute_block`; on the device Triton's `dot`
  wants `pages_per_compute_block * S >= 16` and H >= 16 (powers of two). Accepts `interpret=True`
  and then runs on CPU exactly (fp32 parity 1e-6).
- tpu: M divisible by `pages_per_compute_block`. No `interpret` argument, but
  `pltpu.force_tpu_interpret_mode()` runs it on CPU; that interpreter rounds matmul inputs to
  bfloat16 like the TPU's default precision, so CPU parity holds to 1e-6 only for
  bfloat16-representable inputs (tests use those). Shape rules of the real TPU (lane/sublane
  tiling of H and S) are not checked on CPU.
- not used: `ops.gpu.decode_attention` attends over a dense `[B, S, K, H]` cache (no page table),
  so it would need the very gather we avoid; `ops.tpu.ragged_paged_attention` serves ragged prefill
  and decode in one call but wants a combined `[P, S, 2K, H]` (K/V interleaved per head) pool and
  per-sequence `cu_q_lens`; it is the next step for TPU prefill, untested here.
Prefill chunks (T > 1 new tokens per row) stay on the jnp path in the kernel's layout.

Letters: B rows, N query heads, K kv heads, G = N // K, H head dim, P pages, S tokens per page,
M pages per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cleaner_jax.models import platform as platform_lib

ATTENTION_IMPLS = ("auto", "jnp", "pallas_gpu", "pallas_tpu")
KERNEL_IMPLS = ("pallas_gpu", "pallas_tpu")


_KERNEL_PLATFORM = {"pallas_gpu": "gpu", "pallas_tpu": "tpu"}


def resolve_attention(impl: str, platform: str | None = None, interpret: bool = False) -> str:
    """The concrete implementation for `impl` on `platform` (default: `target_platform()`).

    "auto" -> the platform's kernel (or "jnp"). A kernel named for another platform raises
    `ValueError` unless `interpret` (Pallas interpret mode runs anywhere)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention={impl!r}: use one of {', '.join(ATTENTION_IMPLS)}")
    platform = platform_lib.normalize(platform or platform_lib.target_platform())
    if impl == "auto":
        return {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(platform, "jnp")
    want = _KERNEL_PLATFORM.get(impl)
    if want is not None and want != platform and not interpret:
        raise ValueError(
            f"attention={impl!r} runs on {want}, but the sampler compiles for {platform}: use "
            f'"auto" or "jnp", or interpret_kernels=True to run the kernel in interpret mode'
        )
    return impl


def megacore_mode(num_kv_heads: int, batch: int, megacore: bool) -> str | None:
    """The TPU paged kernel's `megacore_mode` for one shard's `num_kv_heads` and `batch` rows:
    None without megacore; else "kv_head" (even kv heads), "batch" (even batch), or None."""
    if not megacore:
        return None
    if num_kv_heads % 2 == 0:
        return "kv_head"
    if batch % 2 == 0:
        return "batch"
    return None


def _largest_pow2_divisor(n: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


def kernel_decode_attention(
    impl: str,
    q_BNH: jax.Array,
    k_KPSH: jax.Array,
    v_KPSH: jax.Array,
    page_table_BM: jax.Array,
    lengths_B: jax.Array,
    *,
    interpret: bool = False,
    megacore: bool = False,
) -> jax.Array:
    """One query per row over its first `lengths_B` cached keys; rows of length 0 get zeros.
    `megacore` (TPU only): the device is two TensorCores, split the work per `megacore_mode`."""
    h = q_BNH.shape[-1]
    m = page_table_BM.shape[1]
    q_BNH = (q_BNH.astype(jnp.float32) * h**-0.5).astype(q_BNH.dtype)
    lengths_B = lengths_B.astype(jnp.int32)
    if impl == "pallas_gpu":
        from jax.experimental.pallas.ops.gpu import paged_attention as gpu_paged

        k_splits = _largest_pow2_divisor(m, 16)
        per_block = _largest_pow2_divisor(m // k_splits, 8)
        return gpu_paged.paged_attention(
            q_BNH,
            k_KPSH,
            v_KPSH,
            page_table_BM,
            lengths_B,
            k_splits=k_splits,
            pages_per_compute_block=per_block,
            interpret=interpret,
        )
    if impl == "pallas_tpu":
        from jax.experimental.pallas import tpu as pltpu
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as tpu_paged

        def call():
            return tpu_paged(
                q_BNH,
                k_KPSH,
                v_KPSH,
                lengths_B,
                page_table_BM,
                pages_per_compute_block=_largest_pow2_divisor(m, 8),
                megacore_mode=megacore_mode(k_KPSH.shape[0], q_BNH.shape[0], megacore),
            )

        if interpret:
            with pltpu.force_tpu_interpret_mode():
                return call()
        return call()
    raise ValueError(f"no decode kernel for attention={impl!r}: use one of {KERNEL_IMPLS}")
