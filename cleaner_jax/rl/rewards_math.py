"""Math and multiple-choice answer checking: `\\boxed{}` extraction, math-verify, GPQA letters.

Three math modes:
  * ``strict`` (our default): only the LAST ``\\boxed{...}`` of the response counts; no box
    means wrong. The boxed content is compared with the ground truth by math-verify (so
    ``\\boxed{\\frac{1}{2}}`` matches ``0.5``): the reference's box rule, not its exact-string
    comparison (that is ``reference``).
  * ``lenient``: math-verify parses the whole response with its default extraction (boxed, then
    ``$...$``/plain expressions), so "The answer is 0.5" also counts. Note math-verify joins
    several boxed answers into one set, so "\\boxed{2} ... \\boxed{3}" does not match 3 here.
  * ``reference``: the reference implementation's score, verl's ``math_dapo.compute_score`` with
    ``strict_box_verify=True`` (`reference_strict_verdict`): only the last 100 characters of the
    response are read, the last literal ``\\boxed{`` in them is taken, and its content must equal
    the ground-truth string exactly (no normalisation, no math-verify), so ``\\boxed{ 42 }``,
    ``\\boxed{10^3}`` for 1000 or ``\\boxed{\\frac12}`` for 0.5 are wrong.

math-verify times out with ``signal.alarm``, which only works in the main thread. Reward code runs
from trainer threads and the asyncio loop, so verification runs in `MathVerifierPool` worker
processes: inside a worker math-verify's own alarms work (it is the worker's main thread), and the
parent enforces a hard deadline on top, killing and respawning a worker that does not answer
(sympy can spin in C code where no signal is delivered). A reward check can therefore never hang a
training step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import queue
import re
import threading
import time
from typing import Literal

logger = logging.getLogger(__name__)

MathMode = Literal["strict", "lenient", "reference"]
MATH_MODES: tuple[str, ...] = ("strict", "lenient", "reference")

# verl's math_dapo.compute_score keeps the last 300 characters, then its strict-box check keeps
# the last 100 of those: the last 100 characters of the response.
_REFERENCE_TAIL_CHARS = 100
_REFERENCE_BOX = "\\boxed{"

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A fresh worker imports math-verify/sympy and warms them up (~1-2 s, more on a loaded machine),
# then says it is ready; a check's deadline starts only after that, since the start-up is not the
# answer's fault (a fixed start-up grace also let a fresh worker's first check run that much
# longer). A worker not ready after this long is an infra failure.
_STARTUP_LIMIT_S = 300.0
_READY = "ready"


@dataclasses.dataclass(frozen=True)
class MathVerdict:
    """Outcome of one answer check. `error` is set when the check itself failed (timeout...)."""

    correct: bool
    pred: str | None
    error: str | None = None
    timed_out: bool = False


def last_boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed x``) in `text`.

    Braces are matched, so nested groups (``\\boxed{\\frac{1}{2}}``) come back whole. Returns
    None when there is no box or the last box is never closed (a truncated answer is no answer).
    """
    start = -1
    command = ""
    for cmd in _BOX_COMMANDS:
        idx = text.rfind(cmd)
        if idx > start:
            start, command = idx, cmd
    if start < 0:
        return None
    after = start + len(command)
    i = after
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        if i == after:  # "\boxedx": not a box command
            return None
        # "\boxed 5" form: the argument is the next whitespace-free run.
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0) if match else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def reference_strict_verdict(response: str, ground_truth: str) -> MathVerdict:
    """The reference's strict score: verl ``math_dapo.compute_score(strict_box_verify=True)``.

    Reads only the last 100 characters of `response`; takes the last literal ``\\boxed{`` there
    (``\\boxed {x}``, ``\\fbox{x}`` or a box opened before the window do not count) and its
    content up to the matching brace (every ``{``/``}`` counts, escaped or not); the answer is
    correct when that content is exactly `ground_truth` (same characters, spaces included).
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        raise TypeError(
            "reference_strict_verdict takes the response and the ground truth as strings, got "
            f"{type(response).__name__} and {type(ground_truth).__name__}"
        )
    tail = response[-_REFERENCE_TAIL_CHARS:]
    start = tail.rfind(_REFERENCE_BOX)
    if start < 0:
        return MathVerdict(False, None)
    depth = 0
    for j in range(start + len(_REFERENCE_BOX) - 1, len(tail)):
        if tail[j] == "{":
            depth += 1
        elif tail[j] == "}":
            depth -= 1
            if depth == 0:
                content = tail[start + len(_REFERENCE_BOX) : j]
                return MathVerdict(content == ground_truth, content)
    return MathVerdict(False, None)  # the box is never closed


def _parse_gold(ground_truth: str, timeout: int | None) -> list:
    from math_verify import parse

    gt = ground_truth.strip()
    if any(cmd in gt for cmd in _BOX_COMMANDS) or "$" in gt:
        return parse(gt, parsing_timeout=timeout)
    return parse(f"${gt}$", parsing_timeout=timeout)


def verify_math(
    response: str, ground_truth: str, mode: MathMode = "strict", timeout_s: float | None = None
) -> MathVerdict:
    """Checks `response` against `ground_truth` in this process.

    `timeout_s` uses math-verify's ``signal.alarm`` timeouts, so it must be None unless this runs
    in the main thread; from other threads use `MathVerifierPool` instead.
    """
    if mode not in MATH_MODES:
        raise ValueError(f"unknown math reward mode {mode!r}; use one of {MATH_MODES}")
    if mode == "reference":
        return reference_strict_verdict(response, ground_truth)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    timeout = None if timeout_s is None else max(1, math.ceil(timeout_s))
    if timeout is not None and threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "verify_math(timeout_s=...) relies on signal.alarm and only works in the main "
            "thread; pass timeout_s=None or use MathVerifierPool from other threads"
        )
    gold = _parse_gold(ground_truth, timeout)
    if not gold:
        return MathVerdict(False, None, error=f"could not parse ground truth {ground_truth!r}")
    if mode == "strict":
        content = last_boxed_content(response)
        if content is None:
            return MathVerdict(False, None)
        extraction = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        pred = parse("\\boxed{" + content + "}", extraction, parsing_timeout=timeout)
        pred_text = content
    else:
        pred = parse(response, parsing_timeout=timeout)
        pred_text = str(pred[-1]) if pred else None
    if not pred:
        return MathVerdict(False, pred_text)
    return MathVerdict(bool(verify(gold, pred, timeout_seconds=timeout)), pred_text)


_GPQA_BOXED = re.compile(r"^\s*(?:\\text\{|\\textbf\{|\\mathrm\{)?\s*\(?([A-Da-d])\)?\s*\}?\s*$")
# Keyword case-insensitive, letter upper-case only: "the answer is a multiple" is not "A".
_GPQA_ANSWER = re.compile(r"(?i:answer)\s*(?:is)?\s*[:：]?\s*\**\s*\(?([A-D])\)?(?![A-Za-z])")


def extract_choice_letter(response: str) -> str | None:
    """The A–D letter answered: the last ``\\boxed{X}`` if present, else the last "Answer: X"."""
    content = last_boxed_content(response)
    if content is not None:
        match = _GPQA_BOXED.match(content)
        return match.group(1).upper() if match else None
    matches = _GPQA_ANSWER.findall(response)
    return matches[-1].upper() if matches else None


def verify_choice(response: str, ground_truth: str) -> MathVerdict:
    """Multiple-choice check: the extracted letter equals the ground-truth letter."""
    gold = ground_truth.strip().strip("()").upper()
    if gold not in ("A", "B", "C", "D"):
        return MathVerdict(False, None, error=f"ground truth {ground_truth!r} is not a letter A-D")
    pred = extract_choice_letter(response)
    return MathVerdict(pred == gold, pred)


def _worker_main(conn: multiprocessing.connection.Connection, timeout_s: float | None) -> None:
    # The worker's main thread runs math-verify, so its signal.alarm timeouts are live here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # The slow part (imports of math-verify, sympy, the LaTeX parser; their first-use set-up) is
    # done by one check before saying ready.
    verify_math("\\boxed{1}", "1", "strict", timeout_s=None)
    conn.send(_READY)
    while True:
        try:
            request = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if request is None:
            return
        response, ground_truth, mode = request
        try:
            verdict = verify_math(response, ground_truth, mode, timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 - reported to the parent as a recorded error
            verdict = MathVerdict(False, None, error=f"{type(e).__name__}: {e}")
        conn.send(verdict)


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, timeout_s: float | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, timeout_s), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False  # True once it has finished its imports

    def wait_ready(self, limit_s: float) -> bool:
        if not self.ready and self.conn.poll(limit_s):
            self.ready = self.conn.recv() == _READY
        return self.ready

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class MathVerifierPool:
    """Worker processes that run `verify_math` with a hard per-check deadline.

    Thread-safe: any thread may call `verify`; at most `num_workers` checks run at once and the
    others wait for a free worker (the wait counts towards nothing; the deadline starts when a
    worker takes the check). A check that misses the deadline returns an incorrect verdict with
    ``timed_out=True`` and its worker is killed and replaced.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        start_method: str = "spawn",
        inner_timeout_s: float | None = -1.0,
    ):
        """`inner_timeout_s`: math-verify's own (signal) timeout inside the worker; the default
        (-1) means 0.8 * timeout_s so most slow checks end cleanly before the hard deadline;
        None disables it (the hard deadline alone then applies)."""
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.timeout_s = float(timeout_s)
        # spawn: forking a process that runs JAX/XLA threads can deadlock the child.
        self._ctx = multiprocessing.get_context(start_method)
        if inner_timeout_s is not None and inner_timeout_s < 0:
            inner_timeout_s = max(1.0, self.timeout_s * 0.8)
        self._inner_timeout_s = inner_timeout_s
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._closed = False
        for _ in range(num_workers):
            self._idle.put(None)  # started lazily on first use
        self.num_workers = num_workers

    def verify(self, response: str, ground_truth: str, mode: MathMode = "strict") -> MathVerdict:
        if self._closed:
            raise RuntimeError("MathVerifierPool.verify called after close()")
        worker = self._idle.get()
        try:
            if worker is None or not worker.proc.is_alive():
                worker = _Worker(self._ctx, self._inner_timeout_s)
            if not worker.wait_ready(_STARTUP_LIMIT_S):
                logger.warning("math verifier worker not ready after %.0fs", _STARTUP_LIMIT_S)
                worker.kill()
                worker = None
                return MathVerdict(False, None, error="verifier worker did not start")
            start = time.monotonic()
            worker.conn.send((response, ground_truth, mode))
            if worker.conn.poll(self.timeout_s):
                return worker.conn.recv()
            elapsed = time.monotonic() - start
            logger.warning(
                "math verification exceeded %.1fs (%.1fs elapsed); killing its worker",
                self.timeout_s,
                elapsed,
            )
            worker.kill()
            worker = None
            return MathVerdict(False, None, error="verification timed out", timed_out=True)
        except (EOFError, OSError, BrokenPipeError) as e:
            logger.warning("math verification worker died: %s; respawning", e)
            if worker is not None:
                worker.kill()
            worker = None
            return MathVerdict(False, None, error=f"verifier worker died: {e}")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stops all workers; idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in range(self.num_workers):
            worker = self._idle.get()
            if worker is None:
                continue
            try:
                worker.conn.send(None)
            except (OSError, BrokenPipeError):
                logger.debug("math verifier worker already gone at close()")
            worker.proc.join(timeout=2)
            if worker.proc.is_alive():
                worker.kill()

    def __enter__(self) -> MathVerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
