"""Mesh construction, per-parameter sharding rules, and sharded == single-device forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cleaner_jax.models import sharding, testing


def test_make_mesh_fills_minus_one_with_remaining_devices():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh({"tensor": 1}, devices=jax.devices()[:1]).shape)["fsdp"] == 1


@pytest.mark.parametrize(
    "sizes, match",
    [
        ({"data": 3, "fsdp": -1}, "cannot fill"),
        ({"data": 2, "fsdp": 2}, "needs 4 devices"),
        ({"data": -1, "fsdp": -1}, "at most one"),
        ({"expert": 2}, "unknown mesh axes"),
    ],
)
def test_make_mesh_rejects_bad_shapes(sizes, match):
    with pytest.raises(sharding.ShardingError, match=match):
        sharding.make_mesh(sizes)


def test_logical_to_spec_rules_divisibility_and_axis_reuse():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("embed", "heads"), shape=(64, 64), mesh=mesh) == P(
        "fsdp", "tensor"
    )
    # 3 is not divisible by 2 -> replicated; a mesh axis is never used twice.
    assert sharding.logical_to_spec(("embed", "mlp"), shape=(3, 64), mesh=mesh) == P(None, "tensor")
    rules = {"embed": "tensor", "mlp": "tensor"}
    assert sharding.logical_to_spec(("embed", "mlp"), rules, shape=(4, 4), mesh=mesh) == P(
        "tensor", None
    )
    # Fused heads*head_dim = 1*16 splits mid-head unless head units are given.
    assert sharding.logical_to_spec(("heads",), shape=(16,), mesh=mesh, units={"heads": 16}) == P(
        None
    )
    assert sharding.logical_to_spec(("batch", "seq"), mesh=mesh) == P(("data", "fsdp"), None)
    with pytest.raises(sharding.ShardingError, match="no sharding rule"):
        sharding.logical_to_spec(("experts",))


def test_every_parameter_gets_a_spec_by_name():
    cfg = testing.tiny_variant("qwen3", tied=False, bias=True)
    abstract = nnx.state(nnx.eval_shape(lambda: testing.Qwen(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    specs = sharding.describe_shardings(sharding.state_shardings(abstract, mesh, cfg=cfg))
    assert len(specs) == len(jax.tree.leaves(abstract))
    q = next(v for k, v in specs.items() if "q_proj']['kernel" in k)
    assert q == str(P("fsdp", "tensor"))
    emb = next(v for k, v in specs.items() if "embed_tokens" in k)
    assert emb == str(P("tensor", "fsdp"))
    head_dim_norm = next(v for k, v in specs.items() if "q_norm" in k)
    assert head_dim_norm == str(P(None))


@pytest.mark.parametrize("arch, tied", [("qwen3", False), ("qwen2", True)])
def test_sharded_forward_equals_single_device(arch, tied):
    cfg = testing.tiny_variant(arch, tied=tied, gqa=2, bias=True)
    model = testing.random_model(cfg, seed=7)
    tokens_BT = jax.random.randint(jax.random.key(0), (4, 12), 0, cfg.vocab_size)
    positions_BT = jnp.broadcast_to(jnp.arange(12), (4, 12))
    ref, _ = testing.jit_forward(model)(tokens_BT, positions_BT)

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, state = nnx.split(model)
    sharded = sharding.shard_state(state, mesh, cfg=cfg)
    assert sharding.replicated_fraction(sharded) < 0.05
    batch = sharding.batch_sharding(mesh)
    tokens_s, positions_s = jax.device_put((tokens_BT, positions_BT), batch)

    @jax.jit
    def fwd(state, tokens, positions):
        return nnx.merge(graphdef, state)(tokens, positions)[0]

    out = fwd(sharded, tokens_s, positions_s)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(out, ref, atol=2e-5)
