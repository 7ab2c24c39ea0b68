"""Structured result of one sandbox call and its tool-response text.

The text is byte-compatible with the reference (Open-CLEANER / DemyAgent `code_judge_utils`):
lines joined by "\\n"; a stream line is present only when the stream is non-empty; streams are
shown verbatim (a trailing newline included):

    Tool call success            Tool call failure
    stdout: {stdout}             reason: {'' | worker_timeout | internal_error}
    stderr: {stderr}             stdout: {stdout}
                                 stderr: {Type} at line {N}: {msg}\\n  {source line}\\n

On a timeout the reference's worker printed "Suicide from timeout." to stdout before killing
itself, so SFT checkpoints saw that line; the text keeps it (`TIMEOUT_STDOUT_NOTICE`).
"""

from __future__ import annotations

import dataclasses

REASON_NONE = ""
REASON_TIMEOUT = "worker_timeout"
REASON_INTERNAL = "internal_error"
TIMEOUT_STDOUT_NOTICE = "Suicide from timeout.\n"


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of running one snippet.

    Attributes:
      ok: the code ran to completion (a trailing `sys.exit(0)` counts as completion).
      stdout: captured stdout (decoded with replacement, truncated with a marker).
      stderr: captured stderr; on an exception it ends with the reference-format error line.
      error_type: exception class name ("NameError", "SyntaxError"), "TimeoutError", a signal
        name ("SIGSEGV"), "SystemExit", or "InfrastructureError"; None when ok.
      error_line: 1-based line of the user's code where the error surfaced, when known.
      reason: '' (ran, possibly failed), 'worker_timeout', or 'internal_error'.
      infra_failure: the sandbox itself broke (not the model's fault); never set for code errors.
      duration_s: wall time of the call as seen by the pool (including infra retries).
      error_message: the formatted error text (first line is "{Type} at line {N}: {msg}").
      attempts: workers tried (> 1 after infrastructure retries).
    """

    ok: bool
    stdout: str = ""
    stderr: str = ""
    error_type: str | None = None
    error_line: int | None = None
    reason: str = REASON_NONE
    infra_failure: bool = False
    duration_s: float = 0.0
    error_message: str | None = None
    attempts: int = 1

    @property
    def timed_out(self) -> bool:
        return self.reason == REASON_TIMEOUT

    def to_tool_response_text(self) -> str:
        """The tool message text in the reference format (see module docstring)."""
        if self.ok:
            parts = ["Tool call success"]
            stdout = self.stdout
        else:
            parts = ["Tool call failure", f"reason: {self.reason}"]
            stdout = self.stdout + (TIMEOUT_STDOUT_NOTICE if self.timed_out else "")
        if stdout:
            parts.append(f"stdout: {stdout}")
        if self.stderr:
            parts.append(f"stderr: {self.stderr}")
        return "\n".join(parts)


def truncate_output(text: str, capture_cut: bool, max_chars: int, marker: str) -> str:
    """Cuts `text` to `max_chars` characters and appends `marker` if anything was dropped.

    `capture_cut` says the worker kept only a prefix of what the code wrote (it caps the bytes
    it buffers), so the stream was cut even if the decoded prefix is short enough.
    """
    if not capture_cut and len(text) <= max_chars:
        return text
    return text[:max_chars] + marker


def infra_failure_result(message: str, duration_s: float, attempts: int) -> ExecResult:
    text = f"InfrastructureError: {message}"
    return ExecResult(
        ok=False,
        stderr=text + "\n",
        error_type="InfrastructureError",
        reason=REASON_INTERNAL,
        infra_failure=True,
        duration_s=duration_s,
        error_message=text,
        attempts=attempts,
    )
