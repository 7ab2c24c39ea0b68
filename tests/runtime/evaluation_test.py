"""Evaluation end to end on a random tiny model: AIME, GPQA and LiveCodeBench files through the
real engine, sandbox, SAAR and rewards; HF-dir and orbax checkpoints give the same samples."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.agent.tokenizer import build_tokenizer
from cleaner_jax.agent.tools import TOOLS
from cleaner_jax.data.prompts import TEMPLATES
from cleaner_jax.data.readers import read_dataset
from cleaner_jax.models import hf_io
from cleaner_jax.models.testing import random_model
from cleaner_jax.runtime import evaluation
from cleaner_jax.runtime import parts as model_setup
from cleaner_jax.runtime.checkpoint import Checkpointer
from cleaner_jax.runtime.config import load_config

AIME = [
    {"id": 1, "problem": "What is 1+1?", "answer": "2"},
    {"id": 2, "problem": "Compute 3*7.", "answer": "21"},
]
GPQA = [
    {
        "Record ID": "g1",
        "Question": "Which is a noble gas?",
        "Correct Answer": "Neon",
        "Incorrect Answer 1": "Iron",
        "Incorrect Answer 2": "Carbon",
        "Incorrect Answer 3": "Sodium",
    }
]
LCB = [
    {
        "question_id": "abc301_a",
        "question_content": "Print the input number doubled.",
        "public_test_cases": json.dumps([{"input": "2\n", "output": "4\n", "testtype": "stdin"}]),
        "private_test_cases": "",
        "starter_code": "",
        "metadata": "{}",
    },
    {
        "question_id": "2847",
        "question_content": "Return x plus one.",
        "public_test_cases": json.dumps([{"input": "1", "output": "2", "testtype": "functional"}]),
        "private_test_cases": "",
        "starter_code": "class Solution:\n    def inc(self, x):\n",
        "metadata": json.dumps({"func_name": "inc"}),
    },
]
FILES = {"aime": AIME, "gpqa": GPQA, "livecodebench": LCB}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    texts = [t.replace("{", "").replace("}", "") for t in TEMPLATES.values()]
    texts += [json.dumps(TOOLS), '<tool_call>{"name": "code_interpreter"}</tool_call>'] * 4
    texts += [json.dumps(rows) for rows in FILES.values()]
    tokenizer = build_tokenizer(texts, 400, out_dir=d / "tokenizer")
    c = load_config(f"{pathlib.Path(__file__).parents[2]}/configs/demo.py:runlocal")
    c.prepare_synthetic = False
    c.tokenizer_path = str(d / "tokenizer")
    c.rollout.update(dict(max_response_tokens=24, max_turns=2))
    c.rollout.engine.update(dict(max_seq_len=1024, num_pages=256, max_slots=8, prefill_chunk=256))
    c.data.max_prompt_tokens = 900
    c.mesh.fsdp = -1  # all test devices (conftest forces 8): the eval runs on sharded params
    c.reward.overlong_buffer = 8
    files = {k: _write_jsonl(d / f"{k}.jsonl", rows) for k, rows in FILES.items()}
    c.model.tiny.update(
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_layers=1,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
        )
    )
    # One random model, saved both ways: an orbax trainer checkpoint and an HF export.
    cfg = model_setup.model_config_for(c, len(tokenizer))
    state = nnx.split(random_model(cfg, seed=0))[1]
    with Checkpointer(d / "work" / "checkpoints") as ckpt:
        ckpt.save(3, state, {"count": jnp.zeros((), jnp.int32)}, {"data": {}}, force=True)
    hf_io.save_hf_checkpoint(state, cfg, str(d / "hf"))
    tokenizer.save_pretrained(str(d / "hf"))
    return c, files, d


@pytest.fixture(scope="module")
def evaluator(setup):
    c, _, d = setup
    rt = model_setup.build(c, "eval", checkpoint=str(d / "work"))
    try:
        yield evaluation.Evaluator(rt)
    finally:
        rt.close()


@pytest.mark.parametrize("kind", ["aime", "gpqa", "livecodebench"])
def test_each_format_end_to_end_with_and_without_saar(evaluator, setup, kind, tmp_path):
    _, files, _ = setup
    examples = read_dataset(kind, files[kind])
    opts = evaluation.EvalOptions(
        dataset_kind=kind, dataset=(files[kind],), n=2, saar="both", problems_per_batch=2
    )
    summary = evaluator.run(examples, opts, str(tmp_path))

    assert set(summary["modes"]) == {"off", "on"}
    for mode, s in summary["modes"].items():
        records = [json.loads(x) for x in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in records] == [ex.id for ex in examples]
        accs = [smp["acc"] for r in records for smp in r["samples"]]
        assert all(len(r["samples"]) == 2 for r in records)
        assert s["pass@k"]["1"] == pytest.approx(sum(accs) / len(accs))
        assert set(s["pass@k"]) == {"1", "2"}
        assert all(smp["response_tokens"] <= 24 for r in records for smp in r["samples"])
        assert s["tool_stats"]["trajectories"] == 2 * len(examples)
        assert s["tool_stats"]["saar_enabled_frac"] == (1.0 if mode == "on" else 0.0)
        # Every sample was scored by its format's reward, none crashed.
        assert all(smp["error"] is None for r in records for smp in r["samples"])
        assert s["rollout_wall_s"] > 0
    assert summary["saar_overhead"]["total_on_s"] > 0
    assert len(summary["saar_overhead"]["per_problem"]) == len(examples)
    if kind == "livecodebench":
        for mode in ("off", "on"):
            lcb = json.loads((tmp_path / f"livecodebench_{mode}.json").read_text())
            assert [e["question_id"] for e in lcb] == ["abc301_a", "2847"]
            assert all(
                len(e["code_list"]) == 2 and all(isinstance(x, str) for x in e["code_list"])
                for e in lcb
            )
    else:
        assert not list(tmp_path.glob("livecodebench_*.json"))


def test_livecodebench_export_takes_the_final_python_block():
    records = [
        {
            "question_id": "q1",
            "samples": [
                {"final": "try\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```"},
                {"final": "no code"},
            ],
        }
    ]
    assert evaluation.livecodebench_custom_outputs(records) == [
        {"question_id": "q1", "code_list": ["print(2)\n", ""]}
    ]


def test_hf_dir_and_orbax_checkpoint_load_the_same_policy(evaluator, setup):
    """Both checkpoint kinds of launch/evaluate.py load identical weights (so, with the same
    seeds, identical samples) and the HF dir brings its own tokenizer."""
    c, _, d = setup
    c = c.copy_and_resolve_references()
    c.tokenizer_path = ""
    tokenizer, bundle = model_setup.load_policy(c, str(d / "hf"))
    assert tokenizer.get_vocab() == evaluator.rt.tokenizer.get_vocab()
    assert bundle.cfg == evaluator.rt.model.cfg.replace(architecture=bundle.cfg.architecture)
    flat_hf = jax.tree.leaves_with_path(bundle.state)
    flat_orbax = jax.tree.leaves_with_path(evaluator.rt.model.state)
    assert [p for p, _ in flat_hf] == [p for p, _ in flat_orbax]
    for (path, a), (_, b) in zip(flat_hf, flat_orbax, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_orbax_dir_without_checkpoints_is_a_clear_error(setup, tmp_path):
    c, _, _ = setup
    with pytest.raises(FileNotFoundError, match="neither an HF dir"):
        model_setup.load_policy(c, str(tmp_path / "missing"))
