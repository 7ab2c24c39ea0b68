"""The embedded miniature CLEANER study (DESIGN §4), end to end on a CPU.

1. assets: synthetic problems (SFT / RL-train / held-out test, disjoint), a cold-start SFT corpus
   whose tool outputs come from the real sandbox, and a byte-level BPE tokenizer with Qwen's
   control tokens and chat template, trained on the rendered corpus;
2. cold-start SFT of a tiny Qwen3-shaped model (`rl/sft.py`, the real SFT path), exported to HF;
3. GRPO from that checkpoint with SAAR off (baseline) and on (cleaner), same seeds, through the
   real trainer (`rl/trainer.py`) — one run per (arm, seed);
4. `report.md` + PNG plots (`rl/report.py`).
Everything lands in one workdir; a finished stage is not redone when the command is re-run.

How the miniature was made to learn (measured Nov 2026 on a 2-core CPU; per-token copy
accuracy of the SFT model on 45 held-out corpus conversations, question number into the code /
tool output into the box): a tiny model has to *copy* the question's number into its code and the
printed result into `\\boxed{}`, and until it does, accuracy is ~0 in both arms and GRPO has no
signal. Two things had stopped it: the SFT rate decayed (cosine) before the copy circuit forms,
which happens as a phase change after ~200 updates at the full rate, and SFT epochs were ordered
longest conversation first (first-fit-decreasing packing, now shuffled). Fixed schedule, rows
shuffled: 0.17 / 0.47 with 4 rows per step, 0.33 / 0.89 with 2 rows (same compute, twice the
updates); head_dim 48 instead of 24 forms the circuit ~100 updates earlier in pure copy drills.
The questions then name the number (`n = 57`) and every solution starts with `n = 57`, so the
copy is the induction pattern: 0.53 / 0.67 with 4 rows, 0.37 / 0.78 with 2 (the settings here;
one SFT run each, so these differ by about their noise). Earlier attempts with the cosine schedule
(numbers as 1-3 digit tokens, answers below 127, corpus copies, copy drills in the mix, a drill
pre-training stage) had left copy accuracy at ~0.

Does SAAR lower the first-attempt tool failure rate here? (measured Dec 2026, 2-core CPU.) With 5
SFT epochs and RL lr 1e-3, no: over 3 seeds x 6 steps the two arms' rates were the same within
noise (0.35 vs 0.35 mean). The trainer's credit diagnostics (`rl/credit.py`, logged as `credit/*`)
say why. SAAR moves a recovered trajectory's advantage from its failed call to the clean
correction, so its extra push against failing calls is ~2 P(recovered) E[A | recovered]: it helps
only when recovered trajectories beat their group's mean. On the 5-epoch SFT model (64 training
prompts x 8, no SAAR) the model recovered in context 96% of the time, but a recovered trajectory
was right less often than a clean one (0.30 vs 0.39: after an error the tiny model boxed a wrong
number, switched templates or corrupted its code), so E[A | recovered] = -0.03: the baseline
already pushed against failed calls through those trajectories. What was changed: SFT corpus with
half of the examples failing first (collapsed: acc 0.03); 80% of the fixes shallow (acc 0.15,
recovery 0.60, 0.13 vs 0.19); 8 SFT epochs instead of 5 (acc 0.46, recovery 0.87, recovered as
accurate as clean: 0.47 vs 0.48) -- kept, so self-correction no longer costs the answer; and RL lr
3e-4 instead of 1e-3, which with the stronger model made both arms worse in 6 steps. E[A |
recovered] is then ~0 (-0.02 on the SFT model; -0.15..+0.07 per baseline seed during RL): whether
the answer is right hardly depends on whether the first call failed -- the wrong answers seen were
mostly a miscopied number in code that ran, which no tool error reveals -- so outcome reward gives
failed calls about the same credit with or without purification. The miniature is a fair test of
the credit-assignment claim in this regime, and it predicts no difference in the failure rate,
which is what the runs show (3 seeds x 6 steps: first-attempt failure rate 0.250 +- 0.035 with
SAAR, 0.255 +- 0.041 without, paired difference -0.005); SAAR does remove the failures from the
trained trajectories (0.002 vs 0.32 per trajectory).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import ml_collections

from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.agent.tokenizer import build_tokenizer
from cleaner_jax.data import sft_corpus, synthetic_task
from cleaner_jax.rl import defaults, report, sft, trainer


@dataclasses.dataclass(frozen=True)
class DemoMode:
    seeds: tuple[int, ...]
    rl_steps: int
    prompts_per_step: int
    samples_per_prompt: int
    n_sft: int
    sft_copies: int  # corpus examples per SFT problem (different approaches, bugs and kinds)
    n_rl_train: int
    n_test: int
    sft_epochs: int
    val_every: int


MODES = {
    # A smoke run of every stage (CI); too short to show anything about SAAR.
    "quick": DemoMode(
        seeds=(0,),
        rl_steps=2,
        prompts_per_step=4,
        samples_per_prompt=4,
        n_sft=48,
        sft_copies=2,
        n_rl_train=32,
        n_test=8,
        sft_epochs=1,
        val_every=2,
    ),
    "full": DemoMode(
        seeds=(0, 1, 2),
        rl_steps=6,
        prompts_per_step=4,
        samples_per_prompt=8,
        n_sft=176,
        sft_copies=5,
        n_rl_train=64,
        n_test=16,
        # 8 epochs (~1000 updates), not 5: after 5 a recovered trajectory was right less often
        # than a clean one (0.30 vs 0.39), after 8 as often (0.47 vs 0.48); see the docstring.
        sft_epochs=8,
        val_every=3,
    ),
}
ARMS = ("baseline", "cleaner")
TOKENIZER_VOCAB = 2048
# Numbers are tokenized in groups of up to 3 digits (Llama 3 style), each group one token, so the
# model copies a number as one or two tokens. With Qwen's one-token-per-digit split, a model this
# size did not learn to copy digit strings within the CPU budget: after 900 SFT steps the loss on
# digit tokens was still 2.1 nats (chance: 2.3) while every other token was at 0.06.
DIGITS_PER_TOKEN = 3
# One number per question, below 127, and an answer below 127 (mod the prime 127): a single
# token each for the demo tokenizer (numbers in groups of up to three digits). The code copies
# the question's one varying number; the box copies the one number of the last tool output.
# Measured on this 2-layer d=96 model: with numbers up to 999 (a thousand distinct tokens) it did
# not learn to copy within the CPU budget (held-out copy accuracy 0 after 430 SFT steps, also with
# copy drills mixed in), while a copy task over ~190 values is learned in ~150 steps and over
# ~1000 values still has 2 nats of loss after 350.
TASK_RANGES = synthetic_task.TaskRanges(
    collatz_n=(10, 126),
    factmod_n=(10, 126),
    factmod_modulus=(127, 127),
    selfpow_n=(10, 126),
    selfpow_modulus=(127, 127),
)
TEMPLATES = ("collatz", "factmod", "selfpow")


def prepare_assets(
    assets_dir: str,
    *,
    n_sft: int,
    n_rl_train: int,
    n_test: int,
    sft_copies: int = 1,
    seed: int = 0,
    error_rate: float = 1 / 3,
    shallow_share: float = 0.5,
) -> dict[str, str]:
    """Problems, SFT corpus (run through the sandbox) and tokenizer; skipped if already there."""
    paths = {
        "tokenizer": os.path.join(assets_dir, "tokenizer"),
        "sft": os.path.join(assets_dir, "sft.jsonl"),
        "rl_train": os.path.join(assets_dir, "rl_train.jsonl"),
        "test": os.path.join(assets_dir, "test.jsonl"),
        "stats": os.path.join(assets_dir, "corpus_stats.json"),
    }
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(assets_dir, exist_ok=True)
    task = dict(ranges=TASK_RANGES, templates=TEMPLATES)
    train = synthetic_task.make_problems("train", n_sft + n_rl_train, seed, **task)
    sft_problems, rl_problems = train[:n_sft], train[n_sft:]
    test = synthetic_task.make_problems("test", n_test, seed + 1, **task)
    with SandboxPool(SandboxConfig(num_workers=2, timeout_s=4.0)) as pool:
        corpus = [
            example
            for copy in range(sft_copies)
            for example in sft_corpus.make_sft_corpus(
                sft_problems,
                pool,
                seed=seed + copy,
                error_rate=error_rate,
                shallow_share=shallow_share,
            )
        ]
    sft_corpus.write_sft_jsonl(corpus, paths["sft"])
    synthetic_task.write_rl_jsonl(rl_problems, paths["rl_train"])
    synthetic_task.write_rl_jsonl(test, paths["test"])
    # A few hundred rendered conversations cover the format's strings; more only slows BPE down.
    texts = sft_corpus.tokenizer_training_texts(corpus[:300], rl_problems[:100] + test)
    # Every 1-3 digit group, often enough that BPE gives each its own token.
    texts += [" ".join(str(i) for i in range(1000))] * 3
    build_tokenizer(
        texts, TOKENIZER_VOCAB, out_dir=paths["tokenizer"], digits_per_token=DIGITS_PER_TOKEN
    )
    kinds: dict[str, int] = {}
    for ex in corpus:
        kinds[ex.kind] = kinds.get(ex.kind, 0) + 1
    with open(paths["stats"], "w") as f:
        json.dump(
            {
                "sft_examples": len(corpus),
                "kinds": kinds,
                "rl_train": len(rl_problems),
                "test": len(test),
            },
            f,
            indent=1,
        )
    return paths


def fill_synthetic_paths(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For `configs/demo.py:runlocal`: prepare small assets in the workdir and point to them."""
    paths = prepare_assets(os.path.join(workdir, "assets"), n_sft=48, n_rl_train=32, n_test=8)
    config.tokenizer_path = config.tokenizer_path or paths["tokenizer"]
    if not config.data.train_files:
        config.data.train_files = (paths["rl_train"],)
    if not config.data.val_files:
        config.data.val_files = (paths["test"],)


def _arm_config(arm: str, seed: int, mode: DemoMode, paths: dict, sft_export: str):
    c = defaults.demo_config(f"arm={arm},seed={seed}")
    c.total_steps = mode.rl_steps
    c.rollout.prompts_per_step = mode.prompts_per_step
    c.rollout.n = mode.samples_per_prompt
    c.train.mini_batch_prompts = mode.prompts_per_step
    c.validation.every = mode.val_every
    c.validation.max_prompts = mode.n_test
    c.tokenizer_path = paths["tokenizer"]
    c.model.hf_path = sft_export
    c.data.train_files = (paths["rl_train"],)
    c.data.val_files = (paths["test"],)
    return c


def run_demo(mode_name: str, workdir: str, progress=None) -> str:
    """Runs the study; returns the path of report.md. `progress(msg)` is told each stage."""
    mode = MODES[mode_name]
    say = progress or logging.info
    os.makedirs(workdir, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.time()
    say("1/4 preparing the synthetic task, SFT corpus (real sandbox runs) and tokenizer")
    paths = prepare_assets(
        os.path.join(workdir, "assets"),
        n_sft=mode.n_sft,
        n_rl_train=mode.n_rl_train,
        n_test=mode.n_test,
        sft_copies=mode.sft_copies,
    )
    timings["assets"] = time.time() - t0

    t0 = time.time()
    sft_dir = os.path.join(workdir, "sft")
    sft_export = os.path.join(sft_dir, "hf_export", "final")
    if not os.path.exists(os.path.join(sft_export, "config.json")):
        say("2/4 cold-start SFT of the tiny model")
        c = defaults.demo_config()
        c.tokenizer_path = paths["tokenizer"]
        c.sft.train_files = (paths["sft"],)
        c.sft.epochs = mode.sft_epochs
        sft.run(c, sft_dir)
    timings["sft"] = time.time() - t0

    runs = {}
    for seed in mode.seeds:
        for arm in ARMS:
            name = f"{arm}_seed{seed}"
            run_dir = os.path.join(workdir, name)
            runs[name] = run_dir
            if os.path.exists(os.path.join(run_dir, "DONE")):
                continue
            say(f"3/4 GRPO {arm} seed {seed}: {mode.rl_steps} steps")
            t0 = time.time()
            trainer.run(_arm_config(arm, seed, mode, paths, sft_export), run_dir)
            timings[f"grpo/{name}"] = time.time() - t0
            with open(os.path.join(run_dir, "DONE"), "w") as f:
                f.write(f"{time.time() - t0:.1f}\n")
    say("4/4 writing the report")
    with open(paths["stats"]) as f:
        corpus_stats = json.load(f)
    return report.write_report(
        workdir, runs, timings=timings, corpus_stats=corpus_stats, mode=mode_name
    )
