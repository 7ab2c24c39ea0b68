"""Builds the tokenizer, mesh and initial parameters a training run starts from.

Shared by SFT (`rl/sft.py`) and GRPO (`rl/trainer.py`). The model comes from a local HF
checkpoint dir (`model.hf_path`: a real Qwen checkpoint, or the HF export of our SFT run) or,
without one, random initialisation of `model.preset` ("tiny" uses `model.tiny`). Resuming a run
from its own orbax checkpoints is the trainer's business, not this module's.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cleaner_jax.agent.tokenizer import load_tokenizer
from cleaner_jax.models import config as model_config_lib
from cleaner_jax.models import hf_io, sharding
from cleaner_jax.models.qwen import Qwen


@dataclasses.dataclass
class ModelBundle:
    cfg: model_config_lib.ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State  # float32 master parameters, sharded on `mesh`
    mesh: jax.sharding.Mesh


def tokenizer_for(config: ml_collections.ConfigDict):
    path = config.tokenizer_path or config.model.hf_path
    if not path:
        raise ValueError(
            "no tokenizer: set config.tokenizer_path (or model.hf_path) to a local dir holding "
            "tokenizer files (the demo builds one with cleaner_jax.agent.tokenizer.build_tokenizer)"
        )
    return load_tokenizer(path)


# The attention layout each architecture fixes (models/config.py checks these combinations).
_TINY_ARCHITECTURES = {
    "Qwen3ForCausalLM": dict(qkv_bias=False, qk_norm=True),
    "Qwen2ForCausalLM": dict(qkv_bias=True, qk_norm=False),
}


def model_config_for(config: ml_collections.ConfigDict, vocab_size: int):
    """The `ModelConfig` of `config.model`: from `hf_path`, else the preset ("tiny": model.tiny),
    with the config's dtypes, remat and training-attention settings."""
    m = config.model
    common = dict(
        param_dtype=m.param_dtype,
        dtype=m.dtype,
        remat=m.remat,
        attention=m.attention,
        attention_block=m.attention_block,
    )
    if m.hf_path:
        return model_config_lib.ModelConfig.from_pretrained(m.hf_path, **common)
    if m.preset == "tiny":
        tiny = dict(m.tiny)
        arch = tiny["architecture"]
        if arch not in _TINY_ARCHITECTURES:
            raise ValueError(
                f"model.tiny.architecture={arch!r}: use one of {sorted(_TINY_ARCHITECTURES)}"
            )
        tiny.update(_TINY_ARCHITECTURES[arch])
        tiny["vocab_size"] = tiny["vocab_size"] or vocab_size
        return model_config_lib.tiny_config(**tiny, **common)
    if m.preset not in model_config_lib.PRESETS:
        raise ValueError(
            f"model.preset={m.preset!r} is unknown; use 'tiny' or one of "
            f"{sorted(model_config_lib.PRESETS)}"
        )
    return model_config_lib.PRESETS[m.preset].replace(**common)


def sampler_dtype(config: ml_collections.ConfigDict) -> str:
    """The sampler's compute dtype and weight-copy dtype: `rollout.dtype`, "" = `model.dtype`."""
    return config.rollout.dtype or config.model.dtype


def sampler_graphdef(bundle: ModelBundle, dtype: str) -> nnx.GraphDef:
    """The model structure computing in `dtype`, for the sampler's copy of the parameters.

    The compute dtype is static module state, so a sampler that runs in another dtype than the
    training forward needs its own graphdef; the parameter tree is the same.
    """
    if dtype == bundle.cfg.dtype:
        return bundle.graphdef
    cfg = bundle.cfg.replace(dtype=dtype)
    return nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))[0]


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> ModelBundle:
    """Creates the mesh and the parameters (sharded on it)."""
    mesh = sharding.make_mesh(dict(config.mesh))
    cfg = model_config_for(config, vocab_size)
    if cfg.vocab_size < vocab_size:
        raise ValueError(
            f"the model's vocab ({cfg.vocab_size}) is smaller than the tokenizer's ({vocab_size})"
        )
    if config.model.hf_path:
        logging.info("importing HF checkpoint %s", config.model.hf_path)
        cfg, model = hf_io.load_hf_checkpoint(
            config.model.hf_path, cfg, dtype=cfg.param_dtype, mesh=mesh
        )
        graphdef, state = nnx.split(model)
        return ModelBundle(cfg, graphdef, state, mesh)

    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(config.seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding.state_shardings(abstract_state, mesh, cfg=cfg)
    logging.info("random initialisation of %s (%d params)", config.model.preset, cfg.num_params())

    def init():
        return nnx.split(Qwen(cfg, rngs=nnx.Rngs(config.seed)))[1]

    state = jax.jit(init, out_shardings=shardings)()
    return ModelBundle(cfg, graphdef, state, mesh)


def cast_state(state, dtype: str):
    """A copy of the parameters in `dtype` (for the sampler when it computes in fp16/bf16)."""
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if x.dtype != target else x, state)


def export_dir(workdir: str, name: str) -> str:
    """Where a run exports HF checkpoints: `workdir/hf_export/<name>` (e.g. step_750, final)."""
    return os.path.join(workdir, "hf_export", name)
