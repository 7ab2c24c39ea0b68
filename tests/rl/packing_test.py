"""Packing: every (input, target) pair lands once, segments never mix, unpack inverts pack."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.rl.packing import TrainSample, assign_rows, pack, split_rows, unpack_per_sample


def _samples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [
        TrainSample(
            rng.integers(1, 100, n),
            rng.integers(0, 2, n),
            advantage=float(i),
            logprobs=-rng.random(n),
        )
        for i, n in enumerate(lengths)
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 40), min_size=1, max_size=20), st.integers(40, 64))
def test_pack_roundtrip(lengths, row_len):
    samples = _samples(lengths)
    batch = pack(samples, row_len, rows_multiple=2)
    assert batch.num_rows % 2 == 0
    # Each sample's pairs appear exactly once, contiguous, with positions 0..n-2 in one segment.
    for i, s in enumerate(samples):
        rows, cols = np.nonzero(batch.sample_RT == i)
        assert len(set(rows)) == 1 and len(cols) == len(s.tokens) - 1
        r = rows[0]
        np.testing.assert_array_equal(batch.inputs_RT[r, cols], s.tokens[:-1])
        np.testing.assert_array_equal(batch.targets_RT[r, cols], s.tokens[1:])
        np.testing.assert_array_equal(batch.positions_RT[r, cols], np.arange(len(cols)))
        np.testing.assert_array_equal(batch.loss_mask_RT[r, cols], s.loss_mask[1:])
        assert len(set(batch.segment_ids_RT[r, cols])) == 1
        assert (batch.advantages_RT[r, cols] == s.advantage).all()
    assert (batch.segment_ids_RT[batch.sample_RT < 0] == 0).all()
    back = unpack_per_sample(batch.old_logprobs_RT, batch, samples)
    for s, b in zip(samples, back, strict=True):
        assert np.isnan(b[0])
        np.testing.assert_array_equal(b[1:], s.logprobs[1:])


def test_first_fit_decreasing_golden():
    # Longest first: 30 -> row 0 (20 free); 25 does not fit -> row 1 (25 free); 20 -> row 0
    # (full); 10 -> row 1 (15 free); 5 -> row 1.
    assert assign_rows([10, 30, 25, 5, 20], 50) == [[1, 4], [2, 0, 3]]


def test_split_rows_pads_last_micro_batch():
    batch = pack(_samples([30, 30, 30]), 32)
    micros = split_rows(batch, 2)
    assert [m.num_rows for m in micros] == [2, 2]
    assert (micros[1].sample_RT[1] == -1).all() and micros[1].loss_mask_RT[1].sum() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="row length"):
        pack(_samples([70]), 32)
    with pytest.raises(ValueError, match="one per token"):
        TrainSample([1, 2, 3], [1, 1])
