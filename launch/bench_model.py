"""Training-step benchmark: our jitted Qwen vs the same model in HF transformers (torch), on CPU.

  python launch/bench_model.py --out=/tmp/bench_model.json --reps=3

One step = forward + next-token cross-entropy + backward + AdamW update, float32, same shapes
and random weights of the same scale in both. Default: Qwen3-shaped, 6 layers, d=256, 4 heads /
2 kv heads x 64, mlp 768, vocab 4096, untied; batch 8 x seq 256. The two frameworks alternate
rep by rep so that load from other processes hits both alike; warm-up steps (and the XLA
compile) are excluded. Reports median tokens/s per framework and
`train_tokens_per_s_ratio_vs_torch` (ours / torch).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from cleaner_jax.models import qwen, testing
from cleaner_jax.models.config import tiny_config

_OUT = flags.DEFINE_string("out", "/tmp/bench_model.json", "JSON output path")
_REPS = flags.DEFINE_integer("reps", 3, "timed repetitions per framework (alternating)")
_STEPS = flags.DEFINE_integer("steps_per_rep", 3, "training steps per repetition")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed warm-up steps per framework")
_BATCH = flags.DEFINE_integer("batch", 8, "sequences per step")
_SEQ = flags.DEFINE_integer("seq", 256, "tokens per sequence")
_LAYERS = flags.DEFINE_integer("layers", 6, "decoder layers")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "measure ours only")

LR = 1e-4


def _config():
    return tiny_config(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_layers=_LAYERS.value,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
    )


def _ours(cfg, tokens_BT):
    model = testing.random_model(cfg, seed=0, scale=0.02)
    graphdef, params = nnx.split(model, nnx.Param)
    opt = optax.adamw(LR, weight_decay=0.01)
    opt_state = opt.init(params)
    b, t = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(t - 1), (b, t - 1))

    def loss_fn(params, tokens_BT):
        logits_BTV, _ = nnx.merge(graphdef, params)(tokens_BT[:, :-1], positions_BT)
        return -qwen.token_logprobs(logits_BTV, tokens_BT[:, 1:]).mean()

    @jax.jit
    def step(params, opt_state, tokens_BT):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BT)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    tokens = jnp.asarray(tokens_BT)
    state = [params, opt_state]

    def run(n):
        loss = None
        for _ in range(n):
            state[0], state[1], loss = step(state[0], state[1], tokens)
        return float(jax.block_until_ready(loss))

    return run


def _torch(cfg, tokens_BT):
    import torch
    import torch.nn.functional as F

    model = testing.torch_model(cfg, seed=0, scale=0.02, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    tokens = torch.as_tensor(np.array(tokens_BT, dtype=np.int64))

    def run(n):
        loss = None
        for _ in range(n):
            logits = model(tokens[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    return run


def main(argv):
    del argv
    cfg = _config()
    rng = np.random.default_rng(0)
    tokens_BT = rng.integers(0, cfg.vocab_size, (_BATCH.value, _SEQ.value + 1), dtype=np.int32)
    tokens_per_step = _BATCH.value * _SEQ.value
    runners = {"ours (jax jit, fp32)": _ours(cfg, tokens_BT)}
    if not _SKIP_TORCH.value:
        import torch

        runners[f"HF torch {torch.__version__} (fp32)"] = _torch(cfg, tokens_BT)

    compile_s = {}
    for name, run in runners.items():
        t0 = time.perf_counter()
        run(_WARMUP.value)
        compile_s[name] = time.perf_counter() - t0
    rep_tps: dict[str, list[float]] = {name: [] for name in runners}
    final_loss = {}
    for _ in range(_REPS.value):
        for name, run in runners.items():
            t0 = time.perf_counter()
            final_loss[name] = run(_STEPS.value)
            rep_tps[name].append(tokens_per_step * _STEPS.value / (time.perf_counter() - t0))

    names = list(runners)
    median = {n: statistics.median(v) for n, v in rep_tps.items()}
    print(
        f"\ntrain step, {cfg.num_layers} layers d={cfg.hidden_size} vocab={cfg.vocab_size}, "
        f"batch {_BATCH.value} x seq {_SEQ.value}, {_REPS.value} reps x {_STEPS.value} steps"
    )
    print(
        f"{'framework':32s} {'median tok/s':>13s} {'min':>9s} {'max':>9s} {'warm-up s':>10s}"
        f" {'loss':>8s}"
    )
    for n in names:
        v = rep_tps[n]
        print(
            f"{n:32s} {median[n]:13.0f} {min(v):9.0f} {max(v):9.0f} {compile_s[n]:10.1f}"
            f" {final_loss[n]:8.4f}"
        )
    result = {
        "config": {
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "mlp": cfg.intermediate_size,
            "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab": cfg.vocab_size,
            "batch": _BATCH.value,
            "seq": _SEQ.value,
            "reps": _REPS.value,
            "steps_per_rep": _STEPS.value,
            "warmup": _WARMUP.value,
        },
        "ours_train_tokens_per_s": median[names[0]],
        "ours_train_tokens_per_s_reps": rep_tps[names[0]],
        "ours_warmup_s": compile_s[names[0]],
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "platform": platform.platform(),
    }
    if len(names) > 1:
        result.update(
            torch_train_tokens_per_s=median[names[1]],
            torch_train_tokens_per_s_reps=rep_tps[names[1]],
            train_tokens_per_s_ratio_vs_torch=median[names[0]] / median[names[1]],
        )
        print(f"ratio ours / torch: {result['train_tokens_per_s_ratio_vs_torch']:.2f}x")
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
