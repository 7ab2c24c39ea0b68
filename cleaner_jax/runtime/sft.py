"""Cold-start SFT on chat trajectories with tool turns (loss on assistant turns only).

Input: jsonl/parquet records with `messages` (system/user/assistant/tool chat, assistant tool
calls as `tool_calls` or inline `<tool_call>` text) and optional `tools`. Each conversation is
tokenized turn by turn with `ChatFormat.conversation_tokens`, i.e. token-identical to what a
rollout produces. Output: orbax checkpoints during training and an HF export (weights +
tokenizer) at the end, which the GRPO run loads through `model.hf_path`.
"""

from __future__ import annotations

import logging
import time

import jax
import ml_collections
import numpy as np

from cleaner_jax.agent.chat import ChatFormat
from cleaner_jax.agent.tools import TOOLS
from cleaner_jax.data.readers import read_records
from cleaner_jax.models import hf_io
from cleaner_jax.rl.packing import PackedBatch, TrainSample, pack, split_rows
from cleaner_jax.rl.update import round_rows
from cleaner_jax.runtime import parts as parts_lib
from cleaner_jax.runtime.config import sft_settings


def load_sft_samples(
    files, chat: ChatFormat, row_len: int, tools_in_prompt: bool = True
) -> list[TrainSample]:
    samples, dropped = [], 0
    for rec in read_records(list(files)):
        tools = (rec.get("tools") or TOOLS) if tools_in_prompt else None
        tokens, mask = chat.conversation_tokens(rec["messages"], tools)
        if len(tokens) - 1 > row_len:
            dropped += 1
            continue
        samples.append(TrainSample(tokens, mask))
    if dropped:
        logging.warning("SFT: dropped %d conversations longer than row_len=%d", dropped, row_len)
    if not samples:
        raise ValueError(f"no SFT conversations found in {list(files)}")
    return samples


def epoch_micro_batches(
    samples: list[TrainSample],
    row_len: int,
    rows_per_step: int,
    steps: int,
    rng: np.random.Generator,
) -> list[PackedBatch]:
    """One epoch's `steps` micro-batches of `rows_per_step` rows each, in random order.

    The rows are shuffled after packing: first-fit-decreasing packing fills rows longest sample
    first, so unshuffled the first steps of every epoch would see only the longest conversations
    (here the failed-then-fixed ones) and the last steps only the shortest.
    """
    order = rng.permutation(len(samples))
    batch = pack([samples[i] for i in order], row_len)
    batch = batch.take_rows(rng.permutation(batch.num_rows))
    batch.sample_RT = np.where(batch.sample_RT >= 0, order[batch.sample_RT], -1)  # into `samples`
    return split_rows(batch, rows_per_step)[:steps]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, exports to `workdir/hf_export/final` and returns the last step's metrics."""
    s = sft_settings(config)
    rt = parts_lib.build(config, "sft", workdir)
    try:
        return _train(rt, s, workdir)
    finally:
        rt.close()


def _train(rt: parts_lib.Runtime, s, workdir: str) -> dict:
    samples = load_sft_samples(s.train_files, rt.chat, s.row_len, s.tools_in_prompt)
    bundle = rt.model
    rows_per_step = round_rows(s.rows_per_step, bundle.mesh)
    rows_per_epoch = pack(samples, s.row_len).num_rows
    steps_per_epoch = max(1, rows_per_epoch // rows_per_step)
    total = steps_per_epoch * s.epochs
    updater, schedule = rt.sft_updater(total)
    state = bundle.state
    opt_state = updater.init(state)
    ckpt, writer = rt.checkpointer, rt.writer
    rng = np.random.default_rng(s.seed)
    logging.info("SFT: %d conversations, %d steps (%d epochs)", len(samples), total, s.epochs)
    step, metrics, t0 = 0, {}, time.time()
    for epoch in range(s.epochs):
        for micro in epoch_micro_batches(samples, s.row_len, rows_per_step, steps_per_epoch, rng):
            # The rate this step is taken with (optax counts from 0).
            learning_rate = float(schedule(step))
            state, opt_state, metrics = updater.step(state, opt_state, [micro])
            step += 1
            metrics.update(epoch=epoch, learning_rate=learning_rate, elapsed_s=time.time() - t0)
            writer.write(step, metrics)
            ckpt.save(step, state, opt_state, {"step": step})
    ckpt.save(step, state, opt_state, {"step": step}, force=True)
    ckpt.wait()
    out_dir = parts_lib.export_dir(workdir, "final")
    hf_io.save_hf_checkpoint(state, bundle.cfg, out_dir)
    if jax.process_index() == 0:
        rt.tokenizer.save_pretrained(out_dir)
    logging.info(
        "SFT done: %d steps, last loss %.4f, exported to %s",
        step,
        metrics.get("loss", float("nan")),
        out_dir,
    )
    return metrics
