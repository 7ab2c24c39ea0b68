"""Model configuration for the Qwen2 / Qwen2.5 / Qwen3 dense decoders.

`ModelConfig` is built from a HF `config.json` (transformers 5 `rope_parameters`, or the older
`rope_theta` key) or taken from `PRESETS`, which hold the published shapes of the checkpoints our
users train. `to_hf_dict` writes the config back in the form `transformers` loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from cleaner_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM")


class UnsupportedModelError(ValueError):
    """The checkpoint describes a model this package does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Qwen dense decoder.

    `param_dtype` is the storage dtype of parameters (fp32 master weights for training),
    `dtype` the compute dtype of matmuls; softmax, logits and log-probs are always float32.
    `attention` picks the training-forward attention (`attention.IMPLEMENTATIONS`; "auto" by
    backend) and `attention_block` its query/key block length; the KV-cache path ignores both.
    `scan_layers` stores the decoder layers' parameters stacked on a leading layer axis and runs
    the training / scoring forward as a scan over them (compile time independent of the depth);
    the numbers are those of the unrolled layout (`qwen.stack_layers` converts a state).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = True
    max_position_embeddings: int = 40960
    architecture: str = "Qwen3ForCausalLM"
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    attention: str = "auto"
    attention_block: int = 512
    scan_layers: bool = False

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)"
            )
        if self.architecture == "Qwen3ForCausalLM" and self.qkv_bias != self.o_bias:
            raise ValueError(
                "Qwen3's attention_bias switches the q/k/v and o_proj biases together: "
                f"got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}"
            )
        if self.architecture == "Qwen2ForCausalLM" and (
            not self.qkv_bias or self.o_bias or self.qk_norm
        ):
            raise ValueError(
                "Qwen2 has q/k/v biases, no o_proj bias and no q/k norm: "
                "set qkv_bias=True, o_bias=False, qk_norm=False"
            )
        if self.architecture == "Qwen3ForCausalLM" and not self.qk_norm:
            raise ValueError("Qwen3 always has q/k RMSNorm: set qk_norm=True")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention={self.attention!r} is not an implementation; use one of "
                f"{', '.join(ATTENTION_IMPLEMENTATIONS)}"
            )
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        if self.attention_block < 1:
            raise ValueError(f"attention_block={self.attention_block} must be >= 1")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: use float32, bfloat16 or float16"
                )

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count, computed from the shapes (matches HF's `num_parameters()`)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        attn = d * q + 2 * d * kv + q * d
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.o_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * h
        layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + d

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        arch = (
            archs[0]
            if archs
            else {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(
                model_type, str(model_type)
            )
        )
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"config.json declares architecture {arch!r} (model_type {model_type!r}); "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or {}
        for rope_type in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
            if rope_type not in (None, "default"):
                raise UnsupportedModelError(
                    f"rope type {rope_type!r} is not supported (only the default RoPE); "
                    "remove rope_scaling / rope_parameters.rope_type from config.json "
                    "to run without it"
                )
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError(
                "config.json sets use_sliding_window=true; only full attention is supported"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(
                f"hidden_act {hf['hidden_act']!r} is not supported (only silu)"
            )
        theta = rope.get("rope_theta", hf.get("rope_theta"))
        if theta is None:
            raise ValueError("config.json has neither rope_parameters.rope_theta nor rope_theta")
        n_heads = hf["num_attention_heads"]
        qwen3 = arch == "Qwen3ForCausalLM"
        attention_bias = bool(hf.get("attention_bias", False))
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=n_heads,
            num_kv_heads=hf.get("num_key_value_heads", n_heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            rope_theta=float(theta),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias if qwen3 else True,
            o_bias=attention_bias if qwen3 else False,
            qk_norm=qwen3,
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            architecture=arch,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path: str, **overrides: Any) -> ModelConfig:
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no config.json in {path!r}: pass a local HF checkpoint dir")
        with open(cfg_path) as f:
            return cls.from_hf_dict(json.load(f), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        qwen3 = self.architecture == "Qwen3ForCausalLM"
        out = {
            "architectures": [self.architecture],
            "model_type": "qwen3" if qwen3 else "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "use_cache": True,
            "dtype": self.param_dtype,
        }
        if qwen3:
            out["attention_bias"] = self.qkv_bias
        return out


def _qwen3(**kw: Any) -> ModelConfig:
    base = dict(vocab_size=151936, head_dim=128, num_kv_heads=8, tie_word_embeddings=True)
    base.update(kw)
    return ModelConfig(**base)


def _qwen25(**kw: Any) -> ModelConfig:
    base = dict(
        vocab_size=151936,
        head_dim=128,
        qkv_bias=True,
        qk_norm=False,
        architecture="Qwen2ForCausalLM",
        max_position_embeddings=32768,
    )
    base.update(kw)
    return ModelConfig(**base)


PRESETS: dict[str, ModelConfig] = {
    "qwen3_0_6b": _qwen3(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16),
    "qwen3_1_7b": _qwen3(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16),
    "qwen3_4b": _qwen3(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32),
    "qwen3_4b_instruct_2507": _qwen3(
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        rope_theta=5_000_000.0,
        max_position_embeddings=262144,
    ),
    "qwen3_8b": _qwen3(
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        tie_word_embeddings=False,
    ),
    "qwen2_5_1_5b": _qwen25(
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2_5_7b": _qwen25(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
    ),
}
PRESETS["qwen2_5_7b_instruct"] = PRESETS["qwen2_5_7b"]


def tiny_config(**kw: Any) -> ModelConfig:
    """A Qwen3-shaped model small enough for CPU tests and the embedded demo."""
    base = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=10_000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    base.update(kw)
    return ModelConfig(**base)
