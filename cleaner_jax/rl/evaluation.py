"""Checkpoint evaluation: n samples per problem, pass@k, with and without test-time SAAR.

`Evaluator` loads a policy (a local HF checkpoint dir, an orbax checkpoint directory written by
our trainer, or the config's own model), starts the sampling engine and sandbox pools once, and
`run`s a list of `Example`s in one or both SAAR modes through the trainer's own rollout
(`rl.collect.Collector`) and reward (`rl.rewards.RewardScorer`) code. For each mode it writes
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

import jax
import ml_collections
import numpy as np
from flax import nnx

from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.data.readers import Example, filter_overlong, read_dataset
from cleaner_jax.models import sharding
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import model_setup
from cleaner_jax.rl.checkpoint import Checkpointer
from cleaner_jax.rl.collect import Collector, Rollout, engine_config_from
from cleaner_jax.rl.passk import DEFAULT_KS, mean_pass_at_k, pass_at_k, valid_ks
from cleaner_jax.rl.rewards import (
    OverlongConfig,
    RewardConfig,
    RewardResult,
    RewardScorer,
    reward_kind,
)
from cleaner_jax.rl.rewards_code import extract_final_code_block
from cleaner_jax.saar import TrajectoryStats, aggregate_stats
from cleaner_jax.sampling import Engine

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


def _orbax_dir(path: str) -> str:
    """The orbax step-directory root for `path` (a trainer workdir or its `checkpoints/`)."""
    sub = os.path.join(path, "checkpoints")
    return sub if os.path.isdir(sub) else path


def load_policy(
    config: ml_collections.ConfigDict, checkpoint: str = "", step: int | None = None
) -> tuple[Any, model_setup.ModelBundle]:
    """(tokenizer, model bundle) for `checkpoint`.

    A dir with a `config.json` is an HF checkpoint (model shapes from it; its tokenizer unless
    `config.tokenizer_path` is set). Any other dir is an orbax checkpoint of our trainer: the
    model is the config's (`model.preset`/`model.hf_path`) and only the params are restored. An
    empty `checkpoint` builds the config's model as training would (random init or hf_path).
    """
    config = config.copy_and_resolve_references()
    if checkpoint and os.path.isfile(os.path.join(checkpoint, "config.json")):
        config.model.hf_path = checkpoint
    tokenizer = model_setup.tokenizer_for(config)
    if not checkpoint or config.model.hf_path == checkpoint:
        return tokenizer, model_setup.build_model(config, len(tokenizer))
    root = _orbax_dir(checkpoint)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} is neither an HF dir (no config.json) nor an orbax "
            "checkpoint directory; pass a trainer workdir, its checkpoints/ dir or an HF export"
        )
    mesh = sharding.make_mesh(dict(config.mesh))
    cfg = model_setup.model_config_for(config, len(tokenizer))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding.state_shardings(abstract, mesh, cfg=cfg)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    with Checkpointer(root, keep=None) as ckpt:
        restored = ckpt.restore(step, abstract_params=target, abstract_opt_state=None)
    logging.info("restored params of step %d from %s", restored.step, root)
    return tokenizer, model_setup.ModelBundle(cfg, graphdef, restored.params, mesh)


def _reward_config(config: ml_collections.ConfigDict) -> RewardConfig:
    r = config.reward
    return RewardConfig(
        math_mode=r.math_mode,
        overlong=OverlongConfig(
            max_response_length=config.rollout.max_response_tokens,
            buffer_length=min(r.overlong_buffer, config.rollout.max_response_tokens),
            penalty_factor=r.overlong_factor,
            count_policy_tokens_only=r.overlong_policy_tokens_only,
        ),
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


class _LazyJudge:
    """The sandbox that runs code-reward tests, started on first use (math-only runs never pay).
    Judging compares whole program outputs, so unlike the tool pool it does not truncate them."""

    def __init__(self, config: ml_collections.ConfigDict):
        self._config = SandboxConfig(
            num_workers=config.sandbox.num_workers,
            timeout_s=config.sandbox.timeout_s,
            max_output_chars=1_000_000,
        )
        self._pool: SandboxPool | None = None

    async def run(self, code, stdin=None, timeout_s=None):
        if self._pool is None:
            self._pool = SandboxPool(self._config)
        return await self._pool.run(code, stdin=stdin, timeout_s=timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class Evaluator:
    """The policy, engine, tool sandbox and reward judge, set up once for several `run`s."""

    def __init__(
        self, config: ml_collections.ConfigDict, checkpoint: str = "", step: int | None = None
    ):
        self.config = config
        self.tokenizer, self.bundle = load_policy(config, checkpoint, step)
        # The sampler's dtype and weight copy, as in training (`rollout.dtype`).
        dtype = model_setup.sampler_dtype(config)
        self._sampler_state = model_setup.cast_state(self.bundle.state, dtype)
        self.engine = Engine(
            (model_setup.sampler_graphdef(self.bundle, dtype), self._sampler_state),
            engine_config_from(config),
        )
        self.pool = SandboxPool(
            SandboxConfig(
                num_workers=config.sandbox.num_workers, timeout_s=config.sandbox.timeout_s
            )
        )
        self.judge = _LazyJudge(config)
        self.collector = Collector(config, self.tokenizer, self.engine, self.pool)
        self.scorer = RewardScorer(_reward_config(config), code_runner=self.judge)
        self._warm = False

    def close(self) -> None:
        self.scorer.close()
        self.pool.close()
        self.judge.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def filter_prompts(self, examples: Sequence[Example]) -> tuple[list[Example], int]:
        count = lambda ex: len(self.collector.prompt_tokens(ex))  # noqa: E731
        return filter_overlong(examples, count, self.config.data.max_prompt_tokens)

    def _run_mode(self, examples, mode, options: EvalOptions) -> list[dict[str, Any]]:
        if not self._warm:
            self.engine.warmup()
            self._warm = True
        # An empty prefix cache per mode: neither mode reuses the other's prompt pages.
        self.engine.update_params(self._sampler_state)
        records = []
        chat = self.collector.chat
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
        examples, dropped = self.filter_prompts(examples)
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


def evaluate(config: ml_collections.ConfigDict, options: EvalOptions, out_dir: str) -> dict:
    """Reads `options.dataset`, evaluates it with a fresh `Evaluator`, returns the summary."""
    if not options.dataset:
        raise ValueError("EvalOptions.dataset is empty: pass the dataset file(s) to evaluate")
    examples = read_dataset(options.dataset_kind, list(options.dataset))
    with Evaluator(config, options.checkpoint, options.checkpoint_step) as ev:
        return ev.run(examples, options, out_dir)
