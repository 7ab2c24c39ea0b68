"""Calibration of the shallow/deep similarity at gamma = 0.5, short and ~3k-character code."""

import difflib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.saar import SaarConfig, ToolCall, call_similarity, is_shallow
from cleaner_jax.saar.similarity import (
    lcs_length,
    lcs_ratio,
    lexical_tokens,
    reference_similarity,
    token_similarity,
)

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


def test_lcs_ratio_golden_value_where_difflib_counts_less():
    # Tokens [c, a, b, c] vs [a, c]. LCS = "a c" = 2, ratio 2 * 2 / 6. difflib's first longest
    # block is the leading "c" of the first list against the "c" of the second (size 1), which
    # leaves nothing on either side: M = 1, ratio 2 * 1 / 6.
    assert token_similarity("c a b c", "a c") == pytest.approx(4 / 6)
    assert difflib.SequenceMatcher(None, ["c", "a", "b", "c"], ["a", "c"]).ratio() == (
        pytest.approx(2 / 6)
    )
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4  # the textbook example (CLRS 15.4)


def test_token_similarity_rejects_non_strings():
    with pytest.raises(TypeError, match="two strings"):
        token_similarity(["print"], "print")


def _naive_lcs(a, b):
    row = [0] * (len(b) + 1)
    for x in a:
        diag, row[0] = 0, 0
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


_small_tokens = st.lists(st.sampled_from(["x", "(", ")", "=", "1", "total", "\n"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_small_tokens, _small_tokens, _small_tokens, _small_tokens)
def test_lcs_length_is_exact(prefix, a, b, suffix):
    """Affix stripping + bit-parallel LCS == the textbook DP, with and without shared ends."""
    assert lcs_length(a, b) == _naive_lcs(a, b)
    assert lcs_length(prefix + a + suffix, prefix + b + suffix) == _naive_lcs(
        prefix + a + suffix, prefix + b + suffix
    )


@settings(max_examples=300, deadline=None)
@given(_small_tokens, _small_tokens)
def test_lcs_ratio_bounds_difflib_token_ratio(a, b):
    """The bound the default relies on: difflib's matching blocks form a common subsequence, so
    the LCS ratio is >= the previous measure (difflib over tokens, autojunk off). A pair that
    measure called shallow stays shallow; only the deep side can move (see the calibration)."""
    old = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() if a or b else 1.0
    assert lcs_ratio(a, b) >= old - 1e-12


# Word characters (ASCII, accented, non-ASCII digits), punctuation and whitespace: the cuts of
# the shared text must never split a `\w+` token.
_code_text = st.text(alphabet="ab_9é٣ \n\t(),.=+-*'\"#", max_size=40)


@settings(max_examples=500, deadline=None)
@given(_code_text, _code_text, _code_text, _code_text)
def test_token_similarity_is_the_lcs_ratio_of_the_token_lists(prefix, a, b, suffix):
    for old, new in ((a, b), (prefix + a + suffix, prefix + b + suffix)):
        expected = lcs_ratio(lexical_tokens(old), lexical_tokens(new))
        assert token_similarity(old, new) == pytest.approx(expected, abs=1e-12), (old, new)


def _named_table(name, n_rows):
    rng = random.Random(0)
    rows = "\n".join(
        f"    ({rng.randint(10, 99)}, {rng.randint(10, 99)}, {rng.randint(10, 99)}),"
        for _ in range(n_rows)
    )
    return f"{name} = [\n{rows}\n]\nprint(sum(a * b - c for a, b, c in points))\n"


def test_reference_autojunk_one_character_fix_scores_near_zero():
    """A 2.5k-character call fails with NameError ('point' defined, 'points' used); the fix adds
    one 's'. In the 2.5k-character fix every digit, space, parenthesis and comma occurs more than
    len // 100 + 1 = 25 times, so autojunk drops them from difflib's index; the longest run of
    indexed characters is then "points", which pairs the old call's *last* "points" with the new
    call's *first*, and nothing is left to match on either side: ratio ~0.002, a deep rollback of
    a one-character fix. Without autojunk, or with the default similarity, it scores ~1."""
    old, new = _named_table("point", 135), _named_table("points", 135)
    assert 2400 < len(old) < 2600
    assert len(new) == len(old) + 1
    reference = reference_similarity(old, new)
    assert reference == difflib.SequenceMatcher(None, old, new).ratio()
    assert reference < 0.01, reference
    blocks = difflib.SequenceMatcher(None, old, new).get_matching_blocks()
    assert blocks[0].size == len("points") and blocks[0].b == 0  # the crossed match
    assert difflib.SequenceMatcher(None, old, new, autojunk=False).ratio() > 0.99
    assert token_similarity(old, new) > 0.99
    reference_config = SaarConfig(similarity="reference", similarity_on="call_text")
    call = ToolCall("code_interpreter", old, old)
    fixed = ToolCall("code_interpreter", new, new)
    assert not is_shallow(call_similarity(call, fixed, reference_config), GAMMA)
    assert is_shallow(call_similarity(call, fixed, SaarConfig()), GAMMA)


def test_reference_similarity_golden_values():
    # Under 200 characters autojunk does nothing. "abcd" vs "abed": blocks "ab" and "d", M = 3.
    assert reference_similarity("abcd", "abed") == 2 * 3 / 8
    # The first call is a prefix of the second: one block of 9 characters.
    assert reference_similarity("print(6*7", "print(6*7)") == 2 * 9 / 19
    assert reference_similarity("", "") == 1.0
    assert reference_similarity("a", "") == 0.0


@pytest.mark.parametrize("name, old, new, shallow", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_reference_similarity_is_difflib_on_calibration_set(name, old, new, shallow):
    del shallow
    assert reference_similarity(old, new) == difflib.SequenceMatcher(None, old, new).ratio(), name
