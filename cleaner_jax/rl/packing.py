"""Sequence packing for training: trajectories → fixed-shape rows with segment ids.

A trajectory of n tokens contributes n-1 (input, target) pairs: input token i predicts token i+1.
Several trajectories share a row (first-fit decreasing) without attending to each other; segment
id 0 marks padding. Rows are grouped into micro-batches of a fixed row count so the jitted train
step sees one shape.

Letters: R rows, T row length.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np


@dataclasses.dataclass
class TrainSample:
    """One trajectory as the trainer sees it (all per-token arrays have the same length n).

    `logprobs[i]` is the old log-prob of `tokens[i]` given `tokens[:i]` that the clipped ratio
    is taken against (meaningful where `loss_mask[i]` is 1): the sampler's, until the trainer's
    recompute replaces it with π_prox. `behaviour_logprobs` keep the sampler's μ (a copy of
    `logprobs` when not given), valid where `behaviour_mask` is 1; `span_kinds` says what
    produced each token (`off_policy.SPAN_*`), `versions` the policy version behind its μ (-1:
    none); `is_weights` is the off-policy correction's weight (`rl/off_policy.py`, 1 = none).
    `group` identifies the prompt (for prefix-shared recompute), `prompt_len` the number of
    leading prompt tokens.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    advantage: float = 0.0
    logprobs: np.ndarray | None = None
    group: int = 0
    prompt_len: int = 0
    behaviour_logprobs: np.ndarray | None = None
    behaviour_mask: np.ndarray | None = None
    span_kinds: np.ndarray | None = None
    versions: np.ndarray | None = None
    is_weights: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.tokens)
        self.tokens = np.asarray(self.tokens, np.int32)
        self.loss_mask = np.asarray(self.loss_mask, np.float32)
        self.logprobs = _per_token(self.logprobs, n, np.float32, 0)
        if self.behaviour_logprobs is None:
            self.behaviour_logprobs = self.logprobs.copy()
        self.behaviour_logprobs = np.asarray(self.behaviour_logprobs, np.float32)
        self.behaviour_mask = _per_token(self.behaviour_mask, n, np.float32, 1)
        self.span_kinds = _per_token(self.span_kinds, n, np.int8, 0)
        self.versions = _per_token(self.versions, n, np.int32, -1)
        self.is_weights = _per_token(self.is_weights, n, np.float32, 1)
        lengths = {
            f: len(getattr(self, f))
            for f in ("loss_mask", "logprobs", "behaviour_logprobs", "behaviour_mask",
                      "span_kinds", "versions", "is_weights")
        }  # fmt: skip
        if any(v != n for v in lengths.values()):
            raise ValueError(f"per-token arrays must have {n} entries (one per token): {lengths}")
        if len(self.tokens) < 2:
            raise ValueError("a training sample needs at least 2 tokens")


def _per_token(x, n: int, dtype, fill) -> np.ndarray:
    return np.full(n, fill, dtype) if x is None else np.asarray(x, dtype)


@dataclasses.dataclass
class PackedBatch:
    """Fixed-shape arrays [R, T]; `sample_RT` says which sample (index) each slot came from."""

    inputs_RT: np.ndarray
    targets_RT: np.ndarray
    positions_RT: np.ndarray
    segment_ids_RT: np.ndarray
    loss_mask_RT: np.ndarray
    old_logprobs_RT: np.ndarray
    advantages_RT: np.ndarray
    sample_RT: np.ndarray
    # The off-policy correction's weight per slot (1 = none), and what it was computed from
    # (host-side: the sampler's μ and its policy version, -1 where there is none).
    is_weights_RT: np.ndarray | None = None
    behaviour_logprobs_RT: np.ndarray | None = None
    versions_RT: np.ndarray | None = None

    def __post_init__(self):
        shape = self.inputs_RT.shape
        for name, fill, dtype in (
            ("is_weights_RT", 1.0, np.float32),
            ("behaviour_logprobs_RT", 0.0, np.float32),
            ("versions_RT", -1, np.int32),
        ):
            if getattr(self, name) is None:
                setattr(self, name, np.full(shape, fill, dtype))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def num_rows(self) -> int:
        return self.inputs_RT.shape[0]

    def take_rows(self, rows: np.ndarray) -> PackedBatch:
        """The rows `rows` (indices, in that order)."""
        return PackedBatch(**{k: v[rows] for k, v in self.arrays().items()})


def assign_rows(lengths: list[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing bin packing of pair counts into rows of capacity `row_len`."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > row_len:
            raise ValueError(
                f"sample {i} has {n + 1} tokens, more than the row length {row_len} + 1; raise "
                "the trainer's row length (max_seq_len) or lower the response budget"
            )
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return rows


def pack(samples: list[TrainSample], row_len: int, rows_multiple: int = 1) -> PackedBatch:
    """Packs samples into rows; the row count is padded up to a multiple of `rows_multiple`."""
    rows = assign_rows([len(s.tokens) - 1 for s in samples], row_len)
    num_rows = -(-len(rows) // rows_multiple) * rows_multiple
    shape = (num_rows, row_len)
    out = PackedBatch(
        inputs_RT=np.zeros(shape, np.int32),
        targets_RT=np.zeros(shape, np.int32),
        positions_RT=np.zeros(shape, np.int32),
        segment_ids_RT=np.zeros(shape, np.int32),
        loss_mask_RT=np.zeros(shape, np.float32),
        old_logprobs_RT=np.zeros(shape, np.float32),
        advantages_RT=np.zeros(shape, np.float32),
        sample_RT=np.full(shape, -1, np.int32),
    )

    for r, members in enumerate(rows):
        col = 0
        for seg, i in enumerate(members, start=1):
            s = samples[i]
            n = len(s.tokens) - 1
            sl = slice(col, col + n)
            out.inputs_RT[r, sl] = s.tokens[:-1]
            out.targets_RT[r, sl] = s.tokens[1:]
            out.positions_RT[r, sl] = np.arange(n)
            out.segment_ids_RT[r, sl] = seg
            out.loss_mask_RT[r, sl] = s.loss_mask[1:]
            out.old_logprobs_RT[r, sl] = s.logprobs[1:]
            out.advantages_RT[r, sl] = s.advantage
            out.sample_RT[r, sl] = i
            out.is_weights_RT[r, sl] = s.is_weights[1:]
            out.behaviour_logprobs_RT[r, sl] = s.behaviour_logprobs[1:]
            out.versions_RT[r, sl] = s.versions[1:]
            col += n
    used = sum(len(s.tokens) - 1 for s in samples)
    logging.debug(
        "packed %d samples into %d rows (%.0f%% full)",
        len(samples),
        num_rows,
        100.0 * used / max(1, num_rows * row_len),
    )
    return out


_PAD = {"sample_RT": -1, "versions_RT": -1, "is_weights_RT": 1}  # fill of padding rows


def split_rows(batch: PackedBatch, rows_per_micro: int) -> list[PackedBatch]:
    """Splits a packed batch into micro-batches of `rows_per_micro` rows (pads the last)."""
    n = batch.num_rows
    total = -(-n // rows_per_micro) * rows_per_micro
    arrays = batch.arrays()
    if total != n:
        arrays = {
            k: np.concatenate([v, np.full((total - n, v.shape[1]), _PAD.get(k, 0), v.dtype)])
            for k, v in arrays.items()
        }
    return [
        PackedBatch(**{k: v[i : i + rows_per_micro] for k, v in arrays.items()})
        for i in range(0, total, rows_per_micro)
    ]


def unpack_per_sample(values_RT: np.ndarray, batch: PackedBatch, samples: list[TrainSample]):
    """Scatters a per-slot array back to per-sample arrays aligned with `tokens` (index 0 = nan)."""
    lengths = np.array([len(s.tokens) for s in samples])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.full(int(lengths.sum()), np.nan, np.float32)
    valid = batch.sample_RT >= 0
    idx = offsets[batch.sample_RT[valid]] + batch.positions_RT[valid] + 1
    flat[idx] = values_RT[valid]
    return np.split(flat, np.cumsum(lengths)[:-1])
