"""The async producer's staleness bound over random rollout and update durations (no model: a
fake engine whose tokens record the weight version current when each is "sampled")."""

import asyncio
import dataclasses
import random
import threading
import time

import pytest

from cleaner_jax.runtime import async_rollout
from cleaner_jax.saar import Provenance, Segment, Trajectory


class _Engine:
    def __init__(self):
        self.policy_version = 0
        self.pushes, self.abandoned = [], 0
        self.loop_thread = None

    def update_params(self, state, version, reprefill=False):
        # Pushes must land on the producer's loop (between engine steps), never elsewhere.
        assert threading.current_thread() is self.loop_thread
        self.pushes.append((state, version, reprefill))
        self.policy_version = version

    def abandon(self):
        self.abandoned += 1


@dataclasses.dataclass
class _Rollout:
    trajectory: Trajectory


def _make_round(engine, rng, tokens_per_round=6, max_sleep=0.004):
    async def make(index, version):
        engine.loop_thread = threading.current_thread()
        seg_versions = []
        for _ in range(tokens_per_round):  # tokens sampled one by one, pushes land in between
            await asyncio.sleep(rng.uniform(0, max_sleep))
            seg_versions.append(engine.policy_version)
        seg = Segment("assistant", [1] * tokens_per_round, Provenance.SAMPLED, [0.0] * 6)
        seg.versions = seg_versions
        traj = Trajectory([Segment.prompt([0, 0]), seg])
        return async_rollout.Round(index, version, {"i": index}, [_Rollout(traj)], [None], 8, 0.0)

    return make


@pytest.mark.parametrize("max_staleness", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_no_trained_token_is_older_than_the_bound(max_staleness, seed):
    rng = random.Random(seed)
    engine = _Engine()
    producer = async_rollout.RolloutProducer(
        _make_round(engine, rng), engine, max_staleness=max_staleness
    )
    try:
        ages, indices = [], []
        for step in range(12):
            rnd, _ = producer.take()
            ok, metrics = async_rollout.check_round(rnd, step, max_staleness)
            assert ok, (step, rnd.start_version, metrics)
            indices.append(rnd.index)
            ages.append(metrics["async/staleness_max"])
            time.sleep(rng.uniform(0, 0.02))  # the update
            producer.push(f"w{step + 1}", step + 1)
        assert indices == list(range(12))  # rounds are taken in order, none skipped
        assert max(ages) <= max_staleness
        assert max(ages) >= 1  # the producer did run ahead (otherwise the test proves nothing)
    finally:
        producer.close()
    assert [v for _, v, _ in engine.pushes] == list(range(1, len(engine.pushes) + 1))
    assert engine.abandoned == 1


def test_a_round_over_the_bound_is_refused_and_future_tokens_are_a_bug():
    seg = Segment("assistant", [1, 1, 1], Provenance.SAMPLED, [0.0] * 3, versions=[2, 3, 5])
    traj = Trajectory([Segment.prompt([0]), seg, Segment.tool([9], failures=0)])
    rnd = async_rollout.Round(0, 2, {}, [_Rollout(traj)], [None], 5, 0.0)
    ok, m = async_rollout.check_round(rnd, 5, 2)
    assert not ok and m["async/staleness_max"] == 3.0
    assert m["async/staleness_mean"] == pytest.approx((3 + 2 + 0) / 3)
    assert async_rollout.check_round(rnd, 5, 3)[0]
    with pytest.raises(RuntimeError, match="newer"):
        async_rollout.check_round(rnd, 4, 3)


def test_a_failing_round_reaches_the_trainer():
    engine = _Engine()

    async def broken(index, version):
        raise ValueError("sandbox pool is gone")

    producer = async_rollout.RolloutProducer(broken, engine, max_staleness=1)
    try:
        with pytest.raises(RuntimeError, match="producer failed") as e:
            producer.take()
        assert "sandbox pool is gone" in str(e.value.__cause__)
    finally:
        producer.close()


def test_staleness_zero_is_the_synchronous_trainer():
    with pytest.raises(ValueError, match="S >= 1"):
        async_rollout.RolloutProducer(_make_round(_Engine(), random.Random(0)), _Engine(),
                                      max_staleness=0)  # fmt: skip
