"""`ModelConfig.scan_layers`: the stacked layer layout computes what the unrolled one computes.

Tolerance rules (float32 on CPU):
- logits, log-probs, KV caches: max abs difference <= 1e-6 (the scan body runs the same ops on
  the same numbers as each unrolled layer; measured: 0.0);
- parameter gradients: per parameter, max abs difference <= 1e-6 * max abs of the unrolled
  gradient of that parameter. Relative to the parameter's own scale because XLA fuses and orders
  the backward's reductions (sums over tokens) differently in a loop body than in straight-line
  code; measured ~3e-7 without remat, 0.0 with remat.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cleaner_jax.models import hf_io, qwen, sharding, testing
from cleaner_jax.models.config import PRESETS
from cleaner_jax.models.kv_cache import DenseKVCache

ATOL = 1e-6
GRAD_RTOL = 1e-6


@pytest.fixture(scope="module")
def cfg():
    return testing.tiny_variant("qwen3", tied=False, gqa=2, bias=True, num_layers=3)


@pytest.fixture(scope="module")
def models(cfg):
    """(unrolled, stacked) models with the same weights."""
    unrolled = testing.random_model(cfg, seed=5)
    stacked = testing.random_model(cfg.replace(scan_layers=True), seed=5)
    return unrolled, stacked


def _packed_batch(vocab):
    tokens_BT = jax.random.randint(jax.random.key(0), (2, 16), 0, vocab)
    positions_BT = jnp.concatenate([jnp.arange(9), jnp.arange(5), jnp.zeros(2, jnp.int32)])
    positions_BT = jnp.broadcast_to(positions_BT, (2, 16))
    segments_BT = jnp.array([[1] * 9 + [2] * 5 + [0] * 2, [1] * 16])
    return tokens_BT, positions_BT, segments_BT


def _flat(state):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def test_stacked_layout_and_conversions(cfg, models):
    unrolled, stacked = models
    state = nnx.state(stacked)
    kernel = stacked.layers.self_attn.q_proj.kernel
    assert kernel.shape == (cfg.num_layers, cfg.hidden_size, cfg.num_heads * cfg.head_dim)
    built = nnx.state(nnx.eval_shape(lambda: qwen.Qwen(stacked.cfg, rngs=nnx.Rngs(0))))
    assert jax.tree.structure(state) == jax.tree.structure(built)
    back = qwen.unstack_layers(state)
    assert jax.tree.structure(back) == jax.tree.structure(nnx.state(unrolled))
    ref = _flat(nnx.state(unrolled))
    assert all(np.array_equal(v, ref[p]) for p, v in _flat(back).items())
    with pytest.raises(ValueError, match="stacked already"):
        qwen.stack_layers(state)
    with pytest.raises(ValueError, match="layer number already"):
        qwen.unstack_layers(back)


def _grad_fn(tokens_BT, positions_BT, segments_BT):
    """jit((state, graphdef) -> ((masked NLL, logits), d NLL / d state)) on one packed batch."""

    def loss_and_logits(state, graphdef):
        logits, _ = nnx.merge(graphdef, state)(tokens_BT, positions_BT, segment_ids_BT=segments_BT)
        mask = (segments_BT > 0).astype(jnp.float32)
        return -jnp.sum(qwen.token_logprobs(logits, tokens_BT) * mask), logits

    return jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True), static_argnums=1)


@pytest.mark.parametrize("remat", [False, True])
def test_forward_and_gradients_equal_unrolled(cfg, models, remat):
    tokens_BT, positions_BT, segments_BT = _packed_batch(cfg.vocab_size)

    grad_fn = _grad_fn(tokens_BT, positions_BT, segments_BT)
    results = []
    for model in models:
        graphdef, state = nnx.split(model)
        graphdef = nnx.graphdef(
            nnx.eval_shape(lambda m=model: qwen.Qwen(m.cfg.replace(remat=remat), rngs=nnx.Rngs(0)))
        )
        results.append(grad_fn(state, graphdef))
    (loss_u, logits_u), grads_u = results[0]
    (loss_s, logits_s), grads_s = results[1]
    assert np.abs(np.asarray(logits_u) - np.asarray(logits_s)).max() <= ATOL
    assert abs(float(loss_u) - float(loss_s)) <= ATOL * max(1.0, abs(float(loss_u)))
    ref = _flat(grads_u)
    got = _flat(qwen.unstack_layers(grads_s))
    assert set(got) == set(ref)
    for p, g in got.items():
        scale = np.abs(ref[p]).max()
        assert scale > 0, p  # every parameter takes part
        assert np.abs(g - ref[p]).max() <= GRAD_RTOL * scale, p


def test_cached_prefill_and_decode_equal_unrolled(cfg, models):
    tokens_BT = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)
    positions_BT = jnp.broadcast_to(jnp.arange(12), (2, 12))
    outs = []
    for model in models:
        fwd = testing.jit_forward(model)
        cache = DenseKVCache.zeros(cfg, 2, 16)
        prefill, cache = fwd(tokens_BT[:, :9], positions_BT[:, :9], cache=cache)
        decode = []
        for t in range(9, 12):
            logits, cache = fwd(tokens_BT[:, t : t + 1], positions_BT[:, t : t + 1], cache=cache)
            decode.append(logits)
        full, _ = fwd(tokens_BT, positions_BT)
        outs.append((prefill, jnp.concatenate(decode, 1), cache.k_LBSKH, cache.v_LBSKH, full))
    for u, s in zip(*outs, strict=True):
        assert np.abs(np.asarray(u) - np.asarray(s)).max() <= ATOL
    # And the stacked model's cached decode is its own full forward (the usual 2e-5 of
    # qwen_test: different T and masks reorder reductions).
    prefill, decode, _, _, full = outs[1]
    np.testing.assert_allclose(np.asarray(full[:, 9:]), np.asarray(decode), atol=2e-5)
    np.testing.assert_allclose(np.asarray(full[:, :9]), np.asarray(prefill), atol=2e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_program_size_does_not_grow_with_depth(remat):
    def dots(num_layers, scan):
        cfg = testing.tiny_variant(num_layers=num_layers, scan_layers=scan, remat=remat)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: qwen.Qwen(cfg, rngs=nnx.Rngs(0))))
        tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)

        def loss(s, t):
            return jnp.sum(nnx.merge(graphdef, s).hidden_states(t, t)[0])

        return jax.jit(jax.grad(loss)).lower(state, tokens).as_text().count("dot_general")

    assert dots(2, True) == dots(6, True)
    assert dots(6, False) > dots(2, False)


def test_hf_round_trip_through_both_layouts(tmp_path, cfg, models):
    unrolled, stacked = models
    stacked_files = hf_io.save_hf_checkpoint(stacked, stacked.cfg, str(tmp_path / "s"))
    unrolled_files = hf_io.save_hf_checkpoint(unrolled, cfg, str(tmp_path / "u"))
    assert stacked_files == unrolled_files
    # The export does not depend on the layout, byte for byte.
    for name in stacked_files:
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "u" / name).read_bytes(), name
    _, as_stacked = hf_io.load_hf_checkpoint(str(tmp_path / "s"), stacked.cfg)
    _, as_unrolled = hf_io.load_hf_checkpoint(str(tmp_path / "s"))
    ref = _flat(nnx.state(stacked))
    assert all(np.array_equal(v, ref[p]) for p, v in _flat(nnx.state(as_stacked)).items())
    ref = _flat(nnx.state(unrolled))
    assert all(np.array_equal(v, ref[p]) for p, v in _flat(nnx.state(as_unrolled)).items())


def test_hf_sharded_files_load_stacked_onto_mesh(tmp_path, cfg, models):
    unrolled, stacked = models
    # Small shards: one stacked parameter's layers are spread over several files.
    written = hf_io.save_hf_checkpoint(unrolled, cfg, str(tmp_path), max_shard_bytes=40_000)
    assert hf_io.INDEX_FILE in written and len(written) > 4
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, loaded = hf_io.load_hf_checkpoint(str(tmp_path), stacked.cfg, mesh=mesh)
    ref = _flat(nnx.state(stacked))
    for p, var in nnx.to_flat_state(nnx.state(loaded)):
        arr = var.get_value()
        assert arr.sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(arr), ref[p])


def test_stacked_shardings_are_the_unrolled_ones_shifted_by_the_layer_axis(cfg):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    def specs(c):
        state = nnx.state(nnx.eval_shape(lambda: qwen.Qwen(c, rngs=nnx.Rngs(0))))
        return {
            p: v.get_value().spec
            for p, v in nnx.to_flat_state(sharding.state_shardings(state, mesh, cfg=c))
        }

    unrolled, stacked = specs(cfg), specs(cfg.replace(scan_layers=True))
    for p, spec in stacked.items():
        if p[0] == "layers":
            assert spec == P(None, *unrolled[(p[0], 0, *p[1:])]), p
            assert spec == P(None, *unrolled[(p[0], cfg.num_layers - 1, *p[1:])]), p
        else:
            assert spec == unrolled[p], p
    assert stacked[("layers", "self_attn", "q_proj", "kernel")] == P(None, "fsdp", "tensor")
    assert stacked[("layers", "mlp", "down_proj", "kernel")] == P(None, "tensor", "fsdp")
    # A rule set without a `layers` entry (written before scan_layers) still applies; a rule
    # for it shards the layer axis.
    rules = [r for r in sharding.DEFAULT_RULES if r[0] != "layers"]
    assert sharding.logical_to_spec(("layers", "embed"), rules, shape=(4, 8), mesh=mesh) == P(
        None, "fsdp"
    )
    rules.append(("layers", "data"))
    assert sharding.logical_to_spec(("layers", "embed"), rules, shape=(4, 8), mesh=mesh) == P(
        "data", "fsdp"
    )


def test_full_size_stacked_preset_shapes():
    big = PRESETS["qwen3_4b"].replace(scan_layers=True)  # abstract only: nothing allocated
    state = nnx.state(nnx.eval_shape(lambda: qwen.Qwen(big, rngs=nnx.Rngs(0))))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) == big.num_params()
    gate = state["layers"]["mlp"]["gate_proj"]["kernel"].get_value()
    assert gate.shape == (36, big.hidden_size, big.intermediate_size)


@pytest.mark.torch
def test_transformers_checkpoint_loads_stacked(tmp_path):
    cfg = testing.tiny_variant("qwen2", tied=False, gqa=2, bias=True)
    reference = testing.torch_model(cfg, seed=11)
    reference.save_pretrained(tmp_path)
    _, model = hf_io.load_hf_checkpoint(str(tmp_path), cfg.replace(scan_layers=True))
    tokens_BT = jax.random.randint(jax.random.key(1), (2, 11), 0, cfg.vocab_size)
    ours, _ = testing.jit_forward(model)(tokens_BT, jnp.broadcast_to(jnp.arange(11), (2, 11)))
    import torch

    with torch.no_grad():
        theirs = reference(torch.as_tensor(np.array(tokens_BT))).logits.numpy()
    assert np.abs(np.asarray(ours) - theirs).max() <= 1e-4  # hf_io_test's import tolerance


def test_bf16_compute_as_accurate_as_unrolled(cfg):
    """bf16 compute over fp32 parameters, the path where the scan body casts each layer's weights
    (`qwen._cast_in_loop`). In bf16 the two programs round differently (XLA fuses a loop body
    differently; measured: logits 0.03 apart, gradients 1-3% of their scale), so the rule is
    relative to bf16's own error: against the float32 forward of the same weights, the scanned
    program's logits and gradients are within 1.5x the unrolled program's error (measured: logits
    0.068 vs 0.060, gradients 3.7% vs 4.2% of their scale)."""
    bf16 = cfg.replace(dtype="bfloat16", remat=True)
    tokens_BT, positions_BT, segments_BT = _packed_batch(cfg.vocab_size)

    grad_fn = _grad_fn(tokens_BT, positions_BT, segments_BT)
    out = {}
    for name, c in (("f32", cfg), ("unrolled", bf16), ("scanned", bf16.replace(scan_layers=True))):
        model = testing.random_model(c, 5)
        (_, logits), grads = grad_fn(nnx.state(model), nnx.graphdef(model))
        grads = qwen.unstack_layers(grads) if c.scan_layers else grads
        out[name] = (np.asarray(logits), _flat(grads))
    ref_logits, ref_grads = out["f32"]

    def errors(name):
        logits, grads = out[name]
        assert all(g.dtype == np.float32 for g in grads.values())
        rel = max(
            np.abs(g - ref_grads[p]).max() / np.abs(ref_grads[p]).max() for p, g in grads.items()
        )
        return np.abs(logits - ref_logits).max(), rel

    (logit_u, grad_u), (logit_s, grad_s) = errors("unrolled"), errors("scanned")
    assert logit_u > 0 and grad_u > 0  # bf16 did round
    assert logit_s <= 1.5 * logit_u and grad_s <= 1.5 * grad_u, (logit_u, logit_s, grad_u, grad_s)
