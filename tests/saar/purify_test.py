"""Offline purification of recorded self-correcting trajectories."""

from cleaner_jax.saar import Provenance, SaarConfig, Segment, Trajectory, purify
from cleaner_jax.saar.testing import CharCodec, call_text

CODEC = CharCodec()
P, S, SH, DP, T, FB = (
    Provenance.PROMPT,
    Provenance.SAMPLED,
    Provenance.SPLICED_SHALLOW,
    Provenance.SPLICED_DEEP,
    Provenance.TOOL,
    Provenance.FEEDBACK,
)


def assistant(text, k):
    tokens = CODEC.encode(text)
    return Segment("assistant", tokens, S, [-float(k)] * len(tokens))


def tool(text, failures):
    return Segment.tool(CODEC.encode(text), failures)


def recorded(*parts):
    segs = [Segment.prompt(CODEC.encode("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"))]
    return Trajectory(segments=segs + list(parts), termination="answer")


def layout(traj):
    return [(s.provenance, CODEC.decode(s.tokens), s.stale_logprobs) for s in traj.segments]


def test_shallow_recovery_after_two_failures():
    a = assistant("Plan. " + call_text("print(6*7") + "<|im_end|>", 1)
    b = assistant("Fix 1. " + call_text("print(6*7]") + "<|im_end|>", 2)
    c = assistant("Fix 2. " + call_text("print(6*7)") + "<|im_end|>", 3)
    ans = assistant("\\boxed{42}<|im_end|>", 4)
    traj = recorded(a, tool("err1", 1), b, tool("err2", 1), c, tool("42", 0), ans)
    out = purify(traj, CODEC)
    assert layout(out)[1:] == [
        (S, "Plan. ", False),
        (SH, call_text("print(6*7)") + "<|im_end|>", True),
        (T, CODEC.decode(CODEC.encode("42")), False),
        (S, "\\boxed{42}<|im_end|>", False),
    ]
    assert out.segments[1].logprobs == [-1.0] * len("Plan. ")
    assert out.segments[2].logprobs == [-3.0] * len(out.segments[2].tokens)
    assert out.stale_segments() == [2]
    s = out.stats
    assert (s.rollbacks_triggered, s.rollbacks_recovered, s.shallow, s.deep) == (1, 1, 2, 0)
    # The input is not modified.
    assert len(traj.segments) == 8 and traj.segments[1].provenance is S


def test_deep_recovery():
    a = assistant("Plan. " + call_text("print(x)") + "<|im_end|>", 1)
    b = assistant(
        "New plan. " + call_text("import sympy\nprint(sympy.Integer(6) * 7)") + "<|im_end|>", 2
    )
    traj = recorded(a, tool("err", 1), b, tool("42", 0))
    out = purify(traj, CODEC)
    assert [(p, st) for p, _, st in layout(out)] == [(P, False), (DP, True), (T, False)]
    assert out.segments[1].tokens == b.tokens


def test_unrecovered_chains_are_untouched():
    a = assistant("Plan. " + call_text("print(x)") + "<|im_end|>", 1)
    answer = assistant("I give up.<|im_end|>", 2)
    traj = recorded(a, tool("err", 1), answer)
    assert layout(purify(traj, CODEC)) == layout(traj)
    fails = [assistant(f"T{i}. " + call_text(f"print(v{i})") + "<|im_end|>", i) for i in range(5)]
    parts = []
    for f in fails:
        parts += [f, tool("err", 1)]
    traj = recorded(*parts, assistant(call_text("print(1)") + "<|im_end|>", 9), tool("1", 0))
    out = purify(traj, CODEC, SaarConfig(max_retries=2))
    # Chains from T0, T1, T2 need more than 2 corrections; the one from T3 recovers at once.
    assert (out.stats.rollbacks_recovered, out.stats.rollbacks_failed) == (1, 3)
    kept = [CODEC.decode(s.tokens)[:3] for s in out.segments[1:] if s.role == "assistant"]
    assert kept == ["T0.", "T1.", "T2.", "T3.", "<to"]  # T3's reasoning + the spliced call
    assert out.segments[-2].provenance is SH and out.segments[-1].provenance is T


def test_turn_tail_similarity_compares_the_tails_as_the_rollout_does():
    """`similarity_on="turn_tail"`: the paragraph after the fixed call is part of the compared
    string, so the fix that `call_text` keeps shallow goes deep."""
    paragraph = " I will now explain at length why this works. " * 8
    a = assistant("A. " + call_text("print(x)") + "<|im_end|>", 1)
    b = assistant("B. " + call_text("x = 6\nprint(x * 7)") + paragraph + "<|im_end|>", 2)
    ans = assistant("\\boxed{42}<|im_end|>", 3)
    traj = recorded(a, tool("err", 1), b, tool("42", 0), ans)
    by_call = purify(traj, CODEC, SaarConfig(similarity="reference", similarity_on="call_text"))
    by_tail = purify(traj, CODEC, SaarConfig(similarity="reference", similarity_on="turn_tail"))
    assert (by_call.stats.shallow, by_tail.stats.deep) == (1, 1)
    assert [p for p, _, _ in layout(by_tail)][1:] == [DP, T, S]
