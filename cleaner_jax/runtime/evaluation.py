"""Checkpoint evaluation: n samples per problem, pass@k, with and without test-time SAAR.

`Evaluator` takes a policy, sampling engine and sandbox pools built once by `parts.build`
(a local HF checkpoint dir, an orbax checkpoint directory written by our trainer, or the config's
own model), and `run`s a list of `Example`s in one or both SAAR modes through the trainer's own
rollout (`runtime.collect.Collector`) and reward (`rl.rewards.RewardScorer`) code. For each mode
it writes
  <out>/<mode>.jsonl            one record per problem: samples (response text, score, acc,
                                termination, tool stats), correct count, per-problem pass@k,
                                rollout wall time;
  <out>/livecodebench_<mode>.json  (code datasets) LiveCodeBench's custom-evaluation input:
                                a JSON list of {"question_id", "code_list"} (the final ```python
                                block of each sample, "" where there is none), for
                                `python -m lcb_runner.runner.custom_evaluator --custom_output_file`;
  <out>/summary.json            pass@k per mode, tool statistics (`saar.aggregate_stats`), wall
                                times and SAAR's latency overhead (total and per problem).

Timing: the engine's programs are compiled before the first timed batch, and its prefix cache
is emptied between modes so the second mode does not reuse the first one's prompt pages. Problems
run `problems_per_batch` at a time (all n samples of a batch concurrently); a problem's latency
is its batch's rollout wall time, so per-problem latencies are exact with the default of 1.
Both modes use the same sampling seeds, so they differ only where SAAR intervenes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from cleaner_jax.data.readers import Example, read_dataset
from cleaner_jax.rl.passk import DEFAULT_KS, mean_pass_at_k, pass_at_k, valid_ks
from cleaner_jax.rl.rewards import RewardResult, reward_kind
from cleaner_jax.rl.rewards_code import extract_final_code_block
from cleaner_jax.runtime import parts as parts_lib
from cleaner_jax.runtime.collect import Rollout
from cleaner_jax.saar import TrajectoryStats, aggregate_stats

SAAR_MODES: dict[str, tuple[str, ...]] = {"both": ("off", "on"), "on": ("on",), "off": ("off",)}


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how (defaults: the paper's validation sampling)."""

    dataset_kind: str = "aime"  # aime | gpqa | livecodebench | agentrl
    dataset: tuple[str, ...] = ()
    n: int = 16
    temperature: float = 1.0
    top_p: float = 0.6
    saar: str = "both"  # both | on | off
    ks: tuple[int, ...] = DEFAULT_KS
    problems_per_batch: int = 1
    max_problems: int = 0  # 0 = all
    checkpoint: str = ""  # HF dir, orbax checkpoint dir (or a trainer workdir); "" = config's model
    checkpoint_step: int | None = None  # orbax step; None = newest that restores

    def __post_init__(self):
        if self.saar not in SAAR_MODES:
            raise ValueError(f"saar={self.saar!r}: use one of {sorted(SAAR_MODES)}")
        if self.n < 1 or self.problems_per_batch < 1:
            raise ValueError(
                f"n={self.n} and problems_per_batch={self.problems_per_batch} must be >= 1"
            )


def question_id(example: Example) -> str:
    """The benchmark's own id (LiveCodeBench `question_id`): our id minus the source prefix."""
    if example.extra.get("question_id") is not None:
        return str(example.extra["question_id"])
    prefix = f"{example.data_source}-"
    return example.id[len(prefix) :] if example.id.startswith(prefix) else example.id


def livecodebench_custom_outputs(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-problem records → LiveCodeBench custom-evaluator input (one entry per problem, n codes
    each, "" for a sample without a final ```python block so every problem keeps n entries)."""
    return [
        {
            "question_id": r["question_id"],
            "code_list": [extract_final_code_block(s["final"]) or "" for s in r["samples"]],
        }
        for r in records
    ]


def _sample_record(rollout: Rollout, result: RewardResult, chat) -> dict[str, Any]:
    traj = rollout.trajectory
    stats = dataclasses.asdict(traj.stats) if traj.stats is not None else {}
    return {
        "response": chat.decode(traj.response_tokens),
        "final": rollout.final_text(chat),
        "score": result.score,
        "acc": bool(result.acc),
        "error": result.error,
        "pred": result.details.get("pred"),
        "termination": traj.termination,
        "response_tokens": len(traj.response_tokens),
        "tool_stats": stats,
    }


def summarize_mode(records: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Mode-level numbers from per-problem records: pass@k, mean score, wall time, throughput."""
    correct = [[s["acc"] for s in r["samples"]] for r in records]
    n = len(correct[0])
    out: dict[str, Any] = {
        "problems": len(records),
        "n": n,
        "pass@k": {str(k): v for k, v in mean_pass_at_k(correct, ks).items()},
        "mean_score": float(np.mean([s["score"] for r in records for s in r["samples"]])),
        "reward_errors": int(sum(s["error"] is not None for r in records for s in r["samples"])),
    }
    out["pass@1"] = out["pass@k"]["1"]
    batches = {r["batch"]: r["batch_wall_s"] for r in records}
    out["rollout_wall_s"] = float(sum(batches.values()))
    tokens = sum(s["response_tokens"] for r in records for s in r["samples"])
    out["response_tokens"] = int(tokens)
    out["response_tokens_per_s"] = tokens / max(out["rollout_wall_s"], 1e-9)
    return out


class Evaluator:
    """Evaluation `run`s over the parts of a `Runtime` ("eval", or a trainer's "train" one)."""

    def __init__(self, rt: parts_lib.Runtime):
        self.rt = rt
        self.engine, self.collector, self.scorer = rt.engine, rt.collector, rt.scorer
        self._warm = False

    def _run_mode(self, examples, mode, options: EvalOptions) -> list[dict[str, Any]]:
        if not self._warm:
            self.engine.warmup()
            self._warm = True
        # An empty prefix cache per mode (same weights): neither mode reuses the other's pages.
        self.engine.update_params(self.rt.sampler_state)
        records = []
        chat = self.rt.chat
        ks = valid_ks(options.n, options.ks)
        step = options.problems_per_batch
        for b, start in enumerate(range(0, len(examples), step)):
            batch = list(examples[start : start + step])
            t0 = time.perf_counter()
            rollouts = self.collector.collect(
                batch,
                options.n,
                tag=("eval",),
                saar_enabled=mode == "on",
                temperature=options.temperature,
                top_p=options.top_p,
            )
            wall = time.perf_counter() - t0
            results = self.scorer.score_batch_sync([r.reward_input(chat) for r in rollouts])
            for g, ex in enumerate(batch):
                group = slice(g * options.n, (g + 1) * options.n)
                samples = [
                    _sample_record(r, res, chat)
                    for r, res in zip(rollouts[group], results[group], strict=True)
                ]
                c = sum(s["acc"] for s in samples)
                stats = aggregate_stats([r.trajectory.stats for r in rollouts[group]])
                records.append(
                    {
                        "id": ex.id,
                        "question_id": question_id(ex),
                        "data_source": ex.data_source,
                        "mode": mode,
                        "batch": b,
                        "batch_wall_s": wall,
                        "batch_problems": len(batch),
                        "num_correct": int(c),
                        "pass@k": {str(k): pass_at_k(options.n, c, k) for k in ks},
                        "tool_stats": stats,
                        "samples": samples,
                    }
                )
            logging.info(
                "eval %s: %d/%d problems, batch wall %.1fs",
                mode,
                min(start + step, len(examples)),
                len(examples),
                wall,
            )
        return records

    def run(self, examples: Sequence[Example], options: EvalOptions, out_dir: str) -> dict:
        """Evaluates `examples` in the modes of `options.saar`; writes outputs; returns summary."""
        os.makedirs(out_dir, exist_ok=True)
        examples, dropped = self.collector.filter_prompts(examples)
        if options.max_problems:
            examples = examples[: options.max_problems]
        if not examples:
            raise ValueError("no problems to evaluate (all dropped as overlong, or none given)")
        is_code = any(reward_kind(ex.data_source, ex.extra) == "code" for ex in examples)
        summary: dict[str, Any] = {
            "dataset_kind": options.dataset_kind,
            "dataset": list(options.dataset),
            "checkpoint": options.checkpoint,
            "dropped_overlong_prompts": dropped,
            "sampling": {
                "n": options.n,
                "temperature": options.temperature,
                "top_p": options.top_p,
            },
            "modes": {},
        }
        per_mode: dict[str, list[dict[str, Any]]] = {}
        for mode in SAAR_MODES[options.saar]:
            records = self._run_mode(examples, mode, options)
            per_mode[mode] = records
            with open(os.path.join(out_dir, f"{mode}.jsonl"), "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            if is_code:
                with open(os.path.join(out_dir, f"livecodebench_{mode}.json"), "w") as f:
                    json.dump(livecodebench_custom_outputs(records), f, indent=1)
            s = summarize_mode(records, options.ks)
            s["tool_stats"] = _aggregate_from_records(records)
            summary["modes"][mode] = s
        if "on" in per_mode and "off" in per_mode:
            summary["saar_overhead"] = saar_overhead(per_mode["off"], per_mode["on"])
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        return summary


def _aggregate_from_records(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    stats = [TrajectoryStats(**s["tool_stats"]) for r in records for s in r["samples"]]
    return aggregate_stats(stats)


def saar_overhead(off: Sequence[dict[str, Any]], on: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """SAAR's latency overhead: total and per-problem rollout wall time, on vs off."""
    wall_off = {r["batch"]: r["batch_wall_s"] for r in off}
    wall_on = {r["batch"]: r["batch_wall_s"] for r in on}
    total_off, total_on = sum(wall_off.values()), sum(wall_on.values())
    per_problem = [
        {
            "id": a["id"],
            "off_s": a["batch_wall_s"],
            "on_s": b["batch_wall_s"],
            "overhead": b["batch_wall_s"] / max(a["batch_wall_s"], 1e-9) - 1.0,
        }
        for a, b in zip(off, on, strict=True)
    ]
    ratios = [p["overhead"] for p in per_problem]
    return {
        "total_off_s": total_off,
        "total_on_s": total_on,
        "total_overhead": total_on / max(total_off, 1e-9) - 1.0,
        "per_problem_overhead_median": float(np.median(ratios)),
        "per_problem_overhead_mean": float(np.mean(ratios)),
        "per_problem": per_problem,
    }


def evaluate(
    config: ml_collections.ConfigDict,
    options: EvalOptions,
    out_dir: str,
    examples: Sequence[Example] | None = None,
) -> dict:
    """Builds the "eval" runtime and evaluates `examples` (default: read `options.dataset`);
    returns the summary."""
    if examples is None:
        if not options.dataset:
            raise ValueError("EvalOptions.dataset is empty: pass the dataset file(s) to evaluate")
        examples = read_dataset(options.dataset_kind, list(options.dataset))
    rt = parts_lib.build(
        config, "eval", checkpoint=options.checkpoint, step=options.checkpoint_step
    )
    try:
        return Evaluator(rt).run(examples, options, out_dir)
    finally:
        rt.close()
