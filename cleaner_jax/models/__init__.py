"""Qwen2 / Qwen2.5 / Qwen3 dense decoders in Flax NNX, HF checkpoint I/O and sharding rules.

`testing` (tiny random models and checkpoints for tests) is a submodule, imported on demand.
The training attention is `attention.attention` (the module of that name; not re-exported here,
where the function would shadow the submodule).
"""

from cleaner_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from cleaner_jax.models.attention import (
    attention_weights_mask,
    packed_causal_mask,
    resolve_impl,
)
from cleaner_jax.models.config import (
    PRESETS,
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    UnsupportedModelError,
    tiny_config,
)
from cleaner_jax.models.hf_io import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import KVCache, Qwen, stack_layers, token_logprobs, unstack_layers
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
    "ATTENTION_IMPLEMENTATIONS",
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
    "packed_causal_mask",
    "resolve_impl",
    "save_hf_checkpoint",
    "shard_state",
    "stack_layers",
    "state_shardings",
    "tiny_config",
    "token_logprobs",
    "unstack_layers",
]
