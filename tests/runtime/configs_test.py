"""Every config file loads, has the paper defaults, and a mistyped override fails; config fields
reach the typed configs they feed (model, loss, engine, sampler dtype)."""

import importlib.util
import pathlib

import pytest
from ml_collections import config_flags  # noqa: F401  (the module the launchers use)

from cleaner_jax.runtime import config as config_lib
from cleaner_jax.runtime.config import parse_arg
from configs import paper

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize(
    "variant,saar,p,lr",
    [
        ("model=qwen3_4b,arm=cleaner", True, 1.0, 2e-6),
        ("model=qwen3_4b,arm=baseline", False, 1.0, 2e-6),
        ("model=qwen2_7b,arm=cleaner", True, 0.7, 1e-6),
        ("model=qwen2_7b,arm=baseline", False, 0.7, 1e-6),
    ],
)
def test_paper_configs(variant, saar, p, lr):
    c = _load("paper", variant)
    assert c.saar.enabled is saar and c.saar.rollback_probability == p
    assert c.optim.learning_rate == lr and c.optim.warmup_steps == 20 and c.optim.grad_clip == 1.0
    assert (c.loss.clip_eps_low, c.loss.clip_eps_high, c.loss.dual_clip_c) == (0.2, 0.28, 10.0)
    assert (c.rollout.n, c.rollout.prompts_per_step, c.train.mini_batch_prompts) == (16, 128, 32)
    assert (c.rollout.max_turns, c.rollout.max_response_tokens) == (16, 20480)
    assert (c.reward.overlong_buffer, c.saar.gamma, c.saar.max_retries) == (4096, 0.5, 3)
    assert (c.validation.temperature, c.validation.top_p, c.validation.n) == (1.0, 0.6, 16)
    local = _load("paper", f"{variant},runlocal")
    assert local.model.preset == "tiny" and local.total_steps == 2


def test_locked_config_rejects_typos():
    c = _load("demo")
    c.lock()
    with pytest.raises(AttributeError):
        c.rollout.temprature = 0.5


def test_parse_arg():
    assert parse_arg("runlocal,seed=3,arm=baseline", runlocal=False, seed=0, arm="x") == {
        "runlocal": True,
        "seed": 3,
        "arm": "baseline",
    }
    with pytest.raises(ValueError, match="unknown config arg"):
        parse_arg("sed=3", seed=0)
    with pytest.raises(ValueError, match="arm must be"):
        _load("demo", "arm=clean")
    with pytest.raises(ValueError, match="model must be"):
        _load("paper", "model=qwen3_8b")


def test_demo_modes_are_variants():
    """The study's modes and arms are variants of one file: quick and full differ only in size;
    the arm switches SAAR; the seed reaches the run seed and the data order."""
    quick, full = _load("demo", "quick,arm=baseline,seed=2"), _load("demo")
    assert (quick.study.mode, quick.study.seeds, quick.total_steps) == ("quick", (0,), 2)
    assert (full.study.mode, full.study.seeds, full.total_steps) == ("full", (0, 1, 2), 6)
    assert not quick.saar.enabled and full.saar.enabled
    assert quick.seed == quick.data.shuffle_seed == 2
    assert full.validation.max_prompts == full.study.n_test
    assert full.train.mini_batch_prompts == full.rollout.prompts_per_step
    assert quick.study.arms == ("baseline", "cleaner")
    assert full.study.arms == ("baseline", "cleaner", "switch")
    long = _load("demo", "long")
    assert long.study.mode == "long" and long.study.arms == full.study.arms
    assert long.validation.max_prompts == long.study.n_test == full.study.n_test
    assert (full.validation.every, full.validation.n) == (full.total_steps, 1)
    assert long.train.mini_batch_prompts == long.rollout.prompts_per_step
    for c in (quick, full, long):
        assert c.study.eval.problems <= c.study.n_test and c.study.eval.n >= 1
    sizes = {
        "seed", "total_steps", "study.mode", "study.seeds", "study.arms", "study.n_sft",
        "study.sft_copies", "study.n_rl_train", "study.n_test", "study.premise_prompts",
        "study.premise_n", "study.eval.problems", "study.eval.n", "study.eval.problems_per_batch",
        "rollout.n", "rollout.prompts_per_step", "train.mini_batch_prompts", "data.shuffle_seed",
        "saar.enabled", "validation.every", "validation.n", "validation.max_prompts", "sft.epochs",
    }  # fmt: skip
    for a, b in ((quick, full), (full, long)):
        differ = {k for (k, x), (_, y) in zip(_flat(a), _flat(b), strict=True) if x != y}
        assert differ <= sizes


@pytest.mark.parametrize("mode,steps", [("quick", 2), ("full", 6), ("long", 16), ("runlocal", 2)])
def test_the_switch_arm_turns_saar_on_halfway(mode, steps):
    switch, cleaner = _load("demo", f"{mode},arm=switch"), _load("demo", f"{mode},arm=cleaner")
    assert switch.total_steps == steps
    assert switch.saar.enabled and switch.saar.start_step == steps // 2
    assert cleaner.saar.start_step == _load("demo", f"{mode},arm=baseline").saar.start_step == 0
    with pytest.raises(ValueError, match="at most one mode"):
        _load("demo", "quick,long")


def test_saar_is_active_from_its_start_step_on():
    from cleaner_jax.runtime.config import ConfigError, check_config, train_settings

    c = _load("demo", "quick,arm=switch")
    s = train_settings(c)
    assert s.saar_start_step == 1
    assert [s.saar_active(step) for step in range(3)] == [False, True, True]
    c.saar.enabled = False  # the baseline: never, whatever start_step says
    assert not any(train_settings(c).saar_active(step) for step in range(3))
    c.saar.enabled, c.saar.start_step = True, 0  # the cleaner arm: from the first step
    assert all(train_settings(c).saar_active(step) for step in range(3))
    c.saar.start_step = -1
    with pytest.raises(ConfigError, match="saar.start_step=-1"):
        check_config(c, "train")


def test_settings_are_typed_and_checked():
    from cleaner_jax.runtime.config import ConfigError, sft_settings, train_settings

    c = _load("demo", "quick")
    s = train_settings(c)
    assert (s.n, s.prompts_per_step, s.total_steps, s.old_logprobs) == (4, 4, 2, "sampler")
    assert s.validation.every == 2 and s.saar_enabled
    assert sft_settings(c).epochs == 1
    c.train.old_logprobs = "trainer"
    with pytest.raises(ConfigError, match="train.old_logprobs"):
        train_settings(c)
    c.sft.lr_schedule = "linear"
    with pytest.raises(ConfigError, match="sft.lr_schedule"):
        sft_settings(c)


def test_new_fields_reach_the_typed_configs():
    from cleaner_jax.runtime import parts

    c = _load("paper")
    assert (c.model.attention, c.model.attention_block) == ("auto", 512)
    assert (c.train.logprob_chunk, c.rollout.engine.attention) == (1024, "auto")
    c.model.attention, c.model.attention_block = "blockwise", 256
    c.rollout.engine.attention = "jnp"
    cfg = parts.model_config_for(c, 1000)
    assert (cfg.attention, cfg.attention_block) == ("blockwise", 256)
    assert (cfg.param_dtype, cfg.dtype) == ("float32", "float16")  # the paper's mixed precision
    assert parts.engine_config_from(c).attention == "jnp"


@pytest.mark.parametrize("num_pages,expected", [(0, None), (None, None), (300, 300)])
def test_num_pages_zero_sizes_the_pool_from_memory(num_pages, expected):
    from cleaner_jax.runtime import parts

    c = _load("paper")
    c.rollout.engine.num_pages = num_pages
    assert parts.engine_config_from(c).num_pages == expected


def test_num_pages_one_is_refused():
    from cleaner_jax.runtime import parts

    c = _load("demo")
    c.rollout.engine.num_pages = 1
    with pytest.raises(ValueError, match="num_pages=1.*or 0 to size"):
        parts.engine_config_from(c)


@pytest.mark.parametrize(
    "name,variant,arch,qkv_bias,qk_norm",
    [
        ("paper", "model=qwen3_4b,runlocal", "Qwen3ForCausalLM", False, True),
        ("paper", "model=qwen2_7b,arm=baseline,runlocal", "Qwen2ForCausalLM", True, False),
        ("demo", "runlocal", "Qwen3ForCausalLM", False, True),
    ],
)
def test_runlocal_is_self_contained_with_the_papers_architecture(
    name, variant, arch, qkv_bias, qk_norm
):
    from cleaner_jax.runtime import parts as model_setup

    c = _load(name, variant)
    assert c.prepare_synthetic and not c.tokenizer_path and not c.data.train_files
    cfg = model_setup.model_config_for(c, 300)
    assert (cfg.architecture, cfg.qkv_bias, cfg.qk_norm) == (arch, qkv_bias, qk_norm)
    assert cfg.vocab_size == 300 and cfg.param_dtype == "float32"
    assert c.model.attention == c.rollout.engine.attention == "auto"  # blockwise / jnp on CPU
    assert c.reward.overlong_buffer < c.rollout.max_response_tokens


def test_unknown_tiny_architecture_is_refused():
    from cleaner_jax.runtime import parts as model_setup

    c = _load("demo")
    c.model.tiny.architecture = "LlamaForCausalLM"
    with pytest.raises(ValueError, match="model.tiny.architecture"):
        model_setup.model_config_for(c, 300)


def test_sampler_dtype_follows_the_model_unless_set():
    import jax
    import numpy as np
    from flax import nnx

    from cleaner_jax.models.qwen import Qwen
    from cleaner_jax.runtime import parts as model_setup

    c = _load("paper", "runlocal")
    assert model_setup.sampler_dtype(c) == c.model.dtype == "float16"
    c.rollout.dtype = "bfloat16"
    assert model_setup.sampler_dtype(c) == "bfloat16"
    # The sampler's graphdef computes in its own dtype over the same parameter tree.
    c.model.tiny.update(num_layers=1, hidden_size=16, intermediate_size=32, head_dim=8)
    cfg = model_setup.model_config_for(c, 64)
    graphdef, state = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)))
    bundle = model_setup.ModelBundle(cfg, graphdef, state, mesh=None)
    assert model_setup.sampler_graphdef(bundle, "float16") is graphdef
    sampler = nnx.merge(
        model_setup.sampler_graphdef(bundle, "bfloat16"), model_setup.cast_state(state, "bfloat16")
    )
    assert sampler.cfg.dtype == "bfloat16"
    tokens = np.arange(6, dtype=np.int32)[None]
    logits, _ = sampler(tokens, tokens)
    assert logits.dtype == jax.numpy.float32 and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize(
    "loss_scale,mu_dtype,mode",
    [("auto", "", "dynamic"), ("none", "", "none"), ("512", "bfloat16", "static")],
)
def test_optim_fields_reach_the_updater(loss_scale, mu_dtype, mode):
    """optim.loss_scale ("auto": dynamic under the paper's float16 compute) and optim.mu_dtype
    reach the optimizer the trainer and SFT build (`optim_config_from` + the model's dtype)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cleaner_jax.models.qwen import Qwen
    from cleaner_jax.rl.update import LossConfig, Updater, loss_scale_of, make_optimizer
    from cleaner_jax.runtime import parts as model_setup

    c = _load("paper", "runlocal")
    assert (c.optim.loss_scale, c.optim.mu_dtype) == ("auto", "")
    c.optim.loss_scale, c.optim.mu_dtype = loss_scale, mu_dtype
    c.model.tiny.update(num_layers=1, hidden_size=16, intermediate_size=32, head_dim=8)
    cfg = model_setup.model_config_for(c, 64)
    assert cfg.dtype == "float16"
    graphdef, state = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)))
    opt = make_optimizer(model_setup.optim_config_from(c, "train"), compute_dtype=cfg.dtype)
    opt_state = Updater(graphdef, opt, LossConfig()).init(state)
    scale = loss_scale_of(opt_state)
    expected = {"dynamic": 2.0**15, "none": None, "static": 512.0}[mode]
    assert (None if scale is None else float(scale)) == expected
    moments = [x.dtype for x in jax.tree.leaves(opt_state) if x.ndim > 0]
    mu = jnp.dtype(mu_dtype or "float32")
    assert moments.count(mu) >= len(moments) // 2 and set(moments) <= {mu, jnp.dtype("float32")}


def _flat(c, prefix=""):
    for k, v in c.items():
        if hasattr(v, "items"):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_every_field_overrides_from_the_command_line(name):
    """ml_collections overrides only scalars and tuples: a list default would make e.g.
    `--config.data.train_files='("/data/x.parquet",)'` fail to parse (issue #21)."""
    from absl import flags

    path = CONFIGS / f"{name}.py"
    fields = dict(_flat(_load(name)))
    new = {k: (("/x.parquet",) if isinstance(v, tuple) else v) for k, v in fields.items()}
    argv = ["train.py", f"--config={path}"]
    argv += [
        f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
        for k, v in new.items()
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    assert dict(_flat(values.config)) == new


@pytest.mark.parametrize(
    "platform,model_dtype,rollout_dtype",
    [("tpu", "bfloat16", "bfloat16"), ("gpu", "float16", "float16"), ("cpu", "float16", "float16")],
)
def test_float16_becomes_bfloat16_on_tpu_only(platform, model_dtype, rollout_dtype):
    config = paper.get_config("model=qwen3_4b")
    assert config.model.dtype == "float16" and config.rollout.dtype == ""
    config.rollout.dtype = "float16"
    changed = config_lib.adapt_dtypes_to_platform(config, platform)
    assert (config.model.dtype, config.rollout.dtype) == (model_dtype, rollout_dtype)
    assert len(changed) == (2 if platform == "tpu" else 0)
    # Idempotent: nothing is float16 after the change; bfloat16/float32 configs are kept.
    if platform == "tpu":
        assert config_lib.adapt_dtypes_to_platform(config, "tpu") == []


# Every reference switch and the value `reference` gives it (README fidelity table); our
# defaults are the values of the same fields without `reference`.
REFERENCE = {
    "saar.similarity": ("tokens", "reference"),
    "saar.similarity_on": ("code", "turn_tail"),
    "saar.infra_failures_roll_back": (False, True),
    "saar.max_rounds_before_disable": (0, 30),
    "saar.exhaustion_note": ("ours", "reference"),
    "saar.recompute_spliced_logprobs": (True, True),  # kept: rescored under the purified context
    "rollout.max_calls_per_turn": (4, 1),
    "rollout.extra_calls": ("fail", "ignore"),
    "rollout.max_tool_attempts": (30, 0),
    "rollout.max_tool_response_chars": (0, 256),
    "rollout.retries_count_as_turns": (True, False),
    "sandbox.preimport": (("math", "itertools", "collections", "numpy", "sympy"), ()),
    "sandbox.truncation_marker": ("\n... [output truncated]", ""),
    "sandbox.memory_limit_mb": (1024, 512),
    "sandbox.max_infra_retries": (2, 0),
    "reward.math_mode": ("strict", "reference"),
    "loss.off_policy": ("tis", "none"),
    "train.old_logprobs": ("recompute", "recompute"),
    "validation.saar": (False, True),
    "validation.every": (25, 10),
    "checkpoint.every": (25, 10),
}


def _get(c, dotted):
    for key in dotted.split("."):
        c = c[key]
    return c


@pytest.mark.parametrize("model", ["qwen3_4b", "qwen2_7b"])
def test_reference_variant_sets_every_switch(model):
    ours = _load("paper", f"model={model}")
    ref = _load("paper", f"model={model},reference")
    for field, (default, reference) in REFERENCE.items():
        assert (field, _get(ours, field)) == (field, default)
        assert (field, _get(ref, field)) == (field, reference)
    # Everything else is the paper's recipe, unchanged (the rollback probability per model).
    flat_ours, flat_ref = dict(_flat(ours)), dict(_flat(ref))
    changed = {k for k in flat_ours if flat_ours[k] != flat_ref[k]}
    assert changed == {k for k, (a, b) in REFERENCE.items() if a != b}
    assert ref.saar.rollback_probability == ours.saar.rollback_probability


def test_reference_switches_reach_the_collector_and_the_sandbox():
    from cleaner_jax.runtime import parts

    c = _load("paper", "reference")
    saar = parts.saar_config_from(c)
    assert (saar.similarity_on, saar.infra_failures_roll_back) == ("turn_tail", True)
    assert (saar.max_rounds_before_disable, saar.exhaustion_note) == (30, "reference")
    collector = parts.collector_for(c, chat=None, engine=None, pool=None)
    limits = collector.limits
    assert (limits.max_calls_per_turn, limits.extra_calls, limits.max_tool_attempts) == (
        1,
        "ignore",
        0,
    )
    assert (limits.max_tool_response_chars, limits.retries_count_as_turns) == (256, False)
    sandbox = parts.tool_sandbox_config(c)
    assert (sandbox.preimport, sandbox.truncation_marker) == ((), "")
    assert (sandbox.memory_limit_mb, sandbox.max_infra_retries) == (512, 0)
    assert parts.reward_config_from(c).math_mode == "reference"
    settings = config_lib.train_settings(c)
    assert settings.validation.saar and not settings.off_policy.enabled


def test_reference_refuses_a_correction():
    with pytest.raises(ValueError, match="correction=tis"):
        _load("paper", "reference,correction=tis")
    assert _load("paper", "reference,correction=none").loss.off_policy == "none"
    assert _load("paper", "correction=none").loss.off_policy == "none"
