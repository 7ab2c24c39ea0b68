"""Memory of the real training and decode programs, read off XLA's compiled memory analysis.

Nothing is allocated: parameters and inputs are `jax.ShapeDtypeStruct`s, the programs are the ones
the trainer and the sampler run (`rl.update._grad_step`: forward, chunked log-probs, loss and
gradients of one packed micro-batch; `sampling.engine_steps.EngineSteps.decode`: decode steps over
a paged KV pool), lowered and compiled for the default backend, and `memory_analysis()` reports
the bytes the program needs besides its arguments and outputs (`temp`). The memory plan
(`models.memory_plan`) and `launch/bench_scale.py` read their activation figures from here, so a
change of the code paths (attention, log-prob chunking, remat) shows in them.

A model of L layers is measured at 1 and 2 layers and extrapolated linearly in L (the layers are
identical, unrolled, and each saves the same residuals for the backward pass); compiling a full
36-layer model at 23k tokens on a CPU would cost minutes for the same number.

Letters: R rows, T row length, L layers, B decode slots, M pages per row, S page size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cleaner_jax.models.config import ModelConfig
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import update as update_lib


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """Bytes from `Compiled.memory_analysis()`: temporaries, arguments, outputs."""

    temp: int
    argument: int
    output: int

    @classmethod
    def of(cls, compiled) -> CompiledMemory:
        m = compiled.memory_analysis()
        if m is None:
            raise RuntimeError(
                f"backend {jax.default_backend()!r} reports no memory analysis for compiled programs"
            )
        return cls(
            int(m.temp_size_in_bytes), int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
        )


def abstract_model(cfg: ModelConfig):
    """(graphdef, abstract parameter state) of the model, nothing allocated."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    return graphdef, state


def _train_arrays(rows: int, row_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    i32, f32 = jnp.int32, jnp.float32
    shape = (rows, row_len)
    dtypes = dict(
        inputs_RT=i32,
        targets_RT=i32,
        positions_RT=i32,
        segment_ids_RT=i32,
        loss_mask_RT=f32,
        old_logprobs_RT=f32,
        advantages_RT=f32,
    )
    return {k: jax.ShapeDtypeStruct(shape, dtypes[k]) for k in update_lib._ARRAY_FIELDS}


def train_step_memory(
    cfg: ModelConfig,
    row_len: int,
    rows: int = 1,
    loss_cfg: update_lib.LossConfig | None = None,
) -> CompiledMemory:
    """Compiled memory of the trainer's loss + gradient of one micro-batch (`_grad_step`)."""
    graphdef, state = abstract_model(cfg)
    lowered = update_lib._grad_step.lower(
        state,
        graphdef,
        _train_arrays(rows, row_len),
        jax.ShapeDtypeStruct((), jnp.float32),
        loss_cfg or update_lib.LossConfig(),
    )
    return CompiledMemory.of(lowered.compile())


def train_activation_bytes(
    cfg: ModelConfig,
    row_len: int,
    rows: int = 1,
    loss_cfg: update_lib.LossConfig | None = None,
) -> dict[str, int]:
    """Temporaries of the training step of `cfg`, extrapolated from 1- and 2-layer compiles.

    Returns `one_layer` (temp at L=1: embedding, head, one layer and its backward), `per_layer`
    (what each further layer adds) and `total` = one_layer + (L - 1) * per_layer.
    """
    one = train_step_memory(cfg.replace(num_layers=1), row_len, rows, loss_cfg).temp
    two = train_step_memory(cfg.replace(num_layers=2), row_len, rows, loss_cfg).temp
    per_layer = max(two - one, 0)
    return {
        "one_layer": one,
        "per_layer": per_layer,
        "total": one + (cfg.num_layers - 1) * per_layer,
    }


def decode_step_memory(
    cfg: ModelConfig, context: int, slots: int, page_size: int = 16, decode_steps: int = 1
) -> CompiledMemory:
    """Compiled memory of one sampler decode call over `slots` rows of `context` tokens each."""
    from cleaner_jax.sampling.engine_steps import EngineSteps  # sampling sits above rl's deps
    from cleaner_jax.sampling.paged_cache import PagedKVCache

    graphdef, state = abstract_model(cfg)
    pages_per_row = -(-context // page_size)
    num_pages = slots * pages_per_row + 1
    pool = jax.eval_shape(lambda: PagedKVCache.zeros(cfg, num_pages, page_size))
    steps = EngineSteps(graphdef, decode_steps)
    i32, f32 = jnp.int32, jnp.float32
    b = (slots,)
    sampling = (
        jax.ShapeDtypeStruct(b, i32),
        jax.ShapeDtypeStruct(b, f32),
        jax.ShapeDtypeStruct(b, f32),
        jax.ShapeDtypeStruct(b, i32),
        jax.ShapeDtypeStruct(b, jnp.bool_),
    )
    lowered = steps.decode.lower(
        state,
        pool.k_LKPHS,
        pool.v_LKPSH,
        jax.ShapeDtypeStruct((slots, pages_per_row), i32),
        jax.ShapeDtypeStruct(b, i32),
        jax.ShapeDtypeStruct(b, i32),
        sampling,
    )
    return CompiledMemory.of(lowered.compile())
