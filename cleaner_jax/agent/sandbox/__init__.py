"""Python sandbox tool (`code_interpreter`): a pool of warm, bubblewrap-isolated workers.

from cleaner_jax.agent.sandbox import SandboxPool, SandboxConfig, ExecResult
with SandboxPool(SandboxConfig(num_workers=2, timeout_s=4.0)) as pool:
    res = await pool.run(code, stdin=None, timeout_s=None)   # or pool.run_sync(code)
    text = res.to_tool_response_text()                       # reference tool message
"""

from cleaner_jax.agent.sandbox.config import SandboxConfig
from cleaner_jax.agent.sandbox.pool import SandboxClosedError, SandboxPool, SandboxStartError
from cleaner_jax.agent.sandbox.result import (
    REASON_INTERNAL,
    REASON_NONE,
    REASON_TIMEOUT,
    TIMEOUT_STDOUT_NOTICE,
    ExecResult,
)

__all__ = [
    "REASON_INTERNAL",
    "REASON_NONE",
    "REASON_TIMEOUT",
    "TIMEOUT_STDOUT_NOTICE",
    "ExecResult",
    "SandboxClosedError",
    "SandboxConfig",
    "SandboxPool",
    "SandboxStartError",
]
