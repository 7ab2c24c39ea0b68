"""`SamplingRows`: built from requests' `SamplingParams` with golden per-row values, neutral rows
where no request sits, fixed dtypes, and a pytree of its five named fields in order."""

import jax
import numpy as np

from cleaner_jax.sampling.engine_types import SamplingParams, SamplingRows


def test_build_golden_rows():
    rows = SamplingRows.build(
        4,
        [
            (2, SamplingParams(temperature=0.0, top_p=0.9, top_k=5, seed=11)),
            (0, SamplingParams(temperature=0.7, seed=3, greedy=True)),
        ],
    )
    np.testing.assert_array_equal(rows.seed, [3, 0, 11, 0])
    np.testing.assert_allclose(rows.temperature, [0.7, 1.0, 1.0, 1.0])  # temperature 0: greedy
    np.testing.assert_allclose(rows.top_p, [1.0, 1.0, 0.9, 1.0])
    np.testing.assert_array_equal(rows.top_k, [0, 0, 5, 0])
    np.testing.assert_array_equal(rows.greedy, [True, False, True, False])
    assert [a.dtype for a in rows] == [np.int32, np.float32, np.float32, np.int32, np.bool_]


def test_is_a_pytree_of_its_named_fields():
    rows = SamplingRows.build(3)
    leaves, treedef = jax.tree_util.tree_flatten(rows)
    assert len(leaves) == 5 and leaves[1] is rows.temperature
    assert jax.tree_util.tree_unflatten(treedef, leaves)._fields == SamplingRows._fields
    # Same structure whatever the rows hold: a jitted program traces once for both.
    assert jax.tree_util.tree_structure(SamplingRows.build(3, [(1, SamplingParams())])) == treedef
