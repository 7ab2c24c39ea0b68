"""Rewards: boxed extraction, strict vs lenient math, GPQA letters, overlong penalty, code tests,
worker deadlines and per-trajectory failure isolation."""

import asyncio
import dataclasses
import sys
import threading
import time

import pytest

from cleaner_jax.rl import rewards as R
from cleaner_jax.rl import rewards_code as RC
from cleaner_jax.rl import rewards_math as RM


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} first, then \boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed {42}", "42"),
        (r"\boxed 7 done", "7"),
        (r"\fbox{3}", "3"),
        (r"\boxed{\frac{1}{2}", None),  # never closed: truncated answer
        ("no box here", None),
    ],
)
def test_last_boxed_content(text, expected):
    assert RM.last_boxed_content(text) == expected


# (response, ground truth, strict correct, lenient correct)
MATH_CASES = [
    (r"so \boxed{\frac{1}{2}}", "0.5", True, True),
    ("The answer is 0.5", r"\frac{1}{2}", False, True),  # strict needs a box
    (r"try \boxed{2} ... finally \boxed{3}", "3", True, None),  # lenient: math-verify's pick
    (r"\boxed{3} ... on reflection \boxed{2}", "3", False, False),  # last box counts
    (r"\boxed{\sqrt{\frac{3}{4}}}", r"\frac{\sqrt{3}}{2}", True, True),  # nested braces
    (r"\boxed{\frac{1}{2}", "0.5", False, None),  # unclosed box
    (r"\boxed{x = 5}", "5", True, True),
]


@pytest.mark.parametrize("response,gt,strict,lenient", MATH_CASES)
def test_verify_math_strict_vs_lenient(response, gt, strict, lenient):
    assert RM.verify_math(response, gt, "strict", timeout_s=5).correct is strict
    if lenient is not None:
        assert RM.verify_math(response, gt, "lenient", timeout_s=5).correct is lenient


def test_verify_math_signal_timeout_refused_off_main_thread():
    errors = []
    t = threading.Thread(
        target=lambda: errors.append(_catch(RM.verify_math, "x", "1", "strict", 3))
    )
    t.start()
    t.join()
    assert isinstance(errors[0], RuntimeError)


def _catch(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        return e
    return None


@pytest.mark.parametrize(
    "response,letter",
    [
        (r"... so \boxed{B}", "B"),
        (r"\boxed{\text{(C)}}", "C"),
        ("Answer: D", "D"),
        ("the answer is (A).", "A"),
        ("The answer is a multiple of three", None),
        (r"Answer: A, no wait, \boxed{C}", "C"),  # a box wins over "Answer:"
        ("Answer: A\nAnswer: B", "B"),
    ],
)
def test_choice_letter(response, letter):
    assert RM.extract_choice_letter(response) == letter
    assert RM.verify_choice(response, "C").correct is (letter == "C")


@pytest.mark.parametrize(
    "n,expected",
    [(0, 0.0), (16384, 0.0), (16385, -1 / 4096), (18432, -0.5), (20480, -1.0)],
)
def test_overlong_penalty_golden(n, expected):
    assert R.overlong_penalty(n) == pytest.approx(expected, abs=1e-12)


def test_overlong_penalty_factor_and_validation():
    assert R.overlong_penalty(900, max_response_length=1000, buffer_length=200,
                              penalty_factor=0.5) == pytest.approx(-0.25)  # fmt: skip
    with pytest.raises(ValueError, match="buffer_length"):
        R.overlong_penalty(10, max_response_length=100, buffer_length=0)


@pytest.mark.parametrize(
    "source,extra,kind",
    [
        ("aime2024", {}, "math"),
        ("gpqa_diamond", {}, "gpqa"),
        ("livecodebench", {}, "code"),
        ("codecontests", {}, "code"),
        ("weird", {"reward_kind": "math"}, "math"),
    ],
)
def test_reward_kind(source, extra, kind):
    assert R.reward_kind(source, extra) == kind


def test_reward_kind_unknown_raises():
    with pytest.raises(ValueError, match="no reward rule"):
        R.reward_kind("weird", {})


# ---------------------------------------------------------------- code reward


@dataclasses.dataclass
class _Exec:
    ok: bool
    stdout: str
    stderr: str
    error_type: str | None
    infra_failure: bool = False


class SubprocessRunner:
    """A real (unsandboxed) runner with the SandboxPool.run interface, for trusted test code."""

    async def run(self, code, stdin=None, timeout_s=None):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", code, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate((stdin or "").encode()), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return _Exec(False, "", "", "timeout")
        ok = proc.returncode == 0
        return _Exec(ok, out.decode(), err.decode(), None if ok else "runtime_error")


@pytest.fixture(scope="module", params=["subprocess", "sandbox"])
def runner(request):
    if request.param == "subprocess":
        yield SubprocessRunner()
        return
    sandbox = pytest.importorskip("cleaner_jax.agent.sandbox")
    # Judge outputs must not be cut at the tool-message limit (1000 chars by default).
    config = sandbox.SandboxConfig(num_workers=2, max_output_chars=1_000_000)
    with sandbox.SandboxPool(config) as pool:
        yield pool


STDIN_TESTS = RC.parse_code_tests(
    {"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7", "7\n"]}
)
ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


@pytest.mark.parametrize(
    "response,score",
    [
        (f"Plan.\n```python\nprint('draft')\n```\nFinal:\n{ADD}", 1.0),
        ("```python\na, b = map(int, input().split())\nprint(a + abs(b))\n```", 2 / 3),
        ("I think the answer is print(a+b)", -1.0),  # no code block
        ("```python\ndef f(:\n  pass\n```", -1.0),  # SyntaxError
        ("```python\nimport sys\nsys.exit(1)\n```", 0.0),
        ("```python\nwhile True:\n    pass\n```", 0.0),  # every test times out
        # A trailing expression must not leak its repr into stdout (the sandbox is Jupyter-style).
        ("```python\ndef solve():\n    a, b = map(int, input().split())\n    print(a + b)\n"
         "    return a + b\nsolve()\n```", 1.0),
    ],
)  # fmt: skip
def test_code_reward_stdin(runner, response, score):
    result = asyncio.run(RC.score_code_tests(response, STDIN_TESTS, runner, timeout_s=1.0))
    assert result.score == pytest.approx(score)


def test_outputs_match_normalises_whitespace():
    assert RC.outputs_match("1  2 \n3\n\n", "1 2\n3")
    assert not RC.outputs_match("1 2 3", "1 2\n3")
    assert RC.outputs_match("[1, 2]\n", "[1,2]", "functional")


def test_code_reward_functional_tests(runner):
    tests = RC.parse_code_tests(
        [
            {"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"},
            {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"},
        ],
        fn_name="twoSum",
    )
    response = (
        "```python\nclass Solution:\n    def twoSum(self, nums, target):\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n"
        "            if target - x in seen:\n                return [seen[target - x], i]\n"
        "            seen[x] = i\n```"
    )
    result = asyncio.run(RC.score_code_tests(response, tests, runner, timeout_s=5))
    assert (result.score, result.passed) == (1.0, 2)


def test_parse_code_tests_formats():
    as_json = '[{"input": "1", "output": "2", "testtype": "stdin"}]'
    assert RC.parse_code_tests(as_json).cases == (RC.TestCase("1", "2", "stdin"),)
    ours = RC.parse_code_tests({"tests": as_json, "fn_name": None})
    assert ours.cases[0].output == "2"
    with pytest.raises(ValueError, match="fn_name"):
        RC.parse_code_tests([{"input": "1", "output": "2", "testtype": "functional"}])
    with pytest.raises(ValueError, match="no test cases"):
        RC.parse_code_tests({"inputs": [], "outputs": []})


# ------------------------------------------------------- scorer and deadlines


@pytest.fixture(scope="module")
def verifier():
    with RM.MathVerifierPool(num_workers=1, timeout_s=10.0) as pool:
        yield pool


def test_scorer_batch_isolates_failures(verifier):
    cfg = R.RewardConfig(overlong=R.OverlongConfig(max_response_length=100, buffer_length=50))
    items = [
        R.RewardInput(r"\boxed{\frac{1}{2}}", "aime2024", "0.5", num_response_tokens=10),
        R.RewardInput("The answer is 0.5", "aime2024", "0.5", num_response_tokens=75),
        R.RewardInput(r"\boxed{B}", "gpqa_diamond", "B", num_response_tokens=100),
        R.RewardInput("whatever", "mystery_source", "1", num_response_tokens=10),
        R.RewardInput(ADD, "livecodebench", "not json {", num_response_tokens=10),
        R.RewardInput(ADD, "livecodebench", dataclasses.asdict(STDIN_TESTS)["cases"]),
    ]
    with R.RewardScorer(cfg, code_runner=SubprocessRunner(), math_verifier=verifier) as scorer:
        results = scorer.score_batch_sync(items)
    assert [r.score for r in results] == pytest.approx([1.0, -1.5, 0.0, -1.0, -1.0, 1.0])
    assert [r.acc for r in results] == [True, False, True, False, False, True]
    assert [r.error is not None for r in results] == [False, False, False, True, True, False]
    assert results[1].details["overlong_penalty"] == pytest.approx(-0.5)
    assert "no reward rule" in results[3].error
    metrics = R.reward_metrics(results)
    assert metrics["reward/errors"] == 2 and metrics["reward/acc"] == pytest.approx(0.5)


def test_overlong_counts_policy_tokens_only(verifier):
    ov = R.OverlongConfig(max_response_length=100, buffer_length=50, count_policy_tokens_only=True)
    item = R.RewardInput(r"\boxed{2}", "math", "2", num_response_tokens=100, num_policy_tokens=60)
    with R.RewardScorer(R.RewardConfig(overlong=ov), math_verifier=verifier) as scorer:
        (res,) = scorer.score_batch_sync([item])
        (missing,) = scorer.score_batch_sync([dataclasses.replace(item, num_policy_tokens=None)])
    assert res.score == pytest.approx(1.0 - 0.2)  # 60 tokens: (60 - 50) / 50 over
    assert missing.error is not None and "num_policy_tokens" in missing.error


def test_pool_hard_deadline_kills_a_hung_check():
    # 10^(10^10) makes sympy compute a 10-billion-digit integer; with math-verify's own timeout
    # disabled only the parent's deadline can stop it.
    with RM.MathVerifierPool(num_workers=1, timeout_s=1.5, inner_timeout_s=None) as pool:
        assert pool.verify(r"\boxed{4}", "4").correct  # worker started and warm
        hung = pool.verify(r"\boxed{10^{10^{10}}}", "5")
        assert hung.timed_out and not hung.correct and hung.error
        assert pool.verify(r"\boxed{\frac{1}{2}}", "0.5").correct  # respawned worker


def test_pool_deadline_starts_after_the_worker_is_ready():
    # A fresh worker's spawn + math-verify/sympy import and first parse take longer than this
    # deadline; the deadline must count only the check itself.
    with RM.MathVerifierPool(num_workers=2, timeout_s=0.25, inner_timeout_s=None) as pool:
        t0 = time.monotonic()
        first = pool.verify(r"\boxed{4}", "4")
        assert first.correct and not first.timed_out, first
        assert time.monotonic() - t0 > 0.25  # the start-up alone outlasted the deadline
        assert pool.verify(r"\boxed{5}", "4").correct is False


def test_pool_works_from_threads(verifier):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        out = list(ex.map(lambda g: verifier.verify(r"\boxed{3}", g).correct, ["3", "4"]))
    assert out == [True, False]
