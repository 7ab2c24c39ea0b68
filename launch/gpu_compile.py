r"""Compile for an H100 without one (issue #29): the programs lowered and compiled by XLA's CUDA
compiler on this CPU host, with their compiled memory, through `jax.experimental.topologies`.

  python launch/gpu_compile.py --target=h100 --out=/tmp/gpu_compile.json

Needs the CUDA PJRT plugin of our jax, which compiles without a driver or a GPU; install it in a
venv of its own (the CPU venv stays as it is: with the plugin, jax logs a failed CUDA start):

  python3 -m venv .venv-cuda
  .venv-cuda/bin/pip install jax==0.10.2 jaxlib==0.10.2 jax-cuda12-plugin==0.10.2 \
      jax-cuda12-pjrt==0.10.2 flax==0.12.8 optax==0.2.8 ml_collections==1.1.0 chex==0.1.92 \
      safetensors absl-py
  .venv-cuda/bin/pip install --no-deps 'nvidia-cudnn-cu12>=9.8,<10'

and run this file with `.venv-cuda/bin/python` and `PYTHONPATH=.`. Measured (Dec 2026): 2.4 GB
in all, 1.1 GB of it cuDNN, which only the cuDNN programs need (without it they fail with
"cuDNN not found" and the others still compile); `--no-deps` keeps cuBLAS and NVRTC (1 GB) out.

The topology is made from a `GpuTargetConfigProto` (`--target_config=FILE`, else the built-in
H100 SXM one below: the fields of XLA's `backends/gpu/target_config/specs/h100_sxm.txtpb` that
jaxlib 0.10.2's proto parses) and a `topology` shape; the CUDA plugin builds compile-only devices
from them while JAX_PLATFORMS=cpu keeps the host's runtime on the CPU. Kernel choice reads the
mesh's abstract device (`models.platform`), so `attention="auto"` picks Pallas Triton here.

What this does not give (jaxlib 0.10.2): `cost_analysis()` is None for these executables; GEMM
tilings are XLA's defaults, not autotuned (autotuning needs the device), so the compiled code and
its speed differ from a compile on the H100; cuDNN attention stays a custom call that cuDNN
builds at run time, so its support for a shape is only checked on the device. The memory figures
(arguments, outputs, temporaries) are XLA's buffer assignment for sm_90.

Programs (`--row_len` T, `--layers` L of `--preset`, bf16 compute, fp32 master weights):
- matmul_sharded: a bf16 [8192, 8192] @ [8192, 8192] with rows sharded over `--devices` GPUs;
- attention_cudnn / attention_pallas: causal attention forward + backward at [1, T, N, H] through
  `jax.nn.dot_product_attention(implementation="cudnn")` and the Pallas Triton `mha`;
- grad_step[auto] / grad_step[cudnn]: `rl.update._grad_step` (PPO loss, remat, chunked
  log-probs) of one packed row of T tokens, `model.attention` auto and cudnn.
"""

from __future__ import annotations

import os

# The CUDA plugin makes compile-only devices with the CPU as the runtime backend; without this, jax
# tries to start CUDA first and logs its failure.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from cleaner_jax.models.config import PRESETS  # noqa: E402
from cleaner_jax.rl import compiled_memory  # noqa: E402
from cleaner_jax.rl import update as update_lib  # noqa: E402

_H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
_TARGETS = {"h100": _H100_SXM}

_TARGET = flags.DEFINE_enum("target", "h100", list(_TARGETS), "GPU to compile for.")
_TARGET_CONFIG = flags.DEFINE_string(
    "target_config", "", "A GpuTargetConfigProto text file; overrides --target's built-in one."
)
_DEVICES = flags.DEFINE_integer("devices", 8, "GPUs of the sharded matmul's topology (1xN).")
_PRESET = flags.DEFINE_enum("preset", "qwen3_0_6b", list(PRESETS), "Model shape.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Layers of the model (the preset's other sizes).")
_ROW_LEN = flags.DEFINE_integer("row_len", 4096, "Tokens of the packed row / attention length.")
_OUT = flags.DEFINE_string("out", "/tmp/gpu_compile.json", "JSON output path")


def _mesh(config: str, n: int, axis: str) -> jax.sharding.Mesh:
    try:
        topo = topologies.get_topology_desc(
            platform="cuda", target_config=config, topology=f"1x1x{n}"
        )
    except NotImplementedError as e:
        raise RuntimeError(
            f"{e}: the CUDA PJRT plugin is not installed in this Python "
            "(see this file's docstring for the install)"
        ) from e
    return topologies.make_mesh(topo, (n,), (axis,))


def _abstract(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _report(lowered) -> dict:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    sec = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    calls = sorted(
        {
            line.split('custom_call_target="')[1].split('"')[0]
            for line in hlo.splitlines()
            if 'custom_call_target="' in line
        }
    )
    return {
        "compile_s": sec,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes,
        "custom_calls": calls,
        "triton_fusions": hlo.count('"kind":"__triton'),
        "cost_analysis": compiled.cost_analysis(),
    }


def _matmul(config: str) -> dict:
    mesh = _mesh(config, _DEVICES.value, "x")
    a = jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))
    b = jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    return _report(jax.jit(lambda x, y: x @ y).lower(a, b))


def _attention(config: str, impl: str) -> dict:
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention

    cfg = PRESETS[_PRESET.value]
    mesh = _mesh(config, 1, "x")
    q = jax.ShapeDtypeStruct(
        (1, _ROW_LEN.value, cfg.num_heads, cfg.head_dim),
        jnp.bfloat16,
        sharding=NamedSharding(mesh, P()),
    )

    def attend(x):
        if impl == "cudnn":
            return jax.nn.dot_product_attention(x, x, x, is_causal=True, implementation="cudnn")
        return pallas_attention.mha(x, x, x, segment_ids=None, causal=True)

    def fwd_bwd(x):
        return jax.value_and_grad(lambda y: attend(y).astype(jnp.float32).sum())(x)

    return _report(jax.jit(fwd_bwd).lower(q))


def _grad_step(config: str, attention: str) -> dict:
    cfg = PRESETS[_PRESET.value].replace(
        num_layers=_LAYERS.value, dtype="bfloat16", remat=True, attention=attention
    )
    mesh = _mesh(config, 1, "data")
    rep = NamedSharding(mesh, P())
    graphdef, state = compiled_memory.abstract_model(cfg)
    state = jax.tree.map(lambda x: _abstract(x, rep), state)
    arrays = compiled_memory._train_arrays(1, _ROW_LEN.value)
    arrays = jax.tree.map(lambda x: _abstract(x, rep), arrays)
    num_tokens = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    with jax.set_mesh(mesh):  # kernel choice reads the mesh's abstract (GPU) device
        lowered = update_lib._grad_step.lower(
            state, graphdef, arrays, num_tokens, update_lib.LossConfig()
        )
    return _report(lowered)


def main(argv):
    del argv
    if _TARGET_CONFIG.value:
        with open(_TARGET_CONFIG.value) as f:
            config = f.read()
    else:
        config = _TARGETS[_TARGET.value]
    programs = {
        f"matmul_sharded[{_DEVICES.value} gpus]": lambda: _matmul(config),
        "attention_cudnn": lambda: _attention(config, "cudnn"),
        "attention_pallas": lambda: _attention(config, "pallas"),
        "grad_step[auto]": lambda: _grad_step(config, "auto"),
        "grad_step[cudnn]": lambda: _grad_step(config, "cudnn"),
    }
    result = {
        "target": _TARGET_CONFIG.value or _TARGET.value,
        "jax": jax.__version__,
        "preset": _PRESET.value,
        "layers": _LAYERS.value,
        "row_len": _ROW_LEN.value,
        "programs": {},
        "errors": {},
    }
    for name, fn in programs.items():
        try:
            result["programs"][name] = fn()
        except Exception as e:  # noqa: BLE001 - a failed program is recorded, the rest still run
            result["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            logging.error("%s failed: %s", name, e)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1, default=str)
    mib = 2.0**20
    print(f"{'program':<24} {'compile s':>9} {'args MiB':>9} {'out MiB':>8} {'temp MiB':>9}  calls")
    for name, r in result["programs"].items():
        print(
            f"{name:<24} {r['compile_s']:>9.1f} {r['argument_bytes'] / mib:>9.1f} "
            f"{r['output_bytes'] / mib:>8.1f} {r['temp_bytes'] / mib:>9.1f}  "
            f"{','.join(r['custom_calls']) or '-'} (triton fusions {r['triton_fusions']})"
        )
    for name, err in result["errors"].items():
        print(f"{name:<24} FAILED: {err.splitlines()[0]}")
    print(f"wrote {_OUT.value}")
    if result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
