"""Outcome advantages over groups of n responses per prompt, and DAPO dynamic-sampling helpers.

Pure numpy functions of a flat reward vector ``rewards_B`` with ``B = G * n``, laid out group by
group (responses of prompt g are rows ``g*n .. g*n+n-1``). Legend: B trajectories, G groups
(prompts), n group size.

Estimators (verl's ``core_algos`` semantics, checked against its source):
  * ``grpo``:   (r - mean_g) / (std_g + eps) with the SAMPLE std (ddof=1; verl uses torch.std,
    which is unbiased). A zero-variance group gets all-zero advantages.
  * ``drgrpo``: r - mean_g (Dr. GRPO: no std division).
  * ``rloo``:   r - mean of the other n-1 rewards = (r - mean_g) * n / (n - 1).
For n == 1 all three return r unchanged (verl: mean 0, std 1 for singleton groups).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

AdvantageEstimator = Literal["grpo", "drgrpo", "rloo"]
ADVANTAGE_ESTIMATORS: tuple[str, ...] = ("grpo", "drgrpo", "rloo")


def _grouped(rewards_B: np.ndarray, group_size: int) -> np.ndarray:
    rewards_B = np.asarray(rewards_B, dtype=np.float64)
    if rewards_B.ndim != 1:
        raise ValueError(f"rewards must be a flat [B] vector, got shape {rewards_B.shape}")
    if group_size < 1 or rewards_B.shape[0] % group_size:
        raise ValueError(
            f"B={rewards_B.shape[0]} rewards do not split into groups of {group_size}; "
            "pass all n responses of every prompt, laid out group by group"
        )
    return rewards_B.reshape(-1, group_size)


def grpo_advantages(
    rewards_B: np.ndarray, group_size: int, eps: float = 1e-6, normalize_std: bool = True
) -> np.ndarray:
    """GRPO (normalize_std=True) or Dr.GRPO (False) advantages, float32 [B]."""
    r_Gn = _grouped(rewards_B, group_size)
    if group_size == 1:
        return r_Gn.reshape(-1).astype(np.float32)
    centered_Gn = r_Gn - r_Gn.mean(axis=1, keepdims=True)
    if normalize_std:
        centered_Gn = centered_Gn / (r_Gn.std(axis=1, ddof=1, keepdims=True) + eps)
    return centered_Gn.reshape(-1).astype(np.float32)


def drgrpo_advantages(rewards_B: np.ndarray, group_size: int) -> np.ndarray:
    """Dr.GRPO advantages r - group mean, float32 [B]."""
    return grpo_advantages(rewards_B, group_size, normalize_std=False)


def rloo_advantages(rewards_B: np.ndarray, group_size: int) -> np.ndarray:
    """RLOO advantages: each reward minus the mean of the other n-1 in its group, float32 [B]."""
    r_Gn = _grouped(rewards_B, group_size)
    if group_size == 1:
        return r_Gn.reshape(-1).astype(np.float32)
    loo_mean_Gn = (r_Gn.sum(axis=1, keepdims=True) - r_Gn) / (group_size - 1)
    return (r_Gn - loo_mean_Gn).reshape(-1).astype(np.float32)


def compute_advantages(
    rewards_B: np.ndarray,
    group_size: int,
    estimator: AdvantageEstimator = "grpo",
    eps: float = 1e-6,
) -> np.ndarray:
    """Dispatches to one of `ADVANTAGE_ESTIMATORS`; float32 [B]."""
    if estimator == "grpo":
        return grpo_advantages(rewards_B, group_size, eps)
    if estimator == "drgrpo":
        return drgrpo_advantages(rewards_B, group_size)
    if estimator == "rloo":
        return rloo_advantages(rewards_B, group_size)
    raise ValueError(
        f"unknown advantage estimator {estimator!r}; use one of {ADVANTAGE_ESTIMATORS}"
    )


def zero_variance_groups(rewards_B: np.ndarray, group_size: int, atol: float = 0.0) -> np.ndarray:
    """bool [G]: groups whose rewards are all equal (within atol): no learning signal under GRPO.

    DAPO dynamic sampling drops these and samples more prompts to refill the batch.
    """
    r_Gn = _grouped(rewards_B, group_size)
    return (r_Gn.max(axis=1) - r_Gn.min(axis=1)) <= atol


def keep_group_rows(group_mask_G: np.ndarray, group_size: int) -> np.ndarray:
    """Row indices [B'] of the trajectories in the groups where `group_mask_G` is True."""
    groups = np.flatnonzero(np.asarray(group_mask_G, dtype=bool))
    return (groups[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)


@dataclasses.dataclass
class DynamicSamplingState:
    """Accumulates informative groups across generation rounds until a batch is full (DAPO).

    Usage per training step: ``state = DynamicSamplingState(target_groups=128, group_size=16)``;
    after each generation round ``rows = state.add(rewards_B)`` gives the rows of the round to
    keep (whole groups with non-zero reward variance, truncated so the total never exceeds the
    target); stop when ``state.full`` or after ``max_rounds`` (then train on what was kept, or
    raise, as the trainer decides).
    """

    target_groups: int
    group_size: int
    max_rounds: int = 10
    atol: float = 0.0
    kept_groups: int = 0
    rounds: int = 0
    dropped_groups: int = 0

    @property
    def full(self) -> bool:
        return self.kept_groups >= self.target_groups

    @property
    def exhausted(self) -> bool:
        return self.rounds >= self.max_rounds

    def add(self, rewards_B: np.ndarray) -> np.ndarray:
        """Row indices of this round's rewards to keep (see class docstring)."""
        informative_G = ~zero_variance_groups(rewards_B, self.group_size, self.atol)
        self.rounds += 1
        self.dropped_groups += int((~informative_G).sum())
        room = max(self.target_groups - self.kept_groups, 0)
        keep_G = informative_G & (np.cumsum(informative_G) <= room)
        self.kept_groups += int(keep_G.sum())
        return keep_group_rows(keep_G, self.group_size)
