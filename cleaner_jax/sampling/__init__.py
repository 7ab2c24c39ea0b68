"""Sampling engine: paged KV cache, radix prefix cache, jitted prefill/decode, asyncio API.

Example::

    from cleaner_jax.sampling import Engine, EngineConfig, SamplingParams
    engine = Engine(model, EngineConfig(page_size=16, num_pages=512, max_slots=8))
    res = await engine.generate(prompt_tokens, SamplingParams(temperature=1.0, max_new_tokens=64))
    lps = await engine.score(tokens, start)
"""

from cleaner_jax.sampling.attention_kernels import (
    ATTENTION_IMPLS,
    kernel_decode_attention,
    megacore_mode,
    resolve_attention,
)
from cleaner_jax.sampling.engine import (
    Engine,
    EngineConfig,
    GenerationResult,
    RequestTooLargeError,
    SamplingParams,
)
from cleaner_jax.sampling.page_allocator import NULL_PAGE, OutOfPagesError, PageAllocator
from cleaner_jax.sampling.paged_cache import (
    DecodeViewCache,
    PagedKVCache,
    bytes_per_page,
    num_pages_from_memory,
    paged_attention,
    pages_for_memory,
)
from cleaner_jax.sampling.placement import SamplerPlacement, sampler_placement
from cleaner_jax.sampling.radix_cache import PageManager, SequencePages
from cleaner_jax.sampling.token_sampling import sample_tokens, truncation_mask

__all__ = [
    "ATTENTION_IMPLS",
    "DecodeViewCache",
    "NULL_PAGE",
    "Engine",
    "EngineConfig",
    "GenerationResult",
    "OutOfPagesError",
    "PageAllocator",
    "PageManager",
    "PagedKVCache",
    "SamplerPlacement",
    "RequestTooLargeError",
    "SamplingParams",
    "SequencePages",
    "bytes_per_page",
    "kernel_decode_attention",
    "megacore_mode",
    "num_pages_from_memory",
    "paged_attention",
    "pages_for_memory",
    "resolve_attention",
    "sample_tokens",
    "sampler_placement",
    "truncation_mask",
]
