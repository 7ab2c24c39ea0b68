"""The planning half of the SFT corpus (`sft_corpus`): each example's kind, approach, bug and code.

Nothing runs here: `plan_corpus` decides, deterministically from the seed and the problem ids,
what every example will be, and `sft_corpus.make_sft_corpus` then runs each call in the real
sandbox, checks that buggy calls fail as intended and the others print the answer, and assembles
the chats. The kinds, the bugs and why the corpus is built this way are in `sft_corpus`'s
docstring.
"""

from __future__ import annotations

import builtins
import dataclasses
import keyword
import random
import re
import typing
from collections.abc import Mapping, Sequence

from cleaner_jax.data.synthetic_task import APPROACHES, DEEP_BUGS, Approach, Problem

KINDS: tuple[str, ...] = ("direct", "shallow_fix", "deep_fix", "give_up", "guess")
SHALLOW_BUGS: tuple[str, ...] = ("name_typo", "missing_paren", "missing_import")
DEFAULT_SHALLOW_BUG_WEIGHTS: Mapping[str, float] = {
    "name_typo": 0.45,
    "missing_paren": 0.35,
    "missing_import": 0.2,
}
# Tool-free guesses are drawn from 0..GUESS_MAX (the demo's answers are below 503).
GUESS_MAX = 502
GUESS_REASONING = "This looks small enough to work out without running code."
GIVE_UP_TEXT = "The code does not run; I will estimate the answer instead."

# Names bound in the warm sandbox without an import (worker prelude) plus builtins/keywords: a
# typo must not land on one of them or it would not raise NameError.
_BOUND_NAMES = frozenset(
    dir(builtins)
    + keyword.kwlist
    + ["math", "itertools", "collections", "os", "sys", "base64", "ast", "traceback"]
    + ["numpy", "np", "sympy", "sp", "symbols"]
    + typing.__all__
)


@dataclasses.dataclass(frozen=True)
class ExamplePlan:
    """What `plan_corpus` decided for one example: its kind, calls and the expected error."""

    problem: Problem
    kind: str
    approach: str
    first_reasoning: str
    first_code: str
    bug: str | None = None
    expected_error: str | None = None
    fix_approach: str | None = None
    fix_reasoning: str | None = None
    fix_code: str | None = None
    guess: str | None = None  # the boxed number of a "guess" or "give_up" example


def _approach(template: str, name: str) -> Approach:
    return next(a for a in APPROACHES[template] if a.name == name)


def _typo(name: str, code: str, rng: random.Random) -> str:
    """A misspelling of `name` that is unbound in the sandbox and not used in `code`."""
    if len(name) == 1:
        candidates = [name + name, name.upper()]
    else:
        candidates = []
        for i in range(1, len(name)):  # drop a letter (keeping the first)
            candidates.append(name[:i] + name[i + 1 :])
        for i in range(1, len(name) - 1):  # swap two neighbours (keeping the first)
            candidates.append(name[:i] + name[i + 1] + name[i] + name[i + 2 :])
    used = set(re.findall(r"\w+", code))
    candidates = sorted({c for c in candidates if c not in _BOUND_NAMES and c not in used})
    if not candidates:
        raise ValueError(f"no usable typo for {name!r}; pick another typo target")
    return rng.choice(candidates)


def _shallow_bug(approach: Approach, bug: str, code: str, rng: random.Random) -> tuple[str, str]:
    """(buggy code, expected exception) for a shallow bug applied to correct `code`."""
    if bug == "name_typo":
        name = rng.choice(approach.typo_names)
        last = list(re.finditer(rf"\b{re.escape(name)}\b", code))[-1]
        typo = _typo(name, code, rng)
        return code[: last.start()] + typo + code[last.end() :], "NameError"
    if bug == "missing_paren":
        lines = code.split("\n")
        with_paren = [i for i, line in enumerate(lines) if ")" in line]
        i = rng.choice(with_paren)
        cut = lines[i].rindex(")")
        lines[i] = lines[i][:cut] + lines[i][cut + 1 :]
        return "\n".join(lines), "SyntaxError"
    if bug == "missing_import":
        if approach.import_line is None:
            raise ValueError(f"approach {approach.name!r} has no import to drop")
        return code.replace(approach.import_line + "\n", "", 1), "NameError"
    raise ValueError(f"unknown shallow bug {bug!r}; use one of {SHALLOW_BUGS}")


def _assign_kinds(
    n: int,
    error_rate: float,
    shallow_share: float,
    give_up_share: float,
    guess_rate: float,
    rng: random.Random,
) -> list:
    n_error = round(n * error_rate)
    n_guess = round(n * guess_rate)
    if n_error + n_guess > n:
        raise ValueError(
            f"error_rate {error_rate} + guess_rate {guess_rate} exceed 1: lower one of them"
        )
    n_shallow = round(n_error * shallow_share)
    n_give_up = round((n_error - n_shallow) * give_up_share)
    # With give_up_share = guess_rate = 0 the list (and so the shuffle) is the original one.
    kinds = ["shallow_fix"] * n_shallow + ["deep_fix"] * (n_error - n_shallow - n_give_up)
    kinds += ["give_up"] * n_give_up + ["direct"] * (n - n_error - n_guess) + ["guess"] * n_guess
    rng.shuffle(kinds)
    return kinds


def _guess(problem: Problem, rng: random.Random) -> str:
    """A tool-free guess: a number of the answer range (0..`GUESS_MAX`) other than the answer."""
    answer = int(problem.answer)
    return str(rng.choice([g for g in range(GUESS_MAX + 1) if g != answer]))


def plan_corpus(
    problems: Sequence[Problem],
    *,
    error_rate: float = 1 / 3,
    shallow_share: float = 0.5,
    shallow_bug_weights: Mapping[str, float] = DEFAULT_SHALLOW_BUG_WEIGHTS,
    seed: int = 0,
    give_up_share: float = 0.0,
    guess_rate: float = 0.0,
) -> list[ExamplePlan]:
    """Decides, without running anything, each example's kind, bug and code (deterministic)."""
    for name, value in (
        ("error_rate", error_rate),
        ("shallow_share", shallow_share),
        ("give_up_share", give_up_share),
        ("guess_rate", guess_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    bad = set(shallow_bug_weights) - set(SHALLOW_BUGS)
    if bad or any(w < 0 for w in shallow_bug_weights.values()):
        raise ValueError(
            f"shallow_bug_weights {dict(shallow_bug_weights)} must map {SHALLOW_BUGS} to "
            "non-negative weights"
        )
    kinds = _assign_kinds(
        len(problems), error_rate, shallow_share, give_up_share, guess_rate, random.Random(seed)
    )
    plans = []
    for problem, kind in zip(problems, kinds, strict=True):
        rng = random.Random(f"sft_corpus/{seed}/{problem.id}")
        plans.append(plan_one(problem, kind, shallow_bug_weights, rng))
    return plans


def plan_one(
    problem: Problem, kind: str, weights: Mapping[str, float], rng: random.Random
) -> ExamplePlan:
    """One example of `kind` for `problem`: its approach, first code and (for fixes) the bug and
    the corrected call, drawn from `rng` (the corpus redraws a shallow bug through this)."""
    p = problem.params
    approaches = APPROACHES[problem.template]
    if kind == "direct":
        a = rng.choice(approaches)
        return ExamplePlan(problem, kind, a.name, a.reasoning, a.code(p))
    if kind == "guess":
        return ExamplePlan(problem, kind, "none", GUESS_REASONING, "", guess=_guess(problem, rng))
    if kind in ("give_up", "deep_fix"):
        bug = rng.choice(DEEP_BUGS[problem.template])
        a = _approach(problem.template, bug.approach)
        if kind == "give_up":  # no second call: a boxed guess after the error
            rest = {"guess": _guess(problem, rng)}
        else:
            fix = _approach(problem.template, bug.fix)
            rest = {
                "fix_approach": fix.name,
                "fix_reasoning": fix.reasoning,
                "fix_code": fix.code(p),
            }
        return ExamplePlan(
            problem,
            kind,
            a.name,
            a.reasoning,
            bug.code(p),
            bug=bug.name,
            expected_error=bug.error_type,
            **rest,
        )
    usable = [
        b
        for b in SHALLOW_BUGS
        if weights.get(b, 0.0) > 0
        and any(b != "missing_import" or a.import_line for a in approaches)
    ]
    if not usable:
        raise ValueError(
            f"no shallow bug applies to template {problem.template!r} with weights "
            f"{dict(weights)}; give name_typo or missing_paren a positive weight"
        )
    bug = rng.choices(usable, weights=[weights[b] for b in usable])[0]
    a = rng.choice([a for a in approaches if bug != "missing_import" or a.import_line])
    code = a.code(p)
    buggy, error = _shallow_bug(a, bug, code, rng)
    return ExamplePlan(
        problem,
        kind,
        a.name,
        a.reasoning,
        buggy,
        bug=bug,
        expected_error=error,
        fix_approach=a.name,
        fix_reasoning=a.reasoning,  # shallow: the same reasoning, only the code is repaired
        fix_code=code,
    )
