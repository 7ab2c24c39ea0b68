r"""Compile a config's training step for a TPU slice, with no TPU: memory, FLOPs, collectives.

  python launch/tpu_compile.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner \
    --topology=v5p-8 --json=/tmp/tpu_compile.json
  python launch/tpu_compile.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner \
    --topology=v5p-128 --programs=update,recompute
  python launch/tpu_compile.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner \
    --topology=v5p-8 --programs=recompute --recompute_lengths=2048,8192,20480

Needs libtpu, not a TPU: `pip install "jax[tpu]==<the installed jax>"` (jax 0.10.2 pins
libtpu 0.0.42.*; the README's test command installs it). libtpu prints warnings about TPU_*
environment variables on a host without a TPU; they are harmless here.

Every program a step runs (the update's gradient and AdamW programs, the old-log-prob recompute,
the sampler's prefill and decode, the weight sync) is built from the config as the run builds it,
on the slice's abstract devices, and compiled by XLA's TPU compiler (`runtime/aot_step.py`). The
table gives per device: memory (program: arguments + outputs - aliased + temporaries + code;
total: plus the long-lived buffers live beside it), the fits verdict against the chip's HBM with
the --headroom margin, FLOPs and a roofline time (an ESTIMATE from public peak figures and the
model's FLOPs where XLA's cost analysis undercounts loops), compile
seconds and the collectives in the compiled HLO (all-gathers outside loops in parentheses).
Topologies: v5p-8, v5p-16, v5p-128, v4-8, v5e-16, v6e-64 (`cleaner_jax/models/topology.py`).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from cleaner_jax import benchmarking
from cleaner_jax.runtime import aot_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-8", "TPU slice (models/topology.py SLICES).")
_PROGRAMS = flags.DEFINE_list("programs", list(aot_step.PROGRAMS), "Programs to compile.")
_LENGTHS = flags.DEFINE_list(
    "recompute_lengths", [], "Also compile the recompute at these row lengths (tokens)."
)
_PREFIX = flags.DEFINE_list(
    "prefix_shared_lengths",
    [],
    "Also compile the previous dense prefix-shared recompute at these response lengths.",
)
_LAYERS = flags.DEFINE_integer("num_layers", 0, "Override the model depth (0: the config's).")
_HEADROOM = flags.DEFINE_float("headroom", 0.1, "HBM fraction to keep free for 'fits'.")
_JSON = flags.DEFINE_string("json", "", "Write the result here as JSON.")

GiB = 1024**3


def _row(name: str, p: dict) -> str:
    c, o = p["collectives"], p["collectives_outside_loops"]
    largest = max(p["largest_outside_loops"].values())
    verdict = "yes" if p["fits_with_headroom"] else ("tight" if p["fits"] else "NO")
    return (
        f"| {name} | {p['compile_s']:.1f} | {p['argument'] / GiB:.2f} | {p['temp'] / GiB:.2f} | "
        f"{p['program_bytes'] / GiB:.2f} | {p['total_bytes'] / GiB:.2f} | {verdict} | "
        f"{max(p['flops'], p['model_flops']) / 1e12:.2f} | {p['roofline_s_estimate'] * 1e3:.1f} | "
        f"{c['all-gather']} ({o['all-gather']}) | {c['reduce-scatter']} | "
        f"{c['all-reduce']} ({o['all-reduce']}) | {largest / 2**20:.0f} |"
    )


def print_table(result: dict) -> None:
    print(
        f"\n{result['slice']} ({result['topology']}): {result['devices']} devices "
        f"({result['device_kind']}) in {result['processes']} processes, "
        f"{result['hbm_bytes_per_device'] / GiB:.2f} GiB HBM each, mesh {result['mesh']}"
    )
    m = result["model"]
    print(
        f"model: {m['num_layers']} layers, d={m['hidden_size']}, {m['dtype']} compute, "
        f"attention {m['attention']}, remat {m['remat']}, scan_layers {m['scan_layers']}; "
        f"{result['rows_per_micro']} x {result['row_len']} tokens per micro-batch"
    )
    for line in result["dtype_changes"]:
        print(f"dtype: {line}")
    sizes = ", ".join(f"{k} {v / GiB:.2f}" for k, v in result["sizes_bytes_per_device"].items())
    print(f"long-lived buffers per device (GiB): {sizes}")
    if result["sampler"]:
        s = result["sampler"]
        print(
            f"sampler: {s['num_pages']} KV pages ({s['pages_from']}), {s['tokens_in_pool']} tokens"
        )
    print(
        "\n| program | compile s | args GiB | temps GiB | program GiB | total GiB | fits | "
        "TFLOP* | roofline ms (est.) | all-gather (outside loops) | reduce-scatter | "
        "all-reduce (outside loops) | largest outside loops MiB |"
    )
    print("|" + "---|" * 13)
    for name, p in result["programs"].items():
        print(_row(name, p))
    print(
        "* per device: the larger of XLA's cost analysis (which counts a loop body once and "
        "skips Mosaic kernels) and the model's FLOPs (runtime/aot_step.py:_model_work)"
    )
    if result["recompute_program_bytes_by_length"]:
        print("\nrecompute program bytes by row length:")
        for length, b in result["recompute_program_bytes_by_length"].items():
            print(f"  {length}: {b / GiB:.2f} GiB")
    if result["prefix_shared_by_length"]:
        print("\nprevious prefix-shared recompute (dense), by response length:")
        for length, r in result["prefix_shared_by_length"].items():
            got = r.get("error") or f"{r['program_bytes'] / GiB:.2f} GiB"
            print(f"  {length}: {got}")
    print(
        f"\nfits: {result['fits']} (with {_HEADROOM.value:.0%} headroom: "
        f"{result['fits_with_headroom']}); compile total {result['compile_s_total']:.0f} s"
    )


def main(argv):
    del argv
    result = aot_step.compile_step(
        _CONFIG.value,
        _TOPOLOGY.value,
        programs=tuple(_PROGRAMS.value),
        recompute_lengths=tuple(int(x) for x in _LENGTHS.value),
        prefix_shared_lengths=tuple(int(x) for x in _PREFIX.value),
        num_layers=_LAYERS.value,
        headroom=_HEADROOM.value,
    )
    result["machine"] = benchmarking.machine_facts()
    result["command"] = " ".join(os.sys.argv)
    print_table(result)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1, default=str)
        logging.info("wrote %s", _JSON.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
