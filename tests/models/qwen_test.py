"""Equivalences of the decoder's paths: packed, cached, remat, jit (all float32 on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import qwen, testing
from cleaner_jax.models.kv_cache import DenseKVCache

ATOL = 2e-5  # float32 with reordered reductions (different T, masks, fusions)


def _tokens(key, shape, vocab):
    return jax.random.randint(jax.random.key(key), shape, 0, vocab)


@pytest.fixture(scope="module")
def model():
    return testing.random_model(testing.tiny_variant("qwen3", tied=False, gqa=2, bias=True), 0)


@pytest.fixture(scope="module")
def fwd(model):
    return testing.jit_forward(model)


def test_packed_row_equals_separate_sequences(model, fwd):
    vocab = model.cfg.vocab_size
    a, b = _tokens(0, (1, 7), vocab), _tokens(1, (1, 5), vocab)
    row_BT = jnp.concatenate([a, b, jnp.zeros((1, 4), jnp.int32)], axis=1)
    positions_BT = jnp.concatenate([jnp.arange(7), jnp.arange(5), jnp.zeros(4, jnp.int32)])[None]
    segments_BT = jnp.array([[1] * 7 + [2] * 5 + [0] * 4])
    packed, _ = fwd(row_BT, positions_BT, segments_BT)
    # Each sequence alone, right-padded to the same length (16) so one compilation serves all.
    alone = []
    for seq, n in ((a, 7), (b, 5)):
        tokens = jnp.pad(seq, ((0, 0), (0, 16 - n)))
        logits, _ = fwd(tokens, jnp.arange(16)[None], (jnp.arange(16) < n)[None].astype(jnp.int32))
        alone.append(logits[:, :n])
    np.testing.assert_allclose(packed[:, :7], alone[0], atol=ATOL)
    np.testing.assert_allclose(packed[:, 7:12], alone[1], atol=ATOL)
    assert np.isfinite(np.asarray(packed[:, 12:])).all()
    # Cross-check the segment-padded single sequence against the unpadded causal forward.
    plain, _ = fwd(a, jnp.arange(7)[None])
    np.testing.assert_allclose(alone[0], plain, atol=ATOL)


def test_cached_prefill_then_decode_equals_full_forward(model, fwd):
    b, t, prefill = 2, 10, 4
    tokens_BT = _tokens(2, (b, t), model.cfg.vocab_size)
    positions_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
    full, _ = fwd(tokens_BT, positions_BT)
    cache = DenseKVCache.zeros(model.cfg, b, 16)
    logits, cache = fwd(tokens_BT[:, :prefill], positions_BT[:, :prefill], cache=cache)
    steps = [logits]
    for i in range(prefill, t):
        logits, cache = fwd(tokens_BT[:, i : i + 1], positions_BT[:, i : i + 1], cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=ATOL)


def test_cache_padding_positions_are_not_written(model, fwd):
    """Position -1 marks padding: a left-padded prompt decodes like the unpadded one."""
    tokens = _tokens(3, (1, 6), model.cfg.vocab_size)
    ref, _ = fwd(tokens, jnp.arange(6)[None])
    padded_BT = jnp.concatenate([jnp.zeros((1, 2), jnp.int32), tokens[:, :4]], axis=1)
    cache = DenseKVCache.zeros(model.cfg, 1, 8)
    logits, cache = fwd(padded_BT, jnp.array([[-1, -1, 0, 1, 2, 3]]), cache=cache)
    np.testing.assert_allclose(logits[:, 2:], ref[:, :4], atol=ATOL)
    logits, cache = fwd(tokens[:, 4:], jnp.array([[4, 5]]), cache=cache)
    np.testing.assert_allclose(logits, ref[:, 4:], atol=ATOL)


def _loss_and_grad(cfg, state, tokens_BT):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: qwen.Qwen(cfg, rngs=nnx.Rngs(0))))
    b, t = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(t - 1), (b, t - 1))

    def loss(state):
        logits, _ = nnx.merge(graphdef, state)(tokens_BT[:, :-1], positions_BT)
        return -qwen.token_logprobs(logits, tokens_BT[:, 1:]).mean()

    return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_forward_and_grad_equal_plain(model):
    tokens = _tokens(4, (2, 9), model.cfg.vocab_size)
    state = nnx.state(model)
    loss, grads = _loss_and_grad(model.cfg, state, tokens)
    loss_r, grads_r = _loss_and_grad(model.cfg.replace(remat=True), state, tokens)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for g, gr in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r), strict=True):
        np.testing.assert_allclose(gr, g, atol=1e-6)
    assert min(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_jit_equals_eager():
    model = testing.random_model(testing.tiny_variant("qwen2", num_layers=1), 1)
    tokens = _tokens(5, (2, 8), model.cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    segments = jnp.array([[1] * 5 + [2] * 3, [1] * 6 + [0] * 2])
    eager, _ = model(tokens, positions, segment_ids_BT=segments)
    jitted, _ = testing.jit_forward(model)(tokens, positions, segments)
    np.testing.assert_allclose(jitted, eager, atol=ATOL)


def test_token_logprobs_golden():
    logits_BTV = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    got = qwen.token_logprobs(logits_BTV, jnp.array([[0, 2]]))
    np.testing.assert_allclose(got, np.log([[0.5, 0.8]]), rtol=1e-6)
    # temperature 2 on these logits: p ∝ sqrt(p)
    hot = qwen.token_logprobs(logits_BTV, jnp.array([[1, 2]]), temperature=2.0)
    s = np.sqrt([0.5, 0.25, 0.25]), np.sqrt([0.1, 0.1, 0.8])
    np.testing.assert_allclose(
        hot, np.log([[s[0][1] / s[0].sum(), s[1][2] / s[1].sum()]]), rtol=1e-6
    )


@pytest.mark.parametrize("tables", ["rope", "random"])
def test_rope_backward_equals_autodiff(tables):
    # apply_rope's written-out backward (dx = dy cos - R(dy sin)) against autodiff of the plain
    # formula, bit for bit: the same products and one add per element. General tables too: the
    # derivation only uses R^T = -R, not the halves of cos / sin being equal.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32)
    if tables == "rope":
        cos, sin = qwen.rope_tables(jnp.asarray(rng.integers(0, 100, (2, 5))), 8, 10_000.0)
    else:
        cos, sin = (jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32) for _ in range(2))

    def plain(x):
        rotated = jnp.concatenate([-x[..., 4:], x[..., :4]], axis=-1)
        return x * cos[:, :, None] + rotated * sin[:, :, None]

    def vjp(fn):
        return jax.jit(lambda x: jax.vjp(fn, x)[1](ct)[0])(x)

    got = vjp(lambda x: qwen.apply_rope(x, cos, sin))
    np.testing.assert_array_equal(got, vjp(plain))
    np.testing.assert_array_equal(qwen.apply_rope(x, cos, sin), plain(x))
