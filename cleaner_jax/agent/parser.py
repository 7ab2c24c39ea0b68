"""Hermes-style tool-call parsing and final-answer extraction for assistant turns.

A call is `<tool_call>{"name": "code_interpreter", "arguments": {"code": "..."}}</tool_call>`.
`parse_tool_calls` never raises on any text and never drops a malformed call: every call-like
thing in the turn becomes a `ToolCall`, and a malformed one carries a visible failure message
(`ToolCall.error`, shown to the policy instead of an execution result; SAAR treats it as a model
error). Malformations handled:

  broken JSON          repaired with `json_repair` where possible; the repaired `code` is kept
                       (so SAAR can compare it) and `repaired=True` is recorded, but the call still
                       fails visibly unless `execute_repaired=True`
  unknown tool name    error naming the available tools
  bad/missing args     `arguments` not an object (a JSON-encoded object string is accepted),
                       `code` missing or not a string
  unclosed tag         `<tool_call>` without `</tool_call>` (the body runs to the next
                       `<tool_call>` or the end of the turn)
  stray closing tag    `</tool_call>` without an opening tag
  several calls        all are returned, in order (the rollout executes each, see saar.rollout)

Failure messages follow the reference's parser-feedback wording ("[tool_parser_error] ...").
`extract_boxed` and `extract_final_code` read the final answer of math and code tasks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import json_repair

from cleaner_jax.saar import FORMAT_ERROR, ToolCall

CODE_INTERPRETER = "code_interpreter"
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

# Error types of malformed calls; the generic one, FORMAT_ERROR, is the SAAR core's.
JSON_ERROR = "ToolCallJSONError"
UNCLOSED_ERROR = "ToolCallUnclosed"
UNKNOWN_TOOL_ERROR = "UnknownTool"
MISSING_CODE_ERROR = "MissingCode"

_TURN_END = ("<|im_end|>", "<|endoftext|>")
_HINT = (
    "Please return a JSON object with keys 'name' and 'arguments' inside "
    "<tool_call>...</tool_call>."
)


def _failure(detail: str) -> str:
    return f"[tool_parser_error] {detail}. {_HINT}"


def parse_tool_calls(
    text: str,
    tool_names: Sequence[str] = (CODE_INTERPRETER,),
    execute_repaired: bool = False,
) -> list[ToolCall]:
    """All tool calls in an assistant turn's text, malformed ones included (never raises).

    Args:
      text: the decoded assistant turn (control tokens may be present).
      tool_names: tools that exist; any other name is an `UnknownTool` failure.
      execute_repaired: let calls whose JSON was repaired run (still marked `repaired`).
    """
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        stray = text.find(CLOSE_TAG, pos)
        if stray != -1 and (start == -1 or stray < start):
            calls.append(
                ToolCall(
                    name="",
                    code=None,
                    text=CLOSE_TAG,
                    error=_failure(f"found {CLOSE_TAG} without a matching {OPEN_TAG}"),
                    error_type=FORMAT_ERROR,
                )
            )
            pos = stray + len(CLOSE_TAG)
            continue
        if start == -1:
            return calls
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        following = text.find(OPEN_TAG, body_start)
        if end == -1 or (following != -1 and following < end):
            stop = following if following != -1 else len(text)
            body = _strip_turn_end(text[body_start:stop])
            calls.append(_parse_body(body, text[start:stop], tool_names, execute_repaired, True))
            pos = stop
            continue
        body = text[body_start:end]
        call_text = text[start : end + len(CLOSE_TAG)]
        calls.append(_parse_body(body, call_text, tool_names, execute_repaired, False))
        pos = end + len(CLOSE_TAG)


def _strip_turn_end(body: str) -> str:
    body = body.rstrip()
    for marker in _TURN_END:
        if body.endswith(marker):
            body = body[: -len(marker)]
    return body


def _parse_body(
    body: str, call_text: str, tool_names: Sequence[str], execute_repaired: bool, unclosed: bool
) -> ToolCall:
    repaired = False
    json_error = ""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as e:
        json_error = str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        obj = _repair(body)
        repaired = obj is not None
    name = obj.get("name") if isinstance(obj, dict) else None
    name = name if isinstance(name, str) else ""
    code, problem, problem_type = _read_call(obj, tool_names)

    def failed(detail: str, error_type: str) -> ToolCall:
        return ToolCall(name, code, call_text, _failure(detail), error_type, repaired)

    if unclosed:
        return failed(f"the {OPEN_TAG} tag is not closed with {CLOSE_TAG}", UNCLOSED_ERROR)
    if json_error and not repaired:
        return failed(f"the tool call is not valid JSON ({json_error})", JSON_ERROR)
    if problem:
        return failed(problem, problem_type)
    if json_error and not execute_repaired:
        return failed(
            f"the tool call is not valid JSON ({json_error}); it could be repaired but was not "
            "executed",
            JSON_ERROR,
        )
    return ToolCall(name=name, code=code, text=call_text, repaired=repaired)


def _repair(body: str) -> object | None:
    """Best-effort repair of broken JSON; None when nothing object-like comes out."""
    if not body.strip():
        return None
    try:
        obj = json_repair.repair_json(body, return_objects=True)
    except (ValueError, TypeError, RecursionError):
        # json_repair documents no exception contract; a body it cannot handle is simply
        # unrepairable, which the caller reports as invalid JSON.
        return None
    return obj if isinstance(obj, dict) and obj else None


def _read_call(obj: object, tool_names: Sequence[str]) -> tuple[str | None, str, str]:
    """(code, problem, problem type) of a parsed call object; problem "" when well formed."""
    if not isinstance(obj, dict):
        return None, "the tool call must be a JSON object", FORMAT_ERROR
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, "the tool call has no string 'name'", FORMAT_ERROR
    args = obj.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    code = args.get("code") if isinstance(args, dict) else None
    code = code if isinstance(code, str) else None
    if name not in tool_names:
        available = ", ".join(repr(t) for t in tool_names)
        return code, f"unknown tool {name!r}; available tools: {available}", UNKNOWN_TOOL_ERROR
    if not isinstance(args, dict):
        return None, "'arguments' must be a JSON object", FORMAT_ERROR
    if code is None:
        return None, "'arguments' must contain a string 'code'", MISSING_CODE_ERROR
    return code, "", ""


_BOXED = re.compile(r"\\boxed\s*\{")
_CODE_BLOCK = re.compile(r"```(?:python|py|Python|python3)[ \t]*\n(.*?)```", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces, None if there is none."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(m.end(), len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i]
    return None


def extract_final_code(text: str) -> str | None:
    """Body of the last closed ```python block (code tasks' final answer), None if none."""
    blocks = _CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else None
