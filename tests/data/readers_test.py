"""Dataset readers on tiny files, prompt templates, overlong filtering, iterator resume."""

import base64
import json
import logging
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner_jax.data import prompts
from cleaner_jax.data import readers as rd

AGENTRL_ROWS = [
    {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "ability": "math",
        "reward_model": {"ground_truth": str(2 * i), "style": "rule"},
        "extra_info": {"index": 100 + i, "split": "train"},
    }
    for i in range(5)
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_read_agentrl(tmp_path, fmt):
    if fmt == "parquet":
        path = tmp_path / "train.parquet"
        pq.write_table(pa.Table.from_pylist(AGENTRL_ROWS), path)
    else:
        path = _write_jsonl(tmp_path / "train.jsonl", AGENTRL_ROWS)
    examples = rd.read_agentrl(path)
    assert len(examples) == 5
    ex = examples[3]
    assert ex.id == "math_dapo-103" and ex.ground_truth == "6" and ex.data_source == "math_dapo"
    assert ex.messages == [{"role": "user", "content": "What is 3 + 3?"}]
    assert ex.extra["ability"] == "math" and ex.extra["extra_info"]["split"] == "train"


def test_read_agentrl_rejects_bad_prompt(tmp_path):
    bad = [dict(AGENTRL_ROWS[0], prompt="just a string")]
    with pytest.raises(ValueError, match="list of"):
        rd.read_agentrl(_write_jsonl(tmp_path / "bad.jsonl", bad))


def test_read_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        rd.read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        rd.read_records(tmp_path / "x.txt")


def test_read_aime(tmp_path):
    rows = [{"id": 7, "problem": "Find x.", "answer": "204"}, {"Problem": "Find y.", "Answer": 33}]
    examples = rd.read_aime(_write_jsonl(tmp_path / "aime.jsonl", rows), data_source="aime2024")
    assert [e.ground_truth for e in examples] == ["204", "33"]
    assert examples[0].id == "aime2024-7"
    content = examples[0].messages[-1]["content"]
    assert content.startswith("Find x.") and "\\boxed{}" in content


GPQA_ROWS = [
    {
        "Record ID": f"rec{i}",
        "Question": f"Question {i}?",
        "Correct Answer": f"right{i}",
        "Incorrect Answer 1": f"wrong{i}a",
        "Incorrect Answer 2": f"wrong{i}b",
        "Incorrect Answer 3": f"wrong{i}c",
    }
    for i in range(8)
]


def test_read_gpqa_deterministic_shuffle(tmp_path):
    path = _write_jsonl(tmp_path / "gpqa.jsonl", GPQA_ROWS)
    a, b = rd.read_gpqa(path, seed=0), rd.read_gpqa(path, seed=0)
    c = rd.read_gpqa(path, seed=1)
    assert [e.extra["choices"] for e in a] == [e.extra["choices"] for e in b]
    assert [e.extra["choices"] for e in a] != [e.extra["choices"] for e in c]
    assert len({e.ground_truth for e in a}) > 1  # correct answer not always in one slot
    for i, ex in enumerate(a):
        letter = ex.ground_truth
        assert ex.extra["choices"]["ABCD".index(letter)] == f"right{i}"
        assert f"{letter}) right{i}" in ex.messages[-1]["content"]
        assert sorted(ex.extra["choices"]) == sorted(
            [f"right{i}", f"wrong{i}a", f"wrong{i}b", f"wrong{i}c"]
        )


def _compress(tests):
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def test_read_livecodebench_plain_and_compressed(tmp_path):
    public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]
    func_tests = [{"input": "[1, 2]", "output": "3", "testtype": "functional"}]
    rows = [
        {
            "question_id": "abc001",
            "question_content": "Add two numbers.",
            "starter_code": "",
            "public_test_cases": json.dumps(public),
            "private_test_cases": _compress(private),
            "metadata": "{}",
            "difficulty": "easy",
        },
        {
            "question_id": "lc42",
            "question_content": "Sum a list.",
            "starter_code": "class Solution:\n    def total(self, nums):\n        ",
            "public_test_cases": json.dumps(func_tests),
            "private_test_cases": json.dumps([]),
            "metadata": json.dumps({"func_name": "total"}),
        },
    ]
    path = tmp_path / "lcb.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    stdin_ex, func_ex = rd.read_livecodebench(path)
    assert stdin_ex.ground_truth == {"tests": public + private, "fn_name": None}
    assert stdin_ex.extra["num_public_tests"] == 1 and stdin_ex.extra["difficulty"] == "easy"
    assert "standard input" in stdin_ex.messages[-1]["content"]
    assert func_ex.ground_truth["fn_name"] == "total"
    assert "def total" in func_ex.messages[-1]["content"]
    public_only = rd.read_livecodebench(path, include_private=False)[0]
    assert public_only.ground_truth["tests"] == public


def test_compressed_tests_refuse_pickled_objects():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="plain data"):
        rd.decode_test_cases_field(payload)


def test_prompt_templates():
    assert "\\boxed{}" in prompts.render_prompt("math", {"problem": "1+1?"})
    assert prompts.render_prompt("Q: {q}", {"q": "hi"}) == "Q: hi"
    with pytest.raises(KeyError, match="starter_code"):
        prompts.render_prompt("code_starter", {"question": "q"})
    with pytest.raises(KeyError, match="unknown prompt template"):
        prompts.render_prompt("nope", {})


def test_filter_overlong_logs_count(caplog):
    exs = [rd.Example(str(i), [{"role": "user", "content": "w " * i}], "m", "1") for i in range(6)]
    count = lambda ex: len(ex.messages[-1]["content"].split())  # noqa: E731
    with caplog.at_level(logging.INFO, logger="cleaner_jax.data.readers"):
        kept, dropped = rd.filter_overlong(exs, count, max_prompt_tokens=3)
    assert [e.id for e in kept] == ["0", "1", "2", "3"] and dropped == 2
    assert "dropped 2 of 6" in caplog.text


def _examples(n):
    return [rd.Example(str(i), [], "m", str(i)) for i in range(n)]


def test_iterator_epochs_are_permutations_and_deterministic():
    exs = _examples(7)
    ids = [e.id for e in rd.EpochIterator(exs, seed=3, num_epochs=3)]
    again = [e.id for e in rd.EpochIterator(exs, seed=3, num_epochs=3)]
    other = [e.id for e in rd.EpochIterator(exs, seed=4, num_epochs=3)]
    assert ids == again and ids != other and len(ids) == 21
    epochs = [ids[i * 7 : (i + 1) * 7] for i in range(3)]
    assert all(sorted(e, key=int) == [str(i) for i in range(7)] for e in epochs)
    assert epochs[0] != epochs[1]
    plain = [e.id for e in rd.EpochIterator(exs, seed=3, shuffle=False, num_epochs=1)]
    assert plain == [str(i) for i in range(7)]


@pytest.mark.parametrize("stop_after", [0, 3, 7, 12])
def test_iterator_resume_from_state(stop_after):
    exs = _examples(7)
    reference = [e.id for e in rd.EpochIterator(exs, seed=11).next_batch(stop_after + 9)]
    it = rd.EpochIterator(exs, seed=11)
    first = [e.id for e in it.next_batch(stop_after)]
    state = json.loads(json.dumps(it.get_state()))  # survives a round trip through a checkpoint
    resumed = rd.EpochIterator(exs, seed=11)
    resumed.set_state(state)
    assert first + [e.id for e in resumed.next_batch(9)] == reference
    assert resumed.epoch == (stop_after + 9) // 7


def test_iterator_state_mismatch_raises():
    it = rd.EpochIterator(_examples(7), seed=1)
    state = it.get_state()
    with pytest.raises(ValueError, match="same dataset"):
        rd.EpochIterator(_examples(6), seed=1).set_state(state)
    with pytest.raises(ValueError, match="same dataset"):
        rd.EpochIterator(_examples(7), seed=2).set_state(state)
