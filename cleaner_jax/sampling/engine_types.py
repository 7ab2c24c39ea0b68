"""The engine's request and configuration types: `EngineConfig`, `SamplingParams`,
`GenerationResult`, `RequestTooLargeError` (public, re-exported by `engine.py` and the package),
and `SamplingRows`, the per-row sampling settings the engine hands its device programs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cleaner_jax.sampling.attention_kernels import ATTENTION_IMPLS

if TYPE_CHECKING:
    import asyncio

    from cleaner_jax.sampling.radix_cache import SequencePages


class RequestTooLargeError(ValueError):
    """A request can never be served by this engine's configuration."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Engine shapes. `num_pages=None`: size the pool from free device memory (times
    `memory_fraction`); backends that do not report memory (CPU, some TPU runtimes) then get
    enough pages for `max_slots` full-length sequences.

    `prefill_chunk` tokens per prefill call are split into `prefill_blocks` blocks, each owned by
    one sequence, so one call prefills up to `prefill_blocks` sequences. `attention`: "auto"
    (the backend's kernel: "pallas_gpu" on GPU, "pallas_tpu" on TPU, else "jnp"), or one of
    those by name; `interpret_kernels` runs the kernel in Pallas interpret mode (CPU tests).
    `decode_steps` decode steps run per device call (stop tokens and budgets checked on device);
    `max_stop_tokens` bounds a request's `stop_token_ids` (the device's stop table width)."""

    page_size: int = 16
    num_pages: int | None = None
    max_slots: int = 8
    prefill_chunk: int = 128
    max_seq_len: int = 2048
    # 8 steps per call: 1.39 s vs 1.92 s (1 step) end to end for 32 x (16 + 112) tokens on a
    # 2-core EPYC (launch/bench_sampler.py shape); 16 steps gained 5% more but delay admissions.
    decode_steps: int = 8
    memory_fraction: float = 0.5
    prefix_cache: bool = True  # False: never reuse cached pages (the benchmark's baseline)
    # Decode and prefill page-table widths: ceil(max pages / 2**i) for i < this (1 = full width).
    decode_width_buckets: int = 4
    prefill_blocks: int = 8
    attention: str = "auto"
    interpret_kernels: bool = False
    # Stop tokens per request, checked on device (the decode program's stop table width).
    max_stop_tokens: int = 8
    # "jnp" path: decode over a per-call contiguous copy of the slots' pages (faster on CPU; it
    # costs a dense cache's bytes at the call's page-table width on top of the pool).
    decode_view: bool = True

    def __post_init__(self):
        names = (
            "page_size",
            "max_slots",
            "prefill_chunk",
            "max_seq_len",
            "decode_steps",
            "decode_width_buckets",
            "prefill_blocks",
            "max_stop_tokens",
        )
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)} must be >= 1")
        if self.prefill_chunk % self.prefill_blocks:
            raise ValueError(
                f"EngineConfig.prefill_chunk={self.prefill_chunk} must be a multiple of "
                f"prefill_blocks={self.prefill_blocks}"
            )
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(
                f"EngineConfig.attention={self.attention!r}: "
                f"use one of {', '.join(ATTENTION_IMPLS)}"
            )


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature == 0 means greedy with log-probs at temperature 1."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    greedy: bool = False

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # 'stop' | 'length'
    cached_prompt_tokens: int
    versions: list[int] = dataclasses.field(default_factory=list)  # per token: policy version


class SamplingRows(NamedTuple):
    """Per-row sampling settings of one device call, each field shaped [R] (R = decode slots B or
    prefill rows J). A NamedTuple, so a JAX pytree: the jitted programs take it as one argument
    and read it by name; every call site builds it with `build`, so each program sees one pytree
    structure and one set of dtypes (no recompiles).

    Attributes:
      seed: int32, the request's sampling seed (randomness depends on seed and position).
      temperature: float32 > 0; a greedy row keeps its temperature (1.0 for temperature 0), the
        temperature its log-probs are reported at.
      top_p: float32 in (0, 1].
      top_k: int32, 0 or negative = off.
      greedy: bool, argmax instead of sampling.
    """

    seed: np.ndarray
    temperature: np.ndarray
    top_p: np.ndarray
    top_k: np.ndarray
    greedy: np.ndarray

    @classmethod
    def build(
        cls, num_rows: int, params: Iterable[tuple[int, SamplingParams]] = ()
    ) -> SamplingRows:
        """Rows from (row, params) pairs; rows no request owns keep neutral settings (seed 0,
        temperature 1, top_p 1, top_k off, sampled): their results are ignored."""
        rows = cls(
            seed=np.zeros((num_rows,), np.int32),
            temperature=np.ones((num_rows,), np.float32),
            top_p=np.ones((num_rows,), np.float32),
            top_k=np.zeros((num_rows,), np.int32),
            greedy=np.zeros((num_rows,), bool),
        )
        for row, p in params:
            rows.seed[row] = p.seed
            rows.temperature[row] = p.temperature or 1.0
            rows.top_p[row] = p.top_p
            rows.top_k[row] = p.top_k
            rows.greedy[row] = p.greedy or p.temperature == 0
        return rows


@dataclasses.dataclass(eq=False)
class EngineRequest:
    """One `generate` or `score` request inside the engine (its slot, pages and results)."""

    kind: str  # 'generate' | 'score'
    tokens: list[int]
    params: SamplingParams
    future: asyncio.Future
    arrival: int
    prompt_len: int
    start: int = 0
    generated: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    scores: dict[int, float] = dataclasses.field(default_factory=dict)
    cached: int | None = None
    seq: SequencePages | None = None
    slot: int = -1
    prefilling: bool = True
