r"""Trainer benchmarks, side by side in one run (prints a table, writes JSON).

  python launch/bench_train.py --out=/tmp/bench_train.json

1. Training tokens/s of the real update path (`rl.update.Updater`: packed rows with segment ids,
   token-mean loss, AdamW, grad clip) vs the same model in HF transformers torch on CPU
   (`train_tokens_per_s_ratio_vs_torch`); Qwen3-shaped, 6 layers, d=256, batch 8 x seq 256.
2. Old-log-prob recompute for one GRPO group (G=16, prompt 512, response 256): prefix-shared
   forward (prompt once, KV cache read by all 16 responses) vs the naive packed forward of 16
   full sequences (`prefix_recompute_time_ratio`, target <= 0.6).
Warm-up (compilation) is excluded; the two arms of each comparison alternate rep by rep.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from cleaner_jax.models import testing  # noqa: E402
from cleaner_jax.models.config import tiny_config  # noqa: E402
from cleaner_jax.rl.logprobs import packed_logprobs, prefix_shared_logprobs  # noqa: E402
from cleaner_jax.rl.packing import TrainSample, pack  # noqa: E402
from cleaner_jax.rl.update import LossConfig, OptimConfig, Updater, make_optimizer  # noqa: E402

_OUT = flags.DEFINE_string("out", "/tmp/bench_train.json", "JSON output path")
_REPS = flags.DEFINE_integer("reps", 3, "timed repetitions per arm")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "skip the HF torch arm")


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


def _timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _train_arms(reps):
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
    box = {"state": state, "opt": updater.init(state)}

    def ours():
        box["state"], box["opt"], _ = updater.step(box["state"], box["opt"], [packed])

    arms = {"ours: Updater (jax jit, fp32)": ours}
    if not _SKIP_TORCH.value:
        import torch

        tmodel = testing.torch_model(cfg, seed=0, scale=0.02)
        topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, weight_decay=0.01)
        ttok = torch.tensor(tokens, dtype=torch.long)

        def theirs():
            out = tmodel(input_ids=ttok[:, :-1], labels=ttok[:, :-1].clone())
            topt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
            topt.step()

        arms[f"HF torch {torch.__version__} (fp32)"] = theirs
    for fn in arms.values():
        fn()
    times = {n: [] for n in arms}
    for _ in range(reps):
        for n, fn in arms.items():
            times[n] += _timed(fn, 1)
    tps = {n: batch * seq / statistics.median(t) for n, t in times.items()}
    return tps


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
    for fn in arms.values():
        fn()
    times = {n: [] for n in arms}
    for _ in range(reps):
        for n, fn in arms.items():
            times[n] += _timed(fn, 1)
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv):
    del argv
    tps = _train_arms(_REPS.value)
    names = list(tps)
    print("\ntraining step, 6 layers d=256 vocab 4096, batch 8 x seq 256 (median tokens/s)")
    for n in names:
        print(f"  {n:40s} {tps[n]:10.0f}")
    pre = _prefix_arms(_REPS.value)
    pnames = list(pre)
    print("\nold-log-prob recompute, G=16, prompt 512, response 256, 4 layers (median seconds)")
    for n in pnames:
        print(f"  {n:40s} {pre[n]:10.3f}")
    result = {
        "train_tokens_per_s": tps,
        "prefix_recompute_seconds": pre,
        "prefix_recompute_time_ratio": pre[pnames[1]] / pre[pnames[0]],
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "gpu_train_mfu": None,  # no GPU in the session that wrote this
    }
    if len(names) > 1:
        result["train_tokens_per_s_ratio_vs_torch"] = tps[names[0]] / tps[names[1]]
        ratio = result["train_tokens_per_s_ratio_vs_torch"]
        print(f"\ntrain_tokens_per_s_ratio_vs_torch = {ratio:.2f}")
    print(f"prefix_recompute_time_ratio = {result['prefix_recompute_time_ratio']:.3f}")
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
