"""Pallas paged decode kernels (interpret mode on CPU) == the jnp paged reference, and the
implementation choice. Tiny shapes: 2 kv heads, GQA 2, head dim 16, pages of 4 tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleaner_jax.sampling.attention_kernels import kernel_decode_attention, resolve_attention
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
    with pytest.raises(ValueError, match="pallas_gpu"):
        resolve_attention("flash")
