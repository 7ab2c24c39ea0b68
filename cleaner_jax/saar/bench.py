"""Host-time measurements of the SAAR core (called by launch/bench_tools.py; prints nothing).

`bench_rollback_host_time` rolls out a ~20k-token trajectory with the deterministic stand-ins of
`saar.testing` (zero-cost policy and tools) in which several tool-call positions fail and are
repaired by one retry, and reports the SAAR controller's own host time per rollback event:
checkpointing, building the retry and scoring contexts, parsing the retry, similarity, boundary
search, splicing and bookkeeping (time spent awaiting the policy/tools is excluded).
`bench_rollback_host_time_3k` does the same with ~3k-character calls (the failed call and its
fix both ~3k characters) under each similarity mode. `bench_similarity` times the default and the
reference similarity at several code lengths, including the worst case of the difflib-based
measures (a 3k-character literal table with scattered typos).
All timings are medians over `repeats` runs.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable

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


# The second half of a long (~3k-character) call: more analysis after `_TYPICAL_CALL`.
_LONG_TAIL = """
from fractions import Fraction
from collections import Counter, defaultdict

def continued_fraction(x, terms):
    out = []
    for _ in range(terms):
        whole = x.numerator // x.denominator
        out.append(whole)
        x -= whole
        if x == 0:
            break
        x = 1 / x
    return out

residues = defaultdict(list)
for p in primes[:{count}]:
    residues[p % {mod}].append(p)
sizes = {{r: len(ps) for r, ps in sorted(residues.items())}}
print("residue classes:", sizes)
gaps = Counter(q - p for p, q in zip(primes, primes[1:]))
common = gaps.most_common(5)
print("most common gaps:", common)
approx = Fraction(sum(primes[:50]), len(primes[:50]))
print("mean of first 50 primes:", approx, continued_fraction(approx, 8))

def solve_linear(rows):
    n = len(rows)
    m = [list(map(Fraction, row)) for row in rows]
    for col in range(n):
        pivot = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        scale = m[col][col]
        m[col] = [v / scale for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                factor = m[r][col]
                m[r] = [a - factor * b for a, b in zip(m[r], m[col])]
    return [row[-1] for row in m]

system = [[2, 1, -1, 8], [-3, -1, 2, -11], [-2, 1, 2, -3]]
print("solution:", solve_linear(system))
fib = [0, 1]
while len(fib) < {fib}:
    fib.append(fib[-1] + fib[-2])
even_fib = [f for f in fib if f % 2 == 0]
print("even fibonacci terms:", len(even_fib), sum(even_fib) % 1000000007)
table = [[(i * j) % {mod} for j in range(1, 13)] for i in range(1, 13)]
row_sums = [sum(row) for row in table]
print("row sums:", row_sums, "max:", max(row_sums))
palindromes = [n for n in range(10, {limit}) if str(n) == str(n)[::-1] and n in set(primes)]
print("palindromic primes:", len(palindromes), palindromes[-5:])
squares = {{k * k for k in range(1, 200)}}
two_squares = [p for p in primes[:300] if any(p - s in squares for s in squares if s < p)]
print("primes that are a sum of two squares:", len(two_squares))
collatz = {{}}
for start in range(1, {count}):
    n, steps = start, 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    collatz[start] = steps
longest = max(collatz, key=collatz.get)
print("longest collatz chain below", {count}, "starts at", longest, "with", collatz[longest])
"""


def typical_code(seed: int = 0) -> str:
    """A realistic ~800-character call, varied by `seed`."""
    rng = random.Random(seed)
    return _TYPICAL_CALL.format(limit=rng.randint(100, 10_000), mod=rng.randint(3, 97))


def long_code(seed: int = 0) -> str:
    """A realistic ~3k-character call (`typical_code` followed by more analysis)."""
    rng = random.Random(seed)
    limit, mod = rng.randint(100, 10_000), rng.randint(3, 97)
    tail = _LONG_TAIL.format(
        count=rng.randint(20, 200), mod=mod, fib=rng.randint(30, 90), limit=limit
    )
    return _TYPICAL_CALL.format(limit=limit, mod=mod) + tail


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


async def _one_rollout(
    n_tokens: int, events: int, seed: int, code_fn: Callable[[int], str], saar: SaarConfig
):
    codec = CharCodec()
    reasoning = "Let me compute this step by step with the interpreter. " * 12
    turns: list[str] = []
    table = {}
    position = 0
    while True:
        code = code_fn(seed * 1000 + position)
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
    return await rollout(
        prompt, policy, ScriptedTools(table), codec, saar=saar, limits=limits, seed=seed
    )


def _rollback_ms(
    n_tokens: int, events: int, repeats: int, code_fn: Callable[[int], str], saar: SaarConfig
) -> tuple[list[float], list[int]]:
    """Per-repeat SAAR host ms per rollback event, and the trajectory lengths."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    per_event, lengths = [], []
    for r in range(repeats):
        traj = asyncio.run(_one_rollout(n_tokens, events, r, code_fn, saar))
        stats = traj.stats
        if stats.rollbacks_recovered != events or stats.shallow != events:
            raise RuntimeError(
                f"benchmark trajectory recovered {stats.rollbacks_recovered} of {events} events "
                f"({stats.shallow} shallow) with similarity={saar.similarity!r}"
            )
        per_event.append(1e3 * stats.saar_host_seconds / events)
        lengths.append(len(traj.tokens))
    return per_event, lengths


def bench_rollback_host_time(
    n_tokens: int = 20_000, events: int = 8, repeats: int = 5
) -> dict[str, float]:
    """SAAR host milliseconds per rollback event on an ~n_tokens trajectory with typical
    (~700-character) calls and the default similarity (median of repeats).

    Returns `saar_ms_per_rollback_20k` (named for the default size), the trajectory length and
    the event count, so the caller can check the ≤ 1 ms target.
    """
    per_event, lengths = _rollback_ms(n_tokens, events, repeats, typical_code, SaarConfig())
    return {
        "saar_ms_per_rollback_20k": statistics.median(per_event),
        "saar_ms_per_rollback_max": max(per_event),
        "trajectory_tokens": float(statistics.median(lengths)),
        "rollback_events": float(events),
        "code_chars": float(len(typical_code())),
    }


def bench_rollback_host_time_3k(
    n_tokens: int = 20_000, events: int = 4, repeats: int = 5
) -> dict[str, float]:
    """SAAR host milliseconds per rollback event when the failed call and its fix are ~3k
    characters each (`long_code`), for both similarity modes (median of repeats)."""
    out: dict[str, float] = {}
    for mode in ("tokens", "reference"):
        saar = SaarConfig(similarity=mode)
        per_event, lengths = _rollback_ms(n_tokens, events, repeats, long_code, saar)
        out[f"saar_ms_per_rollback_3k_{mode}"] = statistics.median(per_event)
        out[f"saar_ms_per_rollback_3k_{mode}_max"] = max(per_event)
        out["trajectory_tokens_3k"] = float(statistics.median(lengths))
    out["rollback_events_3k"] = float(events)
    out["code_chars_3k"] = float(len(long_code()))
    return out


def _scattered_typo_table(n_rows: int = 150, every: int = 10) -> tuple[str, str]:
    """A ~3k-character literal table with a ';' typo in every `every`-th row, and its fix."""
    rng = random.Random(0)
    rows = [tuple(rng.randint(10, 99) for _ in range(3)) for _ in range(n_rows)]
    fixed = [f"    ({a}, {b}, {c})," for a, b, c in rows]
    bad = [
        f"    ({a}; {b}, {c})," if i % every == 0 else fixed[i] for i, (a, b, c) in enumerate(rows)
    ]
    tail = "\n]\nprint(sum(a * b - c for a, b, c in points))\n"
    return "points = [\n" + "\n".join(bad) + tail, "points = [\n" + "\n".join(fixed) + tail


def bench_similarity(
    lengths: tuple[int, ...] = (200, 800, 3000), repeats: int = 5
) -> dict[str, float]:
    """Milliseconds per call and scores of both similarities on typo-level pairs: the typical
    call (`typical`), the long call (`long3k`), repetitive synthetic code of each length in
    `lengths`, and a 3k-character table with 15 scattered typos (`table3k`, the slowest input
    for difflib over tokens); plus a rewrite (`rewrite3k`: long call vs synthetic code)."""
    out: dict[str, float] = {}
    cases = [("typical", typical_code(), _typo(typical_code()))]
    cases.append(("long3k", long_code(), _typo(long_code())))
    cases += [
        (str(n), synthetic_code(n, seed=n), _typo(synthetic_code(n, seed=n))) for n in lengths
    ]
    cases.append(("table3k", *_scattered_typo_table()))
    cases.append(("rewrite3k", long_code(), synthetic_code(3000)))
    for n, old, new in cases:
        for name, fn in (("tokens", token_similarity), ("reference", reference_similarity)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                score = fn(old, new)
                times.append(time.perf_counter() - t0)
            out[f"similarity_{name}_ms_{n}"] = 1e3 * statistics.median(times)
            out[f"similarity_{name}_score_{n}"] = score
    return out
