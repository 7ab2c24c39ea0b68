"""The synthetic tool-use task of the embedded demo: arithmetic that needs the interpreter.

A miniature of the paper's setting for a tiny model (2-4 layers, d~128) trained from scratch on a
CPU. Each problem is one short question whose answer a tiny model cannot compute in its head but
can get by writing a one-to-six-line Python snippet that copies the question's numbers, running it
with the `code_interpreter` tool, and copying the printed number into ``\\boxed{}``:

  mul       "What is 4821 * 739?"                               (3-4 digit factors)
  powmod    "What is 37^1234 mod 97?"                           (modular power)
  digitsum  "What is the sum of the digits of 7^45?"            (digit sum of a big power)
  sumsq     "What is the sum of k^2 for k from 12 to 85?"       (sum of a range of squares)
  primecount "How many primes are less than 743?"
  collatz   "How many Collatz steps lead from n = 743 to 1?"
  selfpow   "What is n^n mod 1000 for n = 743?"
  factmod   "What is n! mod 997 for n = 743?"

The last four have one number to copy into the code and an answer below 1000, each a single
token for the demo tokenizer (numbers in groups of up to three digits), so the copying a 2-layer
model has to learn is as small as it gets; the demo uses collatz, selfpow and factmod, whose
questions name the number `n = 743` and whose solutions all start with the line `n = 743`: the
copy is then the textbook induction pattern (after `n =`, repeat what followed `n =` before),
which a 2-layer model learns in fewer SFT steps than a copy into varying code contexts (held-out
copy accuracy after the same SFT: see `study/demo.py`). The first four need several
numbers copied (digit by digit with Qwen's tokenizer); they suit larger models. The prompt is
the real math prompt (`prompts.MATH_TEMPLATE`, the template the AIME readers use) around the
question, with the `code_interpreter` tool given to the chat template unless the config leaves
the tool block out (`data.tools_in_prompt`), so the task runs the prompt/tool format of the real
configs.

Splits are disjoint by construction: a problem's split is a hash of its template and parameters
(`test_fraction` of the key space is "test"), so any train set and any test set drawn with the same
`test_fraction`, whatever their seeds, sizes or ranges, share no problem. Generation is
deterministic in (split, n, seed, ranges, templates).

`APPROACHES` and `DEEP_BUGS` (defined in `task_solutions`, re-exported here) list per template
the ways to solve it with the tool and the broken approaches of the cold-start SFT corpus, which
`sft_corpus` builds on these problems.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The tool the chat template lists (the real configs' sandbox tool), re-exported for the corpus.
from cleaner_jax.agent.tools import CODE_INTERPRETER_TOOL, TOOLS  # noqa: F401
from cleaner_jax.data import prompts

# The solutions live in their own module; re-exported here, where the templates are.
from cleaner_jax.data.task_solutions import APPROACHES, DEEP_BUGS, Approach, DeepBug  # noqa: F401

DATA_SOURCE = "synthetic_tool_math"
SPLITS: tuple[str, ...] = ("train", "test")


@dataclasses.dataclass(frozen=True)
class TaskRanges:
    """Inclusive (low, high) ranges of the numbers in the problems: the difficulty knobs.

    The defaults keep every answer out of a tiny model's reach without the tool and every snippet
    fast (< 10 ms) in the sandbox.
    """

    mul_digits: tuple[int, int] = (3, 4)  # number of digits of each factor
    powmod_base: tuple[int, int] = (2, 99)
    powmod_exponent: tuple[int, int] = (100, 9999)
    powmod_modulus: tuple[int, int] = (7, 997)
    digitsum_base: tuple[int, int] = (2, 19)
    digitsum_exponent: tuple[int, int] = (20, 99)
    sumsq_start: tuple[int, int] = (1, 60)
    sumsq_count: tuple[int, int] = (10, 90)  # number of terms
    primecount_n: tuple[int, int] = (100, 999)
    collatz_n: tuple[int, int] = (100, 999)
    selfpow_n: tuple[int, int] = (100, 999)
    selfpow_modulus: tuple[int, int] = (1000, 1000)
    factmod_n: tuple[int, int] = (10, 999)
    factmod_modulus: tuple[int, int] = (997, 997)  # a prime above n keeps n! mod m nonzero

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            low, high = getattr(self, field.name)
            if not 1 <= low <= high:
                raise ValueError(
                    f"TaskRanges.{field.name}={(low, high)} must satisfy 1 <= low <= high"
                )
        if self.powmod_modulus[0] < 2:
            raise ValueError("TaskRanges.powmod_modulus must start at 2 or more (mod 1 is 0)")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task instance.

    Attributes:
      id: "<template>-<hash>", stable across runs and unique per (template, params).
      split: "train" or "test".
      template: one of `TEMPLATE_NAMES`.
      question: the question text (without the prompt template around it).
      answer: the ground truth as a decimal integer string.
      params: the numbers of the question by name (what the code snippets are built from).
    """

    id: str
    split: str
    template: str
    question: str
    answer: str
    params: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class _Template:
    name: str
    sample: Callable[[random.Random, TaskRanges], dict[str, int]]
    question: Callable[[Mapping[str, int]], str]
    solve: Callable[[Mapping[str, int]], int]


def _digits(rng: random.Random, digits: tuple[int, int]) -> int:
    n = rng.randint(*digits)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def _sample_mul(rng: random.Random, r: TaskRanges) -> dict[str, int]:
    return {"a": _digits(rng, r.mul_digits), "b": _digits(rng, r.mul_digits)}


_MAX_RESAMPLES = 1000


def _sample_powmod(rng: random.Random, r: TaskRanges) -> dict[str, int]:
    for _ in range(_MAX_RESAMPLES):
        a, m = rng.randint(*r.powmod_base), rng.randint(*r.powmod_modulus)
        if a % m:  # a multiple of m makes the answer a guessable 0
            return {"a": a, "b": rng.randint(*r.powmod_exponent), "m": m}
    raise ValueError(f"powmod ranges {r.powmod_base}, {r.powmod_modulus} give only a % m == 0")


def _sample_digitsum(rng: random.Random, r: TaskRanges) -> dict[str, int]:
    for _ in range(_MAX_RESAMPLES):
        a = rng.randint(*r.digitsum_base)
        if a % 10:  # multiples of 10 have trivial digit sums (10^b sums to 1)
            return {"a": a, "b": rng.randint(*r.digitsum_exponent)}
    raise ValueError(f"digitsum_base {r.digitsum_base} holds only multiples of 10")


def _sample_sumsq(rng: random.Random, r: TaskRanges) -> dict[str, int]:
    lo = rng.randint(*r.sumsq_start)
    return {"lo": lo, "hi": lo + rng.randint(*r.sumsq_count) - 1}


def _single(field: str):
    def sample(rng: random.Random, r: TaskRanges) -> dict[str, int]:
        return {"n": rng.randint(*getattr(r, field))}

    return sample


def _with_modulus(field: str, modulus_field: str, solve: Callable[[Mapping[str, int]], int]):
    """Samples n and a modulus m, skipping draws whose answer is a guessable 0."""

    def sample(rng: random.Random, r: TaskRanges) -> dict[str, int]:
        for _ in range(_MAX_RESAMPLES):
            p = {"n": rng.randint(*getattr(r, field)), "m": rng.randint(*getattr(r, modulus_field))}
            if solve(p):
                return p
        raise ValueError(f"{field} and {modulus_field} give only answers of 0")

    return sample


def _factorial_mod(p: Mapping[str, int]) -> int:
    r = 1
    for k in range(2, p["n"] + 1):
        r = r * k % p["m"]
    return r


def _selfpow(p: Mapping[str, int]) -> int:
    return pow(p["n"], p["n"], p["m"])


def _count_primes_below(n: int) -> int:
    return sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))


def _collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


_TEMPLATES: dict[str, _Template] = {
    t.name: t
    for t in (
        _Template(
            "mul",
            _sample_mul,
            lambda p: f"What is {p['a']} * {p['b']}?",
            lambda p: p["a"] * p["b"],
        ),
        _Template(
            "powmod",
            _sample_powmod,
            lambda p: f"What is {p['a']}^{p['b']} mod {p['m']}?",
            lambda p: pow(p["a"], p["b"], p["m"]),
        ),
        _Template(
            "digitsum",
            _sample_digitsum,
            lambda p: f"What is the sum of the digits of {p['a']}^{p['b']}?",
            lambda p: sum(int(d) for d in str(p["a"] ** p["b"])),
        ),
        _Template(
            "sumsq",
            _sample_sumsq,
            lambda p: f"What is the sum of k^2 for k from {p['lo']} to {p['hi']}?",
            lambda p: sum(k * k for k in range(p["lo"], p["hi"] + 1)),
        ),
        _Template(
            "primecount",
            _single("primecount_n"),
            lambda p: f"How many primes are less than {p['n']}?",
            lambda p: _count_primes_below(p["n"]),
        ),
        _Template(
            "collatz",
            _single("collatz_n"),
            lambda p: f"How many Collatz steps lead from n = {p['n']} to 1?",
            lambda p: _collatz_steps(p["n"]),
        ),
        _Template(
            "selfpow",
            _with_modulus("selfpow_n", "selfpow_modulus", _selfpow),
            lambda p: f"What is n^n mod {p['m']} for n = {p['n']}?",
            _selfpow,
        ),
        _Template(
            "factmod",
            _with_modulus("factmod_n", "factmod_modulus", _factorial_mod),
            lambda p: f"What is n! mod {p['m']} for n = {p['n']}?",
            _factorial_mod,
        ),
    )
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def _key(template: str, params: Mapping[str, int]) -> str:
    return template + ":" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def split_of(template: str, params: Mapping[str, int], test_fraction: float = 0.2) -> str:
    """The split a problem belongs to: a hash of its template and parameters."""
    digest = hashlib.sha256(_key(template, params).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def _make_problem(template: _Template, params: dict[str, int], split: str) -> Problem:
    digest = hashlib.sha256(_key(template.name, params).encode()).hexdigest()
    return Problem(
        id=f"{template.name}-{digest[:12]}",
        split=split,
        template=template.name,
        question=template.question(params),
        answer=str(template.solve(params)),
        params=dict(params),
    )


def make_problems(
    split: str,
    n: int,
    seed: int,
    *,
    ranges: TaskRanges | None = None,
    templates: Sequence[str] = TEMPLATE_NAMES,
    test_fraction: float = 0.2,
) -> list[Problem]:
    """`n` distinct problems of `split`, the templates in round-robin order.

    Args:
      split: "train" or "test".
      n: number of problems.
      seed: RNG seed; the same arguments always give the same list.
      ranges: the number ranges (difficulty); default `TaskRanges()`.
      templates: which templates to use, cycled in this order.
      test_fraction: share of the problem space that is "test"; use the same value for both
        splits (that is what makes them disjoint).

    Raises:
      ValueError: unknown split or template, bad sizes, or ranges too narrow to hold `n`
        distinct problems of the split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unknown = [t for t in templates if t not in _TEMPLATES]
    if unknown or not templates:
        raise ValueError(
            f"unknown or no templates {unknown or list(templates)}; use {TEMPLATE_NAMES}"
        )
    ranges = ranges or TaskRanges()
    rng = random.Random(f"synthetic_task/{split}/{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    max_tries = 200 * n + 1000
    tries = 0
    while len(problems) < n:
        template = _TEMPLATES[templates[len(problems) % len(templates)]]
        params = template.sample(rng, ranges)
        tries += 1
        if tries > max_tries:
            raise ValueError(
                f"could not draw {n} distinct {split} problems from templates {list(templates)} "
                f"after {max_tries} tries (got {len(problems)}); widen `ranges` or lower n"
            )
        key = _key(template.name, params)
        if key in seen or split_of(template.name, params, test_fraction) != split:
            continue
        seen.add(key)
        problems.append(_make_problem(template, params, split))
    return problems


def solve(template: str, params: Mapping[str, int]) -> int:
    """The ground truth of a problem given by template name and parameters."""
    if template not in _TEMPLATES:
        raise ValueError(f"unknown template {template!r}; use one of {TEMPLATE_NAMES}")
    return _TEMPLATES[template].solve(params)


def user_prompt(problem: Problem, prompt_template: str = "math") -> str:
    """The user turn: the question inside the real configs' math prompt template."""
    return prompts.render_prompt(prompt_template, {"problem": problem.question})


def problem_messages(
    problem: Problem, *, system_prompt: str | None = None, prompt_template: str = "math"
) -> list[dict[str, Any]]:
    """The prompt messages of `problem` (render them with `tools=TOOLS`).

    The chat template writes the system turn with the tool list itself; `system_prompt` adds text
    before it. Default none, like the Open-AgentRL prompts (a single user turn).
    """
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_prompt(problem, prompt_template)})
    return messages


def rl_record(
    problem: Problem, *, system_prompt: str | None = None, prompt_template: str = "math"
) -> dict[str, Any]:
    """One RL prompt row in the Open-AgentRL-30K (verl) schema."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": problem_messages(
            problem, system_prompt=system_prompt, prompt_template=prompt_template
        ),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {
            "index": problem.id,
            "split": problem.split,
            "template": problem.template,
            "question": problem.question,
        },
    }


def write_rl_jsonl(
    problems: Sequence[Problem],
    path: str | os.PathLike[str],
    *,
    system_prompt: str | None = None,
    prompt_template: str = "math",
) -> Path:
    """Writes one `rl_record` per line; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for problem in problems:
            record = rl_record(
                problem, system_prompt=system_prompt, prompt_template=prompt_template
            )
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out
