"""Tests for cleaner_jax.agent.chat: token-in/token-out turns equal the template's rendering."""

import json
import random
import re
import unicodedata

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from cleaner_jax.agent import chat
from cleaner_jax.agent import tokenizer as tokenizer_lib

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "Runs Python code and returns stdout.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    }
]
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in tokenizer_lib.SPECIAL_TOKENS) + ")")


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "let me compute the answer with python code print result error fix it now".split()
    texts = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        call = json.dumps({"name": "code_interpreter", "arguments": {"code": f"print({a} + {b})"}})
        texts.append(
            f"{sentence}\n<tool_call>\n{call}\n</tool_call>\n<tool_response>\nstdout: {a + b}\n"
            f"</tool_response> The answer is \\boxed{{{a + b}}}."
        )
    return texts


@pytest.fixture(scope="session")
def tok() -> transformers.PreTrainedTokenizerFast:
    return tokenizer_lib.build_tokenizer(corpus(), 400)


@pytest.fixture(scope="session")
def fmt(tok) -> chat.ChatFormat:
    return chat.ChatFormat(tok)


def call(code: str) -> dict:
    return {
        "type": "function",
        "function": {"name": "code_interpreter", "arguments": {"code": code}},
    }


CONVERSATIONS = {
    "tool_call_then_answer": [
        {"role": "system", "content": "You solve problems."},
        {"role": "user", "content": "What is 17 + 25?"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [call("print(17 + 25)")]},
        {"role": "tool", "content": "Tool call success\nstdout: 42\nstderr: "},
        {"role": "assistant", "content": "The answer is \\boxed{42}."},
    ],
    "error_fix_think_and_raw_call_text": [
        {"role": "user", "content": "Compute 3/0 + 1."},
        {
            "role": "assistant",
            "content": '<think>\nrun it\n</think>\n\n<tool_call>\n{"name": "code_interpreter", '
            '"arguments": {"code": "print(3/0 + 1)"}}\n</tool_call>',
        },
        {
            "role": "tool",
            "content": "Tool call failure\nreason: \nstdout: \n"
            "stderr: ZeroDivisionError at line 1: division by zero",
        },
        {"role": "assistant", "content": "Undefined.", "tool_calls": [call("x = 1\nprint(x)")]},
        {"role": "tool", "content": "Tool call success\nstdout: 1\nstderr: "},
        {"role": "assistant", "content": "It is undefined: \\boxed{\\text{undefined}}."},
    ],
    "two_calls_one_turn_and_follow_up_user": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 1 and 2, then 3 and 4."},
        {"role": "assistant", "content": "", "tool_calls": [call("1 + 2"), call("3 + 4")]},
        {"role": "tool", "content": "3"},
        {"role": "tool", "content": "7"},
        {"role": "assistant", "content": "3 and 7."},
        {"role": "user", "content": "And 5 + 6?"},
        {"role": "assistant", "content": "11."},
    ],
}


def test_control_and_tag_ids(fmt, tok):
    assert fmt.im_start_id == tok.convert_tokens_to_ids("<|im_start|>")
    assert fmt.im_end_id == tok.eos_token_id
    assert fmt.endoftext_id == tok.pad_token_id
    tags = [
        fmt.tool_call_id,
        fmt.tool_call_end_id,
        fmt.tool_response_id,
        fmt.tool_response_end_id,
        fmt.think_id,
        fmt.think_end_id,
    ]
    assert tags == tok.convert_tokens_to_ids(list(tokenizer_lib.TAG_TOKENS))
    assert fmt.stop_token_ids == (fmt.im_end_id, fmt.endoftext_id)


def test_prompt_tokens_golden(fmt):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2 + 2?"}]
    tokens = fmt.prompt_tokens(msgs)
    assert fmt.decode(tokens) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    generation_prompt = [fmt.im_start_id] + fmt.encode("assistant\n")
    assert tokens[-len(generation_prompt) :] == generation_prompt


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_turn_by_turn_equals_template_on_whole_conversation(fmt, tok, name):
    msgs = CONVERSATIONS[name]
    tools = None if name == "two_calls_one_turn_and_follow_up_user" else TOOLS
    tokens, mask = fmt.conversation_tokens(msgs, tools)
    assert tokens == tok.apply_chat_template(msgs, tools=tools, return_dict=False)
    assert fmt.decode(tokens) == tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    assert len(mask) == len(tokens)
    # Loss mask: exactly each assistant turn's rendered text and its <|im_end|>.
    trained = [t for t, m in zip(tokens, mask, strict=True) if m]
    expected = "".join(
        fmt.assistant_text(m) + "<|im_end|>" for m in msgs if m["role"] == "assistant"
    )
    assert fmt.decode(trained) == expected


def test_rollout_appends_equal_template(fmt, tok):
    """What the agent loop does: prompt, sampled turn, tool result, sampled turn, end."""
    msgs = CONVERSATIONS["tool_call_then_answer"]
    context = fmt.prompt_tokens(msgs[:2], TOOLS)
    for piece in (
        fmt.assistant_turn_tokens(fmt.assistant_text(msgs[2])),
        fmt.tool_response_tokens(msgs[3]["content"]),
        fmt.assistant_turn_tokens(msgs[4]["content"]),
    ):
        before = list(context)
        context += piece
        assert context[: len(before)] == before
    assert context + fmt.end_tokens() == tok.apply_chat_template(
        msgs, tools=TOOLS, return_dict=False
    )
    # Mid-rollout context == the template with a generation prompt.
    mid = fmt.prompt_tokens(msgs[:4], TOOLS)
    assert mid == context[: len(mid)]
    assert fmt.decode(mid) == fmt.render(msgs[:4], TOOLS, add_generation_prompt=True)


def test_loss_mask_golden_small(fmt):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    tokens, mask = fmt.conversation_tokens(msgs)
    prompt = fmt.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    answer = fmt.encode("Yo") + [fmt.im_end_id]
    assert tokens == prompt + answer + fmt.encode("\n")
    assert mask == [0] * len(prompt) + [1] * len(answer) + [0]


def test_assistant_text_renders_structured_calls(fmt):
    msg = {"role": "assistant", "content": "Run.", "tool_calls": [call("print(1)")]}
    assert fmt.assistant_text(msg) == (
        'Run.\n<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(1)"}}\n'
        "</tool_call>"
    )
    tokens = fmt.assistant_turn_tokens(fmt.assistant_text(msg))
    assert tokens.count(fmt.tool_call_id) == 1 and tokens[-1] == fmt.im_end_id


def as_tokenized(text: str) -> str:
    """`text` as a round trip through the tokenizer leaves it: NFC between control tokens."""
    return "".join(
        p if SPECIAL_RE.fullmatch(p) else unicodedata.normalize("NFC", p)
        for p in SPECIAL_RE.split(text)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_tool_response_tokens_decode_to_the_wrapped_text(fmt, texts):
    tokens = fmt.tool_response_tokens(texts)
    body = "".join(f"\n<tool_response>\n{t}\n</tool_response>" for t in texts)
    expected = f"\n<|im_start|>user{body}<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.decode(tokens) == as_tokenized(expected)
    assert tokens[:2] == fmt.encode("\n") + [fmt.im_start_id]
    generation_prompt = [fmt.im_start_id] + fmt.encode("assistant\n")
    assert tokens[-len(generation_prompt) :] == generation_prompt
    if len(texts) == 1:
        assert fmt.tool_response_tokens(texts[0]) == tokens


@settings(max_examples=40, deadline=None)
@given(
    st.from_regex(r"[A-Za-z<]", fullmatch=True),
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_appending_equals_template_for_arbitrary_texts(fmt, tok, first_char, think, tool, user):
    """Any assistant text starting with a non-space character, any tool and user text."""
    msgs = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": first_char + think, "tool_calls": [call(think)]},
        {"role": "tool", "content": tool},
        {"role": "assistant", "content": first_char + tool},
    ]
    tokens, _ = fmt.conversation_tokens(msgs, TOOLS)
    assert tokens == tok.apply_chat_template(msgs, tools=TOOLS, return_dict=False)


@pytest.mark.parametrize(
    "msgs, match",
    [
        ([{"role": "user", "content": "Q"}], "at least one assistant"),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"},
            ],
            "after an assistant turn",
        ),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "tool", "content": "r"},
            ],
            "should be an assistant turn",
        ),
        ([{"role": "assistant", "content": "A"}], "at least one message"),
    ],
)
def test_conversation_tokens_rejects_unsupported_sequences(fmt, msgs, match):
    with pytest.raises(ValueError, match=match):
        fmt.conversation_tokens(msgs)


def qwen25_like_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Qwen2.5 has <tool_call> tokens but no <tool_response>/<think> tokens."""
    backend = Tokenizer(BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokenizer_lib.QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=300,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(["tool response think"] * 5, trainer=trainer)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in tokenizer_lib.CONTROL_TOKENS]
    )
    backend.add_tokens([AddedToken(t, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    wrapped.chat_template = tokenizer_lib.chat_template()
    return wrapped


def test_qwen25_like_tokenizer_without_response_and_think_tokens():
    tok = qwen25_like_tokenizer()
    fmt = chat.ChatFormat(tok)  # verifies the probe conversation
    assert fmt.tool_call_id is not None
    assert (fmt.tool_response_id, fmt.think_id, fmt.think_end_id) == (None, None, None)
    msgs = CONVERSATIONS["error_fix_think_and_raw_call_text"]
    tokens, _ = fmt.conversation_tokens(msgs, TOOLS)
    assert tokens == tok.apply_chat_template(msgs, tools=TOOLS, return_dict=False)


def test_tokenizer_without_chatml_tokens_is_rejected():
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=260, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["plain text"], trainer=trainer)
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(ValueError, match="no single token for '<|endoftext|>'"):
        chat.ChatFormat(plain)


def test_missing_or_foreign_template_is_rejected():
    copy = tokenizer_lib.build_tokenizer(corpus(), 400)
    copy.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        chat.ChatFormat(copy)
    # A ChatML template that formats tool results differently (no <tool_response> wrapping).
    copy.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + ('user' if m.role == 'tool' else m.role) "
        "+ '\\n' + (m.content or '') + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(ValueError, match="first differ at token"):
        chat.ChatFormat(copy)
