"""Tool-call parser: every malformation fails visibly, arbitrary text never raises, and
well-formed calls round-trip; final-answer extraction."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.agent.parser import (
    JSON_ERROR,
    MISSING_CODE_ERROR,
    UNCLOSED_ERROR,
    UNKNOWN_TOOL_ERROR,
    extract_boxed,
    extract_final_code,
    parse_tool_calls,
)
from cleaner_jax.saar import FORMAT_ERROR


def call(code, name="code_interpreter"):
    return "<tool_call>" + json.dumps({"name": name, "arguments": {"code": code}}) + "</tool_call>"


def test_well_formed_call():
    text = "Let me compute.\n" + call("print(6*7)") + "<|im_end|>"
    [c] = parse_tool_calls(text)
    assert (c.name, c.code, c.error, c.repaired) == ("code_interpreter", "print(6*7)", None, False)
    assert c.text == call("print(6*7)")


def test_no_call():
    assert parse_tool_calls("The answer is \\boxed{42}.<|im_end|>") == []


def test_broken_json_is_repaired_but_fails_visibly():
    text = '<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(1)"}</tool_call>'
    [c] = parse_tool_calls(text)
    assert c.repaired and c.code == "print(1)" and c.error_type == JSON_ERROR
    assert c.error.startswith("[tool_parser_error] the tool call is not valid JSON")
    assert "<tool_call>...</tool_call>" in c.error
    [ok] = parse_tool_calls(text, execute_repaired=True)
    assert ok.error is None and ok.repaired and ok.code == "print(1)"


def test_unrepairable_json():
    [c] = parse_tool_calls("<tool_call>this is not json at all</tool_call>")
    assert c.error_type == JSON_ERROR and c.code is None and not c.repaired


def test_unknown_tool_keeps_code_for_similarity():
    [c] = parse_tool_calls(call("print(1)", name="python"))
    assert c.error_type == UNKNOWN_TOOL_ERROR and c.code == "print(1)"
    assert "unknown tool 'python'" in c.error and "'code_interpreter'" in c.error


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "code_interpreter", "arguments": {}},
        {"name": "code_interpreter", "arguments": {"code": 5}},
        {"name": "code_interpreter", "arguments": {"script": "print(1)"}},
    ],
)
def test_missing_or_non_string_code(payload):
    [c] = parse_tool_calls("<tool_call>" + json.dumps(payload) + "</tool_call>")
    assert c.error_type == MISSING_CODE_ERROR and c.code is None


def test_arguments_as_json_string_are_accepted():
    payload = {"name": "code_interpreter", "arguments": json.dumps({"code": "print(2)"})}
    [c] = parse_tool_calls("<tool_call>" + json.dumps(payload) + "</tool_call>")
    assert c.error is None and c.code == "print(2)"


def test_unclosed_tag():
    text = "Try: " + call("print(3)")[: -len("</tool_call>")] + "<|im_end|>"
    [c] = parse_tool_calls(text)
    assert c.error_type == UNCLOSED_ERROR and c.code == "print(3)"
    assert "not closed" in c.error


def test_stray_closing_tag_and_several_calls():
    text = call("a = 1") + " and " + call("print(a)") + ' oops {"x": 1}</tool_call>'
    calls = parse_tool_calls(text)
    assert [c.code for c in calls] == ["a = 1", "print(a)", None]
    assert [c.error is None for c in calls] == [True, True, False]
    assert "without a matching" in calls[2].error
    assert calls[2].error_type == FORMAT_ERROR


@pytest.mark.parametrize("body", ["[1, 2]", '{"arguments": {"code": "print(1)"}}'])
def test_non_object_or_nameless_call_is_the_cores_format_error(body):
    """The generic malformation class is the SAAR core's constant (one definition)."""
    [c] = parse_tool_calls("<tool_call>" + body + "</tool_call>")
    assert c.error_type == FORMAT_ERROR == "ToolCallFormatError"


def test_unclosed_followed_by_a_good_call():
    text = '<tool_call>{"name": "code_interpreter"' + call("print(4)")
    calls = parse_tool_calls(text)
    assert len(calls) == 2
    assert calls[0].error_type == UNCLOSED_ERROR
    assert calls[1].error is None and calls[1].code == "print(4)"


_SAFE_TEXT = st.text().filter(lambda s: "<tool_call>" not in s and "</tool_call>" not in s)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    for c in parse_tool_calls(text):
        assert (c.error is None) == (c.error_type is None)
        if c.error is None:
            assert isinstance(c.code, str)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(_SAFE_TEXT, st.sampled_from(["<tool_call>", "</tool_call>", "{", '"']))),
)
def test_tag_soup_never_raises_and_reports_every_tag(parts):
    text = "".join(a + b for a, b in parts)
    calls = parse_tool_calls(text)
    opens, closes = text.count("<tool_call>"), text.count("</tool_call>")
    # Every opening tag yields a call and every closing tag is consumed by one or reported.
    assert len(calls) >= opens
    assert len(calls) <= opens + closes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_SAFE_TEXT, _SAFE_TEXT), min_size=1, max_size=4), _SAFE_TEXT)
def test_well_formed_calls_round_trip(pairs, tail):
    text = "".join(prose + call(code) for prose, code in pairs) + tail
    calls = parse_tool_calls(text)
    assert [c.code for c in calls] == [code for _, code in pairs]
    assert all(c.error is None and c.name == "code_interpreter" for c in calls)
    assert [c.text for c in calls] == [call(code) for _, code in pairs]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {x^{2}}", "x^{2}"),
        ("\\boxed{7} and an unclosed \\boxed{8", "7"),
        ("no answer", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_final_code():
    text = "```python\nprint(1)\n```\ntext\n```python\ndef f():\n    return 2\n```\n```python\nx"
    assert extract_final_code(text) == "def f():\n    return 2\n"
    assert extract_final_code("no code") is None
