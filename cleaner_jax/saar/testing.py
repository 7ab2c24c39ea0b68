"""Deterministic stand-ins for the SAAR protocols: a character-level chat codec, a scripted
policy and a scripted tool runner (stdlib only).

They let the rollout be tested (and benchmarked) without a model, tokenizer or sandbox, with
every token id and log-prob known in advance:
  * `CharCodec`: special tokens get ids 0-5 (`<|im_start|>`, `<|im_end|>`, `<tool_call>`,
    `</tool_call>`, `<tool_response>`, `</tool_response>`), every other character c gets
    `ord(c) + 16`. The chat format is Qwen's; calls are parsed with `json` only.
  * `ScriptedPolicy`: answers each `generate` with the next scripted turn text; the j-th token
    of the k-th generation (k from 0) has log-prob `-(k + 1) - j / 1000`; `score` gives the token
    at absolute position p the log-prob `-p / 1000`, so a re-scored segment is recognisable.
  * `ScriptedTools`: maps a call's code to a `ToolResult` (default: success echoing the code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence

from .boundary import find_token
from .types import FORMAT_ERROR, Generation, ToolCall, ToolResult

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)
_SPECIAL_IDS = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
_CHAR_OFFSET = 16
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
_CALL_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)

IM_END = _SPECIAL_IDS["<|im_end|>"]
TOOL_CALL = _SPECIAL_IDS["<tool_call>"]


class CharCodec:
    """A `TurnCodec` over a character-level vocabulary with Qwen's chat special tokens."""

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for part in _SPECIAL_RE.split(text):
            if part in _SPECIAL_IDS:
                out.append(_SPECIAL_IDS[part])
            else:
                out.extend(ord(c) + _CHAR_OFFSET for c in part)
        return out

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(
            SPECIAL_TOKENS[t] if t < _CHAR_OFFSET else chr(t - _CHAR_OFFSET) for t in tokens
        )

    def call_start(self, turn_tokens: Sequence[int]) -> int | None:
        return find_token(turn_tokens, TOOL_CALL)

    def parse_calls(self, turn_tokens: Sequence[int]) -> list[ToolCall]:
        calls = []
        for m in _CALL_RE.finditer(self.decode(turn_tokens)):
            text = m.group(0)
            if not m.group(2):
                calls.append(_bad(text, "unclosed <tool_call> tag"))
                continue
            try:
                obj = json.loads(m.group(1))
            except json.JSONDecodeError as e:
                calls.append(_bad(text, f"invalid JSON: {e}"))
                continue
            code = obj.get("arguments", {}).get("code") if isinstance(obj, dict) else None
            if not isinstance(code, str):
                calls.append(_bad(text, "missing string argument 'code'"))
                continue
            calls.append(ToolCall(name=str(obj.get("name", "")), code=code, text=text))
        return calls

    def encode_tool_response(self, texts: Sequence[str], note: str | None = None) -> list[int]:
        texts = list(texts)
        if note is not None:
            texts[-1] = f"{texts[-1]}\n\n{note}"
        body = "\n".join(f"<tool_response>\n{t}\n</tool_response>" for t in texts)
        return self.encode(f"\n<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n")

    def exhaustion_note(self, attempts: int) -> str:
        return (
            f"Note: this approach has been attempted {attempts} times and failed each time; "
            "try a different approach."
        )


def _bad(text: str, why: str) -> ToolCall:
    return ToolCall(
        name="",
        code=None,
        text=text,
        error=f"[tool_parser_error] {why}",
        error_type=FORMAT_ERROR,
    )


def call_text(code: str, name: str = "code_interpreter") -> str:
    """A well-formed Hermes call for `code`."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": {"code": code}}) + "</tool_call>"


def turn_text(reasoning: str, *codes: str) -> str:
    """An assistant turn: `reasoning`, a well-formed call per code, the end-of-turn token."""
    return reasoning + "".join(call_text(c) for c in codes) + "<|im_end|>"


def success_text(code: str) -> str:
    """`ScriptedTools`' default result text for `code` (reference format)."""
    return f"Tool call success\nstdout: {code}\nstderr: "


def tool_message(codec: CharCodec, *texts: str, note: str | None = None) -> str:
    """The tool message `codec` renders for result `texts` (and a note), as text."""
    return codec.decode(codec.encode_tool_response(list(texts), note))


def scripted_logprobs(generation_index: int, n: int) -> list[float]:
    """The log-probs `ScriptedPolicy` reports for its `generation_index`-th generation."""
    return [-(generation_index + 1) - j / 1000 for j in range(n)]


def scored_logprobs(context_len: int, n: int) -> list[float]:
    """The log-probs `ScriptedPolicy.score` returns for n tokens after `context_len` tokens."""
    return [-(context_len + j) / 1000 for j in range(n)]


class ScriptedPolicy:
    """A `Policy` replaying scripted assistant turns (texts, each normally ending `<|im_end|>`)."""

    def __init__(
        self, codec: CharCodec, turns: Sequence[str], policy_version: int | None = None
    ) -> None:
        """`policy_version`: reported per sampled token (`Generation.versions`) and read by
        the rollout after a rescore; None = a policy that reports no versions."""
        self.codec = codec
        self.turns = list(turns)
        self.policy_version = policy_version
        self.contexts: list[list[int]] = []
        self.max_new_tokens: list[int] = []
        self.score_calls: list[tuple[list[int], list[int]]] = []

    async def generate(self, context_tokens: Sequence[int], max_new_tokens: int) -> Generation:
        k = len(self.contexts)
        if k >= len(self.turns):
            raise IndexError(f"ScriptedPolicy ran out of turns after {k} generations.")
        self.contexts.append(list(context_tokens))
        self.max_new_tokens.append(max_new_tokens)
        tokens = self.codec.encode(self.turns[k])
        finish = "stop" if tokens and tokens[-1] == IM_END else "length"
        if len(tokens) > max_new_tokens:
            tokens, finish = tokens[:max_new_tokens], "length"
        v = self.policy_version
        versions = None if v is None else [v] * len(tokens)
        return Generation(tokens, scripted_logprobs(k, len(tokens)), finish, versions)

    async def score(self, context_tokens: Sequence[int], tokens: Sequence[int]) -> list[float]:
        self.score_calls.append((list(context_tokens), list(tokens)))
        return scored_logprobs(len(context_tokens), len(tokens))


class ScriptedTools:
    """A `ToolRunner` answering from a table code -> result (default: success echoing code)."""

    def __init__(
        self,
        table: Mapping[str, ToolResult] | None = None,
        fallback: Callable[[ToolCall], ToolResult] | None = None,
    ) -> None:
        self.table = dict(table or {})
        self.fallback = fallback or (
            lambda call: ToolResult(ok=True, text=success_text(call.code or ""))
        )
        self.calls: list[ToolCall] = []

    async def run(self, call: ToolCall) -> ToolResult:
        self.calls.append(call)
        if call.code in self.table:
            return self.table[call.code]
        return self.fallback(call)


def failure(error_type: str = "NameError", message: str = "name 'x' is not defined") -> ToolResult:
    """A model-error result in the reference format."""
    return ToolResult(
        ok=False,
        text=f"Tool call failure\nreason: \nstdout: \nstderr: {error_type} at line 1: {message}",
        error_type=error_type,
        error_line=1,
    )
