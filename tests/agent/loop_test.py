"""Agent-loop adapters over the real tokenizer (tiny Qwen-format BPE) and the real sandbox."""

import asyncio
import dataclasses
import json
import random

import pytest

from cleaner_jax.agent import chat as chat_lib
from cleaner_jax.agent import tokenizer as tokenizer_lib
from cleaner_jax.agent.loop import ChatTurnCodec, EnginePolicy, SandboxToolRunner, run_rollouts
from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.saar import (
    Generation,
    Provenance,
    RolloutLimits,
    SaarConfig,
    find_marker_in_pieces,
)


def corpus(n=200, seed=0):
    rng = random.Random(seed)
    words = "let me compute the answer with python code print result error fix it now".split()
    texts = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        call = json.dumps({"name": "code_interpreter", "arguments": {"code": f"print({a} + {b})"}})
        texts.append(f"{sentence}\n<tool_call>\n{call}\n</tool_call>\n\\boxed{{{a + b}}}.")
    return texts


@pytest.fixture(scope="module")
def chat():
    return chat_lib.ChatFormat(tokenizer_lib.build_tokenizer(corpus(), 400))


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(num_workers=2, timeout_s=10.0, preimport=("math",))) as p:
        yield p


def call(code):
    payload = json.dumps({"name": "code_interpreter", "arguments": {"code": code}})
    return f"<tool_call>\n{payload}\n</tool_call>"


class TextPolicy:
    """Replays assistant texts per prompt (keyed by the prompt's first user text)."""

    def __init__(self, chat, scripts):
        self.chat, self.scripts = chat, {k: list(v) for k, v in scripts.items()}
        self.scored = []

    def _key(self, context):
        text = self.chat.decode(context)
        return next(k for k in self.scripts if k in text)

    async def generate(self, context, max_new_tokens):
        await asyncio.sleep(0)  # let other trajectories interleave
        tokens = self.chat.assistant_turn_tokens(self.scripts[self._key(context)].pop(0))
        return Generation(tokens, [-0.5] * len(tokens), "stop")

    async def score(self, context, tokens):
        self.scored.append(len(tokens))
        return [-0.25] * len(tokens)


def test_codec_boundary_by_id_and_by_bytes_agree(chat):
    codec = ChatTurnCodec(chat)
    assert chat.tool_call_id is not None
    for reasoning in ["", "let me compute", "é ünïcode then ", "x" * 50]:
        turn = chat.assistant_turn_tokens(reasoning + call("print(1 + 2)"))
        by_id = codec.call_start(turn)
        assert chat.decode(turn[:by_id]) == reasoning
        pieces = codec.token_bytes(turn)
        assert b"".join(pieces) == chat.decode(turn).encode()
        assert find_marker_in_pieces(pieces, b"<tool_call>") == by_id
    assert codec.call_start(chat.assistant_turn_tokens("no call")) is None


def test_codec_tool_response_and_note(chat):
    codec = ChatTurnCodec(chat)
    texts = ["Tool call success\nstdout: 3\n", "Tool call failure\nreason: \nstderr: x"]
    assert codec.encode_tool_response(texts) == chat.tool_response_tokens(texts)
    note = codec.exhaustion_note(3)
    assert "attempted 3 times" in note and "different approach" in note
    with_note = chat.decode(codec.encode_tool_response(["err"], note))
    assert with_note.startswith("\n<|im_start|>user\n<tool_response>\nerr\n\n" + note)
    assert with_note.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_codec_parses_malformed_calls_visibly(chat):
    codec = ChatTurnCodec(chat)
    [c] = codec.parse_calls(chat.assistant_turn_tokens("<tool_call>\n{oops\n</tool_call>"))
    assert c.error is not None and c.error.startswith("[tool_parser_error]")


def test_run_rollouts_with_real_sandbox_and_saar(chat, pool):
    codec = ChatTurnCodec(chat)
    scripts = {
        "first question": ["let me compute" + call("print(6 * 7)"), "the answer is \\boxed{42}."],
        "second question": [
            "let me compute" + call("print(x + 1)"),
            "fix it now" + call("x = 41\nprint(x + 1)"),
            "the answer is \\boxed{42}.",
        ],
    }
    policy = TextPolicy(chat, scripts)
    prompts = [
        chat.prompt_tokens([{"role": "user", "content": q}])
        for q in ("first question", "second question")
    ]
    trajs = asyncio.run(
        run_rollouts(prompts, policy, SandboxToolRunner(pool), codec, SaarConfig(), seeds=[0, 1])
    )
    first, second = trajs
    assert [s.provenance for s in first.segments] == [
        Provenance.PROMPT,
        Provenance.SAMPLED,
        Provenance.TOOL,
        Provenance.SAMPLED,
    ]
    assert chat.decode(first.segments[2].tokens) == chat.decode(
        chat.tool_response_tokens(["Tool call success\nstdout: 42\n"])
    )
    # The real NameError was rolled back: shallow splice, error gone from the trajectory.
    assert [s.provenance for s in second.segments] == [
        Provenance.PROMPT,
        Provenance.SAMPLED,
        Provenance.SPLICED_SHALLOW,
        Provenance.TOOL,
        Provenance.SAMPLED,
    ]
    assert chat.decode(second.segments[1].tokens) == "let me compute"
    assert chat.decode(second.segments[2].tokens) == call("x = 41\nprint(x + 1)") + "<|im_end|>"
    assert "NameError" not in chat.decode(second.tokens)
    assert second.segments[2].logprobs == [-0.25] * len(second.segments[2].tokens)
    s = second.stats
    assert (s.rollbacks_recovered, s.shallow, s.failure_types) == (1, 1, {"NameError": 1})
    assert second.response_loss_mask.count(1) == sum(
        len(seg.tokens) for seg in second.segments if seg.role == "assistant"
    )


# Appends a line to a file in the sandbox's temp dir and prints how many lines it holds: 2 if
# a re-execution saw the first execution's file.
APPEND = (
    "import os, tempfile\n"
    "path = os.path.join(tempfile.gettempdir(), 'log.txt')\n"
    "open(path, 'a').write('line\\n')\n"
    "print(len(open(path).read().splitlines()))"
)


def _two_call_rollout(chat, pool, limits):
    codec = ChatTurnCodec(chat)
    scripts = {
        "two calls": [
            "let me compute" + call(APPEND) + call("print(y + 1)"),
            "fix it now" + call(APPEND) + call("y = 41\nprint(y + 1)"),
            "the answer is \\boxed{42}.",
        ]
    }
    prompt = chat.prompt_tokens([{"role": "user", "content": "two calls"}])
    tools = SandboxToolRunner(pool)
    (traj,) = asyncio.run(
        run_rollouts([prompt], TextPolicy(chat, scripts), tools, codec, SaarConfig(), limits=limits)
    )
    return traj


def test_shallow_retry_of_a_two_call_turn_reruns_the_succeeded_call_in_a_fresh_sandbox(chat):
    """The spliced turn's calls are answered by outputs of that turn, so the call that had
    succeeded runs again (as in the reference, which re-executes every call of the retry turn).
    Each call gets a fresh child with its own temp dir, so its side effects do not pile up: the
    appended file holds one line on the re-run too."""
    # One worker: a temp dir that outlived its call would be seen by the re-run.
    with SandboxPool(SandboxConfig(num_workers=1, timeout_s=10.0, preimport=())) as one:
        traj = _two_call_rollout(chat, one, None)
    assert [s.provenance for s in traj.segments] == [
        Provenance.PROMPT,
        Provenance.SAMPLED,
        Provenance.SPLICED_SHALLOW,
        Provenance.TOOL,
        Provenance.SAMPLED,
    ]
    assert traj.stats.tool_calls == 4  # 2 in the failed turn, 2 in the spliced one
    assert chat.decode(traj.segments[3].tokens) == chat.decode(
        chat.tool_response_tokens(
            ["Tool call success\nstdout: 1\n", "Tool call success\nstdout: 42\n"]
        )
    )


def test_reference_runs_only_the_first_call_of_a_turn(chat, pool):
    """Reference (`max_parallel_calls=1`): the second call is neither run nor answered, so the
    failing call never fails and nothing is rolled back."""
    limits = RolloutLimits(max_calls_per_turn=1, extra_calls="ignore")
    traj = _two_call_rollout(chat, pool, limits)
    # The script's second turn now comes as a normal turn (nothing failed), then the answer.
    assert [s.provenance for s in traj.segments] == [Provenance.PROMPT] + [
        Provenance.SAMPLED,
        Provenance.TOOL,
    ] * 2 + [Provenance.SAMPLED]
    one_result = chat.tool_response_tokens(["Tool call success\nstdout: 1\n"])
    assert [chat.decode(traj.segments[i].tokens) for i in (2, 4)] == [chat.decode(one_result)] * 2
    assert (traj.stats.tool_calls, traj.stats.rollbacks_triggered) == (2, 0)


@dataclasses.dataclass
class _Params:
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    stop_token_ids: tuple
    seed: int | None


class _EchoEngine:
    """Implements the engine API EnginePolicy relies on (the engine module is not built yet)."""

    def __init__(self):
        self.requests = []

    async def generate(self, prompt_tokens, sampling):
        self.requests.append((prompt_tokens, sampling))
        out = prompt_tokens[-2:][: sampling.max_new_tokens]
        return type(
            "R",
            (),
            {
                "tokens": out,
                "logprobs": [-1.0] * len(out),
                "finish_reason": "length",
                "cached_prompt_tokens": 0,
            },
        )()

    async def score(self, tokens, start, temperature=1.0):
        return [-float(t) / temperature for t in tokens[start:]]


def test_engine_policy_adapter():
    engine = _EchoEngine()
    policy = EnginePolicy(
        engine, stop_token_ids=[7, 8], top_p=0.6, seed=10, sampling_params_cls=_Params
    )
    gen = asyncio.run(policy.generate([1, 2, 3], 5))
    assert (gen.tokens, gen.finish_reason) == ([2, 3], "length")
    asyncio.run(policy.generate([4], 1))
    params = [p for _, p in engine.requests]
    assert [p.seed for p in params] == [10, 11] and params[0].stop_token_ids == (7, 8)
    assert [p.max_new_tokens for p in params] == [5, 1] and params[0].top_p == 0.6
    assert asyncio.run(policy.score([1, 2], [5, 6])) == [-5.0, -6.0]
    # Rescoring happens at the sampling temperature (the spliced tokens' behaviour log-probs).
    hot = EnginePolicy(engine, stop_token_ids=[7], temperature=2.0, sampling_params_cls=_Params)
    assert asyncio.run(hot.score([1, 2], [5, 6])) == [-2.5, -3.0]
