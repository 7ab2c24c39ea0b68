"""Tiny Qwen models and HF checkpoints for tests of every subpackage (shipped like gemma's dummy).

- `tiny_variant(...)`: a small `ModelConfig` of either architecture with a chosen GQA ratio,
  tying and bias;
- `random_model(cfg, seed)`: our model with every parameter random (norm weights near 1,
  non-zero biases), so parity tests exercise all of them; the same numbers in either layer
  layout (`cfg.scan_layers`);
- `save_tiny_checkpoint(dir, cfg, seed)`: an HF checkpoint dir written by our exporter (no torch);
- `torch_model(cfg, seed)`: the same architecture built by `transformers` with random weights
  (needs the `torch` extra; imported lazily).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.models.config import ModelConfig, tiny_config
from cleaner_jax.models.hf_io import save_hf_checkpoint
from cleaner_jax.models.qwen import Qwen, stack_layers


def tiny_variant(
    arch: str = "qwen3",
    *,
    tied: bool = True,
    gqa: int = 2,
    bias: bool = False,
    **overrides: Any,
) -> ModelConfig:
    """A tiny config: 4 query heads, 4 // gqa kv heads; `bias` only matters for Qwen3."""
    if 4 % gqa:
        raise ValueError(f"gqa={gqa}: must divide the 4 query heads")
    kw: dict[str, Any] = dict(num_heads=4, num_kv_heads=4 // gqa, tie_word_embeddings=tied)
    if arch == "qwen3":
        kw.update(qkv_bias=bias, o_bias=bias)
    elif arch == "qwen2":
        kw.update(architecture="Qwen2ForCausalLM", qkv_bias=True, o_bias=False, qk_norm=False)
    else:
        raise ValueError(f"arch={arch!r}: use 'qwen3' or 'qwen2'")
    kw.update(overrides)
    return tiny_config(**kw)


def random_model(cfg: ModelConfig, seed: int = 0, scale: float = 0.1) -> Qwen:
    """Our model with all parameters random: N(0, scale) weights/biases, norms 1 + N(0, scale).

    Built abstractly and filled from numpy: eager init compiles every op and a jitted
    threefry init takes XLA ~20 s to compile on CPU. With `cfg.scan_layers` the parameters are
    those of the unrolled model of the same seed, stacked.
    """
    if cfg.scan_layers:
        state = nnx.state(random_model(cfg.replace(scan_layers=False), seed, scale))
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
        return nnx.merge(graphdef, stack_layers(state))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree.flatten_with_path(abstract)
    rng = np.random.default_rng(seed)
    values = []
    for path, x in leaves:
        noise = scale * rng.standard_normal(x.shape, np.float32)
        is_norm = any("norm" in str(getattr(k, "key", "")) for k in path)
        values.append(jnp.asarray(1.0 + noise if is_norm else noise, x.dtype))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, values))


def jit_forward(model: Qwen):
    """`f(tokens_BT, positions_BT, segment_ids_BT=None, cache=None) -> (logits, cache)`, jitted
    over the model's state (split once), for tests that call a model many times."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, tokens_BT, positions_BT, segment_ids_BT, cache):
        return nnx.merge(graphdef, state)(
            tokens_BT, positions_BT, segment_ids_BT=segment_ids_BT, cache=cache
        )

    return lambda tokens_BT, positions_BT, segment_ids_BT=None, cache=None: fwd(
        state, tokens_BT, positions_BT, segment_ids_BT, cache
    )


def save_tiny_checkpoint(
    out_dir: str, cfg: ModelConfig | None = None, *, seed: int = 0, dtype: str = "float32"
) -> str:
    """Writes a random tiny HF checkpoint (config.json + model.safetensors) and returns its dir."""
    cfg = cfg or tiny_config()
    save_hf_checkpoint(random_model(cfg, seed), cfg, out_dir, dtype=dtype)
    return out_dir


def torch_model(
    cfg: ModelConfig, seed: int = 0, scale: float = 0.1, attn_implementation: str = "eager"
):
    """`transformers` model of `cfg` (float32, eval mode), all weights random (as `random_model`
    but from torch's generator, so the two do not share weights)."""
    import torch
    import transformers

    hf = cfg.to_hf_dict()
    hf.pop("architectures")
    hf_cfg = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    hf_cfg.architectures = [cfg.architecture]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_cfg, attn_implementation=attn_implementation, dtype=torch.float32
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = scale * torch.randn_like(p)
            p.copy_(1.0 + noise if "norm" in name else noise)
    return model.eval()
