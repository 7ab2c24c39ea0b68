"""The GRPO(+SAAR) training loop: rollout → rewards → advantages → old log-probs → update.

`run(config, workdir)` is what `launch/train.py` calls. Each step:
1. roll out `rollout.n` trajectories for each of `rollout.prompts_per_step` prompts (agent loop with
   SAAR on or off, `rl/collect.py`);
2. score them (`rl/rewards.py`; a failing reward is an error result, never a dead step) and
   compute group advantages;
3. old log-probs: from the sampler (spliced segments re-scored under the purified context) or
   recomputed by the trainer with a prefix-shared forward; the sampler/trainer mismatch is
   logged either way;
4. one optimizer step per mini-batch of prompts, micro-batched by rows;
5. hand the new parameters to the sampler, log metrics, validate, checkpoint.
Resuming restores params, optimizer state, step and the data iterator position; rollout seeds
derive from (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections
import numpy as np

from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.data.readers import EpochIterator, filter_overlong, read_agentrl
from cleaner_jax.models import hf_io
from cleaner_jax.rl import checkpoint as checkpoint_lib
from cleaner_jax.rl import distributed, model_setup
from cleaner_jax.rl import logprobs as logprobs_lib
from cleaner_jax.rl import metrics as metrics_lib
from cleaner_jax.rl.advantages import compute_advantages
from cleaner_jax.rl.collect import Collector, Rollout, engine_config_from
from cleaner_jax.rl.credit import call_outcome, credit_diagnostics
from cleaner_jax.rl.packing import pack, split_rows
from cleaner_jax.rl.rewards import OverlongConfig, RewardConfig, RewardScorer, reward_metrics
from cleaner_jax.rl.update import (
    LossConfig,
    Updater,
    make_optimizer,
    optim_config_from,
    round_rows,
    split_minibatches,
)
from cleaner_jax.saar import aggregate_stats
from cleaner_jax.sampling import Engine


def _reward_config(config) -> RewardConfig:
    r = config.reward
    return RewardConfig(
        math_mode=r.math_mode,
        overlong=OverlongConfig(
            max_response_length=config.rollout.max_response_tokens,
            buffer_length=r.overlong_buffer,
            penalty_factor=r.overlong_factor,
            count_policy_tokens_only=r.overlong_policy_tokens_only,
        ),
    )


class _JudgePool:
    """The sandbox that runs code-reward tests, started on first use (math-only runs never pay).

    Separate from the tool pool: judging compares whole outputs, so it must not truncate them.
    """

    def __init__(self, config):
        self._config = SandboxConfig(
            num_workers=config.sandbox.num_workers,
            timeout_s=config.sandbox.timeout_s,
            max_output_chars=1_000_000,
        )
        self._pool = None

    async def run(self, code, stdin=None, timeout_s=None):
        if self._pool is None:
            self._pool = SandboxPool(self._config)
        return await self._pool.run(code, stdin=stdin, timeout_s=timeout_s)

    def close(self):
        if self._pool is not None:
            self._pool.close()


def _old_logprobs(config, bundle, state, rollouts: list[Rollout], samples, n: int) -> dict:
    """Fills `samples[i].logprobs` per `train.old_logprobs`; returns mismatch metrics.

    "recompute" scores every group with the trainer's parameters (prefix-shared); "sampler" keeps
    the sampler's log-probs and scores only the groups holding a rollout whose log-probs are
    stale (SAAR splices without rescoring), so a step without such rollouts costs nothing here.
    Mismatch metrics cover the fresh tokens of the groups that were scored (none: no metrics).
    """
    mode = config.train.old_logprobs
    if mode not in ("recompute", "sampler"):
        raise ValueError(f"train.old_logprobs must be 'recompute' or 'sampler', got {mode!r}")
    use_trainer = mode == "recompute"
    fresh = [not r.has_stale_logprobs for r in rollouts]
    scored, sampler_lp, trainer_lp, masks = [], [], [], []
    for g in range(0, len(samples), n):
        group = samples[g : g + n]
        if not use_trainer and all(fresh[g : g + n]):
            continue
        p = group[0].prompt_len
        resp = logprobs_lib.prefix_shared_logprobs(
            bundle.graphdef,
            state,
            group[0].tokens[:p],
            [s.tokens[p:] for s in group],
            temperature=config.rollout.temperature,
            chunk=config.train.logprob_chunk,
        )
        for k, s in enumerate(group):
            full = np.zeros(len(s.tokens), np.float32)
            full[p:] = resp[k]
            scored.append((s, fresh[g + k], full))
            sampler_lp.append(s.logprobs.copy())
            trainer_lp.append(full)
            masks.append(s.loss_mask * fresh[g + k])
    for s, f, lp in scored:
        if use_trainer or not f:
            s.logprobs = lp
    if not scored:
        return {}
    return logprobs_lib.mismatch_metrics(
        np.concatenate(sampler_lp), np.concatenate(trainer_lp), np.concatenate(masks)
    )


def _exchange(rollouts: list[Rollout], results: list) -> tuple[list[Rollout], list]:
    """Every process's rollouts and reward results, in global prompt order (a collective)."""
    if jax.process_count() == 1:
        return rollouts, results
    pairs = distributed.gather_shares(list(zip(rollouts, results, strict=True)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        os.makedirs(workdir, exist_ok=True)
        self.tokenizer = model_setup.tokenizer_for(config)
        self.bundle = model_setup.build_model(config, len(self.tokenizer))
        self.updater = Updater(
            self.bundle.graphdef,
            make_optimizer(optim_config_from(config.optim), compute_dtype=self.bundle.cfg.dtype),
            LossConfig(
                kind="ppo",
                clip_eps_low=config.loss.clip_eps_low,
                clip_eps_high=config.loss.clip_eps_high,
                dual_clip_c=config.loss.dual_clip_c or None,
                temperature=config.rollout.temperature,
                entropy_coef=config.loss.entropy_coef,
                logprob_chunk=config.train.logprob_chunk,
            ),
            mesh=self.bundle.mesh,
        )
        self.state = self.bundle.state
        self.opt_state = self.updater.init(self.state)
        self.ckpt = checkpoint_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            keep=config.checkpoint.keep,
            every=config.checkpoint.every,
        )
        self.pool = SandboxPool(
            SandboxConfig(
                num_workers=config.sandbox.num_workers, timeout_s=config.sandbox.timeout_s
            )
        )
        self.judge = _JudgePool(config)
        self.scorer = RewardScorer(_reward_config(config), code_runner=self.judge)
        # The sampler computes in its own dtype (`rollout.dtype`) on a copy of the fp32 masters.
        self.sampler_dtype = model_setup.sampler_dtype(config)
        self.engine = Engine(
            (model_setup.sampler_graphdef(self.bundle, self.sampler_dtype), self._sampler_params()),
            engine_config_from(config),
        )
        self.collector = Collector(config, self.tokenizer, self.engine, self.pool)
        self._load_data()
        self.step = 0
        self._maybe_resume()
        # After a resume the writer drops logged lines from the first step it writes on.
        self.writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0)

    def _load_data(self):
        d = self.config.data
        count = lambda ex: len(self.collector.prompt_tokens(ex))  # noqa: E731
        train = read_agentrl(list(d.train_files))
        self.train_examples, _ = filter_overlong(train, count, d.max_prompt_tokens)
        self.iterator = EpochIterator(self.train_examples, seed=d.shuffle_seed)
        self.val_examples = read_agentrl(list(d.val_files)) if d.val_files else []
        if self.config.validation.max_prompts:
            self.val_examples = self.val_examples[: self.config.validation.max_prompts]

    def _maybe_resume(self):
        if self.ckpt.latest_step() is None:
            return
        state, opt_state, meta = self.ckpt.restore(
            abstract_params=self.state, abstract_opt_state=self.opt_state
        )
        # Place every restored leaf exactly like the freshly initialised one (orbax may hand
        # optimizer-state leaves back on a single device).
        self.state, self.opt_state = jax.tree.map(
            lambda x, ref: jax.device_put(x, ref.sharding),
            (state, opt_state),
            (self.state, self.opt_state),
        )
        self.step = int(meta["step"])
        self.iterator.set_state(meta["data"])
        self.engine.update_params(self._sampler_params())
        logging.info("resumed from step %d", self.step)

    def _sampler_params(self):
        """The sampler's weights in `rollout.dtype`: as they are with one process; with several,
        a full copy on this process's first device, since the sampler runs process-local jits.
        A collective."""
        if jax.process_count() == 1:
            return model_setup.cast_state(self.state, self.sampler_dtype)
        return distributed.local_replica(self.state, self.sampler_dtype)

    def _collect_share(self, examples, n, *, tag, **sampling) -> list[Rollout]:
        """Rolls out this process's share of the prompts (all of them with one process)."""
        mine = distributed.process_share(examples)
        return self.collector.collect(
            [examples[i] for i in mine], n, tag=tag, group_offset=mine[0] if mine else 0, **sampling
        )

    def close(self):
        self.ckpt.close()
        self.writer.close()
        self.scorer.close()
        self.judge.close()
        self.pool.close()

    def _score(self, rollouts: list[Rollout]):
        results = self.scorer.score_batch_sync(
            [r.reward_input(self.collector.chat) for r in rollouts]
        )
        # A failed check scores 0 and is logged; when all of a batch fails, the reward code
        # itself is broken (verifier workers cannot start, ...) and training on it is no use.
        if results and all(r.error is not None for r in results):
            raise RuntimeError(
                f"every reward check of this batch ({len(results)}) failed; "
                f"the first: {results[0].error}"
            )
        return results

    def sample(self, examples, n: int, *, tag, **sampling) -> tuple[list[Rollout], list]:
        """n scored rollouts per example with the current weights (no update), in global order
        on every process; `sampling`: saar_enabled, temperature, top_p overrides."""
        rollouts = self._collect_share(examples, n, tag=tag, **sampling)
        return _exchange(rollouts, self._score(rollouts))

    def validate(self) -> dict:
        v = self.config.validation
        if not self.val_examples:
            return {}
        rollouts, results = self.sample(
            self.val_examples,
            v.n,
            tag=("val", self.step),
            saar_enabled=v.saar and self.config.saar.enabled,
            temperature=v.temperature,
            top_p=v.top_p,
        )
        out = {f"val/{k}": x for k, x in reward_metrics(results).items()}
        stats = aggregate_stats([r.trajectory.stats for r in rollouts])
        out.update({f"val/{k}": x for k, x in stats.items() if isinstance(x, int | float)})
        return out

    def train_step(self) -> dict:
        c = self.config
        n = c.rollout.n
        timer = metrics_lib.PhaseTimer()
        metrics: dict = {}
        examples = self.iterator.next_batch(c.rollout.prompts_per_step)
        with timer("rollout"):
            rollouts = self._collect_share(examples, n, tag=("train", self.step))
        local_tokens = sum(len(r.trajectory.tokens) for r in rollouts)
        with timer("reward"):
            results = self._score(rollouts)
        with timer("exchange"):
            rollouts, results = _exchange(rollouts, results)
        rewards = np.array([r.score for r in results], np.float32)
        adv = compute_advantages(rewards, n, c.advantage.estimator)
        samples = [r.train_sample(float(a)) for r, a in zip(rollouts, adv, strict=True)]
        with timer("old_logprobs"):
            metrics.update(_old_logprobs(c, self.bundle, self.state, rollouts, samples, n))
        with timer("update"):
            per_mb = c.train.mini_batch_prompts * n
            for mb in split_minibatches(samples, max(1, len(samples) // per_mb)):
                rows = round_rows(c.train.rows_per_micro, self.bundle.mesh)
                micros = split_rows(pack(mb, c.train.row_len, rows), rows)
                self.state, self.opt_state, upd = self.updater.step(
                    self.state, self.opt_state, micros
                )
            metrics.update({f"train/{k}": v for k, v in upd.items()})
        with timer("sync_weights"):
            self.engine.update_params(self._sampler_params())
        metrics.update(reward_metrics(results))
        stats = aggregate_stats([r.trajectory.stats for r in rollouts])
        metrics.update({f"saar/{k}": v for k, v in stats.items() if isinstance(v, int | float)})
        outcomes = [
            call_outcome(r.trajectory, s.acc) for r, s in zip(rollouts, results, strict=True)
        ]
        credit = credit_diagnostics(outcomes, n, adv)
        # A mean over no trajectory (no failed call this step, ...) is left out, not logged NaN.
        metrics.update({f"credit/{k}": v for k, v in credit.items() if not np.isnan(v)})
        resp_lens = [len(r.trajectory.response_tokens) for r in rollouts]
        metrics["response_length/mean"] = float(np.mean(resp_lens))
        metrics["response_length/max"] = float(np.max(resp_lens))
        metrics["spliced_tokens"] = float(sum(r.spliced_tokens for r in rollouts))
        phases = timer.pop()
        metrics.update(phases)
        # Per process: this process's tokens over its own rollout time.
        metrics["rollout_tokens_per_s"] = local_tokens / max(phases["time/rollout"], 1e-9)
        return metrics

    def fit(self) -> dict:
        c = self.config
        last: dict = {}
        if self.step == 0 and c.validation.every:
            self.writer.write(0, self.validate())
        while self.step < c.total_steps:
            t0 = time.time()
            metrics = self.train_step()
            self.step += 1
            if c.validation.every and self.step % c.validation.every == 0:
                metrics.update(self.validate())
            metrics["step_time_s"] = time.time() - t0
            self.writer.write(self.step, metrics)
            self.ckpt.save(
                self.step,
                self.state,
                self.opt_state,
                {"step": self.step, "data": self.iterator.get_state()},
                force=self.step == c.total_steps,
            )
            last = metrics
        self.ckpt.wait()
        if c.checkpoint.export_hf:
            out = model_setup.export_dir(self.workdir, f"step_{self.step}")
            hf_io.save_hf_checkpoint(self.state, self.bundle.cfg, out)
            if jax.process_index() == 0:
                self.tokenizer.save_pretrained(out)
        return last


def _prepare_synthetic(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For `prepare_synthetic` runs (`:runlocal`): the synthetic demo task and its tokenizer in
    the workdir, for what the user did not give (a tokenizer, training files)."""
    # An HF checkpoint brings its own tokenizer; keep it rather than the synthetic one.
    if config.model.hf_path and not config.tokenizer_path:
        config.tokenizer_path = config.model.hf_path
    if config.tokenizer_path and config.data.train_files:
        return
    from jax.experimental import multihost_utils

    from cleaner_jax.rl import demo  # the demo imports this module

    # Process 0 writes the assets; the others wait for them, then only set the paths.
    if distributed.is_main_process():
        demo.fill_synthetic_paths(config, workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cleaner_jax_synthetic_assets")
        if not distributed.is_main_process():
            demo.fill_synthetic_paths(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.multiprocess:
        distributed.initialize()
    if config.prepare_synthetic:
        _prepare_synthetic(config, workdir)
    trainer = Trainer(config, workdir)
    try:
        return trainer.fit()
    finally:
        trainer.close()
