"""The GRPO(+SAAR) training loop: rollout → rewards → advantages → old log-probs → update.

`run(config, workdir)` is what `launch/train.py` calls. Each step:
1. roll out `rollout.n` trajectories for each of `rollout.prompts_per_step` prompts (agent loop with
   SAAR on or off, `runtime/collect.py`; with `saar.start_step` = k SAAR is switched on at train
   step k, counted from 0, and `saar/active` logs whether it was on);
2. score them (`rl/rewards.py`; a failing reward is an error result, never a dead step) and
   compute group advantages;
3. old log-probs: from the sampler (spliced segments re-scored under the purified context) or
   recomputed by the trainer with the packed training forward (one compiled shape); with the
   recompute, the off-policy correction (`loss.off_policy`: TIS, MIS or decoupled weights of
   π_prox / μ) and the mismatch per span kind (sampled, spliced shallow / deep);
4. one optimizer step per mini-batch of prompts, micro-batched by rows;
5. hand the new parameters to the sampler, log metrics, validate, checkpoint.
Resuming restores params, optimizer state, step and the data iterator position; rollout seeds
derive from (seed, step), so a resumed run continues exactly.

With `rollout.max_staleness` S >= 1, step 1 is a producer's (`runtime/async_rollout.py`): rounds
are rolled out ahead while the trainer updates, at most S versions stale per trained token; step
5 pushes the weights to the producer's loop. Seeds then derive from (seed, round), and a resume
re-rolls the rounds that were not yet taken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import jax
import ml_collections
import numpy as np

from cleaner_jax.data.readers import EpochIterator, read_agentrl
from cleaner_jax.models import hf_io
from cleaner_jax.rl import distributed, off_policy
from cleaner_jax.rl import logprobs as logprobs_lib
from cleaner_jax.rl.advantages import DynamicSamplingState, compute_advantages
from cleaner_jax.rl.credit import call_outcome, credit_diagnostics
from cleaner_jax.rl.packing import pack, split_rows
from cleaner_jax.rl.rewards import reward_metrics
from cleaner_jax.rl.update import round_rows, split_minibatches
from cleaner_jax.runtime import async_rollout
from cleaner_jax.runtime import metrics as metrics_lib
from cleaner_jax.runtime import parts as parts_lib
from cleaner_jax.runtime.collect import Rollout
from cleaner_jax.runtime.config import TrainSettings, train_settings
from cleaner_jax.saar import aggregate_stats


def _old_logprobs(
    settings: TrainSettings, graphdef, state, rollouts: list[Rollout], samples, n: int, mesh=None
) -> dict:
    """Fills `samples[i].logprobs` per `train.old_logprobs`; returns mismatch metrics.

    "recompute" scores every sample with the trainer's parameters; "sampler" keeps the sampler's
    log-probs and scores only the groups holding a rollout whose log-probs are stale (SAAR
    splices without rescoring), so a step without such rollouts costs nothing here. Scoring runs
    the packed training forward (`logprobs.recompute_sample_logprobs`): rows of `train.row_len`,
    the update's rows per micro-batch, one compiled shape. Mismatch metrics cover the fresh
    tokens of the samples that were scored (none: no metrics).
    """
    use_trainer = settings.old_logprobs == "recompute"
    fresh = [not r.has_stale_logprobs for r in rollouts]
    todo = [
        i
        for g in range(0, len(samples), n)
        if use_trainer or not all(fresh[g : g + n])
        for i in range(g, min(g + n, len(samples)))
    ]
    if not todo:
        return {}
    scored = logprobs_lib.recompute_sample_logprobs(
        graphdef,
        state,
        [samples[i] for i in todo],
        row_len=settings.row_len,
        rows_per_call=round_rows(settings.rows_per_micro, mesh),
        temperature=settings.temperature,
        chunk=settings.logprob_chunk,
        mesh=mesh,
    )
    sampler_lp, masks = [], []
    for i, lp in zip(todo, scored, strict=True):
        s = samples[i]
        # Prompt tokens are not trained: keep the trainer's values there at 0 as before.
        lp[: s.prompt_len] = 0.0
        sampler_lp.append(s.logprobs.copy())
        masks.append(s.loss_mask * fresh[i])
        if use_trainer or not fresh[i]:
            s.logprobs = lp
    return logprobs_lib.mismatch_metrics(
        np.concatenate(sampler_lp), np.concatenate(scored), np.concatenate(masks)
    )


def _correct(settings: TrainSettings, rollouts: list[Rollout], samples) -> dict:
    """The off-policy correction (`loss.off_policy`, rl/off_policy.py) on samples whose
    `logprobs` now hold the trainer's π_prox; the per-span mismatch metrics either way."""
    if settings.old_logprobs != "recompute":
        return {}  # no π_prox: the ratio is taken against μ itself (bypass)
    cfg = settings.off_policy
    hot = sorted({r.temperature for r in rollouts} - {settings.temperature})
    if cfg.enabled and hot:
        raise ValueError(
            f"loss.off_policy={cfg.mode!r}: rollouts sampled (and rescored) at temperature "
            f"{hot} but the trainer scores at {settings.temperature}; μ and π_prox must be "
            "taken at one temperature"
        )
    return off_policy.apply(samples, cfg)


def _engine_busy(engine) -> float:
    """Seconds the engine has spent in its steps' prefill and decode calls so far."""
    stats = getattr(engine, "stats", {}) if engine is not None else {}
    return float(stats.get("prefill_time", 0.0) + stats.get("decode_time", 0.0))


def _exchange(rollouts: list[Rollout], results: list) -> tuple[list[Rollout], list]:
    """Every process's rollouts and reward results, in global prompt order (a collective)."""
    if jax.process_count() == 1:
        return rollouts, results
    pairs = distributed.gather_shares(list(zip(rollouts, results, strict=True)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclasses.dataclass
class _Batch:
    rollouts: list[Rollout]  # what the step trains on (in groups of n)
    results: list
    sampled: list[Rollout]  # everything sampled this step (more with dynamic sampling)
    sampled_results: list
    metrics: dict
    local_tokens: int  # tokens this process rolled out

    def add(self, rollouts, results, state: DynamicSamplingState | None) -> bool:
        """Adds one round; True once the batch is complete (at once without dynamic sampling,
        `state` None; with it, when enough groups are kept or the rounds are spent)."""
        self.sampled += rollouts
        self.sampled_results += results
        if state is None:
            self.rollouts, self.results = rollouts, results
            return True
        rows = state.add(np.array([x.score for x in results], np.float32))
        self.rollouts += [rollouts[i] for i in rows]
        self.results += [results[i] for i in rows]
        return state.full or state.exhausted


def _dynamic_sampling_metrics(state: DynamicSamplingState) -> dict:
    return {
        "dynamic_sampling/rounds": float(state.rounds),
        "dynamic_sampling/kept_groups": float(state.kept_groups),
        "dynamic_sampling/dropped_groups": float(state.dropped_groups),
    }


class Trainer:
    """The GRPO loop over the parts of a "train" `Runtime` (built by `parts.build`)."""

    def __init__(self, rt: parts_lib.Runtime, settings: TrainSettings, workdir: str):
        self.rt, self.settings, self.workdir = rt, settings, workdir
        self.tokenizer, self.bundle = rt.tokenizer, rt.model
        self.updater, self.collector = rt.updater, rt.collector
        self.scorer, self.ckpt, self.writer = rt.scorer, rt.checkpointer, rt.writer
        self.state = self.bundle.state
        self.opt_state = self.updater.init(self.state)
        self._load_data()
        self.step = 0
        self._round = 0  # async: the next round's index (`async_rollout.Round.index`)
        self._data_state = self.iterator.get_state()  # async: after the last round taken
        self._maybe_resume()
        self.producer = None
        if settings.max_staleness > 0:
            self.producer = async_rollout.RolloutProducer(
                self._make_round,
                rt.engine,
                max_staleness=settings.max_staleness,
                first_round=self._round,
                reprefill=settings.push_kv == "reprefill",
            )

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
            self.producer = None

    def _load_data(self):
        s = self.settings
        self.train_examples, _ = self.collector.filter_prompts(read_agentrl(list(s.train_files)))
        self.iterator = EpochIterator(self.train_examples, seed=s.shuffle_seed)
        self.val_examples = read_agentrl(list(s.val_files)) if s.val_files else []
        if s.validation.max_prompts:
            self.val_examples = self.val_examples[: s.validation.max_prompts]

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
        # Async runs: rounds rolled out but not taken were dropped with the process; the next
        # round re-draws from the data state after the last round taken, under these weights.
        self._round = int(meta.get("round", 0))
        self._data_state = self.iterator.get_state()
        self.rt.sync_sampler(self.state, version=self.step)
        logging.info("resumed from step %d", self.step)

    async def _acollect_share(self, examples, n, *, tag, **sampling) -> list[Rollout]:
        """Rolls out this process's share of the prompts (all of them with one process)."""
        mine = distributed.process_share(examples)
        return await self.collector.acollect(
            [examples[i] for i in mine], n, tag=tag, group_offset=mine[0] if mine else 0, **sampling
        )

    def _collect_share(self, examples, n, **kwargs) -> list[Rollout]:
        return asyncio.run(self._acollect_share(examples, n, **kwargs))

    def _score(self, rollouts: list[Rollout]):
        return asyncio.run(self._ascore(rollouts))

    async def _ascore(self, rollouts: list[Rollout]):
        results = await self.scorer.score_batch([r.reward_input(self.rt.chat) for r in rollouts])
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
        on every process; `sampling`: saar_enabled, temperature, top_p overrides. With async
        rollouts they run on the producer's loop, beside the rounds in flight."""

        async def run():
            rollouts = await self._acollect_share(examples, n, tag=tag, **sampling)
            return rollouts, await self._ascore(rollouts)

        pair = asyncio.run(run()) if self.producer is None else self.producer.run(run())
        return _exchange(*pair)

    def validate(self) -> dict:
        v = self.settings.validation
        if not self.val_examples:
            return {}
        rollouts, results = self.sample(
            self.val_examples,
            v.n,
            tag=("val", self.step),
            saar_enabled=v.saar and self.settings.saar_active(self.step),
            temperature=v.temperature,
            top_p=v.top_p,
        )
        out = {f"val/{k}": x for k, x in reward_metrics(results).items()}
        stats = aggregate_stats([r.trajectory.stats for r in rollouts])
        out.update({f"val/{k}": x for k, x in stats.items() if isinstance(x, int | float)})
        return out

    def _sample_batch(self, timer) -> _Batch:
        """The rollouts and reward results to train on, and all those sampled this step.

        Without dynamic sampling both are one batch of `prompts_per_step` groups. With it
        (DAPO), groups whose rewards are all equal are dropped and further batches are sampled
        until `prompts_per_step` informative groups are kept or `max_sampling_rounds` batches
        were sampled (then the step trains on what was kept). Round r > 0 draws its seeds from
        ("train", step, r), so a run without dynamic sampling samples what it always did.
        """
        c = self.settings
        state = DynamicSamplingState(c.prompts_per_step, c.n, c.max_sampling_rounds)
        b = _Batch([], [], [], [], {}, 0)
        while True:
            r = state.rounds
            examples = self.iterator.next_batch(c.prompts_per_step)
            with timer("rollout"):
                tag = ("train", self.step) if r == 0 else ("train", self.step, r)
                rollouts = self._collect_share(
                    examples, c.n, tag=tag, saar_enabled=c.saar_active(self.step)
                )
            b.local_tokens += sum(len(x.trajectory.tokens) for x in rollouts)
            with timer("reward"):
                results = self._score(rollouts)
            with timer("exchange"):
                rollouts, results = _exchange(rollouts, results)
            if b.add(rollouts, results, state if c.dynamic_sampling else None):
                break
        if c.dynamic_sampling:
            b.metrics = _dynamic_sampling_metrics(state)
        return b

    async def _make_round(self, index: int, version: int) -> async_rollout.Round:
        """One round on the producer's loop: the next prompts, rolled out and scored."""
        c, t0 = self.settings, time.perf_counter()
        examples = self.iterator.next_batch(c.prompts_per_step)
        data_state = self.iterator.get_state()
        rollouts = await self._acollect_share(
            examples, c.n, tag=("train_round", index), saar_enabled=c.saar_active(version)
        )
        results = await self._ascore(rollouts)
        tokens = sum(len(x.trajectory.tokens) for x in rollouts)
        seconds = time.perf_counter() - t0
        return async_rollout.Round(index, version, data_state, rollouts, results, tokens, seconds)

    def _take_batch(self, timer) -> _Batch:
        """`_sample_batch` from the producer's rounds: rounds with a token more than
        `max_staleness` versions old are dropped; dynamic sampling takes rounds until full."""
        c = self.settings
        state = DynamicSamplingState(c.prompts_per_step, c.n, c.max_sampling_rounds)
        b = _Batch([], [], [], [], {}, 0)
        waited, dropped, ages = 0.0, 0, {}
        while True:
            rnd, wait = self.producer.take()
            waited += wait
            self._round, self._data_state = rnd.index + 1, rnd.data_state
            with timer("exchange"):
                rollouts, results = _exchange(rnd.rollouts, rnd.results)
            ok, ages = async_rollout.check_round(
                dataclasses.replace(rnd, rollouts=rollouts), self.step, c.max_staleness
            )
            if not ok:
                dropped += 1
                logging.warning("round %d is older than the bound: dropped", rnd.index)
                continue
            b.local_tokens += rnd.local_tokens
            if b.add(rollouts, results, state if c.dynamic_sampling else None):
                break
        b.metrics = {
            **ages,
            "time/wait_rollout": waited,
            "async/dropped_rounds": float(dropped),
            "async/producer_idle_s": self.producer.pop_idle_seconds(),
            "async/round_seconds": rnd.seconds,
            **(_dynamic_sampling_metrics(state) if c.dynamic_sampling else {}),
        }
        return b

    def _push_weights(self) -> None:
        """The new weights to the sampler: directly, or through the producer's loop."""
        version = self.step + 1
        if self.producer is None:
            self.rt.sync_sampler(self.state, version=version)
            return
        # Cast and placed here, before the next update donates `self.state`.
        self.rt.sampler_state = self.rt.sampler_params(self.state)
        self.producer.push(self.rt.sampler_state, version)

    def train_step(self) -> dict:
        c = self.settings
        n = c.n
        timer = metrics_lib.PhaseTimer()
        busy0 = self._busy()
        batch = self._sample_batch(timer) if self.producer is None else self._take_batch(timer)
        rollouts, results, sampled = batch.rollouts, batch.results, batch.sampled
        metrics = batch.metrics
        metrics["saar/active"] = float(c.saar_active(self.step))
        # What the policy did this step (every sampled rollout), then what it trains on.
        metrics.update(reward_metrics(batch.sampled_results))
        stats = aggregate_stats([r.trajectory.stats for r in sampled])
        metrics.update({f"saar/{k}": v for k, v in stats.items() if isinstance(v, int | float)})
        if not rollouts:  # dynamic sampling found no informative group: nothing to learn from
            logging.warning("step %d: every sampled group had equal rewards; no update", self.step)
            metrics["dynamic_sampling/skipped_update"] = 1.0
            return metrics | timer.pop()
        rewards = np.array([r.score for r in results], np.float32)
        adv = compute_advantages(rewards, n, c.estimator)
        samples = [r.train_sample(float(a)) for r, a in zip(rollouts, adv, strict=True)]
        with timer("old_logprobs"):
            metrics.update(
                _old_logprobs(
                    c, self.bundle.graphdef, self.state, rollouts, samples, n, self.bundle.mesh
                )
            )
            metrics.update(_correct(c, rollouts, samples))
        with timer("update"):
            per_mb = c.mini_batch_prompts * n
            for mb in split_minibatches(samples, max(1, len(samples) // per_mb)):
                rows = round_rows(c.rows_per_micro, self.bundle.mesh)
                micros = split_rows(pack(mb, c.row_len, rows), rows)
                self.state, self.opt_state, upd = self.updater.step(
                    self.state, self.opt_state, micros
                )
            metrics.update({f"train/{k}": v for k, v in upd.items()})
        with timer("sync_weights"):
            self._push_weights()
        outcomes = [
            call_outcome(r.trajectory, s.acc) for r, s in zip(rollouts, results, strict=True)
        ]
        credit = credit_diagnostics(outcomes, n, adv)
        # A mean over no trajectory (no failed call this step, ...) is left out, not logged NaN.
        metrics.update({f"credit/{k}": v for k, v in credit.items() if not np.isnan(v)})
        resp_lens = [len(r.trajectory.response_tokens) for r in sampled]
        metrics["response_length/mean"] = float(np.mean(resp_lens))
        metrics["response_length/max"] = float(np.max(resp_lens))
        metrics["spliced_tokens"] = float(sum(r.spliced_tokens for r in sampled))
        phases = timer.pop()
        metrics.update(phases)
        # Per process: this process's tokens over its own rollout time.
        rollout_s = phases.get("time/rollout", metrics.get("async/round_seconds", 0.0))
        metrics["rollout_tokens_per_s"] = batch.local_tokens / max(rollout_s, 1e-9)
        # The timeline: seconds in the sampler's engine steps (prefill + decode calls) and with
        # a tool call running, during this step (async: also for rounds taken later).
        busy = self._busy()
        metrics["time/sampler_busy"] = busy[0] - busy0[0]
        metrics["time/tools_busy"] = busy[1] - busy0[1]
        return metrics

    def _busy(self) -> tuple[float, float]:
        tools = getattr(self.collector, "tools", None)
        return _engine_busy(self.rt.engine), float(getattr(tools, "busy_seconds", 0.0))

    def fit(self) -> dict:
        c = self.settings
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
            meta = {"step": self.step, "data": self.iterator.get_state()}
            if self.producer is not None:  # the iterator ran ahead: save where training is
                meta.update(data=self._data_state, round=self._round)
            self.ckpt.save(
                self.step,
                self.state,
                self.opt_state,
                meta,
                force=self.step == c.total_steps,
            )
            last = metrics
        self.ckpt.wait()
        if c.export_hf:
            out = parts_lib.export_dir(self.workdir, f"step_{self.step}")
            hf_io.save_hf_checkpoint(self.state, self.bundle.cfg, out)
            if jax.process_index() == 0:
                self.tokenizer.save_pretrained(out)
        return last


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.multiprocess:
        distributed.initialize()
    if config.prepare_synthetic:
        parts_lib.prepare_synthetic(config, workdir)
    settings = train_settings(config)
    rt = parts_lib.build(config, "train", workdir)
    trainer = None
    try:
        trainer = Trainer(rt, settings, workdir)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        rt.close()
