"""SAAR rollouts for Tunix-style agentic RL loops (see README.md next to this file)."""

from third_party.tunix_saar.adapter import (
    TUNIX_TOKEN_KEYS,
    CallablePolicy,
    CallableToolRunner,
    collect_token_dicts,
    trajectory_to_token_dict,
    tunix_status,
)

__all__ = [
    "TUNIX_TOKEN_KEYS",
    "CallablePolicy",
    "CallableToolRunner",
    "collect_token_dicts",
    "trajectory_to_token_dict",
    "tunix_status",
]
