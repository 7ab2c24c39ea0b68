"""Similarity between a failed tool call and its correction, and the shallow/deep decision.

Default ("tokens"): `difflib.SequenceMatcher(autojunk=False)` over lexical tokens (`\\w+|\\S`) of
the two code strings. Near-identical code scores ~0.8-1.0 and unrelated code ~0.1-0.2 at any
length, at ~0.1-1 ms for calls up to ~800 characters.

"reference": `SequenceMatcher(None, old, new).ratio()` on characters with difflib's default
autojunk, as the CLEANER reference computes it. For strings of 200+ characters autojunk discards
every character that makes up more than 1% of the second string (spaces, letters, parentheses),
so a long near-identical pair can score 0.00 and be spliced "deep". Kept for replication.
"""

from __future__ import annotations

import difflib
import re

from .config import SaarConfig
from .types import ToolCall

_LEXICAL_TOKEN = re.compile(r"\w+|\S")


def lexical_tokens(text: str) -> list[str]:
    """Identifiers/numbers as one token each, every other non-space character on its own."""
    return _LEXICAL_TOKEN.findall(text)


def token_similarity(old: str, new: str) -> float:
    """difflib ratio over lexical tokens, autojunk off (the default similarity)."""
    if old == new:
        return 1.0
    a, b = lexical_tokens(old), lexical_tokens(new)
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def reference_similarity(old: str, new: str) -> float:
    """Exactly the reference: character-level difflib ratio with default autojunk."""
    return difflib.SequenceMatcher(None, old, new).ratio()


def call_similarity(old: ToolCall, new: ToolCall, config: SaarConfig) -> float:
    """Similarity of two calls as configured.

    With `similarity_on="code"` a call without readable code (malformed JSON, missing argument)
    is compared through its whole call text instead, so such calls still get a meaningful score.
    """
    if config.similarity_on == "code" and old.code is not None and new.code is not None:
        a, b = old.code, new.code
    else:
        a, b = old.text, new.text
    if config.similarity == "reference":
        return reference_similarity(a, b)
    return token_similarity(a, b)


def is_shallow(similarity: float, gamma: float) -> bool:
    """similarity >= gamma: the fix is a repair of the same approach, keep the reasoning."""
    return similarity >= gamma
