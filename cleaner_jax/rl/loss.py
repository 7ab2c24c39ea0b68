"""Policy-gradient loss: clipped surrogate (ε_low/ε_high, dual clip), k3 KL, entropy, metrics.

Pure, jit-friendly jax.numpy functions. Legend: B batch (trajectories), T sequence (response
tokens), V vocab. Every per-token quantity is float32 ``[B, T]``; ``loss_mask_BT`` is 1 on policy
tokens that are trained on (0 on prompt, tool output and padding).

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

import jax
import jax.numpy as jnp

_LOG_RATIO_CLAMP = 20.0
_K3_CLAMP = 10.0


def token_logprobs_and_entropy(
    logits_BTV: jax.Array, targets_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-token log p(target) and entropy of the predictive distribution, both float32 [B, T].

    ``logits_BTV[:, t]`` must be the logits that predict ``targets_BT[:, t]`` (shift beforehand).
    """
    # float32 at least (bf16/fp16 logits are upcast); float64 stays float64 (gradient checks).
    logits_BTV = logits_BTV.astype(jnp.promote_types(logits_BTV.dtype, jnp.float32))
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logits_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    logp_BT = target_logits_BT - logz_BT
    probs_BTV = jax.nn.softmax(logits_BTV, axis=-1)
    entropy_BT = logz_BT - jnp.sum(probs_BTV * logits_BTV, axis=-1)
    return logp_BT, entropy_BT


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
