"""The tool schema the chat template lists: Python `code_interpreter`, as in the paper's runs."""

from __future__ import annotations

from typing import Any

CODE_INTERPRETER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "code_interpreter",
        "description": "Runs Python code and returns its stdout and stderr.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to run."}},
            "required": ["code"],
        },
    },
}
TOOLS: tuple[dict[str, Any], ...] = (CODE_INTERPRETER_TOOL,)
