"""Tool-call boundary search: by token id, and through byte pieces / offsets when the marker is
split over several tokens; both agree with a brute-force prefix decode (the reference way)."""

from hypothesis import given
from hypothesis import strategies as st

from cleaner_jax.saar import find_marker_by_offsets, find_marker_in_pieces, find_token

MARKER = "<tool_call>"


def _prefix_decode_reference(pieces, marker):
    """The quadratic way: decode every prefix until the marker appears; the marker starts in the
    token whose addition made its first character appear."""
    text = b"".join(pieces)
    pos = text.find(marker)
    if pos < 0:
        return None
    for i in range(len(pieces) + 1):
        if len(b"".join(pieces[: i + 1])) > pos:
            return i
    return None


def test_find_token_golden():
    assert find_token([5, 7, 2, 9, 2], 2) == 2
    assert find_token([5, 7], 2) is None
    assert find_token([], 2) is None


def test_marker_split_over_tokens_golden():
    pieces = [b"Let me ", b"check.<to", b"ol_", b"call>", b'{"name"']
    assert find_marker_in_pieces(pieces, MARKER.encode()) == 1
    text = b"".join(pieces).decode()
    starts = [0, 7, 16, 19, 24]
    assert find_marker_by_offsets(text, starts, MARKER) == 1
    assert find_marker_in_pieces([b"no call here"], MARKER.encode()) is None


@given(
    st.lists(
        st.sampled_from(["a", "b ", "<", "tool", "_call", ">", "<tool_call>", "é", "\n"]),
        max_size=30,
    )
)
def test_pieces_and_offsets_agree_with_prefix_decoding(parts):
    pieces = [p.encode() for p in parts]
    expected = _prefix_decode_reference(pieces, MARKER.encode())
    assert find_marker_in_pieces(pieces, MARKER.encode()) == expected
    starts, pos = [], 0
    for p in parts:
        starts.append(pos)
        pos += len(p)
    text = "".join(parts)
    by_offsets = find_marker_by_offsets(text, starts, MARKER)
    # Character and byte offsets name the same token (only ASCII before the marker matters
    # for the comparison when non-ASCII pieces precede it, the mapping is per unit).
    assert by_offsets == expected
