r"""The accelerator check: decode speed against the HBM roofline, training MFU, one SAAR rollout.

  python launch/gpu_check.py --out=/tmp/gpu_check.json           # on one H100/H200 (~6 min)
  python launch/gpu_check.py --tiny --out=/tmp/gpu_check.json    # the same code on CPU, tiny

`launch/gpu_check.sh` runs this after the `gpu` test marker. Every section writes the JSON as it
finishes, and a section that fails records its error and the next one still runs, so a crash loses
nothing measured before it.

Sections (random weights, bf16 compute; `--tiny` shrinks every shape):
1. machine: device kind, jax version, a measured HBM copy bandwidth and bf16 matmul rate;
2. decode: `Engine.generate_batch` on a Qwen3-0.6B-shaped model, greedy, at batch 1 and 64:
   tokens/s, and at batch 1 the fraction of the HBM roofline (each token reads every weight and
   the KV written so far: tokens/s <= bandwidth / bytes per token);
3. train: `rl.update.Updater.step` (loss + gradient + AdamW, fp32 master weights, per-layer remat)
   on one packed row of 8,192 and 16,384 tokens for Qwen3-0.6B and 1.7B shapes: tokens/s and MFU
   (model FLOPs 6 P T + 6 L N H T^2 (causal attention, forward + backward) over the device's bf16
   peak; P excludes the embedding lookup but includes the output projection);
4. rollout: one GRPO step of the shipped `configs/paper.py:model=qwen3_4b,arm=cleaner,runlocal`
   pipeline (real sandbox, agent loop, SAAR on) with a random Qwen3-0.6B-shaped policy;
5. phases (`--sections=phases`, its own run in gpu_check.sh): the phase tables of issue #19
   (`cleaner_jax/runtime/phase_tables.py`) on the device: the decode engine's prefill and decode
   calls at batch 64 and one train step at 4,096 tokens, each with wall time, compiled FLOPs, the
   fraction of a bf16 matmul timed in the same alternation, and the host time around the calls;
6. logprobs (`--sections=logprobs`): the old-log-prob recompute (`rl.logprobs.packed_logprobs`,
   the packed training forward and chunked scoring) on one packed row of 2,048, 8,192 and 16,384
   tokens (Qwen3-0.6B shape): seconds, finite, the program's compiled temporary bytes per token
   (constant if memory is linear in the row) and the device's peak bytes in use after each length;
7. fp16 (`--sections=fp16`; the paper configs train and sample in float16 on GPU): one train step
   in float16 compute (dynamic loss scaling, `make_optimizer(..., "float16")`), checked finite;
   the packed log-probs of one row in float16 and bfloat16 against float32 (max abs difference
   over the scored tokens, same weights); and greedy decode with a float16 `Engine`, its
   reported log-probs against the float32 training forward's on the same tokens.
`gpu_check.sh` runs logprobs and fp16 in a process of their own.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from cleaner_jax.benchmarking import machine_facts
from cleaner_jax.models import testing
from cleaner_jax.models.config import PRESETS, tiny_config

_OUT = flags.DEFINE_string("out", "/tmp/gpu_check.json", "JSON output path")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny shapes (the CPU dry run of this script).")
_SECTIONS = flags.DEFINE_list(
    "sections",
    ["machine", "decode", "train", "rollout"],
    "What to run (also: phases, logprobs, fp16).",
)
_REPS = flags.DEFINE_integer("reps", 5, "Timed repetitions (median reported).")

# Dense bf16 peak of the data sheets (FLOP/s), by `device_kind` prefix.
_BF16_PEAK = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "TPU v5p": 459e12, "TPU v4": 275e12}


def _median_time(fn, reps: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _machine() -> dict:
    dev = jax.local_devices()[0]
    kind = dev.device_kind
    peak = next((v for k, v in _BF16_PEAK.items() if kind.startswith(k)), None)
    n = (1 << 20) if _TINY.value else (1 << 30)  # bf16 elements: 2 MiB / 2 GiB
    x = jnp.ones((n,), jnp.bfloat16)
    copy = jax.jit(lambda a: a + 1)
    t = _median_time(lambda: copy(x).block_until_ready(), _REPS.value)
    bandwidth = 2 * x.nbytes / t  # read + write
    m = 1024 if _TINY.value else 8192
    a = jnp.ones((m, m), jnp.bfloat16)
    mm = jax.jit(lambda p, q: p @ q)
    t = _median_time(lambda: mm(a, a).block_until_ready(), _REPS.value)
    return {
        **machine_facts(),
        "device_kind": kind,
        "num_devices": jax.device_count(),
        "bf16_peak_flops_datasheet": peak,
        "measured_copy_bandwidth_bytes_per_s": bandwidth,
        "measured_bf16_matmul_flops": 2 * m**3 / t,
    }


def _model_cfg(preset: str):
    if _TINY.value:
        return tiny_config(vocab_size=1024, dtype="bfloat16", remat=True)
    return PRESETS[preset].replace(dtype="bfloat16", remat=True)


def _decode_engine(model, batch: int, prompt_len: int, new: int):
    """A warm `Engine` with `batch` slots for prompts of `prompt_len` + `new` tokens."""
    from cleaner_jax.sampling import Engine, EngineConfig

    engine = Engine(
        model,
        EngineConfig(
            page_size=16,
            num_pages=batch * -(-(prompt_len + new) // 16) + 8,
            max_slots=batch,
            prefill_chunk=128 if _TINY.value else 512,
            max_seq_len=prompt_len + new,
            decode_steps=8,
        ),
    )
    engine.warmup()
    return engine


def _ppo_row(cfg, t: int, rng):
    """One packed row of `t` random tokens with PPO fields (advantage 1, old log-probs -1)."""
    from cleaner_jax.rl.packing import TrainSample, pack

    toks = rng.integers(0, cfg.vocab_size, t + 1).astype(np.int32)
    ones, old = np.ones(t + 1, np.float32), np.full(t + 1, -1.0, np.float32)
    return pack([TrainSample(toks, ones, 1.0, old)], t)


def _ppo_updater(graphdef):
    """The PPO-loss `Updater` (AdamW, lr 1e-6) both training sections time."""
    from cleaner_jax.rl.update import LossConfig, OptimConfig, Updater, make_optimizer

    return Updater(
        graphdef, make_optimizer(OptimConfig(learning_rate=1e-6)), LossConfig(kind="ppo")
    )


def _decode(machine: dict) -> dict:
    from cleaner_jax.sampling import SamplingParams

    cfg = _model_cfg("qwen3_0_6b")
    model = testing.random_model(cfg.replace(param_dtype="bfloat16"), seed=0, scale=0.02)
    graphdef, state = nnx.split(model)
    prompt_len, new = (16, 32) if _TINY.value else (128, 512)
    out = {"model": "qwen3_0_6b", "prompt_len": prompt_len, "new_tokens": new}
    rng = np.random.default_rng(0)
    for batch in (1, 64):
        engine = _decode_engine((graphdef, state), batch, prompt_len, new)
        prompts = [rng.integers(0, cfg.vocab_size, prompt_len).tolist() for _ in range(batch)]
        sp = SamplingParams(max_new_tokens=new, greedy=True, temperature=0.0)
        t = _median_time(lambda e=engine, p=prompts, q=sp: e.generate_batch(p, q), _REPS.value)
        tok_s = batch * new / t
        out[f"b{batch}_tokens_per_s"] = tok_s
        if batch == 1:
            weights = sum(x.nbytes for x in jax.tree.leaves(state))
            kv_per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
            mean_ctx = prompt_len + new / 2
            bytes_per_token = weights + kv_per_pos * mean_ctx
            roof = machine["measured_copy_bandwidth_bytes_per_s"] / bytes_per_token
            out["b1_hbm_roofline_tokens_per_s"] = roof
            out["b1_fraction_of_hbm_roofline"] = tok_s / roof
        del engine
    return out


def _train(machine: dict) -> dict:

    lengths = (256, 512) if _TINY.value else (8192, 16384)
    peak = machine.get("bf16_peak_flops_datasheet") or machine["measured_bf16_matmul_flops"]
    out = {"peak_flops_used": peak}
    for preset in ("qwen3_0_6b", "qwen3_1_7b"):
        cfg = _model_cfg(preset)
        model = testing.random_model(cfg, seed=0, scale=0.02)
        graphdef, state = nnx.split(model)
        updater = _ppo_updater(graphdef)
        box = {"state": state, "opt": updater.init(state)}
        emb = cfg.vocab_size * cfg.hidden_size
        p = cfg.num_params() - emb + (emb if cfg.tie_word_embeddings else 0)
        rng = np.random.default_rng(0)
        for t in lengths:
            micro = _ppo_row(cfg, t, rng)

            def step(micro=micro, box=box, up=updater):
                box["state"], box["opt"], m = up.step(box["state"], box["opt"], [micro])
                return m

            sec = _median_time(step, _REPS.value)
            flops = 6 * p * t + 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * t * t
            key = f"{preset}_T{t}"
            out[key] = {
                "step_s": sec,
                "tokens_per_s": t / sec,
                "model_flops": flops,
                "mfu": flops / sec / peak,
                "fraction_of_measured_matmul": flops / sec / machine["measured_bf16_matmul_flops"],
                "peak_bytes_in_use": _peak_bytes(),
            }
            logging.info("%s: %s", key, out[key])
        box.clear()
    return out


def _rollout(machine: dict) -> dict:
    import os

    from cleaner_jax.runtime import trainer as trainer_lib
    from cleaner_jax.runtime.config import load_config

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "paper.py")
    config = load_config(f"{path}:model=qwen3_4b,arm=cleaner,runlocal")
    if not _TINY.value:
        config.model.preset = "qwen3_0_6b"
        config.model.dtype = "bfloat16"
        config.rollout.prompts_per_step = 8
        config.rollout.n = 8
        config.rollout.engine.max_slots = 64
    config.mesh.fsdp = 1
    config.checkpoint.export_hf = False
    config.total_steps = 1
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        metrics = trainer_lib.run(config, workdir)
        sec = time.perf_counter() - t0
    keep = ("time/", "saar/", "rollout_tokens_per_s", "response_length/", "train/loss")
    return {
        "wall_s": sec,
        **{k: v for k, v in metrics.items() if k.startswith(keep) and isinstance(v, float | int)},
    }


def _sampler_phases(cfg, matmul, reps: int) -> dict:
    from cleaner_jax.runtime import phase_tables
    from cleaner_jax.sampling import SamplingParams

    tiny = _TINY.value
    batch, prompt_len, new = (8, 16, 32) if tiny else (64, 128, 512)
    model = testing.random_model(cfg.replace(param_dtype="bfloat16"), seed=0, scale=0.02)
    engine = _decode_engine(nnx.split(model), batch, prompt_len, new)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, prompt_len).tolist() for _ in range(batch)]
    params = SamplingParams(max_new_tokens=new, greedy=True, temperature=0.0)

    def run_generate():
        engine.update_params(engine._state)  # an empty prefix cache: every prompt is prefilled
        engine.stats.clear()
        t0 = time.perf_counter()
        engine.generate_batch(prompts, params)
        return time.perf_counter() - t0

    out = phase_tables.sampler_phases(engine, batch, prompt_len + new, reps, run_generate, matmul)
    logging.info("%s", phase_tables.format_table("sampler", out["rows"], "host_s_per_call"))
    return out


def _phases(machine: dict) -> dict:
    """Phase tables on the device (`runtime/phase_tables.py`, issue #19): prefill and decode calls
    of the decode section's engine at batch 64, one train step at 4,096 tokens (Qwen3-0.6B shape,
    bf16 compute), each against a bf16 matmul timed in the same alternation."""
    from cleaner_jax.runtime import phase_tables

    del machine
    matmul = phase_tables.matmul_call(512 if _TINY.value else 4096, jnp.bfloat16)
    cfg = _model_cfg("qwen3_0_6b")
    reps = max(3, _REPS.value)
    sampler = _sampler_phases(cfg, matmul, reps)  # its engine is freed on return
    t = 256 if _TINY.value else 4096
    graphdef, state = nnx.split(testing.random_model(cfg, seed=0, scale=0.02))
    updater = _ppo_updater(graphdef)
    micro = _ppo_row(cfg, t, np.random.default_rng(0))
    train = phase_tables.train_phases(updater, graphdef, state, micro, reps, matmul)
    logging.info("%s", phase_tables.format_table(f"train step, T={t}", train["phases"]))
    return {"sampler": sampler, "train": train, "train_tokens": t}


def _peak_bytes() -> int | None:
    return (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def _logprobs(machine: dict) -> dict:
    """The old-log-prob recompute over packed rows of growing length: time, finiteness, memory."""
    from cleaner_jax.rl import logprobs as logprobs_lib

    del machine
    cfg = _model_cfg("qwen3_0_6b")
    graphdef, state = nnx.split(testing.random_model(cfg, seed=0, scale=0.02))
    chunk = 128 if _TINY.value else 1024
    rng = np.random.default_rng(0)
    out = {"model": "qwen3_0_6b", "chunk": chunk}
    for t in (256, 512, 1024) if _TINY.value else (2048, 8192, 16384):
        batch = _ppo_row(cfg, t, rng)
        args = (batch.inputs_RT, batch.targets_RT, batch.positions_RT, batch.segment_ids_RT)
        compiled = logprobs_lib._packed_logprobs.lower(
            graphdef, state, *args, temperature=1.0, chunk=chunk
        ).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        box = {}

        def run(b=batch, box=box):
            box["logp"] = logprobs_lib.packed_logprobs(graphdef, state, b, 1.0, chunk=chunk)

        sec = _median_time(run, _REPS.value)
        logp = box["logp"]
        out[f"T{t}"] = {
            "seconds": sec,
            "tokens_per_s": t / sec,
            "finite": bool(np.isfinite(logp).all()),
            "mean_logprob": float(logp.mean()),
            "compiled_temp_bytes": temp,
            "compiled_temp_bytes_per_token": temp / t,
            "peak_bytes_in_use": _peak_bytes(),
        }
        logging.info("logprobs T=%d: %s", t, out[f"T{t}"])
    return out


def _packed_logp(cfg, state_fp32, batch, dtype: str) -> np.ndarray:
    """The training forward's log-probs of `batch`, float32 weights, compute in `dtype`."""
    from cleaner_jax.rl.compiled_memory import abstract_model
    from cleaner_jax.rl.logprobs import packed_logprobs

    graphdef, _ = abstract_model(cfg.replace(dtype=dtype))
    return packed_logprobs(graphdef, state_fp32, batch, 1.0)


def _fp16(machine: dict) -> dict:
    """Float16 compute: the packed log-probs, the sampler's decode and a train step."""
    from cleaner_jax.rl.packing import TrainSample, pack
    from cleaner_jax.sampling import SamplingParams

    del machine
    cfg = _model_cfg("qwen3_0_6b").replace(dtype="float32")
    state32 = nnx.split(testing.random_model(cfg, seed=0, scale=0.02))[1]
    t = 256 if _TINY.value else 4096
    batch = _ppo_row(cfg, t, np.random.default_rng(0))
    scored = batch.loss_mask_RT > 0
    out = {"model": "qwen3_0_6b", "train_tokens": t}

    ref = _packed_logp(cfg, state32, batch, "float32")
    for dtype in ("float16", "bfloat16"):
        diff = np.abs(_packed_logp(cfg, state32, batch, dtype) - ref)[scored]
        out[f"logprobs_{dtype}"] = {
            "finite": bool(np.isfinite(diff).all()),
            "max_abs_diff_vs_float32": float(diff.max()),
            "mean_abs_diff_vs_float32": float(diff.mean()),
        }

    # The sampler holds float16 weights (same seed: the float32 weights rounded).
    cfg16 = cfg.replace(dtype="float16")
    sampler_model = testing.random_model(cfg16.replace(param_dtype="float16"), seed=0, scale=0.02)
    batch_size, prompt_len, new = (4, 16, 32) if _TINY.value else (16, 128, 256)
    engine = _decode_engine(nnx.split(sampler_model), batch_size, prompt_len, new)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, prompt_len).tolist() for _ in range(batch_size)]
    params = SamplingParams(max_new_tokens=new, greedy=True, temperature=0.0)
    t0 = time.perf_counter()
    results = engine.generate_batch(prompts, params)
    sec = time.perf_counter() - t0
    del engine, sampler_model
    samples = [
        TrainSample(
            np.asarray(p + r.tokens, np.int32),
            np.r_[np.zeros(len(p)), np.ones(len(r.tokens))],
            1.0,
            np.r_[np.zeros(len(p)), r.logprobs],
        )
        for p, r in zip(prompts, results, strict=True)
    ]
    rows = pack(samples, prompt_len + new)
    mask = rows.loss_mask_RT > 0
    diff = np.abs(rows.old_logprobs_RT - _packed_logp(cfg, state32, rows, "float32"))[mask]
    out["decode_float16"] = {
        "seconds_after_warmup": sec,
        "tokens": int(mask.sum()),
        "logprobs_finite": bool(np.isfinite(rows.old_logprobs_RT[mask]).all()),
        "max_abs_diff_vs_float32_train_forward": float(diff.max()),
        "mean_abs_diff_vs_float32_train_forward": float(diff.mean()),
    }
    out["train_step_float16"] = _fp16_train_step(cfg16, state32, batch)  # donates state32
    return out


def _fp16_train_step(cfg16, state, batch) -> dict:
    """`Updater.step` with float16 compute and dynamic loss scaling; finiteness checked."""
    from cleaner_jax.rl.compiled_memory import abstract_model
    from cleaner_jax.rl.update import (
        LossConfig,
        OptimConfig,
        Updater,
        loss_scale_of,
        make_optimizer,
    )

    updater = Updater(
        abstract_model(cfg16)[0],
        make_optimizer(OptimConfig(learning_rate=1e-6), compute_dtype="float16"),
        LossConfig(kind="ppo"),
    )
    box = {"state": state, "opt": updater.init(state)}

    def step():
        box["state"], box["opt"], box["metrics"] = updater.step(box["state"], box["opt"], [batch])

    sec = _median_time(step, _REPS.value)
    metrics = {k: float(v) for k, v in box["metrics"].items()}
    scale = loss_scale_of(box["opt"])
    return {
        "step_s": sec,
        "tokens_per_s": batch.inputs_RT.size / sec,
        "metrics": metrics,
        "metrics_finite": all(np.isfinite(v) for v in metrics.values()),
        "params_finite": all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(box["state"])),
        "loss_scale": None if scale is None else float(scale),
    }


_RUN = {
    "machine": _machine,
    "decode": _decode,
    "train": _train,
    "rollout": _rollout,
    "phases": _phases,
    "logprobs": _logprobs,
    "fp16": _fp16,
}


def main(argv):
    del argv
    result: dict = {"tiny": _TINY.value, "errors": {}}
    machine: dict = {}
    for name in _SECTIONS.value:
        t0 = time.perf_counter()
        try:
            value = _machine() if name == "machine" else _RUN[name](machine or _machine())
            if name == "machine":
                machine = value
            result[name] = value
        except Exception as e:  # noqa: BLE001 - a failed section is recorded, the rest still run
            result["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            logging.error("section %s failed: %s", name, e)
        result.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=1, default=str)
        logging.info("section %s done in %.1f s", name, result["section_seconds"][name])
    print(json.dumps({k: v for k, v in result.items() if k != "errors"}, indent=1, default=str))
    if result["errors"]:
        print("FAILED sections:", ", ".join(result["errors"]))
        raise SystemExit(1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
