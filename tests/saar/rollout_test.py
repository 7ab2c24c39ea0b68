"""Every SAAR path of the rollout, driven by a scripted policy, with exact tokens and stats."""

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.saar import Provenance, RolloutLimits, SaarConfig, ToolResult, rollout
from cleaner_jax.saar.rollout import draw_saar_enabled
from cleaner_jax.saar.testing import (
    CharCodec,
    ScriptedPolicy,
    ScriptedTools,
    call_text,
    failure,
    scored_logprobs,
    scripted_logprobs,
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
SYNTAX = failure("SyntaxError", "'(' was never closed")
NAME = failure()


turn, ok_text = turn_text, success_text


def msg(*texts, note=None):
    return tool_message(CODEC, *texts, note=note)


DEFAULT = SaarConfig()


def run(turns, table=None, saar=DEFAULT, limits=None, seed=0, fallback=None):
    policy = ScriptedPolicy(CODEC, turns)
    tools = ScriptedTools(table, fallback)
    traj = asyncio.run(rollout(PROMPT, policy, tools, CODEC, saar=saar, limits=limits, seed=seed))
    return traj, policy, tools


def layout(traj):
    return [(seg.provenance, CODEC.decode(seg.tokens)) for seg in traj.segments]


def check_flat(traj, expected):
    """Token ids, loss mask and staleness of the whole trajectory against (provenance, text)."""
    assert layout(traj) == expected
    assert traj.tokens == CODEC.encode("".join(text for _, text in expected))
    mask = [int(p in (S, SH, DP)) for p, text in expected for _ in CODEC.encode(text)]
    assert traj.loss_mask == mask
    for seg in traj.segments:
        if seg.provenance in (P, T, FB):
            assert seg.logprobs == [0.0] * len(seg.tokens)


def test_success_first_try():
    t0 = turn("I compute. ", "print(6*7)")
    traj, policy, _ = run([t0, ANSWER])
    check_flat(traj, [(P, PROMPT_TEXT), (S, t0), (T, msg(ok_text("print(6*7)"))), (S, ANSWER)])
    assert traj.segments[1].logprobs == scripted_logprobs(0, len(CODEC.encode(t0)))
    assert traj.segments[3].logprobs == scripted_logprobs(1, len(CODEC.encode(ANSWER)))
    assert traj.termination == "answer"
    s = traj.stats
    assert (s.tool_calls, s.first_attempt_calls, s.first_attempt_successes) == (1, 1, 1)
    assert (s.rollbacks_triggered, s.retries, s.discarded_tokens, s.final_tool_failures) == (
        0,
        0,
        0,
        0,
    )
    assert policy.score_calls == []


def test_fail_then_shallow_fix():
    bad, good = "print(6*7", "print(6*7)"
    t0, r1 = turn("Reason A. ", bad), turn("Oops, paren. ", good)
    traj, policy, _ = run([t0, r1, ANSWER], {bad: SYNTAX})
    call_part = call_text(good) + "<|im_end|>"
    check_flat(
        traj,
        [
            (P, PROMPT_TEXT),
            (S, "Reason A. "),
            (SH, call_part),
            (T, msg(ok_text(good))),
            (S, ANSWER),
        ],
    )
    reasoning, spliced = traj.segments[1], traj.segments[2]
    # Old reasoning keeps its sampling log-probs (sampled under the clean checkpoint) ...
    assert reasoning.logprobs == scripted_logprobs(0, len("Reason A. "))
    assert not reasoning.stale_logprobs
    # ... the spliced call is re-scored under the purified context.
    purified_ctx = PROMPT + CODEC.encode("Reason A. ")
    assert policy.score_calls == [(purified_ctx, CODEC.encode(call_part))]
    assert spliced.logprobs == scored_logprobs(len(purified_ctx), len(spliced.tokens))
    assert not spliced.stale_logprobs and traj.stale_segments() == []
    # The retry saw the failed turn and the error; the next turn saw only the purified context.
    assert policy.contexts[1] == PROMPT + CODEC.encode(t0 + msg(SYNTAX.text))
    assert policy.contexts[2] == CODEC.encode(PROMPT_TEXT + "Reason A. " + call_part) + (
        CODEC.encode(msg(ok_text(good)))
    )
    s = traj.stats
    assert (s.rollbacks_triggered, s.rollbacks_recovered, s.rollbacks_failed) == (1, 1, 0)
    assert (s.shallow, s.deep, s.retries, s.tool_calls) == (1, 0, 1, 2)
    assert (s.first_attempt_calls, s.first_attempt_successes) == (1, 0)
    assert s.failure_types == {"SyntaxError": 1}
    assert s.final_tool_failures == 0
    assert s.rescored_tokens == len(spliced.tokens)
    discarded = len(CODEC.encode(t0)) - len("Reason A. ") + len(CODEC.encode(msg(SYNTAX.text)))
    discarded += len("Oops, paren. ")
    assert s.discarded_tokens == discarded
    assert s.response_tokens_spent == len(traj.response_tokens) + discarded


def test_fail_then_deep_fix():
    bad, good = "print(x)", "import sympy\nprint(sympy.Integer(6) * 7)"
    t0, r1 = turn("Reason A. ", bad), turn("Different plan: sympy. ", good)
    traj, policy, _ = run([t0, r1, ANSWER], {bad: NAME})
    check_flat(traj, [(P, PROMPT_TEXT), (DP, r1), (T, msg(ok_text(good))), (S, ANSWER)])
    assert policy.score_calls == [(PROMPT, CODEC.encode(r1))]
    assert traj.segments[1].logprobs == scored_logprobs(len(PROMPT), len(CODEC.encode(r1)))
    s = traj.stats
    assert (s.shallow, s.deep, s.rollbacks_recovered, s.final_tool_failures) == (0, 1, 1, 0)


def test_no_rescoring_leaves_spliced_segment_stale():
    bad, good = "print(x)", "import sympy\nprint(sympy.Integer(6) * 7)"
    r1 = turn("Plan B. ", good)
    saar = SaarConfig(recompute_spliced_logprobs=False)
    traj, policy, _ = run([turn("A. ", bad), r1, ANSWER], {bad: NAME}, saar=saar)
    assert policy.score_calls == []
    deep = traj.segments[1]
    assert deep.provenance is DP and deep.stale_logprobs
    assert deep.logprobs == scripted_logprobs(1, len(deep.tokens))  # the retry's own log-probs
    assert traj.stale_segments() == [1]
    assert traj.response_stale == [True] * len(deep.tokens) + [False] * (
        len(traj.response_tokens) - len(deep.tokens)
    )


def test_retries_exhausted_keep_last_failure_with_note_and_disable_rollback():
    codes = ["print(a)", "print(b)", "print(c)", "print(d)"]
    turns = [turn("R0. ", codes[0])] + [turn(f"Retry {i}. ", c) for i, c in enumerate(codes[1:])]
    later_bad = "print(undefined_name)"
    turns += [turn("New idea. ", later_bad), ANSWER]
    table = {c: NAME for c in [*codes, later_bad]}
    traj, policy, _ = run(turns, table)
    last_call = call_text(codes[-1]) + "<|im_end|>"
    note = CODEC.exhaustion_note(4)
    assert "attempted 4 times" in note and "different approach" in note
    check_flat(
        traj,
        [
            (P, PROMPT_TEXT),
            (S, "R0. "),
            (SH, last_call),
            (FB, msg(NAME.text, note=note)),
            (S, turns[4]),  # rollback is off now: the later failure stays as it is
            (FB, msg(NAME.text)),
            (S, ANSWER),
        ],
    )
    # Retry k saw the current (spliced) failing turn and its error, never the older attempts.
    for k in (2, 3):
        current = "R0. " + call_text(codes[k - 1]) + "<|im_end|>"
        assert policy.contexts[k] == CODEC.encode(PROMPT_TEXT + current + msg(NAME.text))
    s = traj.stats
    assert (s.rollbacks_triggered, s.rollbacks_recovered, s.rollbacks_failed) == (1, 0, 1)
    assert (s.exhaustions, s.retries, s.shallow, s.deep) == (1, 3, 3, 0)
    # Turn 4 follows a visible failure: a correction, not a first attempt.
    assert (s.tool_calls, s.first_attempt_calls, s.first_attempt_successes) == (5, 1, 0)
    assert s.failure_types == {"NameError": 5}
    assert s.final_tool_failures == 2
    assert len(policy.score_calls) == 3


def test_exhaustion_keeps_rollback_on_when_configured():
    turns = [turn("R0. ", "print(a)"), turn("R1. ", "print(b)"), turn("R2. ", "print(c)")]
    turns += [turn("R3. ", "print(d)"), ANSWER]
    saar = SaarConfig(max_retries=1, disable_after_exhaustion=False)
    table = {"print(a)": NAME, "print(b)": NAME, "print(c)": NAME}
    traj, _, _ = run(turns, table, saar=saar)
    # Position 1: one retry fails -> kept with "attempted 2 times"; position 2 rolls back again.
    note = CODEC.exhaustion_note(2)
    check_flat(
        traj,
        [
            (P, PROMPT_TEXT),
            (S, "R0. "),
            (SH, call_text("print(b)") + "<|im_end|>"),
            (FB, msg(NAME.text, note=note)),
            (S, "R2. "),
            (SH, call_text("print(d)") + "<|im_end|>"),
            (T, msg(ok_text("print(d)"))),
            (S, ANSWER),
        ],
    )
    assert (traj.stats.rollbacks_triggered, traj.stats.rollbacks_recovered) == (2, 1)


def test_retry_answers_without_call():
    t0 = turn("R0. ", "print(x)")
    traj, _, _ = run([t0, ANSWER, "never sampled<|im_end|>"], {"print(x)": NAME})
    check_flat(traj, [(P, PROMPT_TEXT), (S, t0), (FB, msg(NAME.text)), (S, ANSWER)])
    # The answer was sampled under exactly the context it now follows: fresh log-probs.
    assert traj.segments[3].logprobs == scripted_logprobs(1, len(CODEC.encode(ANSWER)))
    assert traj.termination == "answer"
    s = traj.stats
    assert (s.rollbacks_triggered, s.rollbacks_failed, s.retries, s.final_tool_failures) == (
        1,
        1,
        1,
        1,
    )


def test_length_budget_hit_during_retry_restores_checkpoint():
    t0 = turn("R0. ", "print(x)")
    spent = len(CODEC.encode(t0)) + len(CODEC.encode(msg(NAME.text)))
    limits = RolloutLimits(max_response_tokens=spent + 10)
    traj, policy, _ = run(
        [t0, turn("A long retry that cannot fit. ", "print(1)")], {"print(x)": NAME}, limits=limits
    )
    check_flat(traj, [(P, PROMPT_TEXT)])
    assert traj.termination == "length"
    assert policy.max_new_tokens == [spent + 10, 10]
    s = traj.stats
    assert s.response_tokens_spent == spent + 10 and s.rollbacks_failed == 1


def test_feedback_that_does_not_fit_restores_checkpoint():
    t0 = turn("R0. ", "print(x)")
    limits = RolloutLimits(max_response_tokens=len(CODEC.encode(t0)) + 5)
    traj, policy, _ = run([t0], {"print(x)": NAME}, limits=limits)
    check_flat(traj, [(P, PROMPT_TEXT)])
    assert traj.termination == "length" and len(policy.contexts) == 1


def test_turn_budget_hit_during_retry_restores_checkpoint():
    t0 = turn("R0. ", "print(6*7)")
    t1, r1 = turn("R1. ", "print(x)"), turn("R1b. ", "print(y)")
    limits = RolloutLimits(max_turns=3)
    traj, _, _ = run([t0, t1, r1], {"print(x)": NAME, "print(y)": NAME}, limits=limits)
    check_flat(traj, [(P, PROMPT_TEXT), (S, t0), (T, msg(ok_text("print(6*7)")))])
    assert traj.termination == "max_turns"
    assert (traj.stats.turns, traj.stats.retries, traj.stats.rollbacks_failed) == (3, 1, 1)


@pytest.mark.parametrize("probability, enabled", [(0.0, False), (1.0, True)])
def test_rollback_probability_extremes(probability, enabled):
    t0, r1 = turn("R0. ", "print(x)"), turn("R1. ", "print(6*7)")
    saar = SaarConfig(rollback_probability=probability)
    traj, _, _ = run([t0, r1, ANSWER], {"print(x)": NAME}, saar=saar)
    assert traj.saar_enabled is enabled and traj.stats.saar_enabled is enabled
    if enabled:
        assert [p for p, _ in layout(traj)] == [P, S, SH, T, S]
    else:
        # Baseline behaviour: the error stays and the model's fix follows it in context.
        check_flat(
            traj,
            [
                (P, PROMPT_TEXT),
                (S, t0),
                (FB, msg(NAME.text)),
                (S, r1),
                (T, msg(ok_text("print(6*7)"))),
                (S, ANSWER),
            ],
        )


def test_per_trajectory_draw_is_seeded():
    draws = [draw_saar_enabled(seed, 0.7) for seed in range(400)]
    assert draws == [draw_saar_enabled(seed, 0.7) for seed in range(400)]
    assert draws == [random.Random(seed).random() < 0.7 for seed in range(400)]
    assert 0.6 < sum(draws) / len(draws) < 0.8
    saar = SaarConfig(rollback_probability=0.7)
    for seed in range(6):
        t0, r1 = turn("R0. ", "print(x)"), turn("R1. ", "print(6*7)")
        traj, _, _ = run([t0, r1, ANSWER], {"print(x)": NAME}, saar=saar, seed=seed)
        assert traj.saar_enabled == draws[seed]
        assert (traj.stats.rollbacks_triggered == 1) == draws[seed]


def test_saar_off_is_baseline():
    t0, r1 = turn("R0. ", "print(x)"), turn("R1. ", "print(6*7)")
    traj, _, _ = run([t0, r1, ANSWER], {"print(x)": NAME}, saar=None)
    assert [p for p, _ in layout(traj)] == [P, S, FB, S, T, S]
    assert not traj.saar_enabled and traj.stats.final_tool_failures == 1


def test_infra_failure_is_shown_but_never_rolled_back():
    infra = ToolResult(
        ok=False,
        text="Tool call failure\nreason: sandbox_crashed\nstdout: \nstderr: ",
        reason="sandbox_crashed",
        infra_failure=True,
    )
    t0 = turn("R0. ", "print(6*7)")
    traj, policy, _ = run([t0, ANSWER], {"print(6*7)": infra})
    check_flat(traj, [(P, PROMPT_TEXT), (S, t0), (T, msg(infra.text)), (S, ANSWER)])
    s = traj.stats
    assert (s.infra_failures, s.rollbacks_triggered, s.failure_types) == (1, 0, {})
    assert (s.first_attempt_calls, s.first_attempt_successes, s.final_tool_failures) == (1, 0, 0)
    assert len(policy.contexts) == 2


def test_several_calls_in_one_turn():
    ok_code, bad, fixed = "print(6*7)", "print(x + 1)", "x = 1\nprint(x + 1)"
    t0 = turn("Two checks. ", ok_code, bad)
    r1 = turn("Define x. ", ok_code, fixed)
    traj, _, tools = run([t0, r1, ANSWER], {bad: NAME})
    calls_part = call_text(ok_code) + call_text(fixed) + "<|im_end|>"
    check_flat(
        traj,
        [
            (P, PROMPT_TEXT),
            (S, "Two checks. "),
            (SH, calls_part),
            (T, msg(ok_text(ok_code), ok_text(fixed))),
            (S, ANSWER),
        ],
    )
    assert [c.code for c in tools.calls] == [ok_code, bad, ok_code, fixed]
    s = traj.stats
    assert (s.tool_calls, s.first_attempt_calls, s.first_attempt_successes) == (4, 2, 1)
    assert (s.shallow, s.rollbacks_recovered) == (1, 1)


def test_calls_beyond_per_turn_limit_fail_visibly():
    codes = ["print(1)", "print(2)", "print(3)"]
    t0 = turn("Three. ", *codes)
    traj, _, tools = run([t0, ANSWER], saar=None, limits=RolloutLimits(max_calls_per_turn=2))
    assert [c.code for c in tools.calls] == codes[:2]
    tool_seg = traj.segments[2]
    assert tool_seg.provenance is FB and tool_seg.failures == 1
    assert "only the first 2 were executed" in CODEC.decode(tool_seg.tokens)
    assert traj.stats.failure_types == {"TooManyToolCalls": 1}


def test_malformed_call_is_a_model_error_and_rolled_back():
    t0 = "R0. <tool_call>{not json}</tool_call><|im_end|>"
    r1 = turn("R1. ", "print(6*7)")
    traj, _, tools = run([t0, r1, ANSWER])
    assert [p for p, _ in layout(traj)] == [P, DP, T, S]
    assert [c.code for c in tools.calls] == ["print(6*7)"]  # the malformed call never ran
    assert traj.stats.failure_types == {"ToolCallFormatError": 1}


@pytest.mark.parametrize("saar", [None, SaarConfig()])
def test_global_tool_attempt_cap(saar):
    n = 31
    turns = [turn(f"Step {i}. ", f"print({i})") for i in range(n)] + [ANSWER]
    limits = RolloutLimits(max_turns=n + 1, max_response_tokens=100_000)
    traj, _, tools = run(turns, saar=saar, limits=limits)
    assert len(tools.calls) == 30
    s = traj.stats
    assert (s.tool_calls, s.attempt_cap_hits, s.rollbacks_triggered) == (30, 1, 0)
    last_tool = traj.segments[-2]
    assert "Tool call limit reached (30" in CODEC.decode(last_tool.tokens)
    assert last_tool.provenance is T  # the cap is not the model's error
    assert traj.termination == "answer"


def test_attempt_cap_stops_retries():
    limits = RolloutLimits(max_tool_attempts=2)
    turns = [turn("R0. ", "print(a)"), turn("R1. ", "print(b)"), "Give up.<|im_end|>"]
    traj, policy, _ = run(turns, {"print(a)": NAME, "print(b)": NAME}, limits=limits)
    assert (traj.stats.retries, traj.stats.tool_calls, traj.stats.rollbacks_failed) == (1, 2, 1)
    assert [p for p, _ in layout(traj)] == [P, S, SH, FB, S]
    assert "attempted 2 times" in layout(traj)[3][1]


def test_last_turn_calls_are_not_executed():
    traj, _, tools = run([turn("R0. ", "print(1)")], limits=RolloutLimits(max_turns=1))
    assert tools.calls == [] and traj.termination == "max_turns"


def test_truncated_turn_ends_trajectory():
    traj, _, tools = run(["no stop token here"])
    assert traj.termination == "length" and tools.calls == []


_STEP = st.sampled_from(["ok", "fail", "answer", "infra"])


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(_STEP, min_size=1, max_size=12),
    budget=st.integers(30, 1500),
    max_turns=st.integers(1, 8),
    probability=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 3),
)
def test_budget_and_mask_invariants(steps, budget, max_turns, probability, seed):
    """Whatever the script, the trajectory never exceeds its budgets and its mask follows
    provenance."""
    table, turns = {}, []
    for i, step in enumerate(steps):
        code = f"print({i})"
        if step == "answer":
            turns.append(ANSWER)
            continue
        if step == "fail":
            table[code] = NAME
        elif step == "infra":
            table[code] = ToolResult(ok=False, text="infra", infra_failure=True)
        turns.append(turn(f"S{i}. ", code))
    turns += [ANSWER] * 20
    limits = RolloutLimits(max_turns=max_turns, max_response_tokens=budget)
    traj, policy, _ = run(
        turns, table, saar=SaarConfig(rollback_probability=probability), limits=limits, seed=seed
    )
    assert len(traj.response_tokens) <= traj.stats.response_tokens_spent <= budget
    assert traj.stats.turns == len(policy.contexts) <= max_turns
    assert traj.segments[0].provenance is P
    for seg in traj.segments:
        assert seg.loss_mask == int(seg.role == "assistant")
        assert not seg.stale_logprobs
    assert traj.termination in ("answer", "length", "max_turns")


class _VersionBumpingPolicy(ScriptedPolicy):
    """Weights change between the retry's sampling and its rescoring (a push in between)."""

    async def score(self, context_tokens, tokens):
        self.policy_version += 1
        return await super().score(context_tokens, tokens)


@pytest.mark.parametrize("kind", ["shallow", "deep"])
def test_versions_follow_the_weights_that_produced_each_logprob(kind):
    bad, good = ("print(6*7", "print(6*7)")
    if kind == "deep":
        bad, good = ("print(x)", "import sympy\nprint(sympy.Integer(6) * 7)")
    policy = _VersionBumpingPolicy(
        CODEC, [turn("Reason A. ", bad), turn("Fix. ", good), ANSWER], policy_version=3
    )
    tools = ScriptedTools({bad: SYNTAX})
    traj = asyncio.run(rollout(PROMPT, policy, tools, CODEC, saar=DEFAULT, seed=0))
    by_kind = {}
    for seg, v in zip(traj.segments, _split(traj.versions, traj.segments), strict=True):
        by_kind.setdefault(seg.provenance, []).extend(v)
    assert set(by_kind[P]) == {-1} and set(by_kind[T]) == {-1}
    spliced = SH if kind == "shallow" else DP
    assert set(by_kind[spliced]) == {4}  # rescored after the bump
    # The kept reasoning was sampled at 3 (shallow only), the answer after the bump at 4.
    assert set(by_kind[S]) == ({3, 4} if kind == "shallow" else {4})
    assert traj.segments[-1].versions == [4] * len(traj.segments[-1].tokens)


def _split(flat, segments):
    out, i = [], 0
    for seg in segments:
        out.append(flat[i : i + len(seg.tokens)])
        i += len(seg.tokens)
    return out


def test_policy_without_versions_reports_minus_one():
    traj, _, _ = run([ANSWER])
    assert set(traj.versions) == {-1} and len(traj.versions) == len(traj.tokens)
