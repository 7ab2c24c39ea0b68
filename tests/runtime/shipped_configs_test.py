"""Every shipped config variant: `runlocal` builds the runtime once and both trains a step and
evaluates a batch from it; the command line trains a step; full size builds abstractly.

The command-line runs are the command a new user types (`launch/train.py --config=FILE:runlocal`,
flag parsing and the locked config included), in a fresh process with the machine's real devices
(this suite forces 8 virtual CPU devices). All share the synthetic assets (copied into each
workdir, where the trainer's own preparation finds them). Every file in `configs/` must appear in
VARIANTS (checked). Measured (Dec 2026, 2 CPU cores): 20-45 s per command-line run.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from cleaner_jax.data import demo_assets
from cleaner_jax.data.readers import read_agentrl
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.runtime import evaluation, trainer
from cleaner_jax.runtime import parts as model_setup
from cleaner_jax.runtime.config import train_settings
from cleaner_jax.runtime.metrics import read_metrics

ROOT = pathlib.Path(__file__).parents[2]
QWEN_TOKENIZER_VOCAB = 151_669  # len() of the Qwen2.5 / Qwen3 tokenizers
VARIANTS = [
    ("paper.py", "model=qwen3_4b,arm=cleaner"),
    ("paper.py", "model=qwen3_4b,arm=baseline"),
    ("paper.py", "model=qwen2_7b,arm=cleaner"),
    ("paper.py", "model=qwen2_7b,arm=baseline"),
    ("demo.py", "full,arm=cleaner"),
    ("demo.py", "quick,arm=baseline"),
]
IDS = [f"{f[:-3]}:{v}" for f, v in VARIANTS]


def test_every_config_file_is_covered():
    assert {p.name for p in (ROOT / "configs").glob("*.py")} == {f for f, _ in VARIANTS}


def load_config(path: pathlib.Path, arg: str = "", overrides: tuple[str, ...] = ()):
    """The config as `launch/train.py` parses it: `config_flags`, locked, command-line overrides."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["train.py", f"--config={path}{':' + arg if arg else ''}", *overrides])
    return values.config


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("shipped")
    # Same sizes as the trainer's own preparation (`parts.prepare_synthetic`).
    demo_assets.prepare_assets(str(d / "assets"), n_sft=48, n_rl_train=32, n_test=8)
    return d


def _train_one_step(shared, workdir, config_spec, *overrides) -> float:
    shutil.copytree(shared / "assets", workdir / "assets")
    env = dict(os.environ)
    xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = xla.strip()
    env["JAX_COMPILATION_CACHE_DIR"] = str(shared / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        f"--config={config_spec},runlocal",
        f"--workdir={workdir}",
        "--config.total_steps=1",
        *overrides,
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return time.perf_counter() - t0


@pytest.mark.parametrize("file,variant", [VARIANTS[2], VARIANTS[5]], ids=[IDS[2], IDS[5]])
def test_command_line_runlocal_trains_one_step(shared, tmp_path, file, variant, record_property):
    wall = _train_one_step(shared, tmp_path, f"{ROOT / 'configs' / file}:{variant}")
    record_property("wall_s", round(wall, 1))
    config = load_config(ROOT / "configs" / file, f"{variant},runlocal")
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1]
    row = rows[0]
    for key in ("train/loss", "reward/mean", "saar/saar_enabled_frac", "time/rollout"):
        assert key in row, key
    assert np.isfinite(row["train/loss"])
    # SAAR is drawn per trajectory with rollback_probability (seeded, so this is deterministic).
    assert (row["saar/saar_enabled_frac"] > 0) == config.saar.enabled
    if config.train.old_logprobs == "recompute":
        assert np.isfinite(row["logprob_mismatch/mean_abs"])
    if config.checkpoint.export_hf:
        export = tmp_path / "hf_export" / "step_1" / "config.json"
        arch = json.loads(export.read_text())["architectures"]
        assert arch == [config.model.tiny.architecture]


def test_bf16_runlocal_step_logs_the_sampler_trainer_mismatch(shared, tmp_path):
    """fp32 masters, bf16 training forward and bf16 sampler copy (`rollout.dtype` follows)."""
    path = ROOT / "configs" / "paper.py"
    _train_one_step(shared, tmp_path, f"{path}:arm=cleaner", "--config.model.dtype=bfloat16")
    row = read_metrics(tmp_path)[0]
    # bf16 paged decode vs bf16 training forward: close, but not bit-equal.
    assert 0.0 < row["logprob_mismatch/mean_abs"] < 0.5
    assert np.isfinite(row["logprob_mismatch/kl_k3"])


@pytest.mark.parametrize("file,variant", VARIANTS, ids=IDS)
def test_full_size_config_builds_abstractly(file, variant):
    """The shipped (not runlocal) model and engine configs resolve and the model's shapes build
    without allocating anything."""
    config = load_config(ROOT / "configs" / file, variant)
    cfg = model_setup.model_config_for(config, QWEN_TOKENIZER_VOCAB)
    assert cfg.vocab_size >= QWEN_TOKENIZER_VOCAB
    assert (cfg.param_dtype, cfg.dtype) == (config.model.param_dtype, config.model.dtype)
    assert (cfg.attention, cfg.attention_block) == ("auto", config.model.attention_block)
    model = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(x.shape)) for x in leaves) == cfg.num_params()
    assert all(x.dtype == cfg.jnp_param_dtype for x in leaves)
    engine = model_setup.engine_config_from(config)
    assert engine.num_pages == (config.rollout.engine.num_pages or None)
    assert engine.max_seq_len >= config.data.max_prompt_tokens + config.rollout.max_response_tokens


@pytest.mark.parametrize(
    "model,architecture,params_b",
    [("qwen3_4b", "Qwen3ForCausalLM", 4.02), ("qwen2_7b", "Qwen2ForCausalLM", 7.62)],
)
def test_paper_models_have_the_published_size(model, architecture, params_b):
    cfg = model_setup.model_config_for(
        load_config(ROOT / "configs" / "paper.py", f"model={model}"), 1
    )
    assert cfg.architecture == architecture
    assert cfg.num_params() / 1e9 == pytest.approx(params_b, abs=0.01)


# Each file, both arms and both architectures / demo modes (the arms differ only in saar.enabled).
@pytest.mark.parametrize("k", [0, 3, 4, 5], ids=[IDS[k] for k in (0, 3, 4, 5)])
def test_one_runtime_trains_a_step_and_evaluates_a_batch(shared, tmp_path, k):
    """`parts.build` from the shipped runlocal config, once: the trainer takes a step and the
    evaluator samples a held-out batch from the same parts (engine, sandboxes, scorer), with the
    weights the step produced (on the suite's 8 CPU devices, the shipped `mesh.fsdp=-1`)."""
    file, variant = VARIANTS[k]
    config = load_config(ROOT / "configs" / file, f"{variant},runlocal")
    # Short rollouts: the shipped budgets run in the command-line tests above.
    config.rollout.update(max_turns=2, max_response_tokens=48)
    shutil.copytree(shared / "assets", tmp_path / "assets")
    model_setup.prepare_synthetic(config, str(tmp_path))
    rt = model_setup.build(config, "train", str(tmp_path))
    try:
        tr = trainer.Trainer(rt, train_settings(config), str(tmp_path))
        metrics = tr.train_step()
        assert np.isfinite(metrics["train/loss"])
        assert (metrics["saar/saar_enabled_frac"] > 0) == config.saar.enabled
        trained = jax.tree.leaves(rt.sampler_params(tr.state))
        assert all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(rt.sampler_state), trained, strict=True)
        )
        examples = read_agentrl(list(config.data.val_files))[:1]
        options = evaluation.EvalOptions(dataset_kind="agentrl", n=2, saar="on", ks=(1, 2))
        summary = evaluation.Evaluator(rt).run(examples, options, str(tmp_path / "eval"))
        assert summary["modes"]["on"]["problems"] == 1 and summary["modes"]["on"]["n"] == 2
    finally:
        rt.close()
