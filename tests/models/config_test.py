"""ModelConfig: HF config.json parsing (both rope formats), presets vs published sizes."""

import jax
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models import qwen
from cleaner_jax.models.config import PRESETS, ModelConfig, UnsupportedModelError, tiny_config


def _abstract_param_count(cfg: ModelConfig) -> int:
    model = nnx.eval_shape(lambda: qwen.Qwen(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name, published",
    [
        ("qwen3_0_6b", 0.596e9),
        ("qwen3_4b", 4.022e9),
        ("qwen2_5_7b", 7.616e9),
        ("qwen3_8b", 8.191e9),
    ],
)
def test_full_size_param_counts_match_published(name, published):
    cfg = PRESETS[name]
    count = _abstract_param_count(cfg)
    assert count == cfg.num_params()
    assert abs(count - published) / published < 1e-3, count


QWEN3_4B_TF5 = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000},
    "tie_word_embeddings": True,
    "attention_bias": False,
    "use_sliding_window": False,
}


def test_from_hf_dict_transformers5_matches_preset():
    assert ModelConfig.from_hf_dict(QWEN3_4B_TF5) == PRESETS["qwen3_4b"]


def test_from_hf_dict_legacy_rope_theta_qwen25():
    hf = PRESETS["qwen2_5_7b"].to_hf_dict()
    hf.pop("rope_parameters")
    hf["rope_scaling"] = None
    assert ModelConfig.from_hf_dict(hf) == PRESETS["qwen2_5_7b"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_dict_round_trip(name):
    assert ModelConfig.from_hf_dict(PRESETS[name].to_hf_dict()) == PRESETS[name]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"use_sliding_window": True}, "sliding"),
        ({"hidden_act": "gelu"}, "gelu"),
    ],
)
def test_unsupported_configs_name_the_problem(change, match):
    with pytest.raises(UnsupportedModelError, match=match):
        ModelConfig.from_hf_dict({**QWEN3_4B_TF5, **change})


def test_qwen3_attention_bias_covers_o_proj():
    cfg = ModelConfig.from_hf_dict({**QWEN3_4B_TF5, "attention_bias": True})
    assert cfg.qkv_bias and cfg.o_bias
    with pytest.raises(ValueError, match="o_proj"):
        PRESETS["qwen3_0_6b"].replace(qkv_bias=True)


def test_attention_fields_are_validated_and_pass_through_overrides():
    with pytest.raises(ValueError, match="attention='flash'"):
        tiny_config(attention="flash")
    with pytest.raises(ValueError, match="attention_block"):
        tiny_config(attention_block=0)
    hf = PRESETS["qwen3_0_6b"].to_hf_dict()
    cfg = ModelConfig.from_hf_dict(hf, attention="blockwise", attention_block=256)
    assert (cfg.attention, cfg.attention_block) == ("blockwise", 256)
    assert "attention" not in cfg.to_hf_dict()  # ours, not HF's
    assert cfg.replace(attention="dense").attention == "dense"
