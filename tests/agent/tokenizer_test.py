"""Tests for cleaner_jax.agent.tokenizer: the tiny Qwen-shaped BPE, its chat template, loading."""

import json
import random
import unicodedata

import jinja2
import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner_jax.agent import tokenizer as tokenizer_lib

VOCAB_SIZE = 512
WORDS = (
    "the answer is compute sum product of and with python code print result error fix "
    "let me check value number total first second call tool run again because wrong name "
    "division zero syntax defined variable returns output we get so final boxed what plus minus "
    "times divided by equals step think about this problem carefully"
).split()
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


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Short demo-like texts. Numbers repeat a lot (2024, 100, 12), so a pre-tokenizer that let
    digits merge would learn multi-digit tokens and the digit tests would fail."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        a, b = rng.choice([12, 100, 2024, rng.randint(0, 999)]), rng.randint(0, 99)
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        call = json.dumps({"name": "code_interpreter", "arguments": {"code": f"print({a} * {b})"}})
        texts.append(
            f"<|im_start|>user\nWhat is {a} * {b}? {sentence.capitalize()}.<|im_end|>\n"
            f"<|im_start|>assistant\n<think>\n{sentence}\n</think>\n\n<tool_call>\n{call}\n"
            f"</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nTool call success\n"
            f"stdout: {a * b}\nstderr: \n</tool_response><|im_end|>\n"
            f"<|im_start|>assistant\nThe answer is \\boxed{{{a * b}}}. ({i})<|im_end|>"
        )
    return texts


@pytest.fixture(scope="session")
def tok() -> transformers.PreTrainedTokenizerFast:
    return tokenizer_lib.build_tokenizer(corpus(), VOCAB_SIZE)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_vocab_is_filled_and_special_tokens_follow_the_bpe_vocabulary(tok):
    assert len(tok) == VOCAB_SIZE
    ids = [tok.convert_tokens_to_ids(t) for t in tokenizer_lib.SPECIAL_TOKENS]
    # Qwen's order, right after the BPE vocabulary.
    assert ids == list(range(VOCAB_SIZE - 9, VOCAB_SIZE))


@pytest.mark.parametrize("special", tokenizer_lib.SPECIAL_TOKENS)
def test_special_token_is_one_id_standalone_and_inside_text(tok, special):
    (token_id,) = encode(tok, special)
    for text in (f"abc{special}def", f"x = 1{special}\n", f"{special}{special} 7"):
        ids = encode(tok, text)
        assert ids.count(token_id) == text.count(special)
        assert tok.decode(ids) == text


def test_eos_pad_bos(tok):
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    assert encode(tok, "hi") == tok.encode("hi")  # nothing is added around the text


def test_skip_special_tokens_drops_control_tokens_but_keeps_tags(tok):
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>"
    kept = tok.decode(encode(tok, text), skip_special_tokens=True)
    assert kept == "assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>"


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("2024", ["2", "0", "2", "4"]),
        ("x=1200", ["x", "=", "1", "2", "0", "0"]),
        ("12 * 100 = 1200", None),
        ("print(2024)", None),
    ],
)
def test_digits_are_one_token_each(tok, text, pieces):
    ids = encode(tok, text)
    decoded = [tok.decode([i]) for i in ids]
    if pieces is not None:
        assert decoded == pieces
    digit_tokens = [d for d in decoded if any(c.isdigit() for c in d)]
    assert all(len(d) == 1 for d in digit_tokens)
    assert len(digit_tokens) == sum(c.isdigit() for c in text)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=30))
def test_any_digit_string_is_one_token_per_digit(tok, digits):
    ids = encode(tok, digits)
    assert [tok.decode([i]) for i in ids] == list(digits)


def test_digit_groups_when_asked():
    numbers = [" ".join(str(i) for i in range(1000))] * 3
    grouped = tokenizer_lib.build_tokenizer(corpus() + numbers, 2048, digits_per_token=3)
    pieces = [grouped.decode([i]) for i in encode(grouped, "x = 1995 * 47 + 123456")]
    assert [p for p in pieces if p.strip().isdigit()] == ["199", "5", "47", "123", "456"]
    assert "".join(pieces) == "x = 1995 * 47 + 123456"
    with pytest.raises(ValueError, match="digits_per_token"):
        tokenizer_lib.split_pattern(0)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_encode_decode_round_trip_up_to_nfc(tok, text):
    # NFC normalisation (as in Qwen) is the only change a round trip may make.
    assert tok.decode(encode(tok, text)) == unicodedata.normalize("NFC", text)


def test_training_is_deterministic(tok):
    again = tokenizer_lib.build_tokenizer(corpus(), VOCAB_SIZE)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_control_tokens_in_the_corpus_do_not_become_merges(tok):
    # Without stripping them first, BPE learns fragments like "<|", "_start", "_response".
    fragments = [
        t
        for t in tok.get_vocab()
        if t not in tokenizer_lib.SPECIAL_TOKENS and ("<|" in t or t in ("_start", "_response"))
    ]
    assert fragments == []


def test_vocab_size_too_small_is_an_error():
    with pytest.raises(ValueError, match="use at least 265"):
        tokenizer_lib.build_tokenizer(["abc"], 100)


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="no training text"):
        tokenizer_lib.build_tokenizer(["<|im_end|>"], VOCAB_SIZE)


GOLDEN_CONVERSATION = [
    {"role": "system", "content": "You are a careful solver."},
    {"role": "user", "content": "What is 12 * 100?"},
    {
        "role": "assistant",
        "content": "<think>\nUse the tool.\n</think>\n\nLet me compute it.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": {"code": "print(12 * 100)"}},
            }
        ],
    },
    {"role": "tool", "content": "Tool call success\nstdout: 1200\nstderr: "},
    {"role": "assistant", "content": "The answer is \\boxed{1200}."},
]

GOLDEN_TEXT = (
    "<|im_start|>system\nYou are a careful solver.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "code_interpreter", "description": '
    '"Runs Python code and returns stdout.", "parameters": {"type": "object", "properties": '
    '{"code": {"type": "string"}}, "required": ["code"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWhat is 12 * 100?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nUse the tool.\n</think>\n\nLet me compute it.\n<tool_call>\n"
    '{"name": "code_interpreter", "arguments": {"code": "print(12 * 100)"}}\n</tool_call>'
    "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\nTool call success\nstdout: 1200\nstderr: \n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nThe answer is \\boxed{1200}.<|im_end|>\n"
)


def test_template_golden_conversation_with_tools(tok):
    text = tok.apply_chat_template(GOLDEN_CONVERSATION, tools=TOOLS, tokenize=False)
    assert text == GOLDEN_TEXT


def test_template_generation_prompt_and_thinking_switch(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_think = tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_template_tools_without_system_and_grouped_tool_messages(tok):
    msgs = [
        {"role": "user", "content": "Q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "code_interpreter", "arguments": '{"code": "1"}'}},
                {"name": "code_interpreter", "arguments": {"code": "2"}},
            ],
        },
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "two"},
    ]
    text = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call")
    assert text.endswith(
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        '{"name": "code_interpreter", "arguments": {"code": "1"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "code_interpreter", "arguments": {"code": "2"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n"
        "</tool_response><|im_end|>\n"
    )


def test_template_without_tools_or_system(tok):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


def test_template_rejects_unknown_role(tok):
    with pytest.raises(jinja2.TemplateError, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_save_and_reload_round_trip(tmp_path):
    saved = tokenizer_lib.build_tokenizer(corpus(), VOCAB_SIZE, out_dir=tmp_path / "tok")
    for reloaded in (
        transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok")),
        tokenizer_lib.load_tokenizer(tmp_path / "tok"),
    ):
        assert len(reloaded) == len(saved)
        assert reloaded.chat_template == tokenizer_lib.chat_template()
        assert (reloaded.eos_token, reloaded.pad_token) == ("<|im_end|>", "<|endoftext|>")
        assert reloaded.apply_chat_template(
            GOLDEN_CONVERSATION, tools=TOOLS, return_dict=False
        ) == saved.apply_chat_template(GOLDEN_CONVERSATION, tools=TOOLS, return_dict=False)
        for text in corpus(20, seed=1):
            assert encode(reloaded, text) == encode(saved, text)


def test_load_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizer_lib.load_tokenizer(tmp_path / "no_such_checkpoint")


def test_load_directory_without_tokenizer_files_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        tokenizer_lib.load_tokenizer(tmp_path)
