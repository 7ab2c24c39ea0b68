"""runtime.aot / aot_step: a config's step compiled for TPU slices on this CPU host (issue #29)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cleaner_jax.runtime import aot, aot_step
from configs import paper

# Golden HLO: one all-gather in a loop body (reached through the while), one in the entry, an
# async all-reduce pair (counted once) and a reduce-scatter called from a fusion.
_HLO = """HloModule m

%inner (a: f32[8]) -> f32[32] {
  %a = f32[8]{0} parameter(0)
  ROOT %ag.1 = f32[32]{0} all-gather(f32[8]{0} %a), dimensions={0}
}

%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %c = f32[32]{0} call(%p), to_apply=%inner
  ROOT %t = (s32[], f32[8]{0}) tuple(%p)
}

%cond.1 (p: (s32[], f32[8])) -> pred[] {
  ROOT %lt = pred[] constant(true)
}

%rs_fusion (x: f32[64]) -> f32[8] {
  %x = f32[64]{0} parameter(0)
  ROOT %rs = f32[8]{0} reduce-scatter(f32[64]{0} %x), dimensions={0}
}

ENTRY %main.2 (a: bf16[8,4]) -> f32[64] {
  %ag0 = bf16[64,4]{1,0} all-gather(bf16[8,4]{1,0} %a), dimensions={0}
  %ars = f32[8]{0} all-reduce-start(f32[8]{0} %x), to_apply=%add
  %ard = f32[8]{0} all-reduce-done(f32[8]{0} %ars)
  %f = f32[8]{0} fusion(%y), kind=kLoop, calls=%rs_fusion
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond.1, body=%body.1
}
"""


def test_collective_stats_golden():
    total, outside, largest = aot.collective_stats(_HLO)
    assert total == {
        "all-gather": 2,
        "reduce-scatter": 1,
        "all-reduce": 1,
        "all-to-all": 0,
        "collective-permute": 0,
    }
    assert outside["all-gather"] == 1 and outside["reduce-scatter"] == 1
    assert largest["all-gather"] == 64 * 4 * 2  # the entry's bf16[64, 4]
    assert largest["all-reduce"] == 8 * 4 and largest["reduce-scatter"] == 8 * 4


def test_collectives_of_a_real_scan_on_cpu_devices():
    """A weight sharded over fsdp and scanned: its all-gather runs inside the loop."""
    mesh = Mesh(np.array(jax.devices()), ("fsdp",), axis_types=(AxisType.Auto,))

    def f(w_LDD, x_BD):
        return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x_BD, w_LDD)[0].sum()

    w = jax.ShapeDtypeStruct(
        (4, 64, 64), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "fsdp"))
    )
    x = jax.ShapeDtypeStruct(
        (16, 64), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("fsdp"))
    )
    r = aot.compile_program("scan", jax.jit(f), (w, x), {}, mesh)
    assert r.collectives["all-gather"] >= 1
    assert r.collectives_outside_loops["all-gather"] == 0
    assert r.argument == (4 * 8 * 64 + 2 * 64) * 4  # one device's shards


def test_fits_verdicts():
    v = aot.fits(80, 100)
    assert v["fits"] and v["fits_with_headroom"] and v["headroom_fraction"] == pytest.approx(0.2)
    v = aot.fits(95, 100)
    assert v["fits"] and not v["fits_with_headroom"]
    assert not aot.fits(101, 100)["fits"]


@pytest.mark.tpu_compile
@pytest.mark.parametrize("topology", ["v5p-8", "v4-8"])
def test_runlocal_step_compiles_for_tpu(topology):
    """The runlocal-size paper config, every program, on a v5p and a v4 slice: the update runs
    splash (a Mosaic kernel in its HLO; segment ids, GQA), decode the paged kernel, the
    recompute one [rows, row_len] shape; float16 became bfloat16."""
    config = paper.get_config("model=qwen3_4b,arm=cleaner,runlocal")
    assert config.model.dtype == "float16"
    # TPU tiling: splash and the paged kernel want a 128-lane head dim.
    config.model.tiny.update(head_dim=128, num_heads=4, num_kv_heads=2)
    result = aot_step.compile_step(config, topology, recompute_lengths=(512,))
    assert result["model"]["dtype"] == "bfloat16" and result["dtype_changes"]
    programs = result["programs"]
    assert set(programs) >= {
        "update/grad",
        "update/apply",
        "recompute",
        "recompute@512",
        "prefill",
        "decode",
        "weight_sync",
    }
    assert programs["update/grad"]["custom_calls"].get("tpu_custom_call", 0) >= 2  # fwd + bwd
    assert programs["decode"]["custom_calls"].get("tpu_custom_call", 0) >= 1
    # The pool takes what memory_fraction (0.9) leaves: every program keeps 10% of HBM free.
    assert result["fits_with_headroom"]
    assert result["sampler"]["pages_from"].startswith("sized")
    assert result["recompute_shapes_per_step"] == 1
    for key in (
        "train_step_bytes_per_device",
        "recompute_bytes_per_device",
        "decode_bytes_per_device",
    ):
        assert result[key] > 0
    # The rows are split over the mesh's batch shards: one row per device at rows_per_micro=1.
    assert result["rows_per_micro"] == result["devices"] // result["mesh"]["tensor"]


@pytest.mark.tpu_compile
def test_split_mesh_programs_compile_for_v5p8():
    """Issue #31: `mesh.rollout_devices` = 2 of v5p-8's 4 chips sample (tensor-parallel), the
    other 2 train (fsdp); the pool is sized for the sampler's chips alone (probe compiles), every
    program keeps 10% of HBM free, and no weight-sync program exists (the weights are copied)."""
    config = paper.get_config("model=qwen3_4b,arm=cleaner,runlocal")
    config.model.tiny.update(head_dim=128, num_heads=4, num_kv_heads=2)
    config.mesh.rollout_devices = 2
    result = aot_step.compile_step(config, "v5p-8")
    programs = result["programs"]
    assert set(programs) == {"update/grad", "update/apply", "recompute", "prefill", "decode"}
    assert result["mesh"]["fsdp"] == 2 and result["sampler"]["split"] == 2
    assert result["sampler"]["tensor_parallel"] == 2
    assert result["fits_with_headroom"]
    # The sampler's chips hold none of the trainer's buffers, the trainer's none of the pool.
    for name in ("prefill", "decode"):
        assert programs[name]["total_bytes"] == programs[name]["program_bytes"]
    assert programs["update/grad"]["total_bytes"] < 0.01 * result["hbm_bytes_per_device"]
