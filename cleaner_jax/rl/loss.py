"""Policy-gradient loss: clipped surrogate (ε_low/ε_high, dual clip), k3 KL, entropy, metrics.

Pure, jit-friendly jax.numpy functions. Legend: B batch (trajectories), T sequence (response
tokens), C tokens per chunk, N chunks, D embed, V vocab. Every per-token quantity is float32
``[B, T]``; ``loss_mask_BT`` is 1 on policy tokens that are trained on (0 on prompt, tool output
and padding).

Log-probs come from final hidden states through `chunked_logprobs_and_entropy`, which never holds
whole-row logits: at 151,936 vocab x 23,040 tokens a row's float32 logits alone are ~14 GB. It
projects C tokens per row at a time in a scan; its hand-written backward (a `jax.custom_vjp`
that saves the per-token log-sum-exp) recomputes each chunk's logits in a second scan, so forward
and backward both keep O(B x C x V) logits alive. `token_logprobs_and_entropy` is the same math
on logits that already exist (tests, small vocabularies).

The surrogate follows verl's ``compute_policy_loss`` (checked against its source): with
``ratio = exp(clip(logp - old_logp, -20, 20))``,

    l1 = -A * ratio,  l2 = -A * clip(ratio, 1 - ε_low, 1 + ε_high),  l_clip = max(l1, l2)
    l  = min(l_clip, -A * c)  where A < 0  (dual clip: caps the loss of a negative-advantage
                                            token whose ratio exploded at c * |A|)
    l  = l_clip               where A >= 0

aggregated as a token mean over the mask (DAPO "token-mean"). For gradient accumulation over
micro-batches pass ``num_tokens`` = the mask sum of the whole mini-batch, so the accumulated loss is
the mini-batch token mean and not a mean of micro-batch means.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp

_LOG_RATIO_CLAMP = 20.0
_K3_CLAMP = 10.0


def _logprobs_and_entropy(
    logits_XV: jax.Array, targets_X: jax.Array, with_entropy: bool
) -> tuple[jax.Array, jax.Array | None]:
    """log p(target) and entropy over the last axis of logits that are already float32+.

    Written as elementwise ops and reductions over V only, so with V sharded (tensor parallelism,
    vocab -> 'tensor') GSPMD partitions it into per-shard work plus all-reduces of [..]-shaped
    partial results: the target logit is picked by a masked sum against an iota rather than
    `take_along_axis`, whose gather on a sharded dimension can make XLA all-gather the logits.
    """
    logz_X = jax.nn.logsumexp(logits_XV, axis=-1)
    vocab_V = jax.lax.broadcasted_iota(targets_X.dtype, (logits_XV.shape[-1],), 0)
    is_target_XV = vocab_V == targets_X[..., None]
    # Exactly one nonzero term per row, so the sum is exact (equal to a gather).
    target_logit_X = jnp.sum(jnp.where(is_target_XV, logits_XV, 0.0), axis=-1)
    logp_X = target_logit_X - logz_X
    if not with_entropy:
        return logp_X, None
    # H = logz - E_p[logits]; p from the logz already computed (no second softmax).
    probs_XV = jnp.exp(logits_XV - logz_X[..., None])
    entropy_X = logz_X - jnp.sum(probs_XV * logits_XV, axis=-1)
    return logp_X, entropy_X


def token_logprobs_and_entropy(
    logits_BTV: jax.Array, targets_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-token log p(target) and entropy of the predictive distribution, both float32 [B, T].

    ``logits_BTV[:, t]`` must be the logits that predict ``targets_BT[:, t]`` (shift beforehand).
    Whole-row logits; for model outputs use `chunked_logprobs_and_entropy` on hidden states.
    """
    # float32 at least (bf16/fp16 logits are upcast); float64 stays float64 (gradient checks).
    logits_BTV = logits_BTV.astype(jnp.promote_types(logits_BTV.dtype, jnp.float32))
    return _logprobs_and_entropy(logits_BTV, targets_BT, with_entropy=True)


def _project(h_XD: jax.Array, w: jax.Array, transposed: bool) -> jax.Array:
    """Logits [..., V] at float32 or wider; same math as `models.qwen.project_logits`."""
    eq = "...d,vd->...v" if transposed else "...d,dv->...v"
    out_dtype = jnp.promote_types(h_XD.dtype, jnp.float32)
    return jnp.einsum(eq, h_XD, w, preferred_element_type=out_dtype)


def chunked_logprobs_and_entropy(
    h_BTD: jax.Array,
    unembed: jax.Array,
    transposed: bool,
    targets_BT: jax.Array,
    *,
    temperature: float = 1.0,
    chunk: int = 1024,
    with_entropy: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> tuple[jax.Array, jax.Array | None]:
    """log p(target) and entropy under softmax(h @ unembed / temperature), C tokens at a time.

    Args:
      h_BTD: final-norm hidden states (`Qwen.hidden_states`); ``h_BTD[:, t]`` predicts
        ``targets_BT[:, t]`` (shift beforehand). bf16/fp16 is fine: the matmul accumulates and
        returns float32 as `Qwen.logits` does.
      unembed, transposed: `Qwen.unembedding()`: a ``[V, D]`` tied embedding (True) or a
        ``[D, V]`` lm_head kernel (False). It is cast to ``h_BTD``'s dtype like `Qwen.logits`.
      targets_BT: int token ids.
      temperature: a Python number (static: the hand-written backward is specialised to it).
      chunk: tokens per row per loop step, C. Live logits are [B, C, V] in the forward and the
        backward (which recomputes them). ``chunk <= 0`` or ``>= T`` projects whole rows at once
        and keeps the [B, T, V] logits for the backward. T is padded up to a multiple of C.
      with_entropy: False skips the entropy (returned as None).
      mesh, batch_axes: the mesh whose ``batch_axes`` shard the rows of ``h_BTD`` (the trainer's).
        With it the chunk loop runs per batch shard (`jax.shard_map`, manual over the batch axes,
        GSPMD for the rest, e.g. V over 'tensor'): the unembedding is gathered over the batch
        axes once, not in every step, and its gradient is summed over them once after the
        loop, not all-reduced every step as GSPMD does with a gradient accumulated in a loop.

    Returns:
      (logp_BT, entropy_BT or None), float32 (float64 if ``h_BTD`` is float64). Gradients flow to
      both ``h_BTD`` and ``unembed`` through a hand-written backward (`_head`): the softmax
      gradient is formed once per chunk from the saved log-sum-exp, not differentiated through
      a rematerialised forward.
    """
    if h_BTD.ndim != 3 or targets_BT.shape != h_BTD.shape[:2]:
        raise ValueError(
            f"expected hidden states [B, T, D] and targets [B, T], got {h_BTD.shape} and "
            f"{targets_BT.shape}"
        )
    b, t, d = h_BTD.shape
    if unembed.ndim != 2 or unembed.shape[1 if transposed else 0] != d:
        raise ValueError(
            f"unembedding {unembed.shape} (transposed={transposed}) does not match hidden size {d};"
            " pass Qwen.unembedding() unchanged: ([V, D], True) or ([D, V], False)"
        )
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, jax.Array):
        raise TypeError(
            f"temperature must be a Python number (static under jit), got {type(temperature)}"
        )
    w = unembed.astype(h_BTD.dtype)
    targets_BT = targets_BT.astype(jnp.int32)
    chunk = t if chunk <= 0 or chunk >= t else chunk
    head = functools.partial(
        _head, transposed=transposed, temperature=float(temperature), chunk=chunk,
        with_entropy=with_entropy,
    )  # fmt: skip

    axes = () if mesh is None else tuple(a for a in batch_axes if mesh.shape.get(a, 1) > 1)
    if not axes:
        return _outputs(head(h_BTD, w, targets_BT), with_entropy)
    shards = math.prod(mesh.shape[a] for a in axes)
    if b % shards:
        raise ValueError(
            f"{b} rows cannot be split over the batch axes {axes} ({shards} shards); round the "
            "rows up to a multiple (update.round_rows) or pass mesh=None"
        )

    def per_shard(w_, h_BTD, targets_BT):
        # Mark the unembedding as varying over the batch shards before the loop: the loop then
        # accumulates each shard's own gradient, and this cast's transpose (a psum) sums them
        # once. Left invariant, every chunk's gradient would be psum-ed inside the loop.
        w_ = jax.lax.pcast(w_, axes, to="varying")
        return _outputs(head(h_BTD, w_, targets_BT), with_entropy)

    rows = jax.sharding.PartitionSpec(axes)
    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(jax.sharding.PartitionSpec(), rows, rows),
        out_specs=(rows, rows if with_entropy else None),
        axis_names=set(axes),
    )(w, h_BTD, targets_BT)


def _outputs(logp_and_entropy, with_entropy):
    logp_BT, entropy_BT = logp_and_entropy
    return logp_BT, entropy_BT if with_entropy else None


# ------------------------------------------------------------ the log-prob head and its backward
#
# With s = logits / temperature, lse = logsumexp(s), p = softmax(s), logp = s[target] - lse and
# H = lse - sum(p * s), the cotangents (g_lp, g_H) of (logp, H) give
#     d s = g_lp * (onehot(target) - p) - g_H * p * (s - lse + H),
# then d logits = d s / temperature, dh = d logits @ W^T and dW = h^T @ d logits. Written by hand
# because autodiff through the rematerialised chunk loop ran the softmax forward twice and its
# transpose once, and XLA on CPU materialised a transposed copy of d logits for dW (issue #19).


def _chunk_stats(h_BCD, w, targets_BC, transposed, temperature, with_entropy):
    """(logp, entropy (zeros without it), lse) [B, C] and the scaled logits [B, C, V]."""
    s_BCV = _project(h_BCD, w, transposed) / temperature
    lse_BC = jax.nn.logsumexp(s_BCV, axis=-1)
    # The target logit by a masked sum against an iota, not a gather: with V sharded
    # (vocab -> 'tensor') GSPMD partitions this into per-shard sums plus an all-reduce.
    vocab_V = jax.lax.broadcasted_iota(jnp.int32, (s_BCV.shape[-1],), 0)
    target_BC = jnp.sum(jnp.where(vocab_V == targets_BC[..., None], s_BCV, 0.0), axis=-1)
    if with_entropy:
        p_BCV = jnp.exp(s_BCV - lse_BC[..., None])
        entropy_BC = lse_BC - jnp.sum(p_BCV * s_BCV, axis=-1)
    else:
        entropy_BC = jnp.zeros_like(lse_BC)
    return (target_BC - lse_BC, entropy_BC, lse_BC), s_BCV


def _chunk_grads(s_BCV, h_BCD, w, targets_BC, lse_BC, entropy_BC, g_lp_BC, g_h_BC, cfg):
    """(dh [B, C, D] in h's dtype, dW in float32+) of one chunk from its scaled logits."""
    transposed, temperature, with_entropy = cfg
    vocab_V = jax.lax.broadcasted_iota(jnp.int32, (s_BCV.shape[-1],), 0)
    p_BCV = jnp.exp(s_BCV - lse_BC[..., None])
    ds_BCV = g_lp_BC[..., None] * (jnp.where(vocab_V == targets_BC[..., None], 1.0, 0.0) - p_BCV)
    if with_entropy:
        ds_BCV = ds_BCV - g_h_BC[..., None] * p_BCV * (s_BCV - (lse_BC - entropy_BC)[..., None])
    acc = jnp.promote_types(h_BCD.dtype, jnp.float32)
    dz_BCV = (ds_BCV / temperature).astype(h_BCD.dtype)
    dh_eq = "bcv,vd->bcd" if transposed else "bcv,dv->bcd"
    dh_BCD = jnp.einsum(dh_eq, dz_BCV, w, preferred_element_type=acc).astype(h_BCD.dtype)
    # dW contracts the tokens as one dimension (2-D operands): contracting (B, C) as two made
    # XLA on CPU write a transposed copy of dz first.
    dz_XV, h_XD = dz_BCV.reshape(-1, dz_BCV.shape[-1]), h_BCD.reshape(-1, h_BCD.shape[-1])
    if transposed:
        dw = jnp.einsum("xv,xd->vd", dz_XV, h_XD, preferred_element_type=acc)
    else:
        dw = jnp.einsum("xd,xv->dv", h_XD, dz_XV, preferred_element_type=acc)
    return dh_BCD, dw


def _to_chunks(x_BT, chunk):
    """[B, T, ...] -> [N, B, C, ...], T zero-padded to N * C (padding: token 0, zero state)."""
    b, t = x_BT.shape[:2]
    n = -(-t // chunk)
    pad = [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x_BT.ndim - 2)
    x = jnp.pad(x_BT, pad).reshape(b, n, chunk, *x_BT.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _from_chunks(x_NBC, t):
    n, b, c = x_NBC.shape[:3]
    return jnp.moveaxis(x_NBC, 0, 1).reshape(b, n * c, *x_NBC.shape[3:])[:, :t]


def _head_forward(h_BTD, w, targets_BT, transposed, temperature, chunk, with_entropy):
    """((logp, entropy, lse) [B, T], the scaled logits when T is one chunk, else None)."""
    t = h_BTD.shape[1]
    stats = functools.partial(
        _chunk_stats, w=w, transposed=transposed, temperature=temperature,
        with_entropy=with_entropy,
    )  # fmt: skip
    if chunk >= t:
        return stats(h_BTD, targets_BC=targets_BT)

    def step(carry, xs):
        return carry, stats(xs[0], targets_BC=xs[1])[0]

    _, out_NBC = jax.lax.scan(step, None, (_to_chunks(h_BTD, chunk), _to_chunks(targets_BT, chunk)))
    return tuple(_from_chunks(x, t) for x in out_NBC), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _head(h_BTD, w, targets_BT, transposed, temperature, chunk, with_entropy):
    """(logp [B, T], entropy [B, T]: zeros without it) with the backward described above."""
    out, _ = _head_forward(h_BTD, w, targets_BT, transposed, temperature, chunk, with_entropy)
    return out[:2]


def _head_fwd(h_BTD, w, targets_BT, transposed, temperature, chunk, with_entropy):
    (logp, entropy, lse), s_BTV = _head_forward(
        h_BTD, w, targets_BT, transposed, temperature, chunk, with_entropy
    )
    # Saved: per-token lse and entropy; the logits only when the whole row is one chunk (they
    # are [B, T, V] then anyway); otherwise each chunk's logits are recomputed in the backward.
    return (logp, entropy), (h_BTD, w, targets_BT, lse, entropy, s_BTV)


def _head_bwd(transposed, temperature, chunk, with_entropy, res, g):
    h_BTD, w, targets_BT, lse_BT, entropy_BT, s_BTV = res
    g_lp_BT, g_h_BT = g
    cfg = (transposed, temperature, with_entropy)
    t = h_BTD.shape[1]
    if s_BTV is not None:
        dh_BTD, dw = _chunk_grads(
            s_BTV, h_BTD, w, targets_BT, lse_BT, entropy_BT, g_lp_BT, g_h_BT, cfg
        )
        return dh_BTD, dw.astype(w.dtype), None

    def step(dw_acc, xs):
        h_BCD, targets_BC = xs[:2]
        s_BCV = _project(h_BCD, w, transposed) / temperature
        dh_BCD, dw = _chunk_grads(s_BCV, h_BCD, w, targets_BC, *xs[2:], cfg)
        return dw_acc + dw, dh_BCD

    acc = jnp.promote_types(h_BTD.dtype, jnp.float32)
    # zeros_like, not zeros: inside shard_map the accumulator must vary over w's manual axes.
    dw0 = jnp.zeros_like(w, dtype=acc)
    xs = (h_BTD, targets_BT, lse_BT, entropy_BT, g_lp_BT, g_h_BT)
    dw, dh_NBCD = jax.lax.scan(step, dw0, tuple(_to_chunks(x, chunk) for x in xs))
    return _from_chunks(dh_NBCD, t), dw.astype(w.dtype), None


_head.defvjp(_head_fwd, _head_bwd)


def k3_kl(logp_BT: jax.Array, ref_logp_BT: jax.Array) -> jax.Array:
    """Low-variance (k3) estimate of KL(π || π_ref) per token: exp(d) - d - 1, d = ref - logp.

    Clamped as in verl (d to ±20, the result to ±10) so a stray token cannot blow the loss up.
    """
    d_BT = jnp.clip(ref_logp_BT - logp_BT, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(d_BT) - d_BT - 1.0, -_K3_CLAMP, _K3_CLAMP)


def masked_mean(
    x_BT: jax.Array, mask_BT: jax.Array, num_tokens: jax.Array | float | None = None
) -> jax.Array:
    """Sum of x over the mask divided by ``num_tokens`` (default: the mask sum, at least 1)."""
    mask_BT = jnp.asarray(mask_BT, x_BT.dtype)
    total = jnp.sum(jnp.where(mask_BT > 0, x_BT, 0.0) * mask_BT)
    denom = jnp.maximum(jnp.sum(mask_BT), 1.0) if num_tokens is None else num_tokens
    return total / denom


def policy_loss(
    logp_BT: jax.Array,
    old_logp_BT: jax.Array,
    advantages: jax.Array,
    loss_mask_BT: jax.Array,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    dual_clip_c: float | None = 10.0,
    ref_logp_BT: jax.Array | None = None,
    kl_coef: float = 0.0,
    entropy_BT: jax.Array | None = None,
    entropy_coef: float = 0.0,
    num_tokens: jax.Array | float | None = None,
    is_weights_BT: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean clipped surrogate (+ kl_coef * k3 KL - entropy_coef * entropy).

    Args:
      logp_BT: log-probs of the taken tokens under the policy being trained.
      old_logp_BT: log-probs under the policy that sampled them (no gradient flows into them).
      advantages: ``[B]`` (one per trajectory) or ``[B, T]``.
      loss_mask_BT: 1 where the token is trained on.
      dual_clip_c: dual-clip bound (> 1) for negative advantages; None disables it.
      ref_logp_BT: frozen reference log-probs; with kl_coef > 0 adds the k3 KL penalty.
      entropy_BT: per-token entropy (from `token_logprobs_and_entropy`), for the metric and the
        optional entropy bonus.
      num_tokens: token-mean denominator (see module docstring); default the mask sum.
      is_weights_BT: the off-policy correction's per-token weight w (`rl/off_policy.py`; no
        gradient flows into it): each token's surrogate is multiplied by it. None = no weights
        (the program is then exactly the uncorrected one).

    Returns:
      (loss scalar, metrics) with masked-mean metrics ``pg_loss``, ``clip_frac_low`` (A < 0 and
      ratio < 1 - ε_low), ``clip_frac_high`` (A > 0 and ratio > 1 + ε_high), ``clip_frac``
      (either; verl's pg_clipfrac), ``dual_clip_frac``, ``approx_kl`` (mean of old - new log p,
      verl's ppo_kl), ``ratio_mean``, and when given ``kl``, ``entropy``.
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c}")
    dtype = jnp.promote_types(jnp.asarray(logp_BT).dtype, jnp.float32)
    logp_BT = jnp.asarray(logp_BT, dtype)
    mask_BT = jnp.asarray(loss_mask_BT, dtype)
    valid_BT = mask_BT > 0
    adv_BT = jnp.asarray(advantages, dtype)
    if adv_BT.ndim == 1:
        adv_BT = adv_BT[:, None]
    adv_BT = jnp.broadcast_to(adv_BT, logp_BT.shape)
    old_logp_BT = jax.lax.stop_gradient(jnp.asarray(old_logp_BT, dtype))
    # Masked positions may hold garbage (-inf log-probs of padding); zero them before any math so
    # neither the value nor the gradient can become NaN.
    log_ratio_BT = jnp.where(valid_BT, logp_BT - old_logp_BT, 0.0)
    log_ratio_BT = jnp.clip(log_ratio_BT, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio_BT = jnp.exp(log_ratio_BT)

    loss1_BT = -adv_BT * ratio_BT
    loss2_BT = -adv_BT * jnp.clip(ratio_BT, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    clipped_loss_BT = jnp.maximum(loss1_BT, loss2_BT)
    negative_BT = adv_BT < 0
    if dual_clip_c is not None:
        loss3_BT = -adv_BT * dual_clip_c
        pg_loss_BT = jnp.where(negative_BT, jnp.minimum(clipped_loss_BT, loss3_BT), clipped_loss_BT)
        dual_clipped_BT = negative_BT & (clipped_loss_BT > loss3_BT)
    else:
        pg_loss_BT = clipped_loss_BT
        dual_clipped_BT = jnp.zeros_like(negative_BT)

    extra = {}
    if is_weights_BT is not None:
        w_BT = jax.lax.stop_gradient(jnp.asarray(is_weights_BT, dtype))
        pg_loss_BT = pg_loss_BT * w_BT
        extra["is_weight_mean"] = masked_mean(w_BT, mask_BT)
    pg_loss = masked_mean(pg_loss_BT, mask_BT, num_tokens)
    loss = pg_loss
    metrics = {
        "pg_loss": pg_loss,
        "clip_frac": masked_mean((loss2_BT > loss1_BT).astype(dtype), mask_BT),
        "clip_frac_low": masked_mean(
            (negative_BT & (ratio_BT < 1.0 - clip_eps_low)).astype(dtype), mask_BT
        ),
        "clip_frac_high": masked_mean(
            ((adv_BT > 0) & (ratio_BT > 1.0 + clip_eps_high)).astype(dtype), mask_BT
        ),
        "dual_clip_frac": masked_mean(dual_clipped_BT.astype(dtype), mask_BT),
        "approx_kl": masked_mean(-log_ratio_BT, mask_BT),
        "ratio_mean": masked_mean(ratio_BT, mask_BT),
        **extra,
    }
    if ref_logp_BT is not None:
        safe_ref_BT = jnp.where(valid_BT, jax.lax.stop_gradient(ref_logp_BT), 0.0)
        safe_logp_BT = jnp.where(valid_BT, logp_BT, 0.0)
        kl = masked_mean(k3_kl(safe_logp_BT, safe_ref_BT), mask_BT, num_tokens)
        metrics["kl"] = kl
        loss = loss + kl_coef * kl
    if entropy_BT is not None:
        entropy = masked_mean(entropy_BT, mask_BT, num_tokens)
        metrics["entropy"] = entropy
        loss = loss - entropy_coef * entropy
    metrics["loss"] = loss
    return loss, metrics
