"""Offline purification of recorded trajectories, for codebases that cannot change their rollout.

`purify()` takes a trajectory recorded without SAAR in which the model corrected itself in
context (failed call -> error message -> a later call that works) and rewrites it the way SAAR
would have: the failed turn, its error and any intermediate failed corrections are removed and
the successful correction is spliced in place of the failed turn, shallow (old reasoning + new
call) when the calls are similar (>= gamma) and deep (the whole correction turn) otherwise.
Chains that never recover within `max_retries` corrections, or whose correction answers without
a call, are left untouched.

Caveat: unlike online SAAR, every token after a splice was sampled under the *dirty* context (it
saw the failed call and the error), so the purified trajectory is not exactly a sample of the
policy under the purified context. The spliced segments are marked `stale_logprobs=True` so the
trainer recomputes their log-probs; the tokens after them keep their recorded log-probs, which
were computed under a context that no longer precedes them. Recompute all log-probs (DESIGN §3
option B) when this matters.

Input format: segments with role "prompt", "assistant" and "tool"; a tool segment reports a
model error when its `failures` > 0. Which call of a multi-call turn failed is not recorded, so
the first call is taken as the failed one (its parse error, if any, marks it first).
"""

from __future__ import annotations

from .config import SaarConfig
from .protocols import TurnCodec
from .similarity import call_similarity, is_shallow, text_similarity
from .stats import TrajectoryStats
from .types import Provenance, Segment, ToolCall, Trajectory, head_segments


def purify(
    trajectory: Trajectory, codec: TurnCodec, config: SaarConfig | None = None
) -> Trajectory:
    """Purified copy of `trajectory` (see the module docstring, including its caveat).

    The returned trajectory's `stats` counts rollbacks triggered/recovered/failed and shallow
    vs deep splices; `codec` needs only `call_start` and `parse_calls` (and `decode` with
    `similarity_on="turn_tail"`).
    """
    config = config or SaarConfig()
    stats = TrajectoryStats(saar_enabled=True)
    segs = trajectory.segments
    out: list[Segment] = []
    i = 0
    while i < len(segs):
        seg = segs[i]
        if not (_is_turn(segs, i) and segs[i + 1].failures > 0):
            out.append(seg)
            i += 1
            continue
        stats.rollbacks_triggered += 1
        recovered = _recover(segs, i, codec, config, stats)
        if recovered is None:
            stats.rollbacks_failed += 1
            out.append(seg)
            i += 1
            continue
        turn, next_index = recovered
        stats.rollbacks_recovered += 1
        out.extend(turn)
        i = next_index
    return Trajectory(
        segments=out,
        termination=trajectory.termination,
        saar_enabled=trajectory.saar_enabled,
        stats=stats,
    )


def _is_turn(segs: list[Segment], i: int) -> bool:
    """An assistant turn followed by its tool message."""
    return segs[i].role == "assistant" and i + 1 < len(segs) and segs[i + 1].role == "tool"


def _recover(
    segs: list[Segment], i: int, codec: TurnCodec, config: SaarConfig, stats: TrajectoryStats
) -> tuple[list[Segment], int] | None:
    """Splice the first successful correction of the failed turn at `i`.

    Returns the spliced turn's segments and the index of its tool message, or None."""
    turn = [segs[i].head(len(segs[i].tokens))]
    turn_tokens = list(segs[i].tokens)
    calls = codec.parse_calls(turn_tokens)
    j = i + 2
    for _ in range(config.max_retries):
        if not calls or not _is_turn(segs, j):
            return None
        new_tokens = segs[j].tokens
        new_calls = codec.parse_calls(new_tokens)
        if not new_calls:
            return None
        old_start = codec.call_start(turn_tokens)
        new_start = codec.call_start(new_tokens)
        if config.similarity_on != "turn_tail":
            failed = _first_failed(calls)
            similarity = max(call_similarity(failed, c, config) for c in new_calls)
        elif old_start is None or new_start is None:
            similarity = 0.0  # no marker: deep, as the reference does
        else:
            old_tail = codec.decode(turn_tokens[old_start:])
            similarity = text_similarity(old_tail, codec.decode(new_tokens[new_start:]), config)
        if is_shallow(similarity, config.gamma) and old_start is not None and new_start is not None:
            kept = head_segments(turn, old_start)
            call_part = segs[j].slice(new_start)
            call_part.provenance = Provenance.SPLICED_SHALLOW
            call_part.stale_logprobs = True
            turn = [*kept, call_part]
            stats.shallow += 1
        else:
            whole = segs[j].head(len(new_tokens))
            whole.provenance = Provenance.SPLICED_DEEP
            whole.stale_logprobs = True
            turn = [whole]
            stats.deep += 1
        turn_tokens = [t for s in turn for t in s.tokens]
        if segs[j + 1].failures == 0:
            return turn, j + 1
        calls = new_calls
        j += 2
    return None


def _first_failed(calls: list[ToolCall]) -> ToolCall:
    return next((c for c in calls if c.error is not None), calls[0])
