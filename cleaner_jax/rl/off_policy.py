"""Off-policy correction between the sampler's policy μ and the trainer's π_prox.

The sampler (fp16, paged kernels, an older weight version) and the trainer (fp32, packed forward)
disagree on the log-prob of the same token. With π_prox the trainer's recompute at the step's
start and μ the log-prob the sampler reported (or, for a SAAR-spliced span, its rescoring under
the purified context at the sampling temperature), every mode below shares the decoupled form

    loss = -E[w · min(r A, clip(r, 1-ε_low, 1+ε_high) A)],   r = π_θ / π_prox,  w = f(π_prox / μ)

with w a constant per token (no gradient) and tokens it rejects out of the loss and out of its
token count. ρ, the ratio π_prox / μ at the chosen level, is exp of a log ratio clipped to ±20:

- `level="token"`: ρ_t per token;
- `level="sequence"`: ρ = exp(Σ_t log ρ_t) over the sample's trained tokens, for all of them;
- `level="geometric"`: ρ = exp(mean_t log ρ_t), the per-token geometric mean (length-free).

Modes (`OffPolicyConfig.mode`):
- "none": no correction; the loss is exactly today's (no weights enter the program).
- "tis": truncated IS, w = min(ρ, cap). Tunix 0.1.7 `sampler_is="token"` (cap 2), verl
  `rollout_is` token/sequence, slime `--use-tis` (2.0), SkyRL TIS (token 2, sequence 5).
- "mis": masked IS, w = ρ where mask_low ≤ ρ ≤ mask_high, the token (or the whole sequence)
  rejected otherwise. verl seq-MIS (0.5–2.0), SkyRL's geometric mask (0.99–1.01), IcePop bounds.
- "decoupled": AReaL's decoupled PPO, w = π_prox / μ per token, tokens with w > cap rejected
  (AReaL's behaviour-weight cap); token level only.

All of it runs on the host in numpy over the samples before packing: π_prox and μ are fixed for
the step, so weights and masks are too. Metrics are per span kind (sampled tokens, shallow and
deep SAAR splices): quantiles of log π_prox − log μ, the fraction clipped (tis) or rejected,
k1 and k3 estimates of KL(μ ‖ π_prox), and the samples whose every trained token was rejected.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

MODES = ("none", "tis", "mis", "decoupled")
LEVELS = ("token", "sequence", "geometric")
LOG_RATIO_CLAMP = 20.0

# Per-token span kinds (TrainSample.span_kinds): what produced a token and its μ.
SPAN_NONE, SPAN_SAMPLED, SPAN_SHALLOW, SPAN_DEEP = 0, 1, 2, 3
SPAN_NAMES = {SPAN_SAMPLED: "sampled", SPAN_SHALLOW: "spliced_shallow", SPAN_DEEP: "spliced_deep"}


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig:
    """`loss.off_policy` and its fields (see the module docstring).

    Attributes:
      mode: "none" | "tis" | "mis" | "decoupled".
      level: "token" | "sequence" | "geometric" (tis and mis; decoupled is per token).
      cap: C, the truncation of tis and the rejection bound of decoupled (Tunix/verl: 2.0).
      mask_low, mask_high: the accepted range of ρ for mis (verl seq-MIS: 0.5, 2.0).
    """

    mode: str = "none"
    level: str = "token"
    cap: float = 2.0
    mask_low: float = 0.5
    mask_high: float = 2.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"loss.off_policy={self.mode!r}: choose one of {MODES}")
        if self.level not in LEVELS:
            raise ValueError(f"loss.off_policy_level={self.level!r}: choose one of {LEVELS}")
        if self.mode == "decoupled" and self.level != "token":
            raise ValueError(
                "loss.off_policy='decoupled' weighs each token by its own π_prox/μ (AReaL); "
                f"level={self.level!r} is for 'tis' or 'mis'"
            )
        if not self.cap >= 1.0:
            raise ValueError(f"loss.off_policy_cap={self.cap} must be >= 1 (it caps π_prox/μ)")
        if not 0.0 <= self.mask_low <= 1.0 <= self.mask_high or self.mask_low == self.mask_high:
            raise ValueError(
                f"loss.off_policy mask bounds [{self.mask_low}, {self.mask_high}] must hold 1 "
                "(mask_low <= 1 <= mask_high, not equal): otherwise a sampler that agrees with "
                "the trainer exactly would have every token rejected"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclasses.dataclass
class Correction:
    """One sample's correction, per token: the weight w (1 where nothing applies), whether the
    token stays in the loss, whether tis truncated its weight."""

    weights: np.ndarray
    keep: np.ndarray
    clipped: np.ndarray


def level_log_ratio(log_ratio: np.ndarray, mask: np.ndarray, level: str) -> np.ndarray:
    """log ρ per token at `level` from per-token log ratios (only `mask` tokens count)."""
    if level == "token" or not mask.any():
        return log_ratio
    total = float(np.sum(log_ratio[mask], dtype=np.float64))
    agg = total if level == "sequence" else total / int(mask.sum())
    agg = float(np.clip(agg, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return np.where(mask, agg, log_ratio).astype(np.float32)


def correct_sample(
    prox_lp: np.ndarray, behaviour_lp: np.ndarray, mask: np.ndarray, cfg: OffPolicyConfig
) -> Correction:
    """The correction of one sample from its π_prox and μ log-probs (`mask`: trained tokens)."""
    mask = np.asarray(mask) > 0
    d = np.where(mask, np.asarray(prox_lp, np.float32) - np.asarray(behaviour_lp, np.float32), 0)
    d = np.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).astype(np.float32)
    rho = np.exp(level_log_ratio(d, mask, cfg.level))
    keep, clipped = np.ones_like(mask), np.zeros_like(mask)
    if cfg.mode == "tis":
        clipped = mask & (rho > cfg.cap)
        w = np.minimum(rho, cfg.cap)
    elif cfg.mode == "mis":
        keep = (rho >= cfg.mask_low) & (rho <= cfg.mask_high)
        w = rho
    elif cfg.mode == "decoupled":
        keep = rho <= cfg.cap
        w = rho
    else:
        w = np.ones_like(rho)
    keep = keep | ~mask
    weights = np.where(mask & keep, w, 1.0).astype(np.float32)
    return Correction(weights, keep, clipped)


def apply(samples: Sequence, cfg: OffPolicyConfig) -> dict:
    """Weighs and masks `samples` in place (`is_weights`, `loss_mask`); returns the metrics.

    Each sample's `logprobs` must hold π_prox (the trainer's recompute) and `behaviour_logprobs`
    μ, with `behaviour_mask` 1 wherever μ is valid. Raises when a trained token has no μ; warns
    (and reports `off_policy/rejected_all`) when the bounds reject every trained token.
    """
    if not cfg.enabled:
        return mismatch_by_span(samples, None)
    missing = sum(int(np.sum((s.loss_mask > 0) & (s.behaviour_mask <= 0))) for s in samples)
    if missing:
        raise ValueError(
            f"loss.off_policy={cfg.mode!r} needs the sampler's log-prob μ of every trained token; "
            f"{missing} trained tokens have none (SAAR splices not rescored: set "
            "saar.recompute_spliced_logprobs=True, or a policy whose score function is missing)"
        )
    corrections = [
        correct_sample(s.logprobs, s.behaviour_logprobs, s.loss_mask, cfg) for s in samples
    ]
    metrics = mismatch_by_span(samples, corrections)
    trained = sum(float(np.sum(s.loss_mask > 0)) for s in samples)
    full = sum(
        int((s.loss_mask > 0).any() and not c.keep[s.loss_mask > 0].any())
        for s, c in zip(samples, corrections, strict=True)
    )
    for s, c in zip(samples, corrections, strict=True):
        s.is_weights = c.weights
        s.loss_mask = (s.loss_mask * c.keep).astype(np.float32)
    kept = sum(float(np.sum(s.loss_mask > 0)) for s in samples)
    metrics["off_policy/rejected_frac"] = 1.0 - kept / trained if trained else 0.0
    metrics["off_policy/samples_fully_rejected"] = float(full)
    metrics["off_policy/rejected_all"] = float(trained > 0 and kept == 0)
    if trained > 0 and kept == 0:
        logging.warning(
            "loss.off_policy=%s (level %s, bounds [%g, %g], cap %g) rejected all %d trained "
            "tokens of this step: the update has no gradient. Widen the bounds or check the "
            "sampler (fp16? stale weights?): off_policy/* metrics show the log-ratio quantiles.",
            cfg.mode, cfg.level, cfg.mask_low, cfg.mask_high, cfg.cap, int(trained),
        )  # fmt: skip
    return metrics


def mismatch_by_span(samples: Sequence, corrections: Sequence[Correction] | None) -> dict:
    """Per span kind: quantiles of log π_prox − log μ, k1/k3 KL(μ‖π_prox), and with
    corrections the fractions clipped and rejected and the fully rejected samples."""
    out: dict[str, float] = {}
    for kind, name in SPAN_NAMES.items():
        ds, clipped, rejected, full = [], 0, 0, 0
        for i, s in enumerate(samples):
            m = (s.loss_mask > 0) & (s.span_kinds == kind) & (s.behaviour_mask > 0)
            if not m.any():
                continue
            d = np.clip(s.logprobs[m] - s.behaviour_logprobs[m], -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            ds.append(d.astype(np.float64))
            if corrections is not None:
                c = corrections[i]
                clipped += int(np.sum(c.clipped[m]))
                rejected += int(np.sum(~c.keep[m]))
                full += int(not c.keep[m].any())
        if not ds:
            continue
        d = np.concatenate(ds)
        p = f"off_policy/{name}"
        out[f"{p}/tokens"] = float(d.size)
        for q in (5, 50, 95):
            out[f"{p}/log_ratio_p{q}"] = float(np.percentile(d, q))
        out[f"{p}/log_ratio_abs_max"] = float(np.abs(d).max())
        # Tokens come from μ; with r = π_prox/μ, KL(μ‖π_prox) ≈ E[-log r] (k1), E[r-1-log r] (k3).
        out[f"{p}/kl_k1"] = float(np.mean(-d))
        out[f"{p}/kl_k3"] = float(np.mean(np.exp(d) - 1.0 - d))
        if corrections is not None:
            out[f"{p}/clipped_frac"] = clipped / d.size
            out[f"{p}/rejected_frac"] = rejected / d.size
            out[f"{p}/samples_fully_rejected"] = float(full)
    return out


# `correction=` presets of the configs: (mode, level, cap, mask_low, mask_high), peers' defaults.
PRESETS = {
    "none": ("none", "token", 2.0, 0.5, 2.0),  # the reference's setting with CLEANER
    "tis": ("tis", "token", 2.0, 0.5, 2.0),  # Tunix sampler_is="token", slime --use-tis, SkyRL
    "seq_tis": ("tis", "sequence", 5.0, 0.5, 2.0),  # SkyRL sequence TIS (C = 5)
    "seq_mis": ("mis", "sequence", 2.0, 0.5, 2.0),  # verl seq-MIS bounds
    "geo_mis": ("mis", "geometric", 2.0, 0.99, 1.01),  # SkyRL's geometric mask
    "decoupled": ("decoupled", "token", 5.0, 0.5, 2.0),  # AReaL decoupled PPO, weight cap 5
}


def preset_fields(name: str) -> dict:
    """The `loss.off_policy*` config fields of a `correction=` preset."""
    if name not in PRESETS:
        raise ValueError(f"correction={name!r}: choose one of {sorted(PRESETS)}")
    mode, level, cap, low, high = PRESETS[name]
    return dict(
        off_policy=mode,
        off_policy_level=level,
        off_policy_cap=cap,
        off_policy_mask_low=low,
        off_policy_mask_high=high,
    )


def config_from(loss_cfg) -> OffPolicyConfig:
    """`OffPolicyConfig` from a config's `loss` section (the `preset_fields` keys)."""
    return OffPolicyConfig(
        mode=loss_cfg.off_policy,
        level=loss_cfg.off_policy_level,
        cap=float(loss_cfg.off_policy_cap),
        mask_low=float(loss_cfg.off_policy_mask_low),
        mask_high=float(loss_cfg.off_policy_mask_high),
    )
