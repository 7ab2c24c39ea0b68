"""The reference-mode switches of the SAAR rollout, each against the reference implementation's
semantics (Open-CLEANER @91e40ad, verl `tool_agent_loop.py`), driven by a scripted policy.

Every test runs the same script under our default and under the switch, so it fails if the
switch does nothing.
"""

import asyncio
import difflib

import pytest

from cleaner_jax.saar import Provenance, RolloutLimits, SaarConfig, ToolResult, rollout
from cleaner_jax.saar.rollout import TRUNCATION_MIDDLE, truncate_middle
from cleaner_jax.saar.similarity import text_similarity, token_similarity
from cleaner_jax.saar.testing import (
    CharCodec,
    ScriptedPolicy,
    ScriptedTools,
    call_text,
    failure,
    success_text,
    tool_message,
    turn_text,
)

P, S, SH, DP, T, FB = (
    Provenance.PROMPT,
    Provenance.SAMPLED,
    Provenance.SPLICED_SHALLOW,
    Provenance.SPLICED_DEEP,
    Provenance.TOOL,
    Provenance.FEEDBACK,
)
CODEC = CharCodec()
PROMPT_TEXT = "<|im_start|>user\nWhat is 6*7?<|im_end|>\n<|im_start|>assistant\n"
PROMPT = CODEC.encode(PROMPT_TEXT)
ANSWER = "So \\boxed{42}.<|im_end|>"
NAME = failure()
INFRA = ToolResult(
    ok=False,
    text="Tool call failure\nreason: internal_error\nstdout: \nstderr: ",
    reason="internal_error",
    infra_failure=True,
)


turn, ok_text = turn_text, success_text


def msg(*texts, note=None):
    return tool_message(CODEC, *texts, note=note)


DEFAULT = SaarConfig()


def run(turns, table=None, saar=DEFAULT, limits=None, fallback=None):
    policy = ScriptedPolicy(CODEC, turns)
    tools = ScriptedTools(table, fallback)
    traj = asyncio.run(rollout(PROMPT, policy, tools, CODEC, saar=saar, limits=limits, seed=0))
    return traj, policy, tools


def layout(traj):
    return [(seg.provenance, CODEC.decode(seg.tokens)) for seg in traj.segments]


# --- infrastructure failures -------------------------------------------------------------------


def test_infra_failure_is_rolled_back_like_a_model_error_in_reference_mode():
    """Reference: any tool text without "Tool call success" (here code-judge's internal_error)
    triggers a rollback; ours shows it and goes on."""
    t0, r1 = turn("R0. ", "print(6*7)"), turn("R1. ", "print(6 * 7)")
    ours, _, _ = run([t0, ANSWER], {"print(6*7)": INFRA})
    assert [p for p, _ in layout(ours)] == [P, S, T, S]
    assert ours.stats.rollbacks_triggered == 0

    saar = SaarConfig(infra_failures_roll_back=True)
    traj, policy, _ = run([t0, r1, ANSWER], {"print(6*7)": INFRA}, saar=saar)
    assert layout(traj) == [
        (P, PROMPT_TEXT),
        (S, "R0. "),
        (SH, call_text("print(6 * 7)") + "<|im_end|>"),
        (T, msg(ok_text("print(6 * 7)"))),
        (S, ANSWER),
    ]
    # The retry saw the infrastructure failure's text as its error feedback.
    assert policy.contexts[1] == PROMPT + CODEC.encode(t0 + msg(INFRA.text))
    s = traj.stats
    assert (s.infra_failures, s.rollbacks_triggered, s.rollbacks_recovered) == (1, 1, 1)
    assert s.failure_types == {}  # still not counted as the model's error type


def test_infra_failure_kept_after_exhaustion_counts_as_a_failure_in_reference_mode():
    saar = SaarConfig(infra_failures_roll_back=True, max_retries=1)
    turns = [turn("R0. ", "print(1)"), turn("R1. ", "print(2)"), ANSWER]
    traj, _, _ = run(turns, {"print(1)": INFRA, "print(2)": INFRA}, saar=saar)
    assert [p for p, _ in layout(traj)] == [P, S, SH, FB, S]
    assert traj.stats.final_tool_failures == 1 and traj.stats.rollbacks_failed == 1


# --- the attempt cap vs the reference's round counter ------------------------------------------


def test_no_attempt_cap_runs_every_call():
    """Reference: no cap on tool calls (its 30 only turns rollback off)."""
    n = 31
    turns = [turn(f"Step {i}. ", f"print({i})") for i in range(n)] + [ANSWER]
    budget = dict(max_turns=n + 1, max_response_tokens=100_000)
    ours, _, tools = run(turns, limits=RolloutLimits(**budget))
    assert len(tools.calls) == 30 and ours.stats.attempt_cap_hits == 1
    traj, _, tools = run(turns, limits=RolloutLimits(max_tool_attempts=0, **budget))
    assert len(tools.calls) == n and traj.stats.attempt_cap_hits == 0
    assert traj.termination == "answer"


def test_rollback_turns_off_after_max_rounds():
    """Reference: once more than 30 tool rounds ran, a failure at a new position stays as is."""
    turns = [turn(f"Step {i}. ", f"print({i})") for i in range(3)]
    turns += [turn("Bad. ", "print(x)"), turn("Fix. ", "print(6*7)"), ANSWER]
    limits = RolloutLimits(max_tool_attempts=0)
    ours, _, _ = run(turns, {"print(x)": NAME}, limits=limits)
    assert ours.stats.rollbacks_triggered == 1
    saar = SaarConfig(max_rounds_before_disable=3)
    traj, _, _ = run(turns, {"print(x)": NAME}, saar=saar, limits=limits)
    assert [p for p, _ in layout(traj)] == [P, S, T, S, T, S, T, S, FB, S, T, S]
    assert traj.stats.rollbacks_triggered == 0 and traj.stats.final_tool_failures == 1


def test_round_limit_reached_mid_retry_ends_the_position_as_exhausted():
    """Reference: the round that crosses the limit is a retry -> `_handle_max_retry_exceeded`
    (the last error, no note with one retry), rollback off for the rest."""
    turns = [turn("Step. ", "print(1)"), turn("R0. ", "print(a)"), turn("R1. ", "print(b)")]
    turns += [turn("Later. ", "print(c)"), ANSWER]
    table = {"print(a)": NAME, "print(b)": NAME, "print(c)": NAME}
    saar = SaarConfig(max_rounds_before_disable=2, exhaustion_note="reference")
    traj, policy, _ = run(turns, table, saar=saar, limits=RolloutLimits(max_tool_attempts=0))
    assert layout(traj)[3:] == [
        (S, "R0. "),
        (SH, call_text("print(b)") + "<|im_end|>"),
        (FB, msg(NAME.text)),
        (S, turns[3]),  # rollback is off: this failure stays
        (FB, msg(NAME.text)),
        (S, ANSWER),
    ]
    s = traj.stats
    assert (s.rollbacks_triggered, s.rollbacks_failed, s.retries, s.exhaustions) == (1, 1, 1, 0)
    assert len(policy.contexts) == 5


# --- what the similarity compares ----------------------------------------------------------------

# A long call whose lines use only frequent characters: with difflib's autojunk every character
# of the code is "popular" (> 1% of the string), so an equal stretch between two edits has no
# anchor and is lost; only the tags and JSON keys at both ends of the tail anchor a match.
LONG = "\n".join(["total = total + step * rate", "step = step + total % rate"] * 40)
LONG += "\nprint(total)"


def _edit(code, lines):
    out = code.split("\n")
    for i in lines:
        out[i] = out[i].replace("+", "-")
    return "\n".join(out)


def _tail(code):
    return call_text(code) + "<|im_end|>"


def test_turn_tail_is_what_the_reference_compares():
    """The reference's string: from the first `<tool_call>` to the end of the turn, special
    tokens and trailing text kept. The JSON wrapper the two tails share makes a rewrite look
    similar: ours (code, tokens) 0.32 -> deep, the reference (tail, characters) 0.86 -> shallow,
    and the whole new tail (trailing text and stop token included) replaces the old one."""
    bad, rewrite = "print(x)", "import math\nprint(math.prod([6, 7]))"
    t0, r1 = turn("Reasoning A. ", bad), turn("Reasoning B. ", rewrite)[: -len("<|im_end|>")]
    r1 += " Done.<|im_end|>"
    old_tail, new_tail = _tail(bad), r1[len("Reasoning B. ") :]
    cfg = SaarConfig(similarity="reference", similarity_on="turn_tail")
    ratio = difflib.SequenceMatcher(None, old_tail, new_tail).ratio()
    assert text_similarity(old_tail, new_tail, cfg) == ratio and ratio > 0.8
    assert token_similarity(bad, rewrite) < 0.5
    ours, _, _ = run([t0, r1, ANSWER], {bad: NAME})
    assert [p for p, _ in layout(ours)][1] is DP
    traj, _, _ = run([t0, r1, ANSWER], {bad: NAME}, saar=cfg)
    assert layout(traj)[1:3] == [(S, "Reasoning A. "), (SH, new_tail)]


def test_turn_tail_includes_the_text_after_the_call():
    """A near-identical call followed by a long paragraph: the call texts match (shallow under
    `call_text`), the tails do not (the paragraph is part of the reference's string: deep)."""
    bad, fixed = "print(x)", "x = 6\nprint(x * 7)"
    paragraph = " I will now explain at length why this works. " * 8
    t0, r1 = turn("A. ", bad), turn("B. ", fixed)[: -len("<|im_end|>")] + paragraph + "<|im_end|>"
    call_cfg = SaarConfig(similarity="reference", similarity_on="call_text")
    tail_cfg = SaarConfig(similarity="reference", similarity_on="turn_tail")
    by_call, _, _ = run([t0, r1, ANSWER], {bad: NAME}, saar=call_cfg)
    by_tail, _, _ = run([t0, r1, ANSWER], {bad: NAME}, saar=tail_cfg)
    assert (by_call.stats.shallow, by_tail.stats.deep) == (1, 1)
    assert layout(by_tail)[1] == (DP, r1)


@pytest.mark.parametrize(
    "lines, reference_ratio",
    [([40], (0.99, 1.0)), ([16, 32, 48, 64], (0.3, 0.5))],
)
def test_autojunk_on_the_turn_tail(lines, reference_ratio):
    """One edit: the tags anchor both ends, ratio ~1. Four separated edits in a 2.4k-character
    call: the stretches between them are lost to autojunk and the fix goes deep, where our
    token similarity (and difflib without autojunk) keeps it shallow."""
    old, new = _tail(LONG), _tail(_edit(LONG, lines))
    assert len(old) > 2000
    lo, hi = reference_ratio
    ref = SaarConfig(similarity="reference", similarity_on="turn_tail")
    assert lo <= text_similarity(old, new, ref) <= hi
    assert difflib.SequenceMatcher(None, old, new, autojunk=False).ratio() > 0.99
    assert token_similarity(old, new) > 0.99
    t0, r1 = turn("Plan. ", LONG), turn("Fixed. ", _edit(LONG, lines))
    ref_traj, _, _ = run([t0, r1, ANSWER], {LONG: NAME}, saar=ref)
    ours, _, _ = run([t0, r1, ANSWER], {LONG: NAME})
    assert ours.stats.shallow == 1
    assert (ref_traj.stats.shallow, ref_traj.stats.deep) == ((1, 0) if lo >= 0.5 else (0, 1))


# --- calls per turn, tool text cut, exhaustion note, turn budget -----------------------------


def test_extra_calls_are_ignored_in_reference_mode():
    """Reference (`max_parallel_calls=1`): only the first call runs, the others get no answer."""
    codes = ["print(1)", "print(2)"]
    t0 = turn("Two. ", *codes)
    ours, _, tools = run([t0, ANSWER], saar=None, limits=RolloutLimits(max_calls_per_turn=1))
    assert [c.code for c in tools.calls] == ["print(1)"] and ours.stats.failure_types
    limits = RolloutLimits(max_calls_per_turn=1, extra_calls="ignore")
    traj, _, tools = run([t0, ANSWER], saar=None, limits=limits)
    assert [c.code for c in tools.calls] == ["print(1)"]
    assert layout(traj) == [(P, PROMPT_TEXT), (S, t0), (T, msg(ok_text("print(1)"))), (S, ANSWER)]
    assert traj.stats.failure_types == {} and traj.stats.tool_calls == 1


def test_truncate_middle_is_the_references_cut():
    text = "a" * 100 + "b" * 100 + "c" * 100
    assert truncate_middle(text, 256) == "a" * 100 + "b" * 28 + TRUNCATION_MIDDLE + "b" * 28 + (
        "c" * 100
    )
    assert truncate_middle(text[:256], 256) == text[:256]
    assert truncate_middle(text, 0) == text


def test_tool_text_cut_reaches_the_message_and_the_retry_feedback():
    long_error = failure("ValueError", "x" * 400)
    t0, r1 = turn("R0. ", "print(a)"), turn("R1. ", "print(b)")
    limits = RolloutLimits(max_tool_response_chars=256)
    long_ok = ToolResult(ok=True, text="Tool call success\nstdout: " + "7" * 500)
    table = {"print(a)": long_error, "print(b)": long_ok}
    traj, policy, _ = run([t0, r1, ANSWER], table, limits=limits)
    cut_error, cut_ok = truncate_middle(long_error.text, 256), truncate_middle(long_ok.text, 256)
    assert len(cut_error) == 256 + len(TRUNCATION_MIDDLE)
    assert policy.contexts[1] == PROMPT + CODEC.encode(t0 + msg(cut_error))
    assert layout(traj)[3] == (T, msg(cut_ok))
    ours, _, _ = run([t0, r1, ANSWER], table)
    assert layout(ours)[3] == (T, msg(long_ok.text))


def test_reference_exhaustion_note_counts_retries():
    """K=3: the reference's note says 3 (retries), ours 4 (failed executions)."""
    codes = ["print(a)", "print(b)", "print(c)", "print(d)"]
    turns = [turn("R0. ", codes[0])] + [turn(f"Retry {i}. ", c) for i, c in enumerate(codes[1:])]
    turns.append(ANSWER)
    table = {c: NAME for c in codes}
    ours, _, _ = run(turns, table)
    assert layout(ours)[3] == (FB, msg(NAME.text, note=CODEC.exhaustion_note(4)))
    traj, _, _ = run(turns, table, saar=SaarConfig(exhaustion_note="reference"))
    note = (
        "Note: This approach has been attempted 3 times with the same type of error. Consider "
        "trying a different algorithm, method, or approach to solve this problem."
    )
    assert layout(traj)[3] == (FB, msg(NAME.text, note=note))


def test_reference_exhaustion_note_needs_two_retries():
    turns = [turn("R0. ", "print(a)"), turn("R1. ", "print(b)"), ANSWER]
    saar = SaarConfig(max_retries=1, exhaustion_note="reference")
    traj, _, _ = run(turns, {"print(a)": NAME, "print(b)": NAME}, saar=saar)
    assert layout(traj)[3] == (FB, msg(NAME.text))  # one retry: no note


def test_retries_outside_the_turn_budget():
    """Reference: retries restore the turn counters; ours pays a turn per retry."""
    turns = [turn("R0. ", "print(a)"), turn("R1. ", "print(b)"), turn("R2. ", "print(6*7)")]
    turns.append(ANSWER)
    table = {"print(a)": NAME, "print(b)": NAME}
    ours, _, _ = run(turns, table, limits=RolloutLimits(max_turns=3))
    assert ours.termination == "max_turns" and ours.stats.turns == 3
    limits = RolloutLimits(max_turns=3, retries_count_as_turns=False)
    traj, _, _ = run(turns, table, limits=limits)
    assert traj.termination == "answer" and traj.stats.turns == 2
    assert traj.stats.rollbacks_recovered == 1


def test_a_retry_reaching_the_turn_budget_ends_at_the_checkpoint():
    """Reference: a retry whose kept turns + 1 reach max_turns and that calls a tool ends the
    trajectory (its checkpoint restored)."""
    turns = [turn("Step. ", "print(1)"), turn("R0. ", "print(a)"), turn("R1. ", "print(b)")]
    limits = RolloutLimits(max_turns=3, retries_count_as_turns=False)
    traj, _, tools = run(turns, {"print(a)": NAME}, limits=limits)
    assert traj.termination == "max_turns"
    assert [p for p, _ in layout(traj)] == [P, S, T]
    assert [c.code for c in tools.calls] == ["print(1)", "print(a)"]
