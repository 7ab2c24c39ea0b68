"""Tests of the synthetic task: determinism, disjoint splits, ground truths, RL prompt file."""

import contextlib
import io
import math

import hypothesis
import hypothesis.strategies as st
import pytest

from cleaner_jax.data import readers
from cleaner_jax.data import synthetic_task as task
from cleaner_jax.rl.rewards import reward_kind
from cleaner_jax.rl.rewards_math import verify_math


def _long_multiplication(a: int, b: int) -> int:
    return sum(int(d) * 10**i * b for i, d in enumerate(reversed(str(a))))


def _square_and_multiply(a: int, b: int, m: int) -> int:
    result, base = 1, a % m
    while b:
        if b & 1:
            result = result * base % m
        base = base * base % m
        b >>= 1
    return result


def _digit_sum_divmod(n: int) -> int:
    total = 0
    while n:
        n, d = divmod(n, 10)
        total += d
    return total


def _sum_squares_closed_form(lo: int, hi: int) -> int:
    f = lambda n: n * (n + 1) * (2 * n + 1) // 6
    return f(hi) - f(lo - 1)


def _primes_below_sieve(n: int) -> int:
    composite = set()
    count = 0
    for k in range(2, n):
        if k not in composite:
            count += 1
            composite.update(range(k * k, n, k))
    return count


def _collatz_recursive(n: int) -> int:
    return 0 if n == 1 else 1 + _collatz_recursive(3 * n + 1 if n % 2 else n // 2)


def _independent_answer(problem: task.Problem) -> int:
    p = problem.params
    if problem.template == "mul":
        return _long_multiplication(p["a"], p["b"])
    if problem.template == "powmod":
        return _square_and_multiply(p["a"], p["b"], p["m"])
    if problem.template == "digitsum":
        return _digit_sum_divmod(p["a"] ** p["b"])
    if problem.template == "sumsq":
        return _sum_squares_closed_form(p["lo"], p["hi"])
    if problem.template == "primecount":
        return _primes_below_sieve(p["n"])
    if problem.template == "collatz":
        return _collatz_recursive(p["n"])
    if problem.template == "selfpow":
        return _square_and_multiply(p["n"], p["n"], p["m"])
    if problem.template == "factmod":
        return math.prod(range(1, p["n"] + 1)) % p["m"]
    raise AssertionError(problem.template)


@pytest.mark.parametrize(
    "template,params,answer",
    [
        ("mul", {"a": 4821, "b": 739}, 3562719),  # 3374700 + 188019
        ("powmod", {"a": 3, "b": 4, "m": 5}, 1),  # 81 mod 5
        ("powmod", {"a": 2, "b": 10, "m": 1000}, 24),  # 1024 mod 1000
        ("digitsum", {"a": 2, "b": 10}, 7),  # 1024
        ("sumsq", {"lo": 1, "hi": 3}, 14),  # 1 + 4 + 9
        ("sumsq", {"lo": 3, "hi": 4}, 25),
        ("primecount", {"n": 10}, 4),  # 2 3 5 7
        ("primecount", {"n": 100}, 25),
        ("collatz", {"n": 6}, 8),  # 6 3 10 5 16 8 4 2 1
        ("collatz", {"n": 27}, 111),
        ("selfpow", {"n": 12, "m": 1000}, 256),  # 12^12 = 8916100448256
        ("factmod", {"n": 5, "m": 7}, 1),  # 120 = 17 * 7 + 1
    ],
)
def test_solve_golden(template, params, answer):
    assert task.solve(template, params) == answer


def test_deterministic_by_seed():
    a = task.make_problems("train", 40, seed=3)
    b = task.make_problems("train", 40, seed=3)
    c = task.make_problems("train", 40, seed=4)
    assert a == b
    assert [p.id for p in a] != [p.id for p in c]


def test_templates_round_robin_and_ids_unique():
    problems = task.make_problems("train", 40, seed=0)
    k = len(task.TEMPLATE_NAMES)
    assert [p.template for p in problems[: 2 * k]] == list(task.TEMPLATE_NAMES) * 2
    assert len({p.id for p in problems}) == 40


def test_splits_disjoint_across_seeds_and_ranges():
    train = task.make_problems("train", 400, seed=0)
    test = task.make_problems("test", 100, seed=1)
    small = task.TaskRanges(mul_digits=(2, 3), sumsq_count=(5, 20))
    test_small = task.make_problems("test", 100, seed=2, ranges=small)
    train_ids = {p.id for p in train}
    assert not train_ids & {p.id for p in test + test_small}
    assert all(p.split == "train" for p in train)
    assert all(p.split == "test" for p in test + test_small)
    for p in train + test:
        assert task.split_of(p.template, p.params) == p.split


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 10**6),
    split=st.sampled_from(task.SPLITS),
    digits=st.integers(1, 5),
)
def test_ground_truths_match_independent_computation(seed, split, digits):
    ranges = task.TaskRanges(mul_digits=(digits, digits))
    for problem in task.make_problems(split, 8, seed=seed, ranges=ranges):
        assert problem.answer == str(_independent_answer(problem))
        for value in problem.params.values():
            assert str(value) in problem.question


def test_every_approach_prints_the_answer():
    problems = task.make_problems("train", 12, seed=0)
    for problem in problems:
        approaches = task.APPROACHES[problem.template]
        assert len(approaches) >= 2
        for approach in approaches:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(approach.code(problem.params), {})  # our own snippets, not model output
            assert out.getvalue() == problem.answer + "\n", approach.name
        for bug in task.DEEP_BUGS[problem.template]:
            assert bug.approach in {a.name for a in approaches} - {bug.fix}
            assert bug.fix in {a.name for a in approaches}


def test_ranges_respected():
    ranges = task.TaskRanges(
        mul_digits=(4, 4),
        powmod_modulus=(50, 60),
        digitsum_exponent=(30, 31),
        sumsq_count=(7, 7),
        primecount_n=(200, 300),
        collatz_n=(30, 80),
        selfpow_n=(500, 600),
        selfpow_modulus=(97, 97),
        factmod_n=(10, 60),
    )
    for p in task.make_problems("train", 80, seed=0, ranges=ranges):
        if p.template == "mul":
            assert 1000 <= p.params["a"] <= 9999 and 1000 <= p.params["b"] <= 9999
        elif p.template == "powmod":
            assert 50 <= p.params["m"] <= 60 and p.params["a"] % p.params["m"]
        elif p.template == "digitsum":
            assert p.params["b"] in (30, 31) and p.params["a"] % 10
        elif p.template == "sumsq":
            assert p.params["hi"] - p.params["lo"] + 1 == 7
        elif p.template == "primecount":
            assert 200 <= p.params["n"] <= 300
        elif p.template == "collatz":
            assert 30 <= p.params["n"] <= 80
        elif p.template == "selfpow":
            assert 500 <= p.params["n"] <= 600 and p.params["m"] == 97
        else:
            assert 10 <= p.params["n"] <= 60 and p.params["m"] == 997


def test_boxed_ground_truth_scores_under_strict_math_reward():
    assert reward_kind(task.DATA_SOURCE) == "math"
    for p in task.make_problems("test", 8, seed=0):
        assert verify_math(f"The answer is \\boxed{{{p.answer}}}.", p.answer, "strict").correct
        wrong = str(int(p.answer) + 1)
        assert not verify_math(f"The answer is \\boxed{{{wrong}}}.", p.answer, "strict").correct
        assert not verify_math(f"The answer is {p.answer}.", p.answer, "strict").correct


def test_rl_jsonl_round_trips_through_agentrl_reader(tmp_path):
    problems = task.make_problems("test", 6, seed=0)
    path = task.write_rl_jsonl(problems, tmp_path / "rl" / "test.jsonl")
    examples = readers.read_agentrl(path)
    assert [e.ground_truth for e in examples] == [p.answer for p in problems]
    assert [e.id for e in examples] == [f"{task.DATA_SOURCE}-{p.id}" for p in problems]
    for e, p in zip(examples, problems, strict=True):
        assert e.messages == task.problem_messages(p)
        assert e.data_source == task.DATA_SOURCE
        assert p.question in e.messages[-1]["content"]
        assert "\\boxed{}" in e.messages[-1]["content"]


def test_problem_messages_system_prompt():
    p = task.make_problems("train", 1, seed=0)[0]
    assert [m["role"] for m in task.problem_messages(p)] == ["user"]
    messages = task.problem_messages(p, system_prompt="Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown split"):
        task.make_problems("validation", 1, seed=0)
    with pytest.raises(ValueError, match="unknown or no templates"):
        task.make_problems("train", 1, seed=0, templates=["division"])
    with pytest.raises(ValueError, match="low <= high"):
        task.TaskRanges(mul_digits=(4, 3))
    tiny = task.TaskRanges(sumsq_start=(1, 1), sumsq_count=(2, 2))
    with pytest.raises(ValueError, match="widen `ranges`"):
        task.make_problems("train", 3, seed=0, ranges=tiny, templates=["sumsq"])
