"""Memory of the real training and decode programs, read off XLA's compiled memory analysis.

Nothing is allocated: parameters and inputs are `jax.ShapeDtypeStruct`s, the programs are the ones
the trainer and the sampler run (`rl.update._grad_step`: forward, chunked log-probs, loss and
gradients of one packed micro-batch; `sampling.engine_steps.EngineSteps.decode`: decode steps over
a paged KV pool), lowered and compiled for the default backend, and `memory_analysis()` reports
the bytes the program needs besides its arguments and outputs (`temp`). The memory plan
(`runtime.memory_plan`) and `launch/bench_scale.py` read their activation figures from here, so a
change of the code paths (attention, log-prob chunking, remat) shows in them.

A model of L layers is measured at 1 layer (compiled: the transient peak of one layer's forward
and backward with the embedding and the log-prob head) plus L - 1 times what one more layer saves
for its backward pass (its VJP residuals, `saved_residual_bytes`); see `train_activation_bytes`
for why the CPU compile of 2 layers is not used for the per-layer part.

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
from cleaner_jax.sampling.attention_kernels import resolve_attention
from cleaner_jax.sampling.engine_steps import EngineSteps
from cleaner_jax.sampling.engine_types import SamplingRows
from cleaner_jax.sampling.paged_cache import PagedKVCache


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
                f"backend {jax.default_backend()!r} reports no memory analysis of compiled programs"
            )
        return cls(
            int(m.temp_size_in_bytes), int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
        )


def abstract_model(cfg: ModelConfig):
    """(graphdef, abstract parameter state) of the model, nothing allocated."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    return graphdef, state


def _train_arrays(
    rows: int, row_len: int, loss_cfg: update_lib.LossConfig | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    fields = (loss_cfg or update_lib.LossConfig()).array_fields
    ints = ("inputs_RT", "targets_RT", "positions_RT", "segment_ids_RT")
    return {
        k: jax.ShapeDtypeStruct((rows, row_len), jnp.int32 if k in ints else jnp.float32)
        for k in fields
    }


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
        _train_arrays(rows, row_len, loss_cfg),
        jax.ShapeDtypeStruct((), jnp.float32),
        loss_cfg or update_lib.LossConfig(),
    )
    return CompiledMemory.of(lowered.compile())


def saved_residual_bytes(
    cfg: ModelConfig,
    row_len: int,
    rows: int = 1,
    loss_cfg: update_lib.LossConfig | None = None,
) -> int:
    """Bytes the training loss saves for its backward pass, parameters excluded.

    The residuals are the leaves of the VJP closure of `rl.update._loss` (what JAX keeps between
    the forward and the backward, after remat), found with `jax.eval_shape`: nothing runs.
    """
    graphdef, state = abstract_model(cfg)
    loss_cfg = loss_cfg or update_lib.LossConfig()

    def vjp_closure(st, arrays):
        def loss(s):
            return update_lib._loss(s, graphdef, arrays, jnp.float32(1.0), loss_cfg)[0]

        return jax.vjp(loss, st)[1]

    closure = jax.eval_shape(vjp_closure, state, _train_arrays(rows, row_len, loss_cfg))
    total = sum(_nbytes(x) for x in jax.tree.leaves(closure))
    # The closure also holds the parameters themselves (inputs, not activations).
    return total - sum(_nbytes(x) for x in jax.tree.leaves(state))


def _nbytes(x) -> int:
    return int(x.size) * jnp.dtype(x.dtype).itemsize


def train_activation_bytes(
    cfg: ModelConfig,
    row_len: int,
    rows: int = 1,
    loss_cfg: update_lib.LossConfig | None = None,
) -> dict[str, int]:
    """Activation memory of the training step of `cfg` at `rows` x `row_len` tokens.

    - `one_layer`: compiled temp bytes of the 1-layer model (embedding, the log-prob head, one
      layer, and their backward: the transient peak);
    - `per_layer`: what each further layer saves for the backward pass (its VJP residuals, from
      `saved_residual_bytes` at 2 minus 1 layers; with remat, the layer's input);
    - `total` = one_layer + (L - 1) * per_layer;
    - `per_layer_cpu_compiled`: the 2-layer minus 1-layer compiled temp on this backend. On CPU it
      is far larger than the residuals (Qwen3-0.6B widths, bf16, remat, T = 8192: ~835 MiB vs
      16 MiB), because XLA's CPU scheduler does not finish one layer's backward before it starts
      recomputing the next; it is reported, not used. `launch/gpu_check.py` reads the peak
      memory of the real step on a GPU to check the total.
    """
    one = train_step_memory(cfg.replace(num_layers=1), row_len, rows, loss_cfg).temp
    two = train_step_memory(cfg.replace(num_layers=2), row_len, rows, loss_cfg).temp
    res1 = saved_residual_bytes(cfg.replace(num_layers=1), row_len, rows, loss_cfg)
    res2 = saved_residual_bytes(cfg.replace(num_layers=2), row_len, rows, loss_cfg)
    per_layer = max(res2 - res1, 0)
    return {
        "one_layer": one,
        "per_layer": per_layer,
        "total": one + (cfg.num_layers - 1) * per_layer,
        "per_layer_cpu_compiled": max(two - one, 0),
    }


def decode_step_memory(
    cfg: ModelConfig,
    context: int,
    slots: int,
    page_size: int = 16,
    decode_steps: int = 1,
    attention: str = "auto",
) -> CompiledMemory:
    """Compiled memory of one sampler decode call over `slots` rows of `context` tokens each,
    with the paged-attention path `attention` resolves to on this backend."""
    impl = resolve_attention(attention)
    graphdef, state = abstract_model(cfg)
    pages_per_row = -(-context // page_size)
    num_pages = slots * pages_per_row + 1
    pool = jax.eval_shape(lambda: PagedKVCache.zeros(cfg, num_pages, page_size, impl=impl))
    steps = EngineSteps(graphdef, decode_steps, impl)
    i32 = jnp.int32
    b = (slots,)
    sampling = jax.eval_shape(lambda: SamplingRows.build(slots))
    lowered = steps.decode.lower(
        state,
        pool.k_pages,
        pool.v_pages,
        jax.ShapeDtypeStruct((slots, pages_per_row), i32),
        jax.ShapeDtypeStruct(b, i32),
        jax.ShapeDtypeStruct(b, i32),
        sampling,
    )
    return CompiledMemory.of(lowered.compile())
