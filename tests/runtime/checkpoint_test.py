"""Tests for runtime.checkpoint: exact round trips, pruning, resharding, corrupt fallback."""

import functools
import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cleaner_jax.runtime import checkpoint as ckpt_lib


class _TinyModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(8, 16, rngs=rngs)
        self.down = nnx.Linear(16, 8, rngs=rngs)

    def __call__(self, x_BD):
        return self.down(jax.nn.relu(self.up(x_BD)))


@functools.cache
def _trained_state(seed: int = 0):
    """Params and an adamw state after one real update, so every moment is non-zero.

    Built from an abstract model and one jitted step: eager op-by-op init compiles ~90 kernels.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _TinyModel(nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), abstract)
    x_BD = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
    tx = optax.adamw(1e-2)

    @jax.jit
    def update(params):
        grads = jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x_BD) ** 2))(params)
        updates, opt_state = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), opt_state

    return update(params)


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _save_steps(workdir, steps, params, opt_state, **kwargs):
    with ckpt_lib.Checkpointer(workdir / "checkpoints", **kwargs) as ckpt:
        for step in steps:
            assert ckpt.save(step, params, opt_state, {"data": {"index": step}}, force=True)


def test_round_trip_is_exact_for_nnx_state_adamw_and_meta(tmp_path):
    params, opt_state = _trained_state()
    key = jax.random.split(jax.random.key(7), 2)
    raw_key = jax.random.PRNGKey(11)
    np_rng = np.random.default_rng(5)
    np_rng.random(3)
    meta = {
        "data": {"epoch": 1, "index": 37, "order_seed": 4},
        "np_rng": np_rng.bit_generator.state,
        "key": ckpt_lib.prng_key_to_json(key),
        "raw_key": ckpt_lib.prng_key_to_json(raw_key),
    }
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.save(3, params, opt_state, meta)
        ckpt.close()  # closing twice (here and on exit) is allowed
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 3
        restored = ckpt.restore(abstract_params=params, abstract_opt_state=opt_state)
    got_params, got_opt_state, got_meta = restored
    assert restored.step == 3
    assert isinstance(got_params, nnx.State)
    assert isinstance(got_opt_state[0], optax.ScaleByAdamState)
    _assert_trees_equal(got_params, params)
    _assert_trees_equal(got_opt_state, opt_state)
    assert got_meta == {"step": 3, **meta}
    got_key = ckpt_lib.prng_key_from_json(got_meta["key"])
    assert got_key.dtype == key.dtype
    np.testing.assert_array_equal(jax.random.key_data(got_key), jax.random.key_data(key))
    np.testing.assert_array_equal(ckpt_lib.prng_key_from_json(got_meta["raw_key"]), raw_key)
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = got_meta["np_rng"]
    np.testing.assert_array_equal(resumed_rng.random(4), np_rng.random(4))


def test_restore_without_opt_state_skips_it(tmp_path):
    params, opt_state = _trained_state()
    _save_steps(tmp_path, [1], params, opt_state)
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        got_params, got_opt_state, _ = ckpt.restore(abstract_params=params)
    assert got_opt_state is None
    _assert_trees_equal(got_params, params)


def test_saves_every_n_and_keeps_k(tmp_path):
    params, opt_state = _trained_state()
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=2, every=3) as ckpt:
        saved = [s for s in range(11) if ckpt.save(s, params, opt_state)]
        assert saved == [0, 3, 6, 9]
        ckpt.wait()
        assert ckpt.all_steps() == [6, 9]
        assert ckpt.save(10, params, opt_state, force=True)
        # The final forced save of a step that is already saved is a no-op, not an error.
        assert not ckpt.save(10, params, opt_state, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [9, 10]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "9"]


def test_async_save_does_not_need_the_source_buffers(tmp_path):
    """A train step may donate params right after save; the saved values must not depend on it."""
    params, opt_state = _trained_state()
    params_copy = jax.tree.map(jnp.copy, params)
    opt_copy = jax.tree.map(jnp.copy, opt_state)
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints", async_save=True) as ckpt:
        assert ckpt.save(1, params_copy, opt_copy)
        for leaf in jax.tree.leaves((params_copy, opt_copy)):
            leaf.delete()
        ckpt.wait()
        got_params, got_opt_state, _ = ckpt.restore(
            abstract_params=params, abstract_opt_state=opt_state
        )
    _assert_trees_equal(got_params, params)
    _assert_trees_equal(got_opt_state, opt_state)


def _fsdp_shardings(tree, mesh):
    """Shards each array's first dimension divisible by the mesh size; replicates the rest."""

    def sharding(x):
        spec = [None] * x.ndim
        for i, size in enumerate(x.shape):
            if size % mesh.size == 0:
                spec[i] = "fsdp"
                break
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(sharding, tree)


def _abstract_with(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


@pytest.mark.parametrize("save_sharded", [False, True], ids=["1dev_to_8dev", "8dev_to_8dev"])
def test_restore_onto_8_device_mesh_with_target_shardings(tmp_path, save_sharded):
    assert jax.device_count() == 8, "conftest must force 8 CPU devices"
    mesh = jax.make_mesh((8,), ("fsdp",))
    params, opt_state = _trained_state()
    param_shardings = _fsdp_shardings(params, mesh)
    opt_shardings = _fsdp_shardings(opt_state, mesh)
    to_save = (params, opt_state)
    if save_sharded:
        to_save = (
            jax.device_put(params, param_shardings),
            jax.device_put(opt_state, opt_shardings),
        )
    _save_steps(tmp_path, [2], *to_save)
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        got_params, got_opt_state, _ = ckpt.restore(
            abstract_params=_abstract_with(params, param_shardings),
            abstract_opt_state=_abstract_with(opt_state, opt_shardings),
        )
    _assert_trees_equal(got_params, params)
    _assert_trees_equal(got_opt_state, opt_state)
    got = jax.tree.leaves((got_params, got_opt_state))
    want = jax.tree.leaves((param_shardings, opt_shardings))
    assert any(s.spec != P() and s.spec != P(None) for s in want), "nothing was sharded"
    for array, sharding in zip(got, want, strict=True):
        assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


def _truncate(path: pathlib.Path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _truncate_param_data(step_dir: pathlib.Path):
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        _truncate(path)


_CORRUPTIONS = {
    "truncated_meta_json": (lambda d: _truncate(d / "meta" / "metadata"), "JSONDecodeError"),
    "deleted_params_manifest": (
        lambda d: (d / "params" / "manifest.ocdbt").unlink(),
        "NOT_FOUND",
    ),
    "truncated_params_data": (_truncate_param_data, "OUT_OF_RANGE"),
    "no_commit_marker": (lambda d: (d / "commit_success.txt").unlink(), "commit_success.txt"),
    "deleted_opt_state_item": (lambda d: shutil.rmtree(d / "opt_state"), "opt_state"),
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, caplog, corruption):
    corrupt, expected_words = _CORRUPTIONS[corruption]
    params, opt_state = _trained_state()
    params_2, opt_state_2 = _trained_state(seed=1)
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.save(1, params, opt_state, {"data": {"index": 1}})
        assert ckpt.save(2, params_2, opt_state_2, {"data": {"index": 2}})
    corrupt(tmp_path / "checkpoints" / "2")

    with caplog.at_level(logging.WARNING), ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        restored = ckpt.restore(abstract_params=params, abstract_opt_state=opt_state)
        assert restored.step == 1
        assert restored.meta["data"] == {"index": 1}
        _assert_trees_equal(restored.params, params)
        _assert_trees_equal(restored.opt_state, opt_state)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("step 2" in m and expected_words in m for m in warnings), warnings
        # The bad step was moved aside, so the resumed run can save step 2 again.
        assert ckpt.all_steps() == [1]
        assert ckpt.save(2, params_2, opt_state_2, {"data": {"index": 2}})
        ckpt.wait()
        assert ckpt.restore(abstract_params=params, abstract_opt_state=opt_state).step == 2
    quarantined = list((tmp_path / "checkpoints_corrupt").iterdir())
    assert [p.name.split("-")[0] for p in quarantined] == ["2"]


def test_explicit_corrupt_step_raises_instead_of_falling_back(tmp_path):
    params, opt_state = _trained_state()
    _save_steps(tmp_path, [1, 2], params, opt_state)
    _truncate(tmp_path / "checkpoints" / "2" / "meta" / "metadata")
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        with pytest.raises(ckpt_lib.CheckpointRestoreError, match="step 2"):
            ckpt.restore(2, abstract_params=params, abstract_opt_state=opt_state)
        with pytest.raises(ckpt_lib.CheckpointNotFoundError, match="step 5"):
            ckpt.restore(5, abstract_params=params, abstract_opt_state=opt_state)
        assert ckpt.restore(1, abstract_params=params).step == 1


def test_no_checkpoint_returns_none_or_raises(tmp_path):
    params, opt_state = _trained_state()
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(abstract_params=params, missing_ok=True) is None
        with pytest.raises(ckpt_lib.CheckpointNotFoundError, match="missing_ok"):
            ckpt.restore(abstract_params=params)


def test_nothing_restorable_raises_and_moves_nothing(tmp_path):
    """A wrong abstract tree fails every step: that must not quarantine good checkpoints."""
    params, opt_state = _trained_state()
    _save_steps(tmp_path, [1, 2], params, opt_state)
    wrong_params = {"not": jnp.zeros((3,))}
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        with pytest.raises(ckpt_lib.CheckpointRestoreError, match=r"step 2.*\n.*step 1"):
            ckpt.restore(abstract_params=wrong_params, abstract_opt_state=opt_state)
        assert ckpt.all_steps() == [1, 2]
    assert not (tmp_path / "checkpoints_corrupt").exists()


def test_save_rejects_bad_meta(tmp_path):
    params, opt_state = _trained_state()
    with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ckpt:
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(1, params, opt_state, {"rng": np.zeros(2)})
        with pytest.raises(ValueError, match="disagrees"):
            ckpt.save(1, params, opt_state, {"step": 2})
        assert ckpt.all_steps() == []


def test_meta_is_plain_json_on_disk(tmp_path):
    """The meta item stays readable without orbax (for report code and humans)."""
    params, opt_state = _trained_state()
    _save_steps(tmp_path, [4], params, opt_state)
    meta = json.loads((tmp_path / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta == {"data": {"index": 4}, "step": 4}
