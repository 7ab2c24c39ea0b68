"""Calibration of the shallow/deep similarity at gamma = 0.5, short and ~3k-character code."""

import difflib
import random

import pytest

from cleaner_jax.saar import SaarConfig, ToolCall, call_similarity, is_shallow
from cleaner_jax.saar.similarity import lexical_tokens, reference_similarity, token_similarity

GAMMA = SaarConfig().gamma

_NUMBER_THEORY = '''import math
from collections import Counter


def sieve(limit):
    """Primes below limit by the sieve of Eratosthenes."""
    is_prime = [True] * limit
    is_prime[0] = is_prime[1] = False
    for p in range(2, int(math.isqrt(limit)) + 1):
        if is_prime[p]:
            for multiple in range(p * p, limit, p):
                is_prime[multiple] = False
    return [n for n, flag in enumerate(is_prime) if flag]


def factorize(n, primes):
    factors = Counter()
    for p in primes:
        if p * p > n:
            break
        while n % p == 0:
            factors[p] += 1
            n //= p
    if n > 1:
        factors[n] += 1
    return factors


def divisor_count(factors):
    count = 1
    for exponent in factors.values():
        count *= exponent + 1
    return count


def divisor_sum(factors):
    total = 1
    for p, exponent in factors.items():
        total *= (p ** (exponent + 1) - 1) // (p - 1)
    return total


primes = sieve(10_000)
print("number of primes below 10000:", len(primes))
best_n, best_count = 0, 0
for n in range(2, 5000):
    factors = factorize(n, primes)
    count = divisor_count(factors)
    if count > best_count:
        best_n, best_count = n, count
print("most divisors below 5000:", best_n, best_count)
abundant = [n for n in range(2, 3000) if divisor_sum(factorize(n, primes)) - n > n]
print("abundant numbers below 3000:", len(abundant), abundant[:10])
perfect = [n for n in range(2, 10_000) if divisor_sum(factorize(n, primes)) - n == n]
print("perfect numbers:", perfect)
twin = [(p, q) for p, q in zip(primes, primes[1:]) if q - p == 2]
print("twin prime pairs:", len(twin), twin[-3:])
gaps = Counter(q - p for p, q in zip(primes, primes[1:]))
print("most common gaps:", gaps.most_common(5))
goldbach_failures = []
prime_set = set(primes)
for even in range(4, 5000, 2):
    if not any((even - p) in prime_set for p in primes if p <= even // 2):
        goldbach_failures.append(even)
print("goldbach failures:", goldbach_failures)
residues = Counter(p % 4 for p in primes if p > 2)
print("primes mod 4:", dict(residues))
squares = {n * n for n in range(1, 100)}
sum_two_squares = [p for p in primes if any((p - s) in squares for s in squares if s < p)]
print("primes that are sums of two squares:", len(sum_two_squares))
'''

_DYNAMIC_PROGRAMMING = """from functools import lru_cache
from fractions import Fraction
import itertools

coins = [1, 2, 5, 10, 20, 50, 100, 200]
ways = [1] + [0] * 200
for coin in coins:
    for amount in range(coin, 201):
        ways[amount] += ways[amount - coin]
print("ways to make 2 pounds:", ways[200])


@lru_cache(maxsize=None)
def partitions(n, largest):
    if n == 0:
        return 1
    if n < 0 or largest == 0:
        return 0
    return partitions(n - largest, largest) + partitions(n, largest - 1)


print("p(100) =", partitions(100, 100))


def lattice_paths(rows, cols):
    grid = [[1] * (cols + 1) for _ in range(rows + 1)]
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            grid[r][c] = grid[r - 1][c] + grid[r][c - 1]
    return grid[rows][cols]


print("lattice paths 20x20:", lattice_paths(20, 20))
expected = Fraction(0)
for dice in itertools.product(range(1, 7), repeat=3):
    expected += Fraction(max(dice), 6 ** 3)
print("expected maximum of three dice:", expected, float(expected))
triangle = [[3], [7, 4], [2, 4, 6], [8, 5, 9, 3]]
best = triangle[-1][:]
for row in reversed(triangle[:-1]):
    best = [value + max(best[i], best[i + 1]) for i, value in enumerate(row)]
print("maximum path sum:", best[0])
knapsack_items = [(12, 4), (2, 2), (1, 1), (4, 10), (1, 2)]
capacity = 15
table = [0] * (capacity + 1)
for weight, value in knapsack_items:
    for room in range(capacity, weight - 1, -1):
        table[room] = max(table[room], table[room - weight] + value)
print("knapsack optimum:", table[capacity])
words = ["kitten", "sitting", "saturday", "sunday"]


def edit_distance(a, b):
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


for first, second in itertools.combinations(words, 2):
    print(first, second, edit_distance(first, second))
stairs = {0: 1, 1: 1}
for step in range(2, 61):
    stairs[step] = stairs[step - 1] + stairs[step - 2]
print("ways to climb 60 stairs:", stairs[60])
"""


def _typo(code, old, new):
    assert old in code
    return code.replace(old, new, 1)


def _data_table(separator_typos):
    """A ~2.8k-character script with a 150-row literal table; `separator_typos` rows use ';'."""
    rng = random.Random(0)
    rows = []
    for i in range(150):
        row = f"    ({rng.randint(10, 99)}, {rng.randint(10, 99)}, {rng.randint(10, 99)}),"
        rows.append(row.replace(",", ";", 1) if i in separator_typos else row)
    body = "\n".join(rows)
    return f"points = [\n{body}\n]\nprint(sum(a * b - c for a, b, c in points))\n"


# (name, old code, new code, expected shallow?)
CALIBRATION = [
    ("unclosed_paren", "print(6*7", "print(6*7)", True),
    (
        "name_typo",
        "result = sum(range(1, 101))\nprint(reslt)",
        "result = sum(range(1, 101))\nprint(result)",
        True,
    ),
    (
        "missing_import",
        "x = symbols('x')\nprint(solve(x**2 - 4, x))",
        "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 4, x))",
        True,
    ),
    ("indentation", "for i in range(3):\nprint(i)", "for i in range(3):\n    print(i)", True),
    (
        "zero_division",
        "vals = [1, 2, 0]\nprint([1 / v for v in vals])",
        "vals = [1, 2, 0]\nprint([1 / v for v in vals if v != 0])",
        True,
    ),
    ("rewrite_symbolic", "print(x)", "import sympy\nprint(sympy.Integer(6) * 7)", False),
    (
        "rewrite_closed_form",
        "count = 0\nfor a in range(1, 100):\n    for b in range(a, 100):\n"
        "        if a*a + b*b == c*c:\n            count += 1\nprint(count)",
        "from sympy import divisors\nn = 360\nprint(len(divisors(n)), sum(divisors(n)))",
        False,
    ),
    (
        "rewrite_numeric",
        "import numpy as np\nroots = np.roots([1, -3, 2])\nprint(roots)",
        "from fractions import Fraction\nvals = [Fraction(k, 7) for k in range(1, 7)]\n"
        "print(sum(vals))",
        False,
    ),
    (
        "long_name_typo",
        _typo(
            _NUMBER_THEORY,
            "divisor_sum(factorize(n, primes)) - n == n",
            "divisor_sum(factorise(n, primes)) - n == n",
        ),
        _NUMBER_THEORY,
        True,
    ),
    (
        "long_line_added",
        _NUMBER_THEORY,
        _NUMBER_THEORY.replace(
            "primes = sieve(10_000)\n", "primes = sieve(10_000)\nassert primes[:3] == [2, 3, 5]\n"
        ),
        True,
    ),
    ("long_rewrite", _NUMBER_THEORY, _DYNAMIC_PROGRAMMING, False),
    ("long_vs_short_rewrite", _DYNAMIC_PROGRAMMING, "print(sum(range(10)))", False),
]
CALIBRATION += [
    ("long_table_typos", _data_table(range(0, 150, 10)), _data_table(()), True),
    ("long_table_rewrite", _data_table(()), _DYNAMIC_PROGRAMMING, False),
]


def test_long_programs_are_about_3k_chars():
    for code in (_NUMBER_THEORY, _DYNAMIC_PROGRAMMING, _data_table(())):
        assert 2200 < len(code) < 3500


@pytest.mark.parametrize("name, old, new, shallow", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_default_similarity_classifies_calibration_set(name, old, new, shallow):
    score = token_similarity(old, new)
    assert is_shallow(score, GAMMA) is shallow, f"{name}: similarity {score:.3f}"
    # Clear margins, not a coin flip at gamma.
    assert (score >= 0.75) if shallow else (score <= 0.4), f"{name}: similarity {score:.3f}"


def test_reference_autojunk_scores_long_near_identical_pair_as_deep():
    """15 of 150 table rows had a ';' typo; the fix is 99% identical. difflib's autojunk
    discards every character occurring in > 1% of a 200+-character string, so between the edits
    nothing anchors a match and the reference scores the pair ~0.1: a "deep" rollback."""
    old, new = _data_table(range(0, 150, 10)), _data_table(())
    reference = reference_similarity(old, new)
    assert reference < 0.2, reference
    assert token_similarity(old, new) > 0.95
    assert (
        call_similarity(
            ToolCall("code_interpreter", old, old),
            ToolCall("code_interpreter", new, new),
            SaarConfig(),
        )
        > GAMMA
    )


def test_token_similarity_golden_values():
    # [print, (, 6, *, 7] vs [print, (, 6, *, 7, )]: 2 * 5 / 11.
    assert token_similarity("print(6*7", "print(6*7)") == pytest.approx(10 / 11)
    assert lexical_tokens("x_1 = foo(2.5)") == ["x_1", "=", "foo", "(", "2", ".", "5", ")"]
    assert token_similarity("", "") == 1.0
    assert token_similarity("a", "") == 0.0


def test_reference_option_is_the_reference_formula():
    old, new = "print(6*7", "print(6*7)"
    assert reference_similarity(old, new) == difflib.SequenceMatcher(None, old, new).ratio()


def test_call_similarity_options():
    a = ToolCall(name="code_interpreter", code="print(1)", text='<tool_call>{"a": "print(1)"}')
    b = ToolCall(name="code_interpreter", code="print(1)", text='<tool_call>{"zzzz": 1}')
    assert call_similarity(a, b, SaarConfig()) == 1.0
    assert call_similarity(a, b, SaarConfig(similarity_on="call_text")) < 1.0
    ref = SaarConfig(similarity_on="call_text", similarity="reference")
    assert call_similarity(a, b, ref) == reference_similarity(a.text, b.text)
    # A call without readable code falls back to its text.
    broken = ToolCall(name="", code=None, text=a.text, error="bad", error_type="X")
    assert call_similarity(broken, a, SaarConfig()) == 1.0
