r"""How memory grows with the row length: compiled temp bytes of the real train and decode programs.

  python launch/bench_scale.py --out=/tmp/bench_scale.json

Nothing runs and nothing is allocated: each program is lowered with abstract inputs and compiled
for the default backend (CPU here), and XLA's `memory_analysis()` gives the bytes it needs besides
its arguments and outputs (see cleaner_jax/rl/compiled_memory.py).

1. Training loss + gradient of one packed row (`rl.update._grad_step`, the trainer's program) for
   a 2-layer model with Qwen3-0.6B's widths (vocab 151,936, D 1024, 16/8 heads x 128, F 3072),
   bf16 compute, fp32 params, per-layer remat, at T = 2,048 ... 23,040 tokens. Linear growth gives
   a 23,040 / 2,048 ratio of ~11; attention that builds [T, T] gives ~100+.
2. One sampler decode call (`sampling.engine_steps.EngineSteps.decode`) over 8 slots at a context
   of 2,048 and 20,480 tokens per slot.

The JSON holds every figure, the ratios and the machine (backend, CPU, jax version).
"""

import json
import time

from absl import app, flags

from cleaner_jax.benchmarking import machine_facts
from cleaner_jax.models.config import PRESETS
from cleaner_jax.rl import compiled_memory as cm
from cleaner_jax.rl.update import LossConfig

_OUT = flags.DEFINE_string("out", "/tmp/bench_scale.json", "JSON output path")
_LENGTHS = flags.DEFINE_list(
    "lengths", ["2048", "4096", "8192", "16384", "23040"], "Training row lengths."
)
_ATTENTION = flags.DEFINE_string("attention", "auto", "model.attention for the training program.")
_CHUNK = flags.DEFINE_integer("logprob_chunk", 1024, "Token chunk of the log-prob head (0: row).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_DECODE = flags.DEFINE_list("decode_contexts", ["2048", "20480"], "Decode contexts per slot.")
_SLOTS = flags.DEFINE_integer("decode_slots", 8, "Decode slots.")

MIB = 1024**2


def _model_cfg():
    overrides = dict(num_layers=2, dtype=_DTYPE.value, remat=True)
    if _ATTENTION.value != "legacy":
        overrides["attention"] = _ATTENTION.value
    return PRESETS["qwen3_0_6b"].replace(**overrides)


def main(argv):
    del argv
    cfg = _model_cfg()
    loss_cfg = LossConfig(logprob_chunk=_CHUNK.value)
    result = {"machine": machine_facts(), "model": cfg.__dict__, "train": [], "decode": []}
    print(f"machine: {result['machine']}")
    print("\ntraining loss+grad, one row, 2-layer Qwen3-0.6B widths")
    print(f"{'T':>7} | {'temp MiB':>10} | {'args MiB':>9} | {'compile s':>9}")
    for t in map(int, _LENGTHS.value):
        t0 = time.perf_counter()
        m = cm.train_step_memory(cfg, t, 1, loss_cfg)
        row = {"row_len": t, "temp_bytes": m.temp, "argument_bytes": m.argument}
        row["compile_s"] = time.perf_counter() - t0
        result["train"].append(row)
        print(
            f"{t:>7} | {m.temp / MIB:>10.1f} | {m.argument / MIB:>9.1f} | {row['compile_s']:>9.1f}"
        )
    train = {r["row_len"]: r["temp_bytes"] for r in result["train"]}
    lo, hi = min(train), max(train)
    key = f"train_temp_bytes_ratio_{hi}_over_{lo}"
    result[key] = train[hi] / train[lo]
    print(f"{key} = {result[key]:.2f}  (tokens ratio {hi / lo:.2f})")

    print(f"\ndecode call, {_SLOTS.value} slots, 2-layer Qwen3-0.6B widths")
    print(f"{'context':>7} | {'temp MiB':>10} | {'KV pool MiB':>11}")
    for ctx in map(int, _DECODE.value):
        m = cm.decode_step_memory(cfg, ctx, _SLOTS.value)
        result["decode"].append(
            {"context": ctx, "temp_bytes": m.temp, "argument_bytes": m.argument}
        )
        print(f"{ctx:>7} | {m.temp / MIB:>10.1f} | {m.argument / MIB:>11.1f}")
    dec = {r["context"]: r["temp_bytes"] for r in result["decode"]}
    lo, hi = min(dec), max(dec)
    key = f"decode_temp_bytes_ratio_{hi}_over_{lo}"
    result[key] = dec[hi] / dec[lo]
    print(f"{key} = {result[key]:.2f}  (context ratio {hi / lo:.2f})")
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
