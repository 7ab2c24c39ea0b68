"""Pallas paged decode kernels (interpret mode on CPU) == the jnp paged reference, and the
implementation choice. Tiny shapes: 2 kv heads, GQA 2, head dim 16, pages of 4 tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleaner_jax.models import platform
from cleaner_jax.sampling.attention_kernels import (
    kernel_decode_attention,
    megacore_mode,
    resolve_attention,
)
from cleaner_jax.sampling.paged_cache import paged_attention

K, G, H, S, P, M = 2, 2, 16, 4, 16, 4


def _inputs(bf16_exact: bool):
    rng = np.random.default_rng(0)
    q_BNH = rng.normal(size=(3, K * G, H))
    k_KPSH, v_KPSH = rng.normal(size=(2, K, P, S, H))
    if bf16_exact:  # the TPU interpreter rounds matmul inputs to bfloat16, like the chip
        q_BNH, k_KPSH, v_KPSH = (
            np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
            for x in (q_BNH, k_KPSH, v_KPSH)
        )
    table_BM = rng.permutation(np.arange(1, P))[: 3 * M].reshape(3, M).astype(np.int32)
    # Row 1 is padding (position -1); row 2 sees every key of its table.
    positions_B = np.array([4, -1, M * S - 1], np.int32)
    return (jnp.asarray(x, jnp.float32) for x in (q_BNH, k_KPSH, v_KPSH)), table_BM, positions_B


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_decode_kernel_interpret_matches_jnp_reference(impl):
    (q_BNH, k_KPSH, v_KPSH), table_BM, positions_B = _inputs(bf16_exact=impl == "pallas_tpu")
    # Query scale in the kernel wrapper: exact for H=16 (a power of 4), so bf16-exact stays so.
    want = paged_attention(
        q_BNH[:, None], k_KPSH, v_KPSH, table_BM, positions_B[:, None], keys_hs=False
    )[:, 0]
    # Same reference with keys stored [K, P, H, S] (the jnp layout): the layouts agree.
    want_hs = paged_attention(
        q_BNH[:, None], k_KPSH.swapaxes(2, 3), v_KPSH, table_BM, positions_B[:, None]
    )[:, 0]
    np.testing.assert_allclose(want_hs, want, atol=1e-6)
    lengths_B = jnp.asarray(positions_B + 1)
    got = jax.jit(lambda *a: kernel_decode_attention(impl, *a, interpret=True))(
        q_BNH, k_KPSH, v_KPSH, table_BM, lengths_B
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.asarray(got)[1].any()  # padding row: zeros


def test_resolve_attention():
    assert resolve_attention("jnp") == "jnp"
    assert resolve_attention("auto") == "jnp"  # the tests run on CPU
    assert resolve_attention("auto", "tpu") == "pallas_tpu"
    assert resolve_attention("auto", "cuda") == "pallas_gpu"
    with platform.target("tpu"):
        assert resolve_attention("auto") == "pallas_tpu"
    with pytest.raises(ValueError, match="pallas_gpu"):
        resolve_attention("flash")
    # A kernel named for another platform: refused, unless it runs in interpret mode.
    with pytest.raises(ValueError, match="runs on tpu"):
        resolve_attention("pallas_tpu")
    assert resolve_attention("pallas_tpu", interpret=True) == "pallas_tpu"
    assert resolve_attention("pallas_gpu", "gpu") == "pallas_gpu"


@pytest.mark.parametrize(
    "kv_heads, batch, megacore, want",
    [
        (2, 64, True, "kv_head"),  # Qwen3-4B on a v5p host: 8 kv heads / 4 chips
        (1, 64, True, "batch"),  # Qwen2.5-7B: 4 kv heads / 4 chips
        (1, 7, True, None),
        (8, 64, False, None),  # not a megacore chip (v5e, v6e, GPU)
    ],
)
def test_megacore_mode(kv_heads, batch, megacore, want):
    assert megacore_mode(kv_heads, batch, megacore) == want
