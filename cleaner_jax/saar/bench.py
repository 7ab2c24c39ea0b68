"""Host-time measurements of the SAAR core (called by launch/bench_tools.py; prints nothing).

`bench_rollback_host_time` rolls out a ~20k-token trajectory with the deterministic stand-ins of
`saar.testing` (zero-cost policy and tools) in which several tool-call positions fail and are
repaired by one retry, and reports the SAAR controller's own host time per rollback event:
checkpointing, building the retry and scoring contexts, parsing the retry, similarity, boundary
search, splicing and bookkeeping (time spent awaiting the policy/tools is excluded).
`bench_similarity` times the default and the reference similarity at several code lengths.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from .config import RolloutLimits, SaarConfig
from .rollout import rollout
from .similarity import reference_similarity, token_similarity
from .testing import CharCodec, ScriptedPolicy, ScriptedTools, call_text, failure

_WORDS = ("total", "count", "value", "limit", "prime", "digits", "result", "step", "acc", "idx")

# A typical ~800-character interpreter call of a math-reasoning model (used for the per-event
# benchmark; `synthetic_code` gives long, highly repetitive code for the worst-case timings).
_TYPICAL_CALL = """import math
from itertools import combinations

def is_prime(n):
    if n < 2:
        return False
    for d in range(2, int(math.isqrt(n)) + 1):
        if n % d == 0:
            return False
    return True

limit = {limit}
primes = [p for p in range(2, limit) if is_prime(p)]
pairs = [(a, b) for a, b in combinations(primes, 2) if (a + b) % {mod} == 0]
digit_sums = {{p: sum(int(c) for c in str(p)) for p in primes}}
best = max(pairs, key=lambda ab: digit_sums[ab[0]] * digit_sums[ab[1]])
print(len(primes), len(pairs), best)
total = sum(a * b for a, b in pairs) % 1000000007
print("total:", total)
ratio = total / max(1, len(pairs))
print(f"average product mod p: {{ratio:.4f}}")
"""


def typical_code(seed: int = 0) -> str:
    """A realistic ~800-character call, varied by `seed`."""
    rng = random.Random(seed)
    return _TYPICAL_CALL.format(limit=rng.randint(100, 10_000), mod=rng.randint(3, 97))


def synthetic_code(n_chars: int, seed: int = 0) -> str:
    """Python-looking, highly repetitive code of about `n_chars` characters (a worst case for
    difflib, whose cost grows with how often tokens repeat)."""
    rng = random.Random(seed)
    lines = ["import math", "def solve(n):", "    total = 0"]
    while sum(len(line) + 1 for line in lines) < n_chars:
        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
        k = rng.randint(2, 999)
        lines.append(f"    {a}_{k} = math.gcd({b}, {k}) + total % {rng.randint(2, 97)}")
        lines.append(f"    total += {a}_{k} * {rng.randint(1, 9)}")
    lines.append("    return total")
    lines.append("print(solve(10))")
    return "\n".join(lines)


def _typo(code: str) -> str:
    return code.replace("total", "totl", 1)


async def _one_rollout(n_tokens: int, events: int, seed: int):
    codec = CharCodec()
    reasoning = "Let me compute this step by step with the interpreter. " * 12
    turns: list[str] = []
    table = {}
    position = 0
    while True:
        code = typical_code(seed=seed * 1000 + position)
        if position < events:
            bad = _typo(code)
            table[bad] = failure()
            turns.append(f"{reasoning}{call_text(bad)}<|im_end|>")
            turns.append(f"The variable name was wrong. {call_text(code)}<|im_end|>")
        else:
            turns.append(f"{reasoning}{call_text(code)}<|im_end|>")
        position += 1
        if position >= events and position * (len(reasoning) + 2 * len(code)) > n_tokens:
            break
    turns.append("The answer is \\boxed{42}.<|im_end|>")
    policy = ScriptedPolicy(codec, turns)
    prompt = codec.encode("<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n")
    limits = RolloutLimits(max_turns=len(turns), max_response_tokens=4 * n_tokens)
    traj = await rollout(
        prompt, policy, ScriptedTools(table), codec, saar=SaarConfig(), limits=limits, seed=seed
    )
    return traj


def bench_rollback_host_time(
    n_tokens: int = 20_000, events: int = 8, repeats: int = 5
) -> dict[str, float]:
    """SAAR host milliseconds per rollback event on an ~n_tokens trajectory (median of repeats).

    Returns `saar_ms_per_rollback_20k` (named for the default size), the trajectory length and
    the event count, so the caller can check the ≤ 1 ms target.
    """
    per_event, lengths = [], []
    for r in range(repeats):
        traj = asyncio.run(_one_rollout(n_tokens, events, seed=r))
        stats = traj.stats
        if stats.rollbacks_recovered != events:
            raise RuntimeError(
                f"benchmark trajectory recovered {stats.rollbacks_recovered} of {events} events"
            )
        per_event.append(1e3 * stats.saar_host_seconds / events)
        lengths.append(len(traj.tokens))
    return {
        "saar_ms_per_rollback_20k": statistics.median(per_event),
        "saar_ms_per_rollback_max": max(per_event),
        "trajectory_tokens": float(statistics.median(lengths)),
        "rollback_events": float(events),
        "code_chars": float(len(typical_code())),
    }


def bench_similarity(
    lengths: tuple[int, ...] = (200, 800, 3000), repeats: int = 5
) -> dict[str, float]:
    """Milliseconds per call and scores of both similarities on typo-level pairs: the typical
    call (`typical`) and repetitive synthetic code of each length in `lengths`."""
    out: dict[str, float] = {}
    cases = [("typical", typical_code())] + [(str(n), synthetic_code(n, seed=n)) for n in lengths]
    for n, old in cases:
        new = _typo(old)
        for name, fn in (("tokens", token_similarity), ("reference", reference_similarity)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                score = fn(old, new)
                times.append(time.perf_counter() - t0)
            out[f"similarity_{name}_ms_{n}"] = 1e3 * statistics.median(times)
            out[f"similarity_{name}_score_{n}"] = score
    return out
