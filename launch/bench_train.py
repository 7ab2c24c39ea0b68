r"""Trainer benchmarks, side by side in one run (prints a table, writes JSON).

  python launch/bench_train.py --out=/tmp/bench_train.json

1. Training tokens/s of the real update path (`rl.update.Updater`: packed rows with segment ids,
   token-mean loss, AdamW, grad clip) vs the same model in HF transformers torch on CPU;
   Qwen3-shaped, 6 layers, d=256, batch 8 x seq 256. One torch arm per `--torch_attention`:
   `train_tokens_per_s_ratio_vs_torch` is against the first, "sdpa" by default, which is what
   `transformers` picks when no attention is named (`bench_sampler`'s HF `generate` runs it too);
   `..._by_attention` has every arm's ratio. Before Dec 2026 this arm ran "eager", which was
   2-3% slower than "sdpa" on the 2-core EPYC (three runs) and so flattered the ratio (#19).
2. Old-log-prob recompute for one GRPO group (G=16, prompt 512, response 256): prefix-shared
   forward (prompt once, KV cache read by all 16 responses) vs the naive packed forward of 16
   full sequences (`prefix_recompute_time_ratio`, target <= 0.6).
3. A phase table of our train step (`Updater.step`, one micro-batch: gradient and AdamW update in
   one program; `cleaner_jax/runtime/phase_tables.py`, steady-state calls): host time to build
   the device arrays, host time of the dispatch, the device call to ready, the metrics' one
   transfer to the host, the whole call; and, alone, the gradient program (`_grad_step`) and the
   optimizer program (`_apply`). Each with FLOPs from XLA's compiled cost analysis and the
   fraction of a matmul peak (a 1024^2 float32 matmul) timed in the same loop.
   The table ends with the host's minor page faults and kernel (sys) CPU time per step.
4. With `--rl_pairs=N` (run first, before torch is imported): the RL loop's host memory. Our
   sampler (`Engine.generate_batch`, 32 prompts of 16 + 112 greedy tokens, with the current
   weights) and our train step alternate N times, as `rl/` runs a rollout and an update, in one
   process. Per call: seconds and minor page faults; a call with > 1000 faults is a "storm"
   (the heap grew: see `--host_malloc` below). The first 2 pairs (compilation, first growth) are
   reported apart.
Warm-up (compilation) is excluded; the arms of each comparison (and the phases) alternate rep by
rep. In items 1 and 2 each rep runs an arm `--block` times back to back, as a training loop
would, and the first call after a switch is kept apart (`benchmarking.alternate_in_blocks` says
why). Tables print the median and min-max; the JSON holds every call, the minor page faults of
each, the ratio of the medians, of the means and of the after-switch calls, the machine (CPU
model, cores, jax/torch versions) and the load average before and after.

`--host_malloc` (`runtime/host_malloc.py`; both arms: one process) is the launchers' flag with
their default, `auto`: on a CPU host glibc keeps freed memory for reuse instead of returning it
to the kernel. XLA on CPU allocates each call's temporaries as one block (402 MB for this step):
as glibc comes (`--host_malloc=default`), a block that large is a fresh mmap, unmapped on free,
so every step page-faults all of it in again (~103k minor faults, ~0.25 s of kernel CPU per step
on the 2-core EPYC, #19); with `reuse` the faults fall to ~0. The JSON's `host_malloc` is what
was in effect.
"""

import json
import os
import statistics

import numpy as np
from absl import app, flags
from flax import nnx

from cleaner_jax.benchmarking import (
    STORM_FAULTS,
    alternate_in_blocks,
    block_summary,
    fault_storms,
    machine_facts,
    timed_call,
)
from cleaner_jax.models import testing
from cleaner_jax.models.config import tiny_config
from cleaner_jax.rl.logprobs import packed_logprobs, prefix_shared_logprobs
from cleaner_jax.rl.packing import TrainSample, pack
from cleaner_jax.rl.update import (
    LossConfig,
    OptimConfig,
    Updater,
    make_optimizer,
)
from cleaner_jax.runtime import host_malloc, phase_tables
from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams

_OUT = flags.DEFINE_string("out", "/tmp/bench_train.json", "JSON output path")
_REPS = flags.DEFINE_integer("reps", 5, "timed repetitions per arm (>= 5 for the reported median)")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "skip the HF torch arms")
_TORCH_ATTENTION = flags.DEFINE_list(
    "torch_attention",
    ["sdpa", "eager"],
    "HF attention implementations, one torch arm each; the headline ratio is against the first "
    "('sdpa': transformers' default)",
)
_TORCH_ATTENTIONS = ("sdpa", "eager")
_BLOCK = flags.DEFINE_integer(
    "block",
    3,
    "calls of one arm back to back per rep (>= 2): the first after switching arms is recorded "
    "apart ('after_switch'), the rest are the arm's timed reps. 1: single calls alternating, each "
    "timed (the older method)",
    lower_bound=1,
)
_RL_PAIRS = flags.DEFINE_integer(
    "rl_pairs",
    0,
    "rollout + update pairs of the RL-loop host-memory section (0: skip it)",
    lower_bound=0,
)
_SETTLE_S = flags.DEFINE_float(
    "settle_s",
    0.0,
    "idle seconds before each call of an alternating arm (Dec 2026, 2-core EPYC: 0.5 gave "
    "ours/torch 0.55, 0 gave 0.87 in back-to-back runs; a training loop runs steps back to back)",
)


def _cfg(layers=6):
    return tiny_config(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
    )


def _alternate(arms, reps):
    """`benchmarking.alternate_in_blocks` with this script's `--block` and `--settle_s`."""
    return alternate_in_blocks(arms, reps, _BLOCK.value, _SETTLE_S.value)


def _train_setup():
    cfg = _cfg()
    rng = np.random.default_rng(0)
    batch, seq = 8, 256
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    samples = [TrainSample(t, np.ones(seq + 1)) for t in tokens]
    packed = pack(samples, seq)
    model = testing.random_model(cfg, seed=0, scale=0.02)
    graphdef, state = nnx.split(model)
    updater = Updater(
        graphdef,
        make_optimizer(OptimConfig(learning_rate=1e-4, warmup_steps=1)),
        LossConfig(kind="sft"),
    )
    return cfg, tokens, packed, graphdef, state, updater, batch * seq


def _train_arms(reps):
    cfg, tokens, packed, _, state, updater, num_tokens = _train_setup()
    box = {"state": state, "opt": updater.init(state)}

    def ours():
        box["state"], box["opt"], _ = updater.step(box["state"], box["opt"], [packed])

    arms = {"ours: Updater (jax jit, fp32)": ours}
    if not _SKIP_TORCH.value:
        import torch

        ttok = torch.tensor(tokens, dtype=torch.long)
        for attention in _TORCH_ATTENTION.value:
            arms[f"HF torch {torch.__version__} {attention} (fp32)"] = _torch_step(
                testing.torch_model(cfg, seed=0, scale=0.02, attn_implementation=attention), ttok
            )
    return {
        n: {"tokens_per_s": num_tokens / statistics.median(r["timed"]), **block_summary(r)}
        for n, r in _alternate(arms, reps).items()
    }


def _torch_step(tmodel, ttok):
    """One HF training step as a user writes it: loss from labels, backward, clip, AdamW."""
    import torch

    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        out = tmodel(input_ids=ttok[:, :-1], labels=ttok[:, :-1].clone())
        topt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        topt.step()

    return step


def _rl_alternation(pairs: int, left_out: int = 2) -> dict:
    """Our rollout and train step alternating `pairs` times: seconds and minor faults per call."""
    cfg, _, packed, graphdef, state, updater, _ = _train_setup()
    box = {"state": state, "opt": updater.init(state)}
    engine = Engine(
        (graphdef, state),
        EngineConfig(page_size=16, num_pages=32 * 256 // 16 + 64, max_slots=32, max_seq_len=256),
    )
    engine.warmup()
    rng = np.random.default_rng(2)
    prompts = [list(map(int, rng.integers(0, cfg.vocab_size, 16))) for _ in range(32)]
    greedy = SamplingParams(greedy=True, max_new_tokens=112)

    def rollout():
        engine.update_params(box["state"])  # the step donates the weights the engine held
        engine.generate_batch(prompts, greedy)

    def update():
        box["state"], box["opt"], _ = updater.step(box["state"], box["opt"], [packed])

    calls = {"rollout": rollout, "update": update}
    out = {n: {"seconds": [], "minor_faults": []} for n in calls}
    for _ in range(pairs):
        for n, fn in calls.items():
            seconds, faults = timed_call(fn)
            out[n]["seconds"].append(seconds)
            out[n]["minor_faults"].append(faults)
    return {"pairs": pairs, "left_out": left_out, "calls": out}


def _print_rl(rl: dict) -> None:
    k = rl["left_out"]
    print(
        f"\nRL loop on the host: our rollout (batch 32, 16 + 112 tokens) and train step, "
        f"{rl['pairs']} pairs; median ms [min-max] and storms (> {STORM_FAULTS} page faults) "
        f"after the first {k} pairs; the first {k} apart"
    )
    for n, r in rl["calls"].items():
        sec, faults = r["seconds"][k:], r["minor_faults"][k:]
        line = f"  {n:8s} first {k}: " + ", ".join(
            f"{t * 1e3:.0f} ms / {f} faults"
            for t, f in zip(r["seconds"][:k], r["minor_faults"][:k], strict=True)
        )
        if sec:
            line += (
                f"; then {statistics.median(sec) * 1e3:.0f} [{min(sec) * 1e3:.0f}-"
                f"{max(sec) * 1e3:.0f}] ms, storms {fault_storms(faults)} of {len(sec)}"
            )
        print(line)


def _phase_table(reps):
    """Where one train step's time goes: `phase_tables.train_phases` at this script's shape."""
    _, _, packed, graphdef, state, updater, _ = _train_setup()
    return phase_tables.train_phases(
        updater, graphdef, state, packed, reps, phase_tables.matmul_call()
    )


def _print_phases(phases):
    title = f"\ntrain step phases; matmul peak {phases['matmul_peak_gflop_per_s']:.0f} GFLOP/s"
    print(phase_tables.format_table(title, phases["phases"]))
    faults, sys_s = (phases["step_host"][k]["median"] for k in ("minor_faults", "sys_s"))
    print(
        f"  step, host: {faults:.0f} minor page faults, {sys_s * 1e3:.0f} ms kernel CPU (medians)"
    )


def _prefix_arms(reps):
    cfg = _cfg(layers=4)
    rng = np.random.default_rng(1)
    g, p, r = 16, 512, 256
    prompt = rng.integers(0, cfg.vocab_size, p).astype(np.int32)
    responses = [rng.integers(0, cfg.vocab_size, r).astype(np.int32) for _ in range(g)]
    samples = [TrainSample(np.concatenate([prompt, x]), np.ones(p + r)) for x in responses]
    packed = pack(samples, p + r)
    graphdef, state = nnx.split(testing.random_model(cfg, seed=0, scale=0.02))
    arms = {
        "naive packed forward (16 x 768)": lambda: packed_logprobs(graphdef, state, packed),
        "prefix-shared (512 once + 16 x 256)": lambda: prefix_shared_logprobs(
            graphdef, state, prompt, responses, bucket=256
        ),
    }
    return {n: block_summary(r) for n, r in _alternate(arms, reps).items()}


def main(argv):
    del argv
    malloc_mode = host_malloc.configure(host_malloc.HOST_MALLOC.value)
    if _REPS.value < 5:
        raise app.UsageError(f"--reps={_REPS.value}: use at least 5 (the median of fewer is noise)")
    chosen = _TORCH_ATTENTION.value
    if not chosen or set(chosen) - set(_TORCH_ATTENTIONS) or len(set(chosen)) < len(chosen):
        raise app.UsageError(
            f"--torch_attention={','.join(chosen)}: name one or more of "
            f"{', '.join(_TORCH_ATTENTIONS)}, each once"
        )
    load_start = os.getloadavg()
    rl = _rl_alternation(_RL_PAIRS.value) if _RL_PAIRS.value else None
    if rl:
        _print_rl(rl)
    train = _train_arms(_REPS.value)
    names = list(train)
    print(
        f"\ntraining step, 6 layers d=256 vocab 4096, batch 8 x seq 256; {_REPS.value} reps of "
        f"{_BLOCK.value} calls per arm (tokens/s of the median [min-max], of the mean; calls "
        f"just after a switch apart; calls with > {STORM_FAULTS} page faults)"
    )
    for n in names:
        r = train[n]
        tps = r["tokens_per_s"] * r["median_s"]  # tokens per step
        lo, hi = (tps / r[k] for k in ("max_s", "min_s"))
        storms = fault_storms(r["minor_faults"])
        line = (
            f"  {n:36s} {r['tokens_per_s']:7.0f} [{lo:.0f}-{hi:.0f}] mean {tps / r['mean_s']:.0f}"
        )
        if "after_switch" in r:
            a = r["after_switch"]
            lo, hi = (tps / a[k] for k in ("max_s", "min_s"))
            line += f"; after a switch {tps / a['median_s']:.0f} [{lo:.0f}-{hi:.0f}]"
            storms = f"{storms}+{fault_storms(a['minor_faults'])}"
        print(f"{line}; fault storms {storms}")
    phases = _phase_table(_REPS.value)
    _print_phases(phases)
    pre = _prefix_arms(_REPS.value)
    pnames = list(pre)
    print("\nold-log-prob recompute, G=16, prompt 512, response 256, 4 layers (median seconds)")
    for n in pnames:
        print(
            f"  {n:40s} {pre[n]['median_s']:10.3f}  [{pre[n]['min_s']:.3f}-{pre[n]['max_s']:.3f}]"
        )
    result = {
        "train_tokens_per_s": {n: r["tokens_per_s"] for n, r in train.items()},
        "train_arms": train,
        "train_step_phases": phases,
        "prefix_recompute_seconds": {n: r["median_s"] for n, r in pre.items()},
        "prefix_recompute_arms": pre,
        "prefix_recompute_time_ratio": pre[pnames[1]]["median_s"] / pre[pnames[0]]["median_s"],
        "rl_alternation": rl,
        "machine": machine_facts(torch=True),
        "reps": _REPS.value,
        "settle_s": _SETTLE_S.value,
        "block": _BLOCK.value,
        "host_malloc": malloc_mode,
        "torch_attention": None if _SKIP_TORCH.value else _TORCH_ATTENTION.value,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "gpu_train_mfu": None,  # no GPU in the session that wrote this
    }
    if len(names) > 1:
        ours, theirs = train[names[0]], train[names[1]]
        result["train_tokens_per_s_ratio_vs_torch"] = theirs["median_s"] / ours["median_s"]
        # The spread of the ratio: worst and best pairing of the two arms' reps.
        result["train_tokens_per_s_ratio_vs_torch_min_max"] = [
            theirs["min_s"] / ours["max_s"],
            theirs["max_s"] / ours["min_s"],
        ]
        result["train_tokens_per_s_ratio_vs_torch_of_means"] = theirs["mean_s"] / ours["mean_s"]
        if "after_switch" in ours:
            result["train_tokens_per_s_ratio_vs_torch_after_switch"] = (
                theirs["after_switch"]["median_s"] / ours["after_switch"]["median_s"]
            )
        result["train_tokens_per_s_ratio_vs_torch_by_attention"] = {
            a: train[n]["median_s"] / ours["median_s"]
            for a, n in zip(_TORCH_ATTENTION.value, names[1:], strict=True)
        }
        ratio = result["train_tokens_per_s_ratio_vs_torch"]
        others = ", ".join(
            f"{k.removeprefix('train_tokens_per_s_ratio_vs_torch_')} {result[k]:.2f}"
            for k in result
            if k.startswith("train_tokens_per_s_ratio_vs_torch_")
            and not k.endswith(("min_max", "by_attention"))
        )
        others += "; " + ", ".join(
            f"vs {a} {r:.2f}"
            for a, r in result["train_tokens_per_s_ratio_vs_torch_by_attention"].items()
        )
        print(f"\ntrain_tokens_per_s_ratio_vs_torch = {ratio:.2f} ({others})")
    print(f"prefix_recompute_time_ratio = {result['prefix_recompute_time_ratio']:.3f}")
    print(f"machine: {result['machine']}; load {load_start} -> {result['load_average_at_end']}")
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
