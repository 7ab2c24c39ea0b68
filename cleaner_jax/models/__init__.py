"""Qwen2 / Qwen2.5 / Qwen3 dense decoders in Flax NNX, HF checkpoint I/O and sharding rules.

`testing` (tiny random models and checkpoints for tests) is a submodule, imported on demand.
"""

from cleaner_jax.models.config import (
    PRESETS,
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    UnsupportedModelError,
    tiny_config,
)
from cleaner_jax.models.hf_io import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import KVCache, Qwen, attention_weights_mask, token_logprobs
from cleaner_jax.models.sharding import (
    DEFAULT_RULES,
    MESH_AXES,
    PARAM_LOGICAL_AXES,
    ShardingError,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    shard_state,
    state_shardings,
)

__all__ = [
    "PRESETS",
    "SUPPORTED_ARCHITECTURES",
    "DEFAULT_RULES",
    "MESH_AXES",
    "PARAM_LOGICAL_AXES",
    "CheckpointError",
    "DenseKVCache",
    "KVCache",
    "ModelConfig",
    "Qwen",
    "ShardingError",
    "UnsupportedModelError",
    "attention_weights_mask",
    "batch_sharding",
    "load_hf_checkpoint",
    "logical_to_spec",
    "make_mesh",
    "save_hf_checkpoint",
    "shard_state",
    "state_shardings",
    "tiny_config",
    "token_logprobs",
]
