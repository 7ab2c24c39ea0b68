r"""Memory plan per device for Qwen3-4B and Qwen2.5-7B on 1xH100, 8xH100, TPU v5p-8 and v4-8.

  python launch/memory_plan.py                       # the paper's budgets, table in GiB
  python launch/memory_plan.py --row_len=8192 --tokens_per_device=8192 --kv_seqs=16 \
    --kv_seq_len=8192 --json=/tmp/plan.json

Params/optimizer state come from `nnx.eval_shape` of the real model and the real sharding rules
on an abstract mesh; training activations from XLA's memory analysis of the compiled training step
(the trainer's own program at these shapes, 1 and 2 layers extrapolated; ~1 min of compiling on a
CPU), `--nomeasure` for the hand formula instead (see cleaner_jax/runtime/memory_plan.py).

`--roundtrip_dir=DIR` also runs the real-width check on CPU: a random-weight model with
Qwen3-4B's widths (vocab 151936, D 2560, F 9728, 32/8 heads) but `--roundtrip_layers` layers,
exported to HF safetensors in DIR, re-imported, and the logits of both compared.
"""

import importlib.util
import json
import os
import time

from absl import app, flags

from cleaner_jax.runtime import memory_plan as mp

_TOKENS = flags.DEFINE_integer("tokens_per_device", 23040, "Training tokens per device per micro.")
_ROW = flags.DEFINE_integer("row_len", 23040, "Packed row length (attention is T^2 in it).")
_DTYPE = flags.DEFINE_string("dtype", "float16", "Compute dtype (sampler copy, activations, KV).")
_REMAT = flags.DEFINE_bool("remat", True, "Per-layer rematerialisation in the total.")
_PAGE = flags.DEFINE_integer("page_size", 16, "KV page size.")
_PAGES = flags.DEFINE_integer("kv_pages", 0, "KV pages (0: kv_seqs x kv_seq_len).")
_SEQS = flags.DEFINE_integer(
    "kv_seqs", 8, "Full-length sequences the sampler's KV pool must hold at once."
)
_SEQ_LEN = flags.DEFINE_integer("kv_seq_len", 23040, "Tokens per sequence in the KV budget.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows as JSON here.")
_MODELS = flags.DEFINE_list(
    "models", [], "Presets to plan (cleaner_jax.models.config.PRESETS); default the paper's two."
)
_MU = flags.DEFINE_string("mu_dtype", "", "AdamW first-moment dtype ('' = fp32, bfloat16).")
_MEASURE = flags.DEFINE_bool("measure", True, "Activations from the compiled training step.")
_TPU = flags.DEFINE_bool(
    "tpu_compile",
    importlib.util.find_spec("libtpu") is not None,
    "TPU rows: also compile the training step for the slice (libtpu; default: when installed) "
    "and show plan vs compiled.",
)
_RT_DIR = flags.DEFINE_string("roundtrip_dir", "", "Run the real-width HF round trip here.")
_RT_LAYERS = flags.DEFINE_integer("roundtrip_layers", 2, "Layers of the round-trip model.")

_COLUMNS = (
    "params_fp32",
    "params_sampler",
    "grads_fp32",
    "opt_state",
    "act_formula",
    "activations",
    "kv_bytes",
    "total_with_kv",
)


def _print_table(rows):
    head = ["model", "hardware", "dev", "HBM"] + [c.replace("_bytes", "") for c in _COLUMNS]
    print(" | ".join(head + ["kv seqs free", "fits"]))
    for r in rows:
        cells = [r["model"], r["hardware"], str(r["devices"]), f"{r['hbm_bytes'] / mp.GIB:.0f}"]
        cells += [f"{r[c] / mp.GIB:.2f}" for c in _COLUMNS]
        cells.append(str(r["kv_full_seqs_free"]))
        print(" | ".join(cells + ["yes" if r["fits"] else "NO"]))
    tpu = [r for r in rows if "tpu_total_with_kv" in r]
    if tpu:
        print("\nTPU rows, plan vs XLA's TPU compiler (GiB per device; compiled: the gradient step")
        print("at full depth for the slice's abstract devices + AdamW + sampler copy + KV):")
        print(
            "model | hardware | plan total | compiled total | plan/compiled | "
            "compiled temps | compile s"
        )
        for r in tpu:
            print(
                f"{r['model']} | {r['hardware']} | {r['total_with_kv'] / mp.GIB:.2f} | "
                f"{r['tpu_total_with_kv'] / mp.GIB:.2f} | {r['plan_over_tpu']:.2f} | "
                f"{r['tpu_temp'] / mp.GIB:.2f} | {r['tpu_compile_s']:.0f}"
            )
    print(
        "(GiB per device; total = params + sampler copy + grads + opt + activations (remat="
        f"{_REMAT.value}, from the {rows[0]['activations_from']}) + KV; KV pages: "
        f"{rows[0]['kv_pages']})"
    )


def _roundtrip(out_dir: str, layers: int) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from cleaner_jax.models import PRESETS, hf_io
    from cleaner_jax.models.testing import jit_forward, random_model

    cfg = PRESETS["qwen3_4b_instruct_2507"].replace(num_layers=layers)
    t0 = time.time()
    model = random_model(cfg, seed=0, scale=0.02)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 16)), jnp.int32)
    positions = jnp.arange(16, dtype=jnp.int32)[None]
    ref = np.asarray(jit_forward(model)(tokens, positions)[0])
    t_init = time.time() - t0
    t0 = time.time()
    hf_io.save_hf_checkpoint(model, cfg, out_dir)
    t_save = time.time() - t0
    t0 = time.time()
    cfg2, model2 = hf_io.load_hf_checkpoint(out_dir)
    t_load = time.time() - t0
    out = np.asarray(jit_forward(model2)(tokens, positions)[0])
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return {
        "params": cfg.num_params(),
        "layers": layers,
        "vocab": cfg.vocab_size,
        "config_equal": cfg2 == cfg,
        "max_abs_logit_diff": float(np.abs(out - ref).max()),
        "logit_scale": float(np.abs(ref).max()),
        "checkpoint_bytes": size,
        "init_forward_s": t_init,
        "save_s": t_save,
        "load_s": t_load,
    }


def main(argv):
    del argv
    w = mp.Workload(
        tokens_per_device=_TOKENS.value,
        row_len=_ROW.value,
        compute_dtype=_DTYPE.value,
        remat=_REMAT.value,
        page_size=_PAGE.value,
        kv_pages=_PAGES.value,
        kv_seqs=_SEQS.value,
        kv_seq_len=_SEQ_LEN.value,
        mu_dtype=_MU.value,
    )
    models = {name: name for name in _MODELS.value} or mp.MODELS
    rows = mp.plan_all(w, models=models, measure=_MEASURE.value, tpu_compile=_TPU.value)
    for hw in mp.HARDWARE.values():
        print(
            f"{hw.name}: {hw.num_devices} JAX devices x {hw.hbm_gib:.0f} GiB, mesh "
            f"(data, fsdp, tensor) = {hw.mesh}"
        )
    _print_table(rows)
    result = {"workload": w.__dict__, "rows": rows}
    if _RT_DIR.value:
        rt = _roundtrip(_RT_DIR.value, _RT_LAYERS.value)
        print("real-width round trip:", json.dumps(rt))
        result["roundtrip"] = rt
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
