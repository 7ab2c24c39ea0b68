"""SAAR (Similarity-Aware Adaptive Rollback), the portable core of CLEANER.

Pure Python (standard library only): plug it into any RL codebase by implementing the three
protocols (`Policy`, `ToolRunner`, `TurnCodec`) and calling `rollout`; or purify recorded
trajectories offline with `purify`. See README.md next to this file.
"""

from cleaner_jax.saar.boundary import find_marker_by_offsets, find_marker_in_pieces, find_token
from cleaner_jax.saar.config import RolloutLimits, SaarConfig
from cleaner_jax.saar.protocols import Policy, ToolRunner, TurnCodec
from cleaner_jax.saar.purify import purify
from cleaner_jax.saar.rollout import draw_saar_enabled, is_model_error, rollout
from cleaner_jax.saar.similarity import (
    call_similarity,
    is_shallow,
    lexical_tokens,
    reference_similarity,
    token_similarity,
)
from cleaner_jax.saar.stats import TrajectoryStats, aggregate_stats
from cleaner_jax.saar.types import (
    Generation,
    Provenance,
    Segment,
    ToolCall,
    ToolResult,
    Trajectory,
    head_segments,
)

__all__ = [
    "Generation",
    "Policy",
    "Provenance",
    "RolloutLimits",
    "SaarConfig",
    "Segment",
    "ToolCall",
    "ToolResult",
    "ToolRunner",
    "Trajectory",
    "TrajectoryStats",
    "TurnCodec",
    "aggregate_stats",
    "call_similarity",
    "draw_saar_enabled",
    "find_marker_by_offsets",
    "find_marker_in_pieces",
    "find_token",
    "head_segments",
    "is_model_error",
    "is_shallow",
    "lexical_tokens",
    "purify",
    "reference_similarity",
    "rollout",
    "token_similarity",
]
