"""How each synthetic-task template is solved with the tool, and its deep bugs.

`APPROACHES` lists, per template of `synthetic_task`, the ways to solve it with the
`code_interpreter` tool (a reasoning sentence and a short snippet built from the problem's
parameters); `DEEP_BUGS` the broken approaches whose fix is a different approach. The cold-start
SFT corpus (`sft_corpus`) is built from both. Adding a template to `synthetic_task` means adding
its solutions here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Approach:
    """One way to solve a template with the tool: its reasoning sentence and code."""

    name: str
    reasoning: str
    code: Callable[[Mapping[str, int]], str]
    typo_names: tuple[str, ...]  # identifiers a name_typo may misspell (at their last use)
    import_line: str | None = None  # an import the code needs (missing_import drops it)


@dataclasses.dataclass(frozen=True)
class DeepBug:
    """A broken version of an approach whose fix is a different approach (a deep fix)."""

    name: str
    approach: str  # the regular approach it breaks (its reasoning is kept)
    error_type: str
    code: Callable[[Mapping[str, int]], str]
    fix: str  # the approach the fix switches to


APPROACHES: dict[str, tuple[Approach, ...]] = {
    "mul": (
        Approach(
            "direct",
            "I will multiply the two numbers with Python.",
            lambda p: f"print({p['a']} * {p['b']})",
            ("print",),
        ),
        Approach(
            "vars",
            "I will store the two factors and print their product.",
            lambda p: f"x = {p['a']}\ny = {p['b']}\nprint(x * y)",
            ("x", "y"),
        ),
        Approach(
            "operator",
            "I will use operator.mul to multiply them.",
            lambda p: f"import operator\nprint(operator.mul({p['a']}, {p['b']}))",
            ("operator",),
            import_line="import operator",
        ),
    ),
    "powmod": (
        Approach(
            "pow",
            "I will use the three-argument pow of Python.",
            lambda p: f"print(pow({p['a']}, {p['b']}, {p['m']}))",
            ("pow", "print"),
        ),
        Approach(
            "loop",
            "I will multiply in a loop and reduce at every step.",
            lambda p: (
                f"r = 1\nfor _ in range({p['b']}):\n    r = r * {p['a']} % {p['m']}\nprint(r)"
            ),
            ("r", "range"),
        ),
    ),
    "digitsum": (
        Approach(
            "str",
            "I will turn the power into a string and add its digits.",
            lambda p: f"print(sum(map(int, str({p['a']} ** {p['b']}))))",
            ("sum", "map", "str"),
        ),
        Approach(
            "loop",
            "I will take the digits off the power with % 10 in a loop.",
            lambda p: (
                f"n = {p['a']} ** {p['b']}\ns = 0\nwhile n:\n    s += n % 10\n    n //= 10\n"
                "print(s)"
            ),
            ("n", "s"),
        ),
    ),
    "sumsq": (
        Approach(
            "gen",
            "I will add up the squares with sum over a range.",
            lambda p: f"print(sum(k * k for k in range({p['lo']}, {p['hi']} + 1)))",
            ("sum", "range"),
        ),
        Approach(
            "while",
            "I will add the squares in a while loop.",
            lambda p: (
                f"s = 0\nk = {p['lo']}\nwhile k <= {p['hi']}:\n    s += k * k\n    k += 1\nprint(s)"
            ),
            ("s", "k"),
        ),
    ),
}

# The single-number templates (the demo's): one number to copy into the code, an answer below 1000.
APPROACHES.update(
    {
        "primecount": (
            Approach(
                "trial",
                "I will count the numbers below it that have no divisor.",
                lambda p: (
                    f"print(sum(all(k % d for d in range(2, k)) for k in range(2, {p['n']})))"
                ),
                ("all", "sum"),
            ),
            Approach(
                "isqrt",
                "I will test divisors up to the square root of each number.",
                lambda p: (
                    "from math import isqrt\n"
                    "print(sum(all(k % d for d in range(2, isqrt(k) + 1)) "
                    f"for k in range(2, {p['n']})))"
                ),
                ("isqrt",),
                import_line="from math import isqrt",
            ),
            Approach(
                "sieve",
                "I will sieve out the multiples of each prime.",
                lambda p: (
                    f"n = {p['n']}\ns = [True] * n\nfor i in range(2, n):\n    if s[i]:\n"
                    "        for j in range(i * i, n, i):\n            s[j] = False\n"
                    "print(sum(s) - 2)"
                ),
                ("s", "n"),
            ),
        ),
        "collatz": (
            Approach(
                "while",
                "I will follow the sequence in a loop and count the steps.",
                lambda p: (
                    f"n = {p['n']}\nsteps = 0\nwhile n != 1:\n"
                    "    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)"
                ),
                ("steps", "n"),
            ),
            Approach(
                "list",
                "I will build the whole sequence in a list and count its steps.",
                lambda p: (
                    f"n = {p['n']}\nseq = [n]\nwhile seq[-1] > 1:\n    x = seq[-1]\n"
                    "    seq.append(3 * x + 1 if x % 2 else x // 2)\nprint(len(seq) - 1)"
                ),
                ("seq",),
            ),
        ),
        "selfpow": (
            Approach(
                "pow",
                "I will use the three-argument pow of Python.",
                lambda p: f"n = {p['n']}\nprint(pow(n, n, {p['m']}))",
                ("pow", "print"),
            ),
            Approach(
                "loop",
                "I will multiply in a loop and reduce at every step.",
                lambda p: (
                    f"n = {p['n']}\nr = 1\nfor _ in range(n):\n    r = r * n % {p['m']}\nprint(r)"
                ),
                ("r", "range"),
            ),
        ),
        "factmod": (
            Approach(
                "factorial",
                "I will use math.factorial and reduce the result.",
                lambda p: (
                    f"n = {p['n']}\nfrom math import factorial\nprint(factorial(n) % {p['m']})"
                ),
                ("factorial",),
                import_line="from math import factorial",
            ),
            Approach(
                "loop",
                "I will multiply in a loop and reduce at every step.",
                lambda p: (
                    f"n = {p['n']}\nr = 1\nfor k in range(2, n + 1):\n"
                    f"    r = r * k % {p['m']}\nprint(r)"
                ),
                ("r", "range"),
            ),
        ),
    }
)

DEEP_BUGS: dict[str, tuple[DeepBug, ...]] = {
    "mul": (
        DeepBug(
            "str_operands",
            "vars",
            "TypeError",
            lambda p: f'x = "{p["a"]}"\ny = "{p["b"]}"\nprint(x * y)',
            "direct",
        ),
    ),
    "powmod": (
        DeepBug(
            "zero_modulus",
            "loop",
            "ZeroDivisionError",
            lambda p: f"r = 1\nfor i in range({p['b']}):\n    r = r * {p['a']} % i\nprint(r)",
            "pow",
        ),
    ),
    "digitsum": (
        DeepBug(
            "sum_of_str",
            "str",
            "TypeError",
            lambda p: f"print(sum(str({p['a']} ** {p['b']})))",
            "loop",
        ),
    ),
    "sumsq": (
        DeepBug(
            "range_power",
            "gen",
            "TypeError",
            lambda p: f"print(sum(range({p['lo']}, {p['hi']} + 1) ** 2))",
            "while",
        ),
    ),
    "primecount": (
        DeepBug(
            "divisor_from_zero",
            "trial",
            "ZeroDivisionError",
            lambda p: f"print(sum(all(k % d for d in range(k)) for k in range(2, {p['n']})))",
            "sieve",
        ),
    ),
    "collatz": (
        DeepBug(
            "str_start",
            "while",
            "TypeError",
            lambda p: (
                f'n = "{p["n"]}"\nsteps = 0\nwhile n != 1:\n'
                "    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)"
            ),
            "list",
        ),
    ),
    "selfpow": (
        DeepBug(
            "zero_modulus",
            "loop",
            "ZeroDivisionError",
            lambda p: f"n = {p['n']}\nr = 1\nfor i in range(n):\n    r = r * n % i\nprint(r)",
            "pow",
        ),
    ),
    "factmod": (
        DeepBug(
            "float_factorial",
            "factorial",
            "TypeError",
            lambda p: (
                f"n = {p['n']}\nfrom math import factorial\nprint(factorial(n / 1) % {p['m']})"
            ),
            "loop",
        ),
    ),
}
