"""Code reward: run LiveCodeBench-style tests on the response's final ```python block.

Reward = fraction of tests passed (in [0, 1]); -1 when the response has no final ```python block
or the block does not compile (SyntaxError). Two test types, as in LiveCodeBench:
  * ``stdin``: the program reads the test input on stdin; its stdout must equal the expected
    output line by line after whitespace normalisation (runs of blanks collapse, leading/trailing
    blanks and blank lines at either end are ignored).
  * ``functional`` (LeetCode-style with starter code): each input line is a JSON argument; a small
    harness calls ``Solution().<fn_name>(*args)`` (or a top-level ``<fn_name>``) and prints the JSON
    result, compared as JSON with the expected output.

Programs run through any object with ``async run(code, stdin=None, timeout_s=None)`` returning a
result with ``ok, stdout, stderr, error_type, infra_failure``
(`cleaner_jax.agent.sandbox.SandboxPool`).
A test whose run is an infrastructure failure counts as failed and is reported in the details, so
the caller can see it; it is never silently dropped. The runner must not truncate stdout (the
tool-message pool cuts it at 1000 chars by default): give judging its own pool with a large
``SandboxConfig.max_output_chars``, or long correct outputs score as wrong answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

TestType = Literal["stdin", "functional"]

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


class ExecResultLike(Protocol):
    ok: bool
    stdout: str
    stderr: str
    error_type: str | None
    infra_failure: bool


class CodeRunner(Protocol):
    """What the code reward needs from the sandbox."""

    async def run(
        self, code: str, stdin: str | None = None, timeout_s: float | None = None
    ) -> ExecResultLike: ...


@dataclasses.dataclass(frozen=True)
class TestCase:
    input: str
    output: str
    testtype: TestType = "stdin"


@dataclasses.dataclass(frozen=True)
class CodeTests:
    cases: tuple[TestCase, ...]
    fn_name: str | None = None


@dataclasses.dataclass(frozen=True)
class CodeScore:
    score: float
    passed: int
    total: int
    details: dict[str, Any]


def extract_final_code_block(response: str) -> str | None:
    """The last fenced ```python (or ```py) block of `response`, or None."""
    blocks = _CODE_BLOCK.findall(response)
    return blocks[-1] if blocks else None


def _test_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, Mapping):
        value = [value]
    return [dict(v) for v in value]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_code_tests(ground_truth: Any, fn_name: str | None = None) -> CodeTests:
    """Normalises the code ground-truth formats we meet into `CodeTests`.

    Formats: ``{"tests": [{"input", "output", "testtype"}...], "fn_name": ...}`` (what our readers
    write); a list of such test dicts (LiveCodeBench); ``{"inputs": [...], "outputs": [...],
    "fn_name": ...}`` (APPS/TACO/PRIME-style); any of these as a JSON string.
    """
    gt = ground_truth
    if isinstance(gt, str):
        gt = json.loads(gt)
    if isinstance(gt, Mapping):
        fn_name = gt.get("fn_name") or fn_name
        if "tests" in gt:
            raw = _test_list(gt["tests"])
        elif "inputs" in gt and "outputs" in gt:
            if len(gt["inputs"]) != len(gt["outputs"]):
                raise ValueError(
                    f"code ground truth has {len(gt['inputs'])} inputs but "
                    f"{len(gt['outputs'])} outputs"
                )
            kind = "functional" if fn_name else "stdin"
            raw = [
                {"input": i, "output": o, "testtype": kind}
                for i, o in zip(gt["inputs"], gt["outputs"], strict=True)
            ]
        else:
            raise ValueError(
                f"code ground truth dict needs 'tests' or 'inputs'+'outputs', got keys {list(gt)}"
            )
    elif isinstance(gt, Sequence):
        raw = _test_list(list(gt))
    else:
        raise TypeError(f"unsupported code ground truth type {type(gt).__name__}")
    cases = []
    for t in raw:
        kind = t.get("testtype", "functional" if fn_name else "stdin")
        if kind not in ("stdin", "functional"):
            raise ValueError(f"unknown test type {kind!r}; expected 'stdin' or 'functional'")
        if kind == "functional" and not fn_name:
            raise ValueError("functional test cases need fn_name (LiveCodeBench metadata)")
        cases.append(TestCase(_as_text(t["input"]), _as_text(t["output"]), kind))
    if not cases:
        raise ValueError("code ground truth holds no test cases")
    return CodeTests(tuple(cases), fn_name)


def normalize_output(text: str) -> list[str]:
    """Whitespace-normalised lines used to compare program output."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def outputs_match(actual: str, expected: str, testtype: TestType = "stdin") -> bool:
    if testtype == "functional":
        try:
            return json.loads(actual.strip()) == json.loads(expected.strip())
        except json.JSONDecodeError:
            pass  # not JSON on one side: fall back to the textual comparison
    return normalize_output(actual) == normalize_output(expected)


def functional_harness(code: str, fn_name: str) -> str:
    """`code` plus a driver feeding JSON stdin lines to ``fn_name`` and printing the JSON result."""
    return (
        f"{code}\n\n"
        "import json as _cj_json, sys as _cj_sys\n"
        "_cj_lines = _cj_sys.stdin.read().splitlines()\n"
        "_cj_args = [_cj_json.loads(_l) for _l in _cj_lines if _l.strip()]\n"
        f"_cj_fn = Solution().{fn_name} if 'Solution' in globals() else {fn_name}\n"
        "print(_cj_json.dumps(_cj_fn(*_cj_args)))\n"
    )


async def score_code_tests(
    response: str,
    tests: CodeTests,
    runner: CodeRunner,
    *,
    timeout_s: float = 6.0,
    max_concurrency: int = 4,
    max_tests: int | None = None,
) -> CodeScore:
    """Runs the final code block of `response` on `tests`; see the module docstring for scores."""
    code = extract_final_code_block(response)
    if code is None:
        return CodeScore(-1.0, 0, len(tests.cases), {"reason": "no_code_block"})
    try:
        compile(code, "<solution>", "exec")
    except SyntaxError as e:
        return CodeScore(-1.0, 0, len(tests.cases), {"reason": "syntax_error", "message": str(e)})
    # The sandbox runs Jupyter-style (a trailing expression's repr is printed); a final `pass`
    # keeps e.g. a trailing `main()` call's return value out of stdout.
    stdin_program = f"{code}\npass\n"
    cases = tests.cases if max_tests is None else tests.cases[:max_tests]
    semaphore = asyncio.Semaphore(max_concurrency)

    async def run_one(case: TestCase) -> tuple[bool, bool, str | None]:
        if case.testtype == "functional":
            program = functional_harness(code, tests.fn_name or "") + "pass\n"
        else:
            program = stdin_program
        async with semaphore:
            result = await runner.run(program, stdin=case.input, timeout_s=timeout_s)
        if result.infra_failure:
            return False, True, result.error_type
        if not result.ok:
            return False, False, result.error_type or "runtime_error"
        if outputs_match(result.stdout, case.output, case.testtype):
            return True, False, None
        return False, False, "wrong_answer"

    outcomes = await asyncio.gather(*(run_one(c) for c in cases))
    passed = sum(ok for ok, _, _ in outcomes)
    failure_counts: dict[str, int] = {}
    for ok, _, reason in outcomes:
        if not ok:
            failure_counts[reason or "unknown"] = failure_counts.get(reason or "unknown", 0) + 1
    details = {
        "passed": passed,
        "total": len(cases),
        "infra_failures": sum(infra for _, infra, _ in outcomes),
        "failures": failure_counts,
    }
    return CodeScore(passed / len(cases), passed, len(cases), details)
