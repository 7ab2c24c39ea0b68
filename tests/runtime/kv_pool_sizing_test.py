"""The KV pool sized net of the training state (`rollout.engine.num_pages=0`): the arithmetic
with a fake free-memory figure (golden values) and the training reserve of a tiny model."""

import jax
import ml_collections
import pytest
from flax import nnx

from cleaner_jax.models import sharding
from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl.update import LossConfig, OptimConfig, Updater, make_optimizer
from cleaner_jax.runtime import parts, sampler_budget

CFG = tiny_config()  # 2 layers, 2 kv heads of 16 dims


def _config(**engine):
    return ml_collections.ConfigDict(
        dict(
            model=dict(dtype="float32"),
            rollout=dict(dtype="bfloat16", engine=dict(page_size=4, **engine)),
            train=dict(row_len=64, rows_per_micro=8, logprob_chunk=32),
            loss=dict(
                clip_eps_low=0.2,
                clip_eps_high=0.28,
                dual_clip_c=0.0,
                entropy_coef=0.0,
            ),
        )
    )


@pytest.fixture(scope="module")
def bundle():
    graphdef, state = nnx.split(Qwen(CFG, rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    state = sharding.shard_state(state, mesh, cfg=CFG)
    return parts.ModelBundle(CFG, graphdef, state, mesh)


def test_kv_pages_net_of_training_golden(bundle, monkeypatch):
    config = _config(memory_fraction=0.5)
    config.rollout.temperature = 1.0
    placement = sampler_budget.placement_for(config, bundle)
    monkeypatch.setattr(sampler_budget, "device_memory", lambda device: (2_000_000, 100_000))
    monkeypatch.setattr(sampler_budget, "training_reserve_bytes", lambda *a: 300_000)
    # A bf16 page: 2 (K, V) x 2 layers x 4 tokens x 2 kv heads x 16 x 2 bytes = 1024 bytes:
    # (2_000_000 x 0.5 - 100_000 - 300_000) // 1024 = 585.
    assert sampler_budget.kv_pages_for(config, bundle, placement, updater=object()) == 585
    # Evaluation (no updater) reserves nothing: (1_000_000 - 100_000) // 1024 = 878.
    assert sampler_budget.kv_pages_for(config, bundle, placement) == 878
    monkeypatch.setattr(sampler_budget, "training_reserve_bytes", lambda *a: 2_000_000)
    with pytest.raises(ValueError, match="no memory left for the KV pool"):
        sampler_budget.kv_pages_for(config, bundle, placement, updater=object())
    monkeypatch.setattr(sampler_budget, "device_memory", lambda device: None)  # CPU: unreported
    assert sampler_budget.kv_pages_for(config, bundle, placement, updater=object()) is None


def test_training_reserve_counts_state_and_step(bundle):
    config = _config()
    config.rollout.temperature = 1.0
    updater = Updater(
        bundle.graphdef, make_optimizer(OptimConfig()), LossConfig(), mesh=bundle.mesh
    )
    reserve = sampler_budget.training_reserve_bytes(config, bundle, updater)
    params = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(bundle.state))
    # Gradients (= the fp32 params per device) + AdamW's two moments + the step's temporaries.
    assert reserve > 3 * params
