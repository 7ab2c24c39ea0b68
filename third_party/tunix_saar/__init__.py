"""SAAR rollouts for Tunix's agentic GRPO learner (see README.md next to this file).

This package imports without Tunix; `third_party.tunix_saar.tunix_learner` (SaarGRPOLearner,
SaarRollout, tunix_score_fn) needs google-tunix 0.1.7 (the `tunix` extra).
"""

from third_party.tunix_saar.adapter import (
    TUNIX_TOKEN_KEYS,
    CallablePolicy,
    CallableToolRunner,
    collect_token_dicts,
    conversation_messages,
    trajectory_to_token_dict,
    tunix_status,
)

__all__ = [
    "TUNIX_TOKEN_KEYS",
    "CallablePolicy",
    "CallableToolRunner",
    "collect_token_dicts",
    "conversation_messages",
    "trajectory_to_token_dict",
    "tunix_status",
]
