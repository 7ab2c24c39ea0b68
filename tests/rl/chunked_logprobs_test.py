"""Chunked log-probs: == whole-row logits (values, loss, gradients), the hand-written backward
== autodiff of the plain formula, vocab-sharded == unsharded, and compiled temp memory that stays
O(C x V) instead of O(T x V)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from cleaner_jax.models.qwen import project_logits
from cleaner_jax.rl import loss as L

B, T, D, V = 2, 12, 16, 96


def _inputs(transposed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    h_BTD = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    w = rng.normal(size=(V, D) if transposed else (D, V)) * 0.3
    targets_BT = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    old_BT = jnp.asarray(-rng.random((B, T)) * 5, jnp.float32)
    adv_B = jnp.asarray([0.8, -1.1], jnp.float32)
    mask_BT = jnp.asarray(rng.random((B, T)) > 0.2, jnp.float32)
    return h_BTD, jnp.asarray(w, jnp.float32), targets_BT, old_BT, adv_B, mask_BT


def _ppo(logp_BT, entropy_BT, old_BT, adv_B, mask_BT):
    return L.policy_loss(logp_BT, old_BT, adv_B, mask_BT, entropy_BT=entropy_BT, entropy_coef=0.01)


def _chunked_fn(transposed, temperature, chunk):
    def f(h_BTD, w, targets_BT, old_BT, adv_B, mask_BT):
        logp_BT, ent_BT = L.chunked_logprobs_and_entropy(
            h_BTD, w, transposed, targets_BT, temperature=temperature, chunk=chunk
        )
        return _ppo(logp_BT, ent_BT, old_BT, adv_B, mask_BT)[0], (logp_BT, ent_BT)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def _whole_row_fn(transposed, temperature):
    def f(h_BTD, w, targets_BT, old_BT, adv_B, mask_BT):
        logits_BTV = project_logits(h_BTD, w, transposed) / temperature
        logp_BT, ent_BT = L.token_logprobs_and_entropy(logits_BTV, targets_BT)
        return _ppo(logp_BT, ent_BT, old_BT, adv_B, mask_BT)[0], (logp_BT, ent_BT)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def _assert_close(got, want, atol, rtol=0.0, scaled=False):
    """``scaled``: atol is relative to each array's largest magnitude (for reordered sums)."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        tol = atol * max(1.0, float(np.abs(b).max())) if scaled else atol
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=tol)


# chunk 4 divides T = 12, 5 does not (padded tail), 1 is one token per step, 0 the whole row.
@pytest.mark.parametrize(
    "chunk, transposed",
    [(4, True), (5, False), (5, True), (1, False), (0, True)],
    ids=["4-tied", "5-untied", "5-tied", "1-untied", "0-tied"],
)
def test_chunked_equals_whole_row(chunk, transposed):
    temperature = 0.7
    args = _inputs(transposed)
    (loss_c, aux_c), grads_c = _chunked_fn(transposed, temperature, chunk)(*args)
    (loss_w, aux_w), grads_w = _whole_row_fn(transposed, temperature)(*args)
    # Same float32 ops per token (each logit is the same D-long dot product, the V reductions run
    # over the same values); 1e-6 leaves room for a different reduction order in XLA's fusions.
    _assert_close((loss_c, aux_c), (loss_w, aux_w), atol=1e-6)
    _assert_close(grads_c, grads_w, atol=1e-6)
    assert float(jnp.abs(grads_c[1]).max()) > 1e-3  # the unembedding really gets a gradient


@pytest.mark.parametrize("with_entropy", [True, False])
@pytest.mark.parametrize("chunk, transposed", [(0, True), (5, False), (4, True)])
def test_hand_written_backward_equals_autodiff(chunk, transposed, with_entropy):
    # The head's custom_vjp against jax.vjp of the plain formula on whole-row logits, with
    # independent random cotangents for log p and the entropy (each term of the hand-written
    # d logits is exercised on its own, not only through the PPO loss's mix).
    h_BTD, w, targets_BT, *_ = _inputs(transposed, seed=3)
    rng = np.random.default_rng(4)
    g_lp, g_ent = (jnp.asarray(rng.normal(size=(B, T)), jnp.float32) for _ in range(2))

    def chunked(h, w_):
        logp, ent = L.chunked_logprobs_and_entropy(
            h, w_, transposed, targets_BT, temperature=0.8, chunk=chunk, with_entropy=with_entropy
        )
        return (logp, ent) if with_entropy else (logp,)

    def plain(h, w_):
        logits = project_logits(h, w_, transposed) / 0.8
        logp, ent = L.token_logprobs_and_entropy(logits, targets_BT)
        return (logp, ent) if with_entropy else (logp,)

    cts = (g_lp, g_ent) if with_entropy else (g_lp,)

    def vjp(fn):
        return jax.jit(lambda h, w_: jax.vjp(fn, h, w_)[1](cts))(h_BTD, w)

    got, want = vjp(chunked), vjp(plain)
    for a, b in zip(got, want, strict=True):
        # float32 with reordered V sums; 1e-5 of each array's largest entry.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


def test_hand_written_backward_keeps_dtypes():
    # bf16 hidden states get a bf16 gradient, a float32 unembedding a float32 one (the matmuls
    # accumulate in float32 either way).
    h_BTD, w, targets_BT, *_ = _inputs(False)
    h_BTD = h_BTD.astype(jnp.bfloat16)

    def f(h, w_):
        logp, ent = L.chunked_logprobs_and_entropy(h, w_, False, targets_BT, chunk=5)
        return jnp.sum(logp) + jnp.sum(ent)

    dh, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(h_BTD, w)
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32

    def plain(h, w_):
        logits = project_logits(h, w_, False)
        logp, ent = L.token_logprobs_and_entropy(logits, targets_BT)
        return jnp.sum(logp) + jnp.sum(ent)

    want = jax.jit(jax.grad(plain, argnums=(0, 1)))(h_BTD, w)
    # bf16 rounding of d logits (hand-written) vs of the projection's cotangent (autodiff):
    # seen 5.5e-3 of the scale (~1.4 bf16 ulps, 2**-8 each); 1e-2 is ~2.5 ulps.
    for a, b in zip((dh, dw), want, strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * float(np.abs(b).max()))


def test_without_entropy_and_bad_shapes():
    h_BTD, w, targets_BT, *_ = _inputs(True)
    logp_BT, ent = L.chunked_logprobs_and_entropy(h_BTD, w, True, targets_BT, chunk=5,
                                                  with_entropy=False)  # fmt: skip
    assert ent is None and logp_BT.shape == (B, T) and logp_BT.dtype == jnp.float32
    with pytest.raises(ValueError, match="does not match hidden size"):
        L.chunked_logprobs_and_entropy(h_BTD, w, False, targets_BT)
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        L.chunked_logprobs_and_entropy(h_BTD[0], w, True, targets_BT)
    with pytest.raises(TypeError, match="temperature must be a Python number"):
        L.chunked_logprobs_and_entropy(h_BTD, w, True, targets_BT, temperature=jnp.float32(0.9))


def test_bf16_hidden_states_match_project_logits():
    h_BTD, w, targets_BT, *_ = _inputs(False)
    h_BTD = h_BTD.astype(jnp.bfloat16)
    logp_BT, ent_BT = jax.jit(
        lambda h, w, t: L.chunked_logprobs_and_entropy(h, w, False, t, chunk=5)
    )(h_BTD, w, targets_BT)
    assert logp_BT.dtype == ent_BT.dtype == jnp.float32
    want = jax.jit(L.token_logprobs_and_entropy)(project_logits(h_BTD, w, False), targets_BT)
    _assert_close((logp_BT, ent_BT), want, atol=1e-6)


@pytest.mark.parametrize("transposed", [True, False], ids=["tied", "untied"])
def test_vocab_sharded_equals_unsharded(transposed):
    args = _inputs(transposed, seed=1)
    fn = _chunked_fn(transposed, 1.3, 5)
    want = fn(*args)
    # Auto axes, as models/sharding.py builds them: GSPMD propagates the unembedding's sharding.
    mesh = jax.make_mesh((4,), ("tensor",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    spec = PartitionSpec("tensor", None) if transposed else PartitionSpec(None, "tensor")
    w = jax.device_put(args[1], NamedSharding(mesh, spec))
    sharded_args = (args[0], w, *args[2:])
    got = fn(*sharded_args)
    # Each V reduction becomes 4 per-shard partial sums plus an all-reduce, a different summation
    # order: entropies near 4 then differ by ~2 float32 ulps (2.4e-7 each), hence the rtol.
    _assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert got[1][1].sharding.is_equivalent_to(w.sharding, 2)  # the gradient stays V-sharded
    # GSPMD keeps V sharded: no collective ever moves a [.., C, V]-shaped logits block.
    hlo = fn.lower(*sharded_args).compile().as_text()
    assert "all-reduce(" in hlo  # the V reductions really are partitioned
    for line in hlo.splitlines():
        if "all-gather" in line or "all-to-all" in line:
            assert f",{V}]" not in line and f"[{V}," not in line, line


def _while_body_collectives(hlo: str) -> list[str]:
    """Collective instructions inside the bodies of the compiled program's while loops."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    found, current = [], None
    for line in hlo.splitlines():
        if m := re.match(r"^%?([\w.\-]+) .*\{$", line):
            current = m.group(1)
        # The opcode follows a space; operands that name a collective's result follow a '%'.
        elif current in bodies and re.search(
            r" (all-gather|all-reduce|all-to-all)(-start)?\(", line
        ):
            found.append(line.strip())
    return found


@pytest.mark.parametrize("with_entropy", [True, False])
def test_batch_sharded_mesh_path_equals_unsharded(with_entropy):
    # The trainer's layout: rows over (data, fsdp), unembedding [V, D] over (tensor, fsdp).
    transposed, chunk = True, 5
    h_BTD, w, targets_BT, *_ = _inputs(transposed, seed=2)
    h_BTD, targets_BT = jnp.tile(h_BTD, (2, 1, 1)), jnp.tile(targets_BT, (2, 1))  # 4 rows

    def grads(mesh):
        def f(h, w_, tg):
            logp_BT, ent_BT = L.chunked_logprobs_and_entropy(
                h, w_, transposed, tg, temperature=0.9, chunk=chunk,
                with_entropy=with_entropy, mesh=mesh,
            )  # fmt: skip
            loss = jnp.sum(logp_BT * jnp.arange(T)) + (0.0 if ent_BT is None else jnp.sum(ent_BT))
            return loss, (logp_BT, ent_BT)

        return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

    want = grads(None)(h_BTD, w, targets_BT)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    args = (
        jax.device_put(h_BTD, rows),
        jax.device_put(w, NamedSharding(mesh, PartitionSpec("tensor", "fsdp"))),
        jax.device_put(targets_BT, rows),
    )
    fn = grads(mesh)
    got = fn(*args)
    # Reductions split over shards (V over 'tensor'; the unembedding gradient summed per batch
    # shard, then over shards) sum in another order. The unembedding gradient sums 48 terms of
    # magnitude up to ~20 per entry, so its small entries carry absolute errors of a few ulps of
    # the array's scale (seen: 1.2e-6 on a max of 21): tolerance 1e-6 of each array's max.
    _assert_close(got, want, atol=1e-6, rtol=1e-6, scaled=True)
    # Per chunk only per-token partial sums, [B, C] (over V) or [B, C, D] (dh), cross devices:
    # the unembedding is gathered and its gradient reduced once, outside the loop.
    for line in _while_body_collectives(fn.lower(*args).compile().as_text()):
        assert "all-gather" not in line, line
        result = line.split(" all-reduce")[0]
        shapes = [[int(n) for n in d.split(",")] for d in re.findall(r"\[([\d,]+)\]", result)]
        assert shapes and all(len(s) >= 2 and s[1] == chunk for s in shapes), line


def _grad_temp_bytes(t: int, chunk: int, d: int = 64, v: int = 32768) -> int:
    def f(h_BTD, w, targets_BT):
        logp_BT, ent_BT = L.chunked_logprobs_and_entropy(h_BTD, w, False, targets_BT, chunk=chunk)
        return jnp.mean(logp_BT) + 0.01 * jnp.mean(ent_BT)

    shapes = (
        jax.ShapeDtypeStruct((1, t, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((1, t), jnp.int32),
    )
    compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*shapes).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def test_chunked_backward_memory_is_per_chunk():
    # Compiled, never run: XLA's buffer assignment for forward + backward at V = 32768.
    whole = _grad_temp_bytes(4096, chunk=0)
    chunked = _grad_temp_bytes(4096, chunk=512)
    chunked_2x = _grad_temp_bytes(8192, chunk=512)
    logits_bytes = 4096 * 32768 * 4  # one whole-row float32 logits buffer
    assert whole >= logits_bytes
    assert chunked < whole / 4
    # Doubling T adds only the O(T) per-token buffers, not another T x V of logits.
    assert chunked_2x - chunked < logits_bytes / 8
