"""The off-policy correction's config: presets, and the refusals of what it cannot do."""

import dataclasses

import numpy as np
import pytest

from cleaner_jax.rl import off_policy
from cleaner_jax.rl.packing import TrainSample
from cleaner_jax.runtime import trainer
from cleaner_jax.runtime.config import ConfigError, train_settings
from configs import demo, paper


@pytest.mark.parametrize("name", sorted(off_policy.PRESETS))
def test_paper_correction_presets_reach_the_settings(name):
    c = paper.get_config(f"correction={name}")
    s = train_settings(c)
    mode, level, cap, low, high = off_policy.PRESETS[name]
    assert (s.off_policy.mode, s.off_policy.level, s.off_policy.cap) == (mode, level, cap)
    assert (s.off_policy.mask_low, s.off_policy.mask_high) == (low, high)


def test_defaults_paper_tis_demo_none_and_the_correction_arm():
    assert train_settings(paper.get_config()).off_policy.mode == "tis"
    assert train_settings(demo.get_config("quick")).off_policy.mode == "none"
    arm = train_settings(demo.get_config("quick,arm=correction"))
    assert (arm.off_policy.mode, arm.old_logprobs, arm.saar_enabled) == ("tis", "recompute", True)
    with pytest.raises(ValueError, match="correction"):
        paper.get_config("correction=ips")


def test_correction_without_prox_or_without_rescoring_is_refused():
    c = paper.get_config("correction=tis")
    c.train.old_logprobs = "sampler"
    with pytest.raises(ConfigError, match="bypass"):
        train_settings(c)
    c = paper.get_config("correction=seq_mis")
    c.saar.recompute_spliced_logprobs = False
    with pytest.raises(ConfigError, match="recompute_spliced_logprobs=True"):
        train_settings(c)
    c.saar.enabled = False  # the baseline has no splices: nothing to rescore
    train_settings(c)
    c = paper.get_config("correction=none")
    c.train.old_logprobs = "sampler"
    train_settings(c)  # the bypass mode itself stays available
    c = paper.get_config("correction=tis")
    c.loss.off_policy_mask_low = 1.5
    with pytest.raises(ConfigError, match="must hold 1"):
        train_settings(c)


@dataclasses.dataclass
class _Rollout:
    temperature: float


def test_rollouts_at_another_temperature_are_refused():
    settings = train_settings(paper.get_config("correction=tis"))
    sample = TrainSample(tokens=np.arange(4), loss_mask=np.array([0, 1, 1, 1]))
    with pytest.raises(ValueError, match="one temperature"):
        trainer._correct(settings, [_Rollout(0.6)], [sample])
    assert "off_policy/rejected_frac" in trainer._correct(settings, [_Rollout(1.0)], [sample])
    bypass = dataclasses.replace(settings, old_logprobs="sampler")
    assert trainer._correct(bypass, [_Rollout(0.6)], [sample]) == {}
