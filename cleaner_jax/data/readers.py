"""Dataset readers → one `Example` record, overlong-prompt filtering, checkpointable iteration.

Readers take local parquet / jsonl / json / csv files (no downloads) in these schemas:
  * Open-AgentRL-30K (verl RL format): ``prompt`` (chat messages), ``data_source``,
    ``reward_model.ground_truth``, ``extra_info``;
  * AIME24/25: ``problem``/``answer`` (``Problem``/``Answer``, ``question`` also accepted);
  * GPQA-diamond: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3`` (or ``question``,
    ``choices``, ``answer``); options are shuffled deterministically from (seed, example id) and
    the ground truth is the letter of the correct one;
  * LiveCodeBench v6: ``question_content``, ``public_test_cases``/``private_test_cases`` (JSON,
    or base64+zlib+pickle for private tests as in the release), ``starter_code``, ``metadata``
    (``func_name``). Ground truth: ``{"tests": [...], "fn_name": ...}`` (see `rl.rewards_code`).

`EpochIterator` gives a deterministic epoch-shuffled order whose position is a small dict
(``get_state``/``set_state``) saved with the trainer checkpoint.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import json
import logging
import pathlib
import pickle
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cleaner_jax.data.prompts import render_prompt

logger = logging.getLogger(__name__)

PathLike = str | pathlib.Path
Message = dict[str, str]


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt: chat ``messages`` (no assistant turn), how to score it, and metadata."""

    id: str
    messages: list[Message]
    data_source: str
    ground_truth: Any
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _paths(path: PathLike | Sequence[PathLike]) -> list[pathlib.Path]:
    items = [path] if isinstance(path, str | pathlib.Path) else list(path)
    out: list[pathlib.Path] = []
    for item in items:
        p = pathlib.Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in _LOADERS))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"dataset file {p} does not exist")
    if not out:
        raise FileNotFoundError(f"no .parquet/.jsonl/.json/.csv files under {path}")
    return out


def _load_parquet(p: pathlib.Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(p).to_pylist()


def _load_jsonl(p: pathlib.Path) -> list[dict[str, Any]]:
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: invalid JSON line: {e}") from e
    return rows


def _load_json(p: pathlib.Path) -> list[dict[str, Any]]:
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _load_csv(p: pathlib.Path) -> list[dict[str, Any]]:
    with p.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


_LOADERS: dict[str, Callable[[pathlib.Path], list[dict[str, Any]]]] = {
    ".parquet": _load_parquet,
    ".jsonl": _load_jsonl,
    ".json": _load_json,
    ".csv": _load_csv,
}


def read_records(path: PathLike | Sequence[PathLike]) -> list[dict[str, Any]]:
    """Rows of one or more files (or a directory of them), in file order."""
    rows: list[dict[str, Any]] = []
    for p in _paths(path):
        if p.suffix not in _LOADERS:
            raise ValueError(f"{p}: unsupported file type; use one of {sorted(_LOADERS)}")
        rows.extend(_LOADERS[p.suffix](p))
    return rows


def _field(row: Mapping[str, Any], names: Sequence[str], what: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"{what}: none of the fields {list(names)} in record with keys {sorted(row)}")


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _user_messages(content: str, system_prompt: str | None) -> list[Message]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": content}]


def read_agentrl(path: PathLike | Sequence[PathLike]) -> list[Example]:
    """Open-AgentRL-30K / verl-format rows; ``ability`` and ``extra_info`` go into ``extra``."""
    examples = []
    for i, row in enumerate(read_records(path)):
        messages = _maybe_json(_field(row, ["prompt"], "Open-AgentRL prompt"))
        if not isinstance(messages, list) or not all(
            isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
        ):
            raise ValueError(f"record {i}: 'prompt' must be a list of {{role, content}} messages")
        reward_model = _maybe_json(_field(row, ["reward_model"], "Open-AgentRL reward_model"))
        if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
            raise ValueError(f"record {i}: 'reward_model' must be a dict with 'ground_truth'")
        extra_info = _maybe_json(row.get("extra_info")) or {}
        data_source = str(_field(row, ["data_source"], "Open-AgentRL data_source"))
        index = extra_info.get("index", i) if isinstance(extra_info, Mapping) else i
        extra = {"extra_info": extra_info}
        if row.get("ability") is not None:
            extra["ability"] = row["ability"]
        examples.append(
            Example(
                id=f"{data_source}-{index}",
                messages=[{"role": str(m["role"]), "content": str(m["content"])} for m in messages],
                data_source=data_source,
                ground_truth=_maybe_json(reward_model["ground_truth"]),
                extra=extra,
            )
        )
    return examples


def read_aime(
    path: PathLike | Sequence[PathLike],
    *,
    template: str = "math",
    data_source: str = "aime",
    system_prompt: str | None = None,
) -> list[Example]:
    """AIME-style problem/answer rows; the answer is kept as a string (math-verify compares)."""
    examples = []
    for i, row in enumerate(read_records(path)):
        problem = str(_field(row, ["problem", "Problem", "question"], "AIME problem"))
        answer = str(_field(row, ["answer", "Answer", "solution_answer"], "AIME answer")).strip()
        rid = row.get("id", row.get("ID", i))
        examples.append(
            Example(
                id=f"{data_source}-{rid}",
                messages=_user_messages(
                    render_prompt(template, {"problem": problem}), system_prompt
                ),
                data_source=data_source,
                ground_truth=answer,
                extra={"problem": problem},
            )
        )
    return examples


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def read_gpqa(
    path: PathLike | Sequence[PathLike],
    *,
    seed: int = 0,
    template: str = "gpqa",
    data_source: str = "gpqa_diamond",
    system_prompt: str | None = None,
) -> list[Example]:
    """GPQA rows → 4 shuffled options (deterministic in (seed, id)); ground truth is a letter."""
    letters = "ABCD"
    examples = []
    for i, row in enumerate(read_records(path)):
        question = str(_field(row, ["Question", "question"], "GPQA question")).strip()
        if "Correct Answer" in row:
            correct = str(row["Correct Answer"]).strip()
            wrong = [str(row[f"Incorrect Answer {k}"]).strip() for k in (1, 2, 3)]
        else:
            choices = [str(c).strip() for c in _maybe_json(_field(row, ["choices"], "GPQA"))]
            answer = row.get("answer")
            idx = letters.index(answer) if isinstance(answer, str) else int(answer)
            correct, wrong = choices[idx], choices[:idx] + choices[idx + 1 :]
        options = [correct, *wrong]
        if len(options) != 4:
            raise ValueError(f"GPQA record {i} has {len(options)} options, expected 4")
        rid = str(row.get("Record ID", row.get("id", i)))
        order = np.random.default_rng([seed, _stable_int(rid)]).permutation(4)
        shuffled = [options[j] for j in order]
        gt = letters[int(np.flatnonzero(order == 0)[0])]
        fields = {"question": question, **dict(zip(letters, shuffled, strict=True))}
        examples.append(
            Example(
                id=f"{data_source}-{rid}",
                messages=_user_messages(render_prompt(template, fields), system_prompt),
                data_source=data_source,
                ground_truth=gt,
                extra={"choices": shuffled},
            )
        )
    return examples


def _restricted_unpickle(data: bytes) -> Any:
    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            raise pickle.UnpicklingError(
                f"compressed test cases may only hold plain data, found a reference to "
                f"{module}.{name}"
            )

    return _NoGlobals(io.BytesIO(data)).load()


def decode_test_cases_field(value: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test-case field → list of dicts.

    Accepts a list, a JSON string, or the release's compressed form of private tests:
    base64(zlib(pickle(json string))). The pickle is loaded with no class lookups allowed, so a
    tampered file cannot run code.
    """
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [dict(v) for v in value]
    if not isinstance(value, str):
        raise TypeError(f"test cases must be a list or a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return []
    if text[0] in "[{":
        decoded = json.loads(text)
    else:
        try:
            raw = zlib.decompress(base64.b64decode(text, validate=False))
        except (ValueError, zlib.error) as e:
            raise ValueError(
                "test cases are neither JSON nor base64+zlib+pickle compressed JSON "
                f"(first chars {text[:40]!r})"
            ) from e
        inner = _restricted_unpickle(raw)
        decoded = json.loads(inner) if isinstance(inner, str | bytes) else inner
    if isinstance(decoded, dict):
        decoded = [decoded]
    return [dict(v) for v in decoded]


def read_livecodebench(
    path: PathLike | Sequence[PathLike],
    *,
    stdin_template: str = "code_stdin",
    starter_template: str = "code_starter",
    include_private: bool = True,
    data_source: str = "livecodebench",
    system_prompt: str | None = None,
) -> list[Example]:
    """LiveCodeBench rows → code examples with stdin or functional tests."""
    examples = []
    for i, row in enumerate(read_records(path)):
        question = str(_field(row, ["question_content"], "LiveCodeBench question"))
        starter = str(row.get("starter_code") or "")
        metadata = _maybe_json(row.get("metadata") or {}) or {}
        fn_name = metadata.get("func_name") if isinstance(metadata, Mapping) else None
        public = decode_test_cases_field(row.get("public_test_cases"))
        private = decode_test_cases_field(row.get("private_test_cases")) if include_private else []
        tests = [
            {
                "input": t["input"],
                "output": t["output"],
                "testtype": t.get("testtype", "functional" if fn_name else "stdin"),
            }
            for t in public + private
        ]
        if not tests:
            raise ValueError(f"LiveCodeBench record {i} has no test cases")
        if starter.strip():
            prompt = render_prompt(
                starter_template, {"question": question, "starter_code": starter}
            )
        else:
            prompt = render_prompt(stdin_template, {"question": question})
        rid = row.get("question_id", i)
        extra = {
            "fn_name": fn_name,
            "num_public_tests": len(public),
            **{k: str(row[k]) for k in ("difficulty", "platform", "contest_date") if k in row},
        }
        examples.append(
            Example(
                id=f"{data_source}-{rid}",
                messages=_user_messages(prompt, system_prompt),
                data_source=data_source,
                ground_truth={"tests": tests, "fn_name": fn_name},
                extra=extra,
            )
        )
    return examples


READERS: dict[str, Callable[..., list[Example]]] = {
    "agentrl": read_agentrl,
    "aime": read_aime,
    "gpqa": read_gpqa,
    "livecodebench": read_livecodebench,
}


def read_dataset(kind: str, path: PathLike | Sequence[PathLike], **kwargs: Any) -> list[Example]:
    """`READERS[kind](path, **kwargs)` with a clear error for an unknown kind (config entry)."""
    if kind not in READERS:
        raise KeyError(f"unknown dataset kind {kind!r}; use one of {sorted(READERS)}")
    return READERS[kind](path, **kwargs)


def filter_overlong(
    examples: Sequence[Example],
    count_tokens: Callable[[Example], int],
    max_prompt_tokens: int,
) -> tuple[list[Example], int]:
    """Drops examples whose prompt exceeds `max_prompt_tokens`.

    `count_tokens(example)` returns the prompt's token count as the policy will see it (chat
    template, tool schemas and generation prompt included). Returns (kept, number dropped) and
    logs the count.
    """
    kept = [ex for ex in examples if count_tokens(ex) <= max_prompt_tokens]
    dropped = len(examples) - len(kept)
    logger.info(
        "dropped %d of %d prompts longer than %d tokens", dropped, len(examples), max_prompt_tokens
    )
    return kept, dropped


class EpochIterator:
    """Endless (or `num_epochs`-long) iteration over `examples`, reshuffled every epoch.

    Epoch e visits ``np.random.default_rng([seed, e]).permutation(N)``, so the order depends only
    on (seed, epoch) and the position is fully described by `get_state()`: restoring it with
    `set_state` continues with exactly the examples an uninterrupted run would have seen.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        seed: int,
        *,
        shuffle: bool = True,
        num_epochs: int | None = None,
    ):
        if not examples:
            raise ValueError("EpochIterator needs at least one example")
        self._examples = examples
        self._seed = int(seed)
        self._shuffle = shuffle
        self._num_epochs = num_epochs
        self._epoch = 0
        self._index = 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self._examples)
            if self._shuffle:
                self._order = np.random.default_rng([self._seed, self._epoch]).permutation(n)
            else:
                self._order = np.arange(n)
        return self._order

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        if self._num_epochs is not None and self._epoch >= self._num_epochs:
            raise StopIteration
        example = self._examples[int(self._epoch_order()[self._index])]
        self._index += 1
        if self._index == len(self._examples):
            self._epoch, self._index, self._order = self._epoch + 1, 0, None
        return example

    def next_batch(self, size: int) -> list[Example]:
        """The next `size` examples (crossing epoch boundaries); shorter only at the very end."""
        batch: list[Example] = []
        if size <= 0:
            return batch
        for example in self:
            batch.append(example)
            if len(batch) == size:
                break
        return batch

    @property
    def epoch(self) -> int:
        return self._epoch

    def get_state(self) -> dict[str, int]:
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "index": self._index,
            "num_examples": len(self._examples),
        }

    def set_state(self, state: Mapping[str, int]) -> None:
        """Restores a `get_state()` dict; the dataset and seed must be the ones it came from."""
        if int(state["num_examples"]) != len(self._examples) or int(state["seed"]) != self._seed:
            raise ValueError(
                f"iterator state is for {state['num_examples']} examples with seed "
                f"{state['seed']}, "
                f"but this iterator has {len(self._examples)} examples with seed {self._seed}; "
                "resume with the same dataset files, filters and seed"
            )
        if not 0 <= int(state["index"]) < len(self._examples):
            raise ValueError(f"iterator state index {state['index']} out of range")
        self._epoch, self._index, self._order = int(state["epoch"]), int(state["index"]), None
