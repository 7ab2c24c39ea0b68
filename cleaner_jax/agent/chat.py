"""Token-in/token-out chat formatting for Qwen-format (ChatML + tools) tokenizers.

The agent loop never re-tokenizes a conversation: it keeps the token ids it has (the prompt, the
tokens the policy sampled) and appends the tokens of each new piece. Re-rendering and
re-tokenizing the whole chat every turn silently changes earlier tokens (BPE merges differ from
what was sampled; Qwen3's template rewrites <think> blocks and drops earlier turns' reasoning
once a new user query arrives), so the trained-on tokens would no longer be the sampled ones.
`ChatFormat` gives the pieces (G = the template's generation prompt, "<|im_start|>assistant\\n"
for Qwen2.5/Qwen3 and ours):

  prompt_tokens(messages, tools)   system/tools/user turns + G
  (the policy samples an assistant turn and stops at <|im_end|>)
  tool_response_tokens(texts)      "\\n<|im_start|>user\\n<tool_response>\\n{text}\\n"
                                   "</tool_response><|im_end|>\\n" + G
  user_turn_tokens(text)           "\\n<|im_start|>user\\n{text}<|im_end|>\\n" + G
  end_tokens()                     the "\\n" that closes a finished conversation

For conversations whose assistant texts start with a non-space character, appending these pieces
gives exactly the ids of `apply_chat_template` on the whole conversation (checked at construction
on a probe conversation, and in tests): segments meet either at a control token or right after
G, where the pre-tokenizer always splits. With Qwen3's own template this holds within one user
query (the agentic case); a follow-up user query makes that template re-render earlier turns.

`conversation_tokens` builds SFT examples with the same pieces, so SFT data is token-identical to
what a rollout produces, with loss mask 1 on assistant content and its <|im_end|>.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import transformers

Message = Mapping[str, Any]

_PROBE_USER = "Compute 12 + 30."
_PROBE_TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "Runs Python code.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    },
)
# One query answered through a tool call, every assistant turn with a canonical <think> block:
# the shape Qwen3's own template renders prefix-stably (it drops earlier turns' reasoning once a
# new user query arrives, and gives the last turn an empty think block when it has none).
_PROBE_MESSAGES = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": _PROBE_USER},
    {
        "role": "assistant",
        "content": "<think>\nUse the tool.\n</think>\n\nLet me run it.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": {"code": "print(12 + 30)"}},
            }
        ],
    },
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "<think>\nIt printed 42.\n</think>\n\nThe answer is 42."},
)


class MaskedTokens(NamedTuple):
    """Token ids of a conversation and a same-length 0/1 mask of the tokens to train on."""

    tokens: list[int]
    loss_mask: list[int]


def _single_token_id(tokenizer: transformers.PreTrainedTokenizerBase, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


class ChatFormat:
    """Token-level chat helpers over an HF tokenizer with a Qwen-format chat template.

    Works with Qwen3 and Qwen2.5 checkpoints' tokenizers and with `build_tokenizer`'s. Qwen2.5 has
    no <tool_response>/<think> tokens: their ids are None and the tags are encoded as text.

    Attributes:
      tokenizer: the wrapped tokenizer.
      endoftext_id, im_start_id, im_end_id: control token ids (always single tokens).
      tool_call_id, tool_call_end_id, tool_response_id, tool_response_end_id, think_id,
        think_end_id: tag ids, or None where the tokenizer has no single token for the tag.
      stop_token_ids: ids that end a sampled assistant turn (<|im_end|>, <|endoftext|>).
      generation_prompt: the text the template appends for add_generation_prompt=True.
    """

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase, verify: bool = True):
        """Wraps `tokenizer`.

        Args:
          tokenizer: an HF tokenizer whose chat template renders the Qwen format.
          verify: check on a probe conversation (system + tools, user, assistant turn with a
            tool call, tool response, final answer) that appending turn by turn gives the same
            ids as the tokenizer's own template; raises ValueError naming the first difference.

        Raises:
          ValueError: a control token is not a single token, the tokenizer has no chat template,
            its generation prompt is not an appended "<|im_start|>..." turn, or (with verify) the
            template's format differs from the one the helpers append.
        """
        self.tokenizer = tokenizer
        ids = {}
        for name, text in (
            ("endoftext_id", "<|endoftext|>"),
            ("im_start_id", "<|im_start|>"),
            ("im_end_id", "<|im_end|>"),
        ):
            ids[name] = _single_token_id(tokenizer, text)
            if ids[name] is None:
                raise ValueError(
                    f"Tokenizer {type(tokenizer).__name__} has no single token for {text!r}; "
                    "ChatFormat needs a Qwen-format (ChatML) tokenizer such as Qwen3's or one "
                    "made by cleaner_jax.agent.tokenizer.build_tokenizer."
                )
        self.endoftext_id: int = ids["endoftext_id"]
        self.im_start_id: int = ids["im_start_id"]
        self.im_end_id: int = ids["im_end_id"]
        self.tool_call_id = _single_token_id(tokenizer, "<tool_call>")
        self.tool_call_end_id = _single_token_id(tokenizer, "</tool_call>")
        self.tool_response_id = _single_token_id(tokenizer, "<tool_response>")
        self.tool_response_end_id = _single_token_id(tokenizer, "</tool_response>")
        self.think_id = _single_token_id(tokenizer, "<think>")
        self.think_end_id = _single_token_id(tokenizer, "</think>")
        self.stop_token_ids: tuple[int, ...] = (self.im_end_id, self.endoftext_id)
        if not tokenizer.chat_template:
            raise ValueError(
                f"Tokenizer {type(tokenizer).__name__} has no chat template; load an instruct "
                "checkpoint's tokenizer or set tokenizer.chat_template = "
                "cleaner_jax.agent.tokenizer.chat_template()."
            )
        anchor = [{"role": "user", "content": _PROBE_USER}]
        closed = self.render(anchor)
        opened = self.render(anchor, add_generation_prompt=True)
        if not opened.startswith(closed) or not opened[len(closed) :].startswith("<|im_start|>"):
            raise ValueError(
                "The chat template's generation prompt is not '<|im_start|>...' appended to the "
                f"rendered conversation (got {opened!r}); ChatFormat needs the Qwen ChatML format."
            )
        self.generation_prompt: str = opened[len(closed) :]
        self._anchor_prompt = opened
        if verify:
            self._verify_template()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; control tokens in it become their ids, nothing is added."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`, control tokens included verbatim."""
        return self.tokenizer.decode(
            list(tokens), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The template's text of a conversation (for logs and checks, not for training)."""
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def prompt_tokens(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Ids of `messages` rendered by the template, ending with the generation prompt."""
        if not messages:
            raise ValueError("prompt_tokens needs at least one message (e.g. the user question).")
        tokens = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return list(tokens)

    def assistant_turn_tokens(self, text: str) -> list[int]:
        """Ids of an assistant turn's content followed by <|im_end|> (what the policy samples)."""
        return self.encode(text) + [self.im_end_id]

    def tool_response_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Ids to append after an assistant turn that ended with <|im_end|>: the tool result(s)
        as one user turn, then the next generation prompt.

        Several results (one per call of a multi-call turn) share one user turn, as in Qwen's
        templates.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("tool_response_tokens needs at least one tool response text.")
        body = "".join(f"\n<tool_response>\n{t}\n</tool_response>" for t in texts)
        return self.encode(f"\n<|im_start|>user{body}<|im_end|>\n{self.generation_prompt}")

    def user_turn_tokens(self, text: str) -> list[int]:
        """Ids to append after an assistant turn: a new user turn, then the generation prompt."""
        return self.encode(f"\n<|im_start|>user\n{text}<|im_end|>\n{self.generation_prompt}")

    def end_tokens(self) -> list[int]:
        """Ids that close a conversation after its last assistant turn (the template's "\\n")."""
        return self.encode("\n")

    def assistant_text(self, message: Message) -> str:
        """The text the template renders for an assistant message (content + tool calls).

        Derived from the tokenizer's own template, so tool calls given as structured
        `tool_calls` come out in its exact format.
        """
        if message.get("role") != "assistant":
            raise ValueError(f"assistant_text needs an assistant message, got {message!r}")
        prefix = self._anchor_prompt
        full = self.render([{"role": "user", "content": _PROBE_USER}, dict(message)])
        suffix = "<|im_end|>\n"
        if not (full.startswith(prefix) and full.endswith(suffix)):
            raise ValueError(
                "The chat template does not render an assistant turn as the generation prompt "
                f"followed by content and '<|im_end|>\\n' (got {full!r}); ChatFormat needs the "
                "Qwen ChatML format."
            )
        return full[len(prefix) : -len(suffix)]

    def conversation_tokens(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> MaskedTokens:
        """An SFT example: the conversation's ids, built turn by turn, and its loss mask.

        Everything before the first assistant message is the prompt (`prompt_tokens`). Then each
        assistant message contributes `assistant_turn_tokens(assistant_text(message))` with mask
        1; the messages between assistant turns contribute `tool_response_tokens` (a run of tool
        messages) or `user_turn_tokens` (a user message) with mask 0, and the conversation is
        closed with `end_tokens()`.

        Raises:
          ValueError: no assistant message, or an unsupported message sequence (a system
            message after the first assistant turn, two assistant messages in a row, a user
            message directly followed by a tool message, or tool messages at the very end).
        """
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if first is None:
            raise ValueError(
                "conversation_tokens needs at least one assistant message to train on."
            )
        tokens = self.prompt_tokens(messages[:first], tools)
        mask = [0] * len(tokens)

        def append(new: list[int], weight: int) -> None:
            tokens.extend(new)
            mask.extend([weight] * len(new))

        i = first
        while i < len(messages):
            append(self.assistant_turn_tokens(self.assistant_text(messages[i])), 1)
            i += 1
            if i == len(messages):
                break
            role = messages[i].get("role")
            if role == "tool":
                j = i
                while j < len(messages) and messages[j].get("role") == "tool":
                    j += 1
                texts = [_content(m) for m in messages[i:j]]
                append(self.tool_response_tokens(texts), 0)
                i = j
            elif role == "user":
                append(self.user_turn_tokens(_content(messages[i])), 0)
                i += 1
            else:
                raise ValueError(
                    f"conversation_tokens: message {i} has role {role!r} after an assistant turn; "
                    "expected a tool or user message (merge consecutive assistant messages)."
                )
            if i == len(messages) or messages[i].get("role") != "assistant":
                raise ValueError(
                    f"conversation_tokens: message {i} should be an assistant turn (each tool run "
                    "or user message after the first assistant turn must be answered by one)."
                )
        append(self.end_tokens(), 0)
        return MaskedTokens(tokens, mask)

    def _verify_template(self) -> None:
        messages = list(_PROBE_MESSAGES)
        expected = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(_PROBE_TOOLS),
            tokenize=True,
            return_dict=False,
        )
        got = self.conversation_tokens(messages, _PROBE_TOOLS).tokens
        if list(expected) != got:
            at = next(
                (k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
                min(len(expected), len(got)),
            )
            raise ValueError(
                "The tokenizer's chat template is not the Qwen tool-calling format ChatFormat "
                f"appends: on a probe conversation they first differ at token {at}: template "
                f"{self.decode(expected[at : at + 12])!r} vs appended "
                f"{self.decode(got[at : at + 12])!r}. Use a Qwen3/Qwen2.5 tokenizer or "
                "cleaner_jax.agent.tokenizer.chat_template()."
            )


def _content(message: Message) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"message content must be a string, got {message!r}")
    return content
