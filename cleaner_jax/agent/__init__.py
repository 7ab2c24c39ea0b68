"""The agent side: chat format and tokenizer, tool-call parsing, the Python sandbox, the loop.

Public API (imported lazily, so `import cleaner_jax.agent.sandbox` does not pull in
transformers):
  tokenizer: load_tokenizer, build_tokenizer, chat_template, SPECIAL_TOKENS
  chat:      ChatFormat, MaskedTokens
  tools:     CODE_INTERPRETER_TOOL, TOOLS
  parser:    see cleaner_jax.agent.parser
  loop:      EnginePolicy, SandboxToolRunner, ChatTurnCodec (adapters to the SAAR protocols)
  sandbox:   SandboxPool, SandboxConfig, ExecResult
"""

import importlib

_EXPORTS = {
    "load_tokenizer": "tokenizer",
    "build_tokenizer": "tokenizer",
    "chat_template": "tokenizer",
    "SPECIAL_TOKENS": "tokenizer",
    "ChatFormat": "chat",
    "MaskedTokens": "chat",
    "CODE_INTERPRETER_TOOL": "tools",
    "TOOLS": "tools",
    "EnginePolicy": "loop",
    "SandboxToolRunner": "loop",
    "ChatTurnCodec": "loop",
    "SandboxPool": "sandbox",
    "SandboxConfig": "sandbox",
    "ExecResult": "sandbox",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cleaner_jax.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cleaner_jax.agent.{_EXPORTS[name]}"), name)
