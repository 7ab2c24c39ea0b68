r"""Compile time and memory of the training gradient program, unrolled vs scanned layers (#29).

  python launch/bench_scan_layers.py --platform=tpu --out=/tmp/bench_scan_layers_tpu.json
  python launch/bench_scan_layers.py --platform=cpu --out=/tmp/bench_scan_layers_cpu.json

The program is the trainer's: `rl.update._grad_step` (forward over one packed micro-batch,
chunked log-probs, PPO loss, gradients of every parameter) for the model of `--preset` (default
Qwen3-4B-Instruct-2507, 36 layers) with bf16 compute, fp32 parameters and per-layer remat, on
`--rows` rows of `--row_len` tokens. Nothing is allocated: parameters and inputs are
`jax.ShapeDtypeStruct`s (from `nnx.eval_shape`) carrying their shardings, lowered under
`jax.set_mesh(mesh)` and compiled. Each arm builds the same model with `scan_layers` off
(`unrolled`: a Python loop, the program holds every layer) or on (`scanned`: one `lax.scan` over
the stacked layer parameters).

--platform=tpu compiles with XLA's TPU compiler for the abstract devices of `--topology`
(`jax.experimental.topologies`, libtpu, no TPU needed) on `--devices` of them (1: one chip;
more: an fsdp mesh, rows rounded up to fill it); --platform=cpu for this host's CPU backend.

Per arm: seconds to lower (trace to StableHLO) and to compile, the StableHLO text size, and
`memory_analysis()`'s temp / argument / output / generated-code bytes (per device). The JSON
holds them with the machine (CPU model, cores, jax version).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from cleaner_jax.benchmarking import machine_facts
from cleaner_jax.models import sharding as sharding_lib
from cleaner_jax.models.config import PRESETS
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import update as update_lib

_OUT = flags.DEFINE_string("out", "/tmp/bench_scan_layers.json", "JSON output path")
_PRESET = flags.DEFINE_enum("preset", "qwen3_4b_instruct_2507", sorted(PRESETS), "Model shape.")
_LAYERS = flags.DEFINE_integer("layers", 0, "Decoder layers (0: the preset's).")
_ROW_LEN = flags.DEFINE_integer("row_len", 2048, "Tokens per packed row.")
_ROWS = flags.DEFINE_integer("rows", 1, "Rows per micro-batch (rounded up to fill the mesh).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32", "Parameter dtype.")
_REMAT = flags.DEFINE_bool("remat", True, "Rematerialise each layer in the backward.")
_ATTENTION = flags.DEFINE_string("attention", "auto", "model.attention of the program.")
_CHUNK = flags.DEFINE_integer("logprob_chunk", 1024, "Token chunk of the log-prob head.")
_PLATFORM = flags.DEFINE_enum("platform", "cpu", ["cpu", "tpu"], "Compile target.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology (--platform=tpu).")
_DEVICES = flags.DEFINE_integer("devices", 1, "Devices of the mesh (all on the fsdp axis).")
_ARMS = flags.DEFINE_list("arms", ["scanned", "unrolled"], "Arms, in the order they compile.")

MIB = 1024**2


def _devices():
    if _PLATFORM.value == "tpu":
        from jax.experimental import topologies

        topo = topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value)
        devices = list(topo.devices)
    else:
        devices = jax.devices("cpu")
    if _DEVICES.value > len(devices):
        raise app.UsageError(f"--devices={_DEVICES.value}: the target has {len(devices)}")
    return devices[: _DEVICES.value]


def _model_cfg(scan: bool):
    preset = PRESETS[_PRESET.value]
    return preset.replace(
        num_layers=_LAYERS.value or preset.num_layers,
        dtype=_DTYPE.value,
        param_dtype=_PARAM_DTYPE.value,
        remat=_REMAT.value,
        attention=_ATTENTION.value,
        scan_layers=scan,
    )


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _measure(cfg, mesh, rows: int) -> dict:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    params = _abstract(state, sharding_lib.state_shardings(state, mesh, cfg=cfg))
    batch_axes = ("data", "fsdp")
    row_sharding = NamedSharding(mesh, PartitionSpec(batch_axes, None))
    floats = {"loss_mask_RT", "old_logprobs_RT", "advantages_RT"}
    arrays = {
        k: jax.ShapeDtypeStruct(
            (rows, _ROW_LEN.value), jnp.float32 if k in floats else jnp.int32, sharding=row_sharding
        )
        for k in update_lib._ARRAY_FIELDS
    }
    num_tokens = jax.ShapeDtypeStruct(
        (), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec())
    )
    loss_cfg = update_lib.LossConfig(logprob_chunk=_CHUNK.value)
    args = (params, graphdef, arrays, num_tokens, loss_cfg, mesh, batch_axes)
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        lowered = update_lib._grad_step.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    return {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "stablehlo_chars": len(lowered.as_text()),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "code_bytes": int(mem.generated_code_size_in_bytes),
    }


def main(argv):
    del argv
    devices = _devices()
    n = len(devices)
    mesh = jax.sharding.Mesh(
        np.array(devices).reshape(1, n, 1),
        sharding_lib.MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
    )
    rows = -(-_ROWS.value // n) * n
    result = {
        "machine": machine_facts(),
        "target": {
            "platform": _PLATFORM.value,
            "topology": _TOPOLOGY.value if _PLATFORM.value == "tpu" else None,
            "device_kind": devices[0].device_kind,
            "mesh": dict(mesh.shape),
        },
        "workload": {"rows": rows, "row_len": _ROW_LEN.value, "logprob_chunk": _CHUNK.value},
        "arms": {},
    }
    print(f"machine: {result['machine']['cpu']} x{result['machine']['cpu_count']}")
    print(f"target: {result['target']}; {rows} row(s) x {_ROW_LEN.value} tokens")
    header = (
        f"{'arm':>9} | {'layers':>6} | {'lower s':>8} | {'compile s':>9} | {'HLO kchar':>9} | "
        f"{'temp MiB':>9} | {'args MiB':>9} | {'code MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for arm in _ARMS.value:
        if arm not in ("scanned", "unrolled"):
            raise app.UsageError(f"--arms: {arm!r} is neither 'scanned' nor 'unrolled'")
        cfg = _model_cfg(arm == "scanned")
        row = _measure(cfg, mesh, rows)
        row["model"] = {k: v for k, v in cfg.__dict__.items()}
        result["arms"][arm] = row
        print(
            f"{arm:>9} | {cfg.num_layers:>6} | {row['lower_s']:8.1f} | {row['compile_s']:9.1f} | "
            f"{row['stablehlo_chars'] / 1e3:9.0f} | {row['temp_bytes'] / MIB:9.1f} | "
            f"{row['argument_bytes'] / MIB:9.1f} | {row['code_bytes'] / MIB:8.2f}"
        )
        with open(_OUT.value, "w") as f:  # after each arm: a long compile may be cut short
            json.dump(result, f, indent=2)
    arms = result["arms"]
    if {"scanned", "unrolled"} <= set(arms):
        u, s = arms["unrolled"], arms["scanned"]
        result["speedup_compile"] = u["compile_s"] / s["compile_s"]
        result["speedup_lower_plus_compile"] = (u["lower_s"] + u["compile_s"]) / (
            s["lower_s"] + s["compile_s"]
        )
        print(
            f"compile {result['speedup_compile']:.1f}x faster scanned "
            f"(lower + compile {result['speedup_lower_plus_compile']:.1f}x); temp "
            f"{s['temp_bytes'] / MIB:.0f} vs {u['temp_bytes'] / MIB:.0f} MiB"
        )
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
