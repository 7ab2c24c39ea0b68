"""The premise check of the miniature (issue #17): is E[A | recovered] > 0 before RL?

SAAR lowers first-attempt tool failures faster than plain GRPO only if the baseline gives the
trajectories it would purify, "failed call -> successful correction -> answer", positive credit:
E[A | recovered] > 0 (`rl/credit.py`). `premise_check` measures that on a policy (the SFT export)
rolled out WITHOUT SAAR, n samples per prompt, through the runtime's own collector and reward
scorer, with GRPO advantages of the rewards exactly as the trainer computes them. The interval is
a percentile bootstrap over whole prompt groups (a group's advantages are relative to each other,
so its trajectories are not independent; `study.stats.bootstrap_ci` with `groups`). The premise
holds only if the interval lies above 0.

`summarize` is the pure part (outcomes, rewards -> statistics), tested on scripted outcomes;
`premise_check` rolls out; `run_premise_check` builds an "eval" runtime for a checkpoint and
writes the JSON the study keeps (`premise.json`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from cleaner_jax.data.readers import Example, read_agentrl
from cleaner_jax.rl.advantages import grpo_advantages
from cleaner_jax.rl.credit import CallOutcome, call_outcome, credit_diagnostics
from cleaner_jax.runtime import parts as parts_lib
from cleaner_jax.study.stats import bootstrap_ci


def _mean_adv_recovered(rows: np.ndarray) -> float:
    """rows: columns (advantage, recovered 0/1); NaN when no row is recovered."""
    rec = rows[:, 1] > 0.5
    return float(rows[rec, 0].mean()) if rec.any() else math.nan


def summarize(
    outcomes: Sequence[CallOutcome],
    rewards: Sequence[float],
    n: int,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    no_tool: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The premise statistics of `outcomes` (grouped n per prompt, in order) and their rewards.

    Advantages are GRPO's of `rewards` (as the trainer computes them; ±1 rewards give the same
    advantages as correctness). Returns `credit_diagnostics` (accuracy clean / recovered /
    unrecovered, P(first call fails), recovery rate, mixed-group fraction, ...) plus
    `adv_recovered_ci` {estimate, low, high, level, groups} (bootstrap over prompt groups; None
    when no trajectory recovered), `recovered_frac` (P(recovered)) and `premise_holds`
    (the interval lies above 0). `no_tool` (a flag per trajectory that called no tool) adds
    `no_tool_frac` and `acc_no_tool` (such trajectories count as clean in the diagnostics).
    """
    if len(rewards) != len(outcomes):
        raise ValueError(f"{len(rewards)} rewards for {len(outcomes)} outcomes")
    if n < 1 or len(outcomes) % n:
        raise ValueError(f"{len(outcomes)} outcomes do not split into groups of n={n}")
    adv = grpo_advantages(np.asarray(rewards, np.float32), n)
    out: dict[str, Any] = credit_diagnostics(outcomes, n, adv)
    rec = np.array([o.recovered for o in outcomes], float)
    out["n"] = n
    out["recovered_frac"] = float(rec.mean())
    # Positive: GRPO without SAAR credits the failed calls of recovered trajectories (the
    # paper's premise); SAAR's extra push against failed calls is ~2 P(recovered) E[A|rec].
    out["saar_push"] = (
        2 * out["recovered_frac"] * out["adv_recovered"] if rec.any() else float("nan")
    )
    ci = None
    if rec.any():
        rows = np.stack([adv.astype(float), rec], axis=1)
        groups = np.repeat(np.arange(len(outcomes) // n), n)
        iv = bootstrap_ci(rows, _mean_adv_recovered, n_boot, seed, level, groups=groups)
        ci = {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": level}
        ci["groups"] = iv.n
    out["adv_recovered_ci"] = ci
    out["premise_holds"] = bool(ci is not None and ci["low"] > 0)
    if no_tool is not None:
        flags = np.asarray(no_tool, bool)
        if flags.shape != rec.shape:
            raise ValueError(f"{flags.size} no_tool flags for {rec.size} outcomes")
        acc = np.array([o.correct for o in outcomes], float)
        out["no_tool_frac"] = float(flags.mean())
        out["acc_no_tool"] = float(acc[flags].mean()) if flags.any() else float("nan")
    return out


def premise_check(
    rt: parts_lib.Runtime,
    examples: Sequence[Example],
    n: int,
    seed: int = 0,
    *,
    prompts_per_batch: int = 8,
    n_boot: int = 2000,
    level: float = 0.95,
) -> dict[str, Any]:
    """Rolls out `rt`'s policy without SAAR, n samples of each example, and returns `summarize`
    of the outcomes plus `wall_s`, `prompts` and the rollout termination counts.

    `rt` is an "eval" (or "train") Runtime: its collector samples with the config's rollout
    settings (temperature, limits) and seeds derived from (config seed, "premise", `seed`, ...);
    `prompts_per_batch` prompts are rolled out at a time (their n samples concurrently).
    """
    examples, dropped = rt.collector.filter_prompts(examples)
    if not examples:
        raise ValueError("no prompt to roll out (none given, or all longer than the budget)")
    t0 = time.perf_counter()
    rt.engine.warmup()
    outcomes: list[CallOutcome] = []
    rewards: list[float] = []
    no_tool: list[bool] = []
    terminations: dict[str, int] = {}
    for start in range(0, len(examples), prompts_per_batch):
        batch = list(examples[start : start + prompts_per_batch])
        rollouts = rt.collector.collect(
            batch, n, tag=("premise", seed), saar_enabled=False, group_offset=start
        )
        results = rt.scorer.score_batch_sync([r.reward_input(rt.chat) for r in rollouts])
        for r, res in zip(rollouts, results, strict=True):
            outcomes.append(call_outcome(r.trajectory, res.acc))
            rewards.append(res.score)
            no_tool.append(r.trajectory.stats.tool_calls == 0)
            term = str(r.trajectory.termination)
            terminations[term] = terminations.get(term, 0) + 1
        logging.info("premise check: %d/%d prompts", start + len(batch), len(examples))
    out = summarize(outcomes, rewards, n, n_boot=n_boot, seed=seed, level=level, no_tool=no_tool)
    out.update(
        prompts=len(examples),
        dropped_overlong_prompts=dropped,
        terminations=terminations,
        wall_s=time.perf_counter() - t0,
    )
    return out


def run_premise_check(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    data_files: Sequence[str],
    out_path: str,
    *,
    prompts: int,
    n: int,
    seed: int = 0,
) -> dict[str, Any]:
    """`premise_check` of `checkpoint` (an HF export) on the first `prompts` examples of
    `data_files` (agentrl jsonl), with `config`'s rollout settings; writes `out_path` (JSON)."""
    examples = read_agentrl(list(data_files))[:prompts]
    rt = parts_lib.build(config, "eval", checkpoint=checkpoint)
    try:
        result = premise_check(rt, examples, n, seed)
    finally:
        rt.close()
    result["checkpoint"] = checkpoint
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return result
