"""SAAR (Similarity-Aware Adaptive Rollback), the portable core of CLEANER.

Pure Python (standard library only), relative imports only: this folder can be copied out whole
and imported as a top-level package. Plug it into any RL codebase by implementing the three
protocols (`Policy`, `ToolRunner`, `TurnCodec`) and calling `rollout`; or purify recorded
trajectories offline with `purify`. See README.md next to this file.
"""

from .boundary import find_marker_by_offsets, find_marker_in_pieces, find_token
from .config import RolloutLimits, SaarConfig
from .protocols import Policy, ToolRunner, TurnCodec
from .purify import purify
from .rollout import draw_saar_enabled, is_model_error, rollout
from .similarity import (
    call_similarity,
    is_shallow,
    lexical_tokens,
    reference_similarity,
    token_similarity,
)
from .stats import TrajectoryStats, aggregate_stats
from .types import (
    ATTEMPT_LIMIT_ERROR,
    FORMAT_ERROR,
    TOO_MANY_CALLS_ERROR,
    Generation,
    Provenance,
    Segment,
    ToolCall,
    ToolResult,
    Trajectory,
    head_segments,
)

__all__ = [
    "ATTEMPT_LIMIT_ERROR",
    "FORMAT_ERROR",
    "TOO_MANY_CALLS_ERROR",
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
