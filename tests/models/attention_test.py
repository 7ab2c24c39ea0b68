"""Training attention: blockwise, splash and pallas_gpu (interpret) == dense on packed rows;
memory ~ T; the GPU kernels (pallas_gpu, cudnn) against dense on a GPU (`gpu` marker)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import attention, attention_fused, qwen
from cleaner_jax.models import platform as platform_lib
from cleaner_jax.models.config import tiny_config

FWD_ATOL = 1e-5  # float32, same math, reductions reordered by blocks
GRAD_ATOL = 1e-4  # float32 backward recomputes P from the saved log-sum-exp
# bf16 inputs: both paths round P (in [0, 1]) to bf16 before P @ V, but the blockwise path
# rounds the running, not the final, probabilities, so they differ by ~bf16 eps (2**-8 = 0.004)
# relative to |out| <= max|v| ~ 3; output is bf16 too. 3e-2 ~ a few bf16 ulps at |x| ~ 3.
BF16_ATOL = 3e-2


def _packed(b=2, t=37, n=4, k=2, h=8, dtype=jnp.float32, seed=0):
    """q, k, v, a random cotangent, and two packed rows: 3 segments + padding, and
    leading padding + 2 segments (0 = padding). Numpy-made: no eager jax compilations."""
    rng = np.random.default_rng(seed)
    q, kk, v = (rng.standard_normal((b, t, heads, h), np.float32) for heads in (n, k, k))
    ct = rng.standard_normal((b, t, n, h), np.float32)
    cut = [t // 4, t // 2, (3 * t) // 4]
    idx = np.arange(t)
    row0 = np.select([idx < cut[0], idx < cut[1], idx < cut[2]], [1, 2, 3], 0)
    row1 = np.select([idx < 3, idx < cut[1]], [0, 5], 7)
    seg = np.stack([row0, row1] * (b // 2))[:b].astype(np.int32)
    return (*(jnp.asarray(x, dtype) for x in (q, kk, v)), ct, seg)


def _fwd_and_grads(q, k, v, ct, seg, **kw):
    def loss(q, k, v):
        out = attention.attention(q, k, v, seg, **kw)
        return (out.astype(jnp.float32) * ct).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize(
    "t, block_q, block_kv",
    [
        (37, 16, 16),  # T not a multiple of the block: padded internally
        (37, 5, 7),  # unequal blocks, not dividing each other or T
        (12, 512, 512),  # T smaller than one block
    ],
)
def test_blockwise_equals_dense(t, block_q, block_kv):
    q, k, v, ct, seg = _packed(t=t)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    out_b, grads_b = _fwd_and_grads(
        q, k, v, ct, seg, impl="blockwise", block_q=block_q, block_kv=block_kv
    )
    np.testing.assert_allclose(out_b, out_d, atol=FWD_ATOL)
    for name, gb, gd in zip("qkv", grads_b, grads_d, strict=True):
        np.testing.assert_allclose(gb, gd, atol=GRAD_ATOL, err_msg=f"d{name}")
    # Padding queries output zero and nothing flows back into padding keys and values.
    pad = np.asarray(seg) == 0
    assert not np.asarray(out_b)[pad].any()
    assert not np.asarray(grads_b[1])[pad].any() and not np.asarray(grads_b[2])[pad].any()


def test_blockwise_bf16_inputs_close_to_dense():
    q, k, v, ct, seg = _packed(dtype=jnp.bfloat16)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    out_b, grads_b = _fwd_and_grads(q, k, v, ct, seg, impl="blockwise", block_q=16, block_kv=16)
    assert out_b.dtype == jnp.bfloat16
    np.testing.assert_allclose(out_b.astype(np.float32), out_d.astype(np.float32), atol=BF16_ATOL)
    # Gradients (|g| up to ~10) carry the forward's bf16 rounding through dS = P (dP - D).
    for name, gb, gd in zip("qkv", grads_b, grads_d, strict=True):
        scale = float(jnp.abs(gd.astype(jnp.float32)).max())
        np.testing.assert_allclose(
            gb.astype(np.float32), gd.astype(np.float32), atol=BF16_ATOL * scale, err_msg=name
        )
    # And both are close to the float32 answer (the bf16 paths are not broken the same way).
    out_32, _ = _fwd_and_grads(*(x.astype(jnp.float32) for x in (q, k, v)), ct, seg, impl="dense")
    np.testing.assert_allclose(out_b.astype(np.float32), out_32, atol=BF16_ATOL)


def test_splash_interpret_equals_dense():
    # Splash blocks are multiples of 128: T=150 pads to 256 (2 q blocks, 2 kv blocks).
    q, k, v, ct, seg = _packed(b=2, t=150, h=16)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    out_s, grads_s = _fwd_and_grads(
        q, k, v, ct, seg, impl="splash", block_q=128, block_kv=128, interpret=True
    )
    np.testing.assert_allclose(out_s, out_d, atol=FWD_ATOL)
    for name, gs, gd in zip("qkv", grads_s, grads_d, strict=True):
        np.testing.assert_allclose(gs, gd, atol=GRAD_ATOL, err_msg=f"d{name}")


def test_pallas_gpu_interpret_equals_dense():
    # Blocks of 16 (Triton's minimum): T=37 pads to 48, 3 q blocks and 3 kv blocks forward,
    # and the fused backward runs 16-blocks too. Grouped-query N=4, K=2; h=16 (Triton's minimum
    # head dim, checked on a GPU only).
    q, k, v, ct, seg = _packed(b=2, t=37, n=4, k=2, h=16)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    out_p, grads_p = _fwd_and_grads(
        q, k, v, ct, seg, impl="pallas_gpu", block_q=16, block_kv=16, interpret=True
    )
    assert out_p.dtype == jnp.float32
    np.testing.assert_allclose(out_p, out_d, atol=FWD_ATOL)
    for name, gp, gd in zip("qkv", grads_p, grads_d, strict=True):
        np.testing.assert_allclose(gp, gd, atol=GRAD_ATOL, err_msg=f"d{name}")
    # The kernel lets padding see padding; the wrapper zeroes those rows, so their outputs are
    # exactly zero and nothing flows back into padding queries, keys or values.
    pad = np.asarray(seg) == 0
    assert not np.asarray(out_p)[pad].any()
    for name, gp in zip("qkv", grads_p, strict=True):
        assert not np.asarray(gp)[pad].any(), f"d{name} at padding"


def test_kernel_runs_per_shard_under_a_mesh():
    """Under `jax.set_mesh` (as the trainer's update runs) a fused kernel runs in a shard_map:
    rows over (data, fsdp), heads over tensor, no collective, same values and gradients."""
    from jax.sharding import NamedSharding, PartitionSpec

    from cleaner_jax.models import sharding

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v, ct, seg = _packed(b=4, t=20, n=4, k=2, h=16)
    heads = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor", None))
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    q, k, v = (jax.device_put(x, heads) for x in (q, k, v))
    seg_sharded = jax.device_put(jnp.asarray(seg), rows)
    kw = dict(impl="pallas_gpu", block_q=16, block_kv=16, interpret=True)

    def loss(q, k, v, seg):
        out = attention.attention(q, k, v, seg, **kw)
        return (out * ct).sum(), out

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    with jax.set_mesh(mesh):
        (_, out), grads = step(q, k, v, seg_sharded)
        hlo = step.lower(q, k, v, seg_sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    out_d, grads_d = _fwd_and_grads(*(np.asarray(x) for x in (q, k, v)), ct, seg, impl="dense")
    np.testing.assert_allclose(out, out_d, atol=FWD_ATOL)
    for name, g, gd in zip("qkv", grads, grads_d, strict=True):
        np.testing.assert_allclose(g, gd, atol=GRAD_ATOL, err_msg=f"d{name}")
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="round the rows up"):
        attention.attention(q[:3], k[:3], v[:3], seg_sharded[:3], **kw)


@pytest.mark.parametrize(
    "block, t, expected",
    [
        (512, 23040, 128),  # the model's attention_block: capped at the kernel's default
        (100, 1000, 64),  # rounded down to a power of two
        (8, 1000, 16),  # Triton's minimum
        (512, 20, 32),  # no larger than T needs
        (512, 3, 16),
    ],
)
def test_pallas_gpu_blocks(block, t, expected):
    assert attention_fused._triton_block(block, t) == expected


def test_model_logits_blockwise_equal_dense():
    """Whole model, logits and parameter gradients: dense vs blockwise, with and without remat."""
    cfg = tiny_config(attention="dense", attention_block=8, num_layers=1)
    _, _, _, _, seg = _packed(t=21)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, seg.shape)
    positions = np.broadcast_to(np.arange(21), seg.shape)

    @nnx.jit
    def logits_and_grads(model):
        def loss(m):
            logits, _ = m(tokens, positions, segment_ids_BT=seg)
            return (logits * (seg != 0)[..., None]).sum() * 1e-2, logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return logits, grads

    def run(**kw):
        # Same seed, same parameters: only the attention path differs.
        return logits_and_grads(qwen.Qwen(cfg.replace(**kw), rngs=nnx.Rngs(0)))

    logits_d, grads_d = run()
    for kw in (dict(attention="blockwise"), dict(attention="blockwise", remat=True)):
        logits_b, grads_b = run(**kw)
        np.testing.assert_allclose(logits_b, logits_d, atol=FWD_ATOL, err_msg=str(kw))
        for gb, gd in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_d), strict=True):
            np.testing.assert_allclose(gb, gd, atol=GRAD_ATOL, err_msg=str(kw))


def _grad_temp_bytes(impl: str, t: int) -> int:
    x = jax.ShapeDtypeStruct((1, t, 1, 8), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def loss(q, k, v, s):
        return attention.attention(q, k, v, s, impl=impl, block_q=256, block_kv=256).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_grad_memory_is_linear_in_t():
    """4x T: blockwise temp memory grows < 6x (measured ~1.3x), dense > 10x ([T, T] logits)."""
    blockwise = _grad_temp_bytes("blockwise", 8192) / _grad_temp_bytes("blockwise", 2048)
    dense = _grad_temp_bytes("dense", 8192) / _grad_temp_bytes("dense", 2048)
    assert blockwise < 6, blockwise
    assert dense > 10, dense


def test_unknown_impl_raises():
    q, k, v, _, seg = _packed(t=8)
    with pytest.raises(ValueError, match="unknown"):
        attention.attention(q, k, v, seg, impl="flash")
    with pytest.raises(ValueError, match="unknown"):
        attention.resolve_impl("Dense")


@pytest.mark.parametrize("impl", ["cudnn", "splash", "pallas_gpu"])
def test_accelerator_impls_refuse_cpu(impl):
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU refusal")
    q, k, v, _, seg = _packed(t=8, h=16, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="target, this one is 'cpu'"):
        attention.attention(q, k, v, seg, impl=impl)


def test_cudnn_path_runs_cudnn_only_on_single_segment_rows(monkeypatch):
    """The cuDNN wrapper's logic on CPU: XLA's implementation, doubled (exact in bf16) to show
    which branch ran, stands in for cuDNN. Packed rows, which cuDNN cannot express, go to the
    pallas_gpu kernel (interpret mode); rows of one segment then padding go to cuDNN."""
    if jax.default_backend() != "cpu":
        pytest.skip("the stand-in replaces a real cuDNN kernel")

    def stand_in(*args, **kw):
        return jax.nn.dot_product_attention(*args, **kw, implementation="xla") * 2

    monkeypatch.setattr(attention_fused, "backend", lambda: "gpu")
    monkeypatch.setattr(attention_fused, "cudnn_sdpa", stand_in)
    q, k, v, _, packed = _packed(t=16, h=16, dtype=jnp.bfloat16)
    single = np.where(np.arange(16) < np.array([[11], [16]]), np.array([[4], [9]]), 0)
    run = jax.jit(
        lambda seg: attention.attention(
            q, k, v, seg, impl="cudnn", block_q=16, block_kv=16, interpret=True
        )
    )
    for seg, factor in ((single.astype(np.int32), 2.0), (packed, 1.0)):
        expected = attention.attention(q, k, v, seg, impl="dense").astype(np.float32)
        expected = np.where((seg != 0)[:, :, None, None], expected * factor, 0.0)
        np.testing.assert_allclose(run(seg).astype(np.float32), expected, atol=2 * BF16_ATOL)
    with pytest.raises(ValueError, match="bfloat16/float16"):
        attention.attention(q.astype(jnp.float32), k, v, packed, impl="cudnn")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU block cap of 'auto'")
@pytest.mark.parametrize("extra", [4, attention.CPU_BLOCK + 4])
def test_auto_on_cpu_caps_blocks_and_equals_dense(extra):
    # T = CPU_BLOCK + 4 / 2 * CPU_BLOCK + 4: "auto" runs two blocks of 72 / three of 88 (not one
    # of T), as "blockwise" with CPU_BLOCK blocks does, bit for bit; both equal "dense".
    q, k, v, ct, seg = _packed(b=2, t=attention.CPU_BLOCK + extra, n=2, k=1, h=4)
    out_a, grads_a = _fwd_and_grads(q, k, v, ct, seg, impl="auto", block_q=512, block_kv=512)
    cap = attention.CPU_BLOCK
    out_b, grads_b = _fwd_and_grads(q, k, v, ct, seg, impl="blockwise", block_q=cap, block_kv=cap)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_allclose(out_a, out_d, atol=FWD_ATOL)
    for name, ga, gb, gd in zip("qkv", grads_a, grads_b, grads_d, strict=True):
        np.testing.assert_array_equal(ga, gb, err_msg=f"d{name}")
        np.testing.assert_allclose(ga, gd, atol=GRAD_ATOL, err_msg=f"d{name}")


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_follows_the_target_platform_not_the_host(platform):
    # A program compiled on this host for another platform's devices picks that platform's kernel.
    expected = {"tpu": "splash", "gpu": "pallas_gpu", "cpu": "blockwise"}[platform]
    with platform_lib.target(platform):
        assert attention.resolve_impl("auto", head_dim=128) == expected


def test_auto_resolves_per_backend():
    expected = {"tpu": "splash", "gpu": "pallas_gpu"}.get(jax.default_backend(), "blockwise")
    assert attention.resolve_impl("auto") == expected
    assert attention.resolve_impl("auto", head_dim=128) == expected
    if jax.default_backend() == "gpu":
        # Triton cannot take head dims under 16.
        assert attention.resolve_impl("auto", head_dim=8) == "blockwise"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "impl, rows",
    [
        ("pallas_gpu", "packed"),
        ("cudnn", "packed"),  # cuDNN cannot express packed rows: its pallas_gpu fallback runs
        ("cudnn", "single"),  # one segment then padding per row: cuDNN runs
    ],
)
def test_gpu_kernels_bf16_close_to_dense(impl, rows):
    """The real kernels on a GPU, bf16 in and out, against dense (XLA) in bf16 and float32.

    Tolerance as in the CPU bf16 test (`BF16_ATOL`, scaled by max|grad| for gradients): every
    path rounds P to bf16 before P @ V (the flash kernels the running, unnormalised P) and
    rounds dS to bf16 in the backward, and the output is bf16 (ulp 2**-8 relative).
    """
    t = 300  # pallas_gpu: blocks of 128, T padded to 384; cuDNN: any T
    q, k, v, ct, seg = _packed(b=2, t=t, n=4, k=2, h=128, dtype=jnp.bfloat16)
    if rows == "single":
        seg = np.where(np.arange(t) < np.array([[200], [t]]), np.array([[3], [1]]), 0)
        seg = seg.astype(np.int32)
    out_d, grads_d = _fwd_and_grads(q, k, v, ct, seg, impl="dense")
    out_g, grads_g = _fwd_and_grads(q, k, v, ct, seg, impl=impl, block_q=512, block_kv=512)
    assert out_g.dtype == jnp.bfloat16
    np.testing.assert_allclose(out_g.astype(np.float32), out_d.astype(np.float32), atol=BF16_ATOL)
    for name, gg, gd in zip("qkv", grads_g, grads_d, strict=True):
        scale = float(jnp.abs(gd.astype(jnp.float32)).max())
        np.testing.assert_allclose(
            gg.astype(np.float32), gd.astype(np.float32), atol=BF16_ATOL * scale, err_msg=name
        )
    pad = np.asarray(seg) == 0
    assert not np.asarray(out_g.astype(np.float32))[pad].any()
    out_32, _ = _fwd_and_grads(*(x.astype(jnp.float32) for x in (q, k, v)), ct, seg, impl="dense")
    np.testing.assert_allclose(out_g.astype(np.float32), out_32, atol=BF16_ATOL)
