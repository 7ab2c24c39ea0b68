"""Cold-start SFT (`cleaner_jax.runtime.sft.run`): learning-rate schedules and the HF export."""

import json
import os
import pathlib

import numpy as np
import pytest

from cleaner_jax.agent.tokenizer import build_tokenizer
from cleaner_jax.models import hf_io
from cleaner_jax.rl.packing import TrainSample
from cleaner_jax.runtime import sft
from cleaner_jax.runtime.config import load_config
from cleaner_jax.runtime.metrics import read_metrics

PEAK, WARMUP = 2e-3, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    rng = np.random.default_rng(0)
    convs = []
    for _ in range(48):
        a, b = (int(x) for x in rng.integers(0, 50, 2))
        convs.append(
            [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"It is {a + b}."},
            ]
        )
    path = d / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in convs))
    texts = [m["content"] for conv in convs for m in conv]
    build_tokenizer(texts, 300, out_dir=d / "tokenizer")
    return str(path), str(d / "tokenizer")


def _config(corpus, schedule):
    c = load_config(str(pathlib.Path(__file__).parents[2] / "configs" / "demo.py"))
    c.model.tiny.update(
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            head_dim=16,
        )
    )
    c.sft.update(
        dict(
            train_files=(corpus[0],),
            epochs=3,
            rows_per_step=8,
            row_len=64,
            learning_rate=PEAK,
            warmup_steps=WARMUP,
            lr_schedule=schedule,
        )
    )
    c.tokenizer_path = corpus[1]
    return c


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_follows_the_schedule_and_export_loads(corpus, tmp_path, schedule):
    sft.run(_config(corpus, schedule), str(tmp_path))
    rows = read_metrics(tmp_path)
    lrs = [r["learning_rate"] for r in rows]
    assert len(lrs) >= 6
    # Linear warmup from 0: the first step is taken with rate 0, the next with PEAK / WARMUP.
    np.testing.assert_allclose(lrs[:WARMUP], [0.0, PEAK / WARMUP], rtol=1e-6)
    after = np.array(lrs[WARMUP:])
    if schedule == "constant":
        np.testing.assert_allclose(after, PEAK, rtol=1e-6)
    else:
        assert after[0] == pytest.approx(PEAK, rel=1e-6)
        assert np.all(np.diff(after) < 0)
        assert after[-1] < 0.2 * PEAK
    cfg, _ = hf_io.load_hf_checkpoint(os.path.join(tmp_path, "hf_export", "final"))
    assert (cfg.hidden_size, cfg.num_layers) == (32, 1)


def test_unknown_schedule_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        sft.run(_config(corpus, "linear"), str(tmp_path))


def test_epoch_rows_are_shuffled_not_length_sorted():
    # 40 long and 120 short conversations: packing alone puts every long one in the first rows.
    lengths = [300] * 40 + [40] * 120
    samples = [TrainSample(list(range(n)), [0] + [1] * (n - 1)) for n in lengths]
    rng = np.random.default_rng(0)
    micros = sft.epoch_micro_batches(samples, 640, 1, 10_000, rng)
    seen = np.concatenate([m.sample_RT[m.sample_RT >= 0] for m in micros])
    per_sample = np.bincount(seen, minlength=len(samples))
    np.testing.assert_array_equal(per_sample, [n - 1 for n in lengths])  # each one, whole, once
    longest = [max(lengths[i] for i in m.sample_RT[m.sample_RT >= 0]) for m in micros]
    # Unshuffled, the steps come longest first (every long conversation before any short-only row).
    assert np.any(np.diff(longest) > 0)
    again = sft.epoch_micro_batches(samples, 640, 1, 10_000, np.random.default_rng(1))
    assert not all(
        np.array_equal(a.sample_RT, b.sample_RT) for a, b in zip(micros, again, strict=True)
    )
