"""The miniature's assets: synthetic problems, a cold-start SFT corpus and a tokenizer.

`prepare_assets` writes disjoint SFT / RL-train / held-out problem sets, an SFT corpus whose tool
outputs come from the real sandbox (a share of buggy first calls followed by the error and a
shallow or deep fix), and a byte-level BPE tokenizer with Qwen's control tokens and chat template,
trained on the rendered corpus. Used by the study (`cleaner_jax/study/demo.py`) and by `runlocal`
configs, which prepare small assets in their workdir.
"""

from __future__ import annotations

import json
import os

from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.agent.tokenizer import build_tokenizer
from cleaner_jax.data import sft_corpus, synthetic_task

TOKENIZER_VOCAB = 2048
# Numbers are tokenized in groups of up to 3 digits (Llama 3 style), each group one token, so the
# model copies a number as one or two tokens. With Qwen's one-token-per-digit split, a model this
# size did not learn to copy digit strings within the CPU budget: after 900 SFT steps the loss on
# digit tokens was still 2.1 nats (chance: 2.3) while every other token was at 0.06.
DIGITS_PER_TOKEN = 3
# One number per question, 10..499, and an answer below 503: a single token each for the demo
# tokenizer (numbers in groups of up to three digits). The code copies the question's one varying
# number; the box copies the one number of the last tool output. Measured Dec 2026 (2-core CPU):
# with numbers below 127 (351 problems in all) and 176 SFT problems seen 5 x 8 times each, the
# SFT model memorised them instead of learning to copy: accuracy 0.89 on the SFT problems against
# 0.42 on unseen RL-train problems (3-layer model; 0.40 at 2 layers). With 10..499 (1470 problems)
# and each SFT problem used once (and tied embeddings, as in Qwen3 <= 4B) there is little to
# memorise: 0.27-0.30 on unseen problems at
# temperature 1 (0.51-0.57 at 0.7), and 75-77% of the rollout groups have mixed rewards (48%
# before), which is GRPO's signal. Earlier, a 2-layer model with a cosine schedule had not learned
# to copy numbers up to 999 at all in 430 steps (see study/demo.py for what changed since).
TASK_RANGES = synthetic_task.TaskRanges(
    collatz_n=(10, 499),
    factmod_n=(10, 499),
    factmod_modulus=(503, 503),  # a prime above n keeps n! mod m nonzero
    selfpow_n=(10, 499),
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
    give_up_share: float = 0.0,
    guess_rate: float = 0.0,
) -> dict[str, str]:
    """Problems, SFT corpus (run through the sandbox) and tokenizer; skipped if already there.
    The corpus knobs (`error_rate` ... `guess_rate`) are `sft_corpus.make_sft_corpus`'s."""
    paths = asset_paths(assets_dir)
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
                give_up_share=give_up_share,
                guess_rate=guess_rate,
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


def asset_paths(assets_dir: str) -> dict[str, str]:
    return {
        "tokenizer": os.path.join(assets_dir, "tokenizer"),
        "sft": os.path.join(assets_dir, "sft.jsonl"),
        "rl_train": os.path.join(assets_dir, "rl_train.jsonl"),
        "test": os.path.join(assets_dir, "test.jsonl"),
        "stats": os.path.join(assets_dir, "corpus_stats.json"),
    }
