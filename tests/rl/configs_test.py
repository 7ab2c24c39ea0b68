"""Every config file loads, has the paper defaults, and a mistyped override fails."""

import importlib.util
import pathlib

import pytest
from ml_collections import config_flags  # noqa: F401  (the module the launchers use)

from cleaner_jax.rl.defaults import parse_arg

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize(
    "name,saar,p,lr",
    [
        ("qwen3_4b_cleaner", True, 1.0, 2e-6),
        ("qwen3_4b_baseline", False, 1.0, 2e-6),
        ("qwen2_7b_cleaner", True, 0.7, 1e-6),
        ("qwen2_7b_baseline", False, 0.7, 1e-6),
    ],
)
def test_paper_configs(name, saar, p, lr):
    c = _load(name)
    assert c.saar.enabled is saar and c.saar.rollback_probability == p
    assert c.optim.learning_rate == lr and c.optim.warmup_steps == 20 and c.optim.grad_clip == 1.0
    assert (c.loss.clip_eps_low, c.loss.clip_eps_high, c.loss.dual_clip_c) == (0.2, 0.28, 10.0)
    assert (c.rollout.n, c.rollout.prompts_per_step, c.train.mini_batch_prompts) == (16, 128, 32)
    assert (c.rollout.max_turns, c.rollout.max_response_tokens) == (16, 20480)
    assert (c.reward.overlong_buffer, c.saar.gamma, c.saar.max_retries) == (4096, 0.5, 3)
    assert (c.validation.temperature, c.validation.top_p, c.validation.n) == (1.0, 0.6, 16)
    local = _load(name, "runlocal")
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
