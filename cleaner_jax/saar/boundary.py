"""Where the tool call starts in an assistant turn, in O(n).

The SAAR shallow splice keeps the reasoning tokens before the call and replaces the call
tokens, so it needs the token index where the call starts. When the call marker (Qwen's
`<tool_call>`) is a single token, that is a scan for its id. Otherwise the marker is found in
the turn's bytes and mapped back to a token index through cumulative byte offsets of the
per-token pieces: one pass, where the reference decodes every prefix (quadratic).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


def find_token(tokens: Sequence[int], token_id: int) -> int | None:
    """Index of the first occurrence of `token_id`, None if absent."""
    for i, t in enumerate(tokens):
        if t == token_id:
            return i
    return None


def find_marker_in_pieces(pieces: Sequence[bytes], marker: bytes) -> int | None:
    """Index of the token in which `marker` starts, given each token's bytes.

    `pieces[i]` is the byte string token i contributes to the decoded text (byte-level BPE
    tokens decode to exact bytes). A marker that starts inside a token belongs to that token, so
    the whole token goes to the call part.
    """
    if not marker:
        raise ValueError("marker must be a non-empty byte string.")
    pos = b"".join(pieces).find(marker)
    if pos < 0:
        return None
    # ends[i] = byte offset one past token i; the token containing byte `pos` is the first with
    # ends[i] > pos.
    ends = list(itertools.accumulate(len(p) for p in pieces))
    return bisect.bisect_right(ends, pos)


def find_marker_by_offsets(text: str, starts: Sequence[int], marker: str) -> int | None:
    """Same as `find_marker_in_pieces` from a decoded text and per-token start offsets
    (`starts[i]` = character offset where token i's text begins, non-decreasing)."""
    pos = text.find(marker)
    if pos < 0:
        return None
    return bisect.bisect_right(starts, pos) - 1
