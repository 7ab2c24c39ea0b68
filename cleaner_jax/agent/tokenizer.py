"""Tokenizers: load a real Qwen checkpoint's tokenizer, or train a tiny Qwen-shaped one.

`load_tokenizer` reads the tokenizer of a local HF checkpoint directory (Qwen3, Qwen2.5), offline.
`build_tokenizer` trains a small byte-level BPE for tests and the embedded demo that behaves like
Qwen's where it matters to the agent loop:

- the same pre-tokenizer (Qwen2's split regex: every digit is its own pre-token, so numbers are
  always tokenized one digit per token, then GPT-2 byte-level), NFC normalisation, byte-level
  decoding, no BOS;
- Qwen's control tokens, each a single id also inside ordinary text, appended after the BPE
  vocabulary in Qwen's order; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` are special (dropped by
  `decode(skip_special_tokens=True)`), the tool and think tags are not, as in Qwen3;
- eos `<|im_end|>` (end of an assistant turn, the sampler's stop token), pad `<|endoftext|>`;
- a Qwen2.5/Qwen3-format chat template with tools (`chat_template.jinja` in this package).
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Iterable
from pathlib import Path

import transformers
from absl import logging
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

# Qwen's control tokens in the order of their ids in Qwen3's vocabulary. The first three are
# "special" (structural); the tags are ordinary added tokens so they survive
# decode(skip_special_tokens=True), which tool-call parsing relies on.
CONTROL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAG_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS: tuple[str, ...] = CONTROL_TOKENS + TAG_TOKENS

# Qwen2/Qwen2.5/Qwen3 pre-tokenizer split pattern. `\p{N}` (one digit, unlike GPT-2's `\p{N}+` or
# Llama 3's `\p{N}{1,3}`) is what makes every digit its own token, which arithmetic relies on.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_BYTE_ALPHABET_SIZE = 256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def chat_template() -> str:
    """The Qwen-format chat template (with tools) that `build_tokenizer` installs."""
    return (
        importlib.resources.files("cleaner_jax.agent")
        .joinpath("chat_template.jinja")
        .read_text(encoding="utf-8")
    )


def load_tokenizer(path: str | os.PathLike[str]) -> transformers.PreTrainedTokenizerBase:
    """Loads the tokenizer of a local checkpoint directory (no network access).

    Args:
      path: a directory written by `save_pretrained` or a downloaded HF snapshot (Qwen3, Qwen2.5,
        or one made by `build_tokenizer(..., out_dir=...)`).

    Raises:
      FileNotFoundError: the directory does not exist or holds no tokenizer files.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Tokenizer directory {str(directory)!r} does not exist. Pass a local checkpoint "
            "directory (e.g. a downloaded Qwen3-4B snapshot) or one written by "
            "build_tokenizer(texts, vocab_size, out_dir=...)."
        )
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        present = sorted(p.name for p in directory.iterdir())[:20]
        raise FileNotFoundError(
            f"Directory {str(directory)!r} holds no tokenizer files (looked for "
            f"{', '.join(_TOKENIZER_FILES)}; found {present}). Copy the tokenizer files of the "
            "checkpoint into it, or point at the checkpoint's own directory."
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    if tokenizer.chat_template is None:
        logging.warning(
            "Tokenizer in %s has no chat template; ChatFormat needs one (Qwen instruct "
            "checkpoints ship it in tokenizer_config.json or chat_template.jinja).",
            directory,
        )
    return tokenizer


def _training_pieces(texts: Iterable[str]) -> list[str]:
    # Control tokens are added whole after training; leaving them in the corpus would spend merges
    # on fragments like "<tool" that can never be used.
    pieces: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"build_tokenizer texts must be str, got {type(text).__name__}")
        pieces.extend(p for p in _SPECIAL_SPLIT.split(text) if p)
    return pieces


def split_pattern(digits_per_token: int = 1) -> str:
    """Qwen's split pattern; with `digits_per_token` > 1, digit runs split in groups of that size
    (left to right, as Llama 3 does with 3) instead of one digit per pre-token."""
    if digits_per_token < 1:
        raise ValueError(f"digits_per_token must be >= 1, got {digits_per_token}")
    if digits_per_token == 1:
        return QWEN_SPLIT_PATTERN
    return QWEN_SPLIT_PATTERN.replace(r"|\p{N}", rf"|\p{{N}}{{1,{digits_per_token}}}", 1)


def _byte_level_bpe(pattern: str) -> Tokenizer:
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    digits_per_token: int = 1,
) -> transformers.PreTrainedTokenizerFast:
    """Trains a small byte-level BPE with Qwen's control tokens and chat template.

    Deterministic: the same texts (in the same order) give the same vocabulary and merges.

    Args:
      texts: training corpus; pass rendered chat text (system prompt, tool calls, tool
        responses) so the format's frequent strings get merges. Control tokens in it are ignored.
      vocab_size: upper bound on `len(tokenizer)`, the 9 control tokens included; it is reached
        when the corpus has enough distinct pairs to merge. At least 256 + 9 (the byte alphabet).
      out_dir: if given, the tokenizer is saved there with `save_pretrained`, so
        `AutoTokenizer.from_pretrained(out_dir)` (or `load_tokenizer`) reloads it with its template.
      digits_per_token: 1 (Qwen: every digit its own token) or more: digit runs are pre-split in
        groups of up to this many digits, which BPE may then merge into one token each (the demo
        uses 3 so that a tiny model copies a number as one or two tokens).

    Returns:
      A `PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>` and no bos.
    """
    minimum = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs {_BYTE_ALPHABET_SIZE} "
            f"byte tokens plus {len(SPECIAL_TOKENS)} control tokens; use at least {minimum}."
        )
    pieces = _training_pieces(texts)
    if not pieces:
        raise ValueError("build_tokenizer got no training text; pass a non-empty corpus.")
    backend = _byte_level_bpe(split_pattern(digits_per_token))
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    # normalized=False: matched on the raw text, before NFC and byte-level mapping, like Qwen's.
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = chat_template()
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
        logging.info("Saved a %d-token BPE tokenizer to %s", len(tokenizer), out_dir)
    return tokenizer
