"""Asynchronous rollouts with a staleness bound (`rollout.max_staleness` S >= 1).

A producer thread owns one asyncio loop, which drives the sampling engine, and rolls out
*rounds* (one batch of prompts each, SAAR, tools and rewards included) ahead of the trainer,
which takes them in order. While the trainer computes an update, the producer keeps sampling.

The bound. The trainer's version t is its update count; a token sampled (or, for a SAAR splice,
rescored) by weights of version v is t - v versions stale when trained on. The producer starts a
round only while fewer than S rounds are rolled out or in flight and not yet taken, so a round
started at version v is taken at version <= v + S when the trainer takes one round a step. The
trainer then checks every trained token of a round it takes (`check_round`): a round with a
token more than S versions old (possible with dynamic sampling, which takes several rounds a
step) is dropped, never trained on, and counted (`async/dropped_rounds`).

Weight pushes. After each update the trainer casts its weights for the sampler (in its own
thread, before the next update donates them) and `push`es them: the swap runs on the producer's
loop between two engine steps. Trajectories in flight continue under the new weights (partial
rollouts): their earlier tokens keep their version and μ; the K/V computed under the old
weights is kept (`rollout.push_kv="keep"`, default: no recompute) or re-prefilled under the new
weights (`"reprefill"`: the next token then follows the new policy exactly). A SAAR rollback in
such a trajectory rescores its splice with the weights current at the splice.

Resume. The rounds taken are checkpointed through the data iterator's state after the last
taken round and the next round's index (`Round.data_state`, `Round.index`); rounds rolled out but
not taken are dropped on a kill and rolled out again after the resume, with the resumed weights.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class Round:
    """One batch of rollouts the producer rolled out (its rewards scored)."""

    index: int  # global round number (its rollout seeds derive from it)
    start_version: int  # the engine's weight version when the round started
    data_state: dict  # the data iterator's state after this round drew its prompts
    rollouts: list
    results: list
    local_tokens: int
    seconds: float  # wall time from its start to its last reward


def round_staleness(rollouts, version: int) -> tuple[int, float, int]:
    """(max, mean, count) of `version` - v over the trained tokens of `rollouts`."""
    ages = []
    for r in rollouts:
        t = r.trajectory
        v = np.asarray(t.versions, np.int64)
        m = np.asarray(t.loss_mask, bool) & (v >= 0)
        ages.append(version - v[m])
    ages = np.concatenate(ages) if ages else np.zeros(0, np.int64)
    if not ages.size:
        return 0, 0.0, 0
    return int(ages.max()), float(ages.mean()), int(ages.size)


def check_round(rnd: Round, version: int, max_staleness: int) -> tuple[bool, dict]:
    """Whether the trainer at `version` may train on `rnd` (no token more than `max_staleness`
    versions old, none from a future version), and its staleness metrics."""
    oldest, mean, count = round_staleness(rnd.rollouts, version)
    future = any(
        max(r.trajectory.versions, default=-1) > version for r in rnd.rollouts
    )  # fmt: skip
    if future:
        raise RuntimeError(
            f"round {rnd.index} holds tokens from a version newer than the trainer's {version}"
        )
    ok = oldest <= max_staleness
    return ok, {"async/staleness_max": float(oldest), "async/staleness_mean": mean}


class RolloutProducer:
    """Rolls out rounds on a background thread, at most `max_staleness` ahead of the trainer.

    Args:
      make_round: `async (index, start_version) -> Round`, run on the producer's loop.
      engine: the sampling engine (driven by that loop only from now on).
      max_staleness: S >= 1.
      first_round: the index of the next round (0, or the checkpointed one on resume).
      reprefill: re-prefill in-flight requests at a push (`rollout.push_kv="reprefill"`).
    """

    def __init__(
        self,
        make_round: Callable[[int, int], Awaitable[Round]],
        engine: Any,
        *,
        max_staleness: int,
        first_round: int = 0,
        reprefill: bool = False,
    ):
        if max_staleness < 1:
            raise ValueError(f"max_staleness={max_staleness}: the producer needs S >= 1")
        self.make_round, self.engine = make_round, engine
        self.max_staleness, self.reprefill = max_staleness, reprefill
        self._next_index = first_round
        self._ready: collections.deque[Round] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stopped = False
        self._idle_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer thread
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._produce())
        except BaseException as e:  # handed to the trainer in `take`
            if not (self._stopped and isinstance(e, asyncio.CancelledError)):
                logging.exception("rollout producer failed")
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
        finally:
            self.engine.abandon()  # requests of an abandoned round: nobody awaits them now

    async def _produce(self) -> None:
        self._wake = asyncio.Event()
        while not self._stopped:
            with self._cond:
                ahead = len(self._ready) + self._in_flight
            if ahead >= self.max_staleness:
                t0 = time.perf_counter()
                self._wake.clear()
                await self._wake.wait()
                with self._cond:
                    self._idle_s += time.perf_counter() - t0
                continue
            with self._cond:
                self._in_flight += 1
            index, self._next_index = self._next_index, self._next_index + 1
            rnd = await self.make_round(index, int(self.engine.policy_version))
            with self._cond:
                self._in_flight -= 1
                self._ready.append(rnd)
                self._cond.notify_all()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ trainer thread
    def take(self) -> tuple[Round, float]:
        """The next round (blocking) and the seconds the trainer waited for it."""
        t0 = time.perf_counter()
        with self._cond:
            while not self._ready and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError("the rollout producer failed") from self._error
            rnd = self._ready.popleft()
        self._loop.call_soon_threadsafe(self._poke)
        return rnd, time.perf_counter() - t0

    def push(self, sampler_state: Any, version: int) -> None:
        """Hands new sampler weights (already cast and placed) to the engine; the swap happens
        on the producer's loop between engine steps. Does not wait."""
        self._loop.call_soon_threadsafe(
            lambda: self.engine.update_params(sampler_state, version, reprefill=self.reprefill)
        )

    def run(self, coro: Awaitable) -> Any:
        """Runs a coroutine on the producer's loop (validation's rollouts share the engine)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def pop_idle_seconds(self) -> float:
        """Seconds the producer waited on the bound since the last call."""
        with self._cond:
            idle, self._idle_s = self._idle_s, 0.0
        return idle

    def close(self) -> None:
        """Stops producing; a round in flight is abandoned (its rollouts are lost)."""
        self._stopped = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(_cancel_all, self._loop)
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            logging.warning("the rollout producer did not stop within 60 s")
        else:
            self._loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
