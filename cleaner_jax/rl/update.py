"""The parameter update: micro-batched gradient accumulation, AdamW with warmup and clipping.

One `Updater` serves GRPO (clipped surrogate, `rl/loss.py`) and SFT (masked cross-entropy). A
mini-batch arrives as a list of equally shaped packed micro-batches; gradients are summed over
them with the token-mean denominator of the whole mini-batch, so accumulation changes nothing but
memory. Parameters stay float32 (master weights); the model computes in `cfg.dtype`.
With a mesh, micro-batch rows are sharded over (data, fsdp) and parameters keep the shardings
they were given; jit/GSPMD inserts the collectives. Log-probs come from the model's hidden states
through `loss.chunked_logprobs_and_entropy`, `LossConfig.logprob_chunk` tokens per row at a time,
so neither the forward nor the backward holds [R, T, V] logits.

Letters: R rows, T row length, D embed, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cleaner_jax.rl import distributed
from cleaner_jax.rl import loss as loss_lib
from cleaner_jax.rl.packing import PackedBatch


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    total_steps: int | None = None  # None: constant after warmup (verl's default); else cosine


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup, then cosine decay to 0 at `total_steps` or constant when it is None."""
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    if cfg.total_steps:
        decay = optax.cosine_decay_schedule(
            cfg.learning_rate, max(cfg.total_steps - cfg.warmup_steps, 1)
        )
    else:
        decay = optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        ),
    )


@dataclasses.dataclass(frozen=True)
class LossConfig:
    kind: str = "ppo"  # "ppo" | "sft"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    dual_clip_c: float | None = 10.0
    temperature: float = 1.0
    entropy_coef: float = 0.0
    # Tokens per row whose logits exist at once in the loss (forward and backward); <= 0: the
    # whole row, [R, T, V] float32 (small vocabularies and tests only).
    logprob_chunk: int = 1024


_MINIBATCH_NORMALIZED = frozenset({"loss", "pg_loss", "kl", "entropy"})
_ARRAY_FIELDS = (
    "inputs_RT",
    "targets_RT",
    "positions_RT",
    "segment_ids_RT",
    "loss_mask_RT",
    "old_logprobs_RT",
    "advantages_RT",
)


def _loss(state, graphdef, arrays, num_tokens, cfg: LossConfig, mesh=None, batch_axes=()):
    model = nnx.merge(graphdef, state)
    h_RTD, _ = model.hidden_states(
        arrays["inputs_RT"], arrays["positions_RT"], segment_ids_BT=arrays["segment_ids_RT"]
    )
    unembed, transposed = model.unembedding()
    logp_RT, entropy_RT = loss_lib.chunked_logprobs_and_entropy(
        h_RTD,
        unembed,
        transposed,
        arrays["targets_RT"],
        temperature=cfg.temperature,
        chunk=cfg.logprob_chunk,
        with_entropy=cfg.kind != "sft",
        mesh=mesh,
        batch_axes=batch_axes,
    )
    mask_RT = arrays["loss_mask_RT"]
    if cfg.kind == "sft":
        loss = loss_lib.masked_mean(-logp_RT, mask_RT, num_tokens)
        metrics = {"loss": loss, "nll": loss_lib.masked_mean(-logp_RT, mask_RT)}
    else:
        loss, metrics = loss_lib.policy_loss(
            logp_RT,
            arrays["old_logprobs_RT"],
            arrays["advantages_RT"],
            mask_RT,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip_c=cfg.dual_clip_c,
            entropy_BT=entropy_RT,
            entropy_coef=cfg.entropy_coef,
            num_tokens=num_tokens,
        )
    # Metrics already divided by the mini-batch token count sum up as they are; per-micro means
    # are weighted by their token share so the accumulated value is the mini-batch token mean.
    share = jnp.sum(mask_RT) / num_tokens
    return loss, {k: v if k in _MINIBATCH_NORMALIZED else v * share for k, v in metrics.items()}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "mesh", "batch_axes"))
def _grad_step(state, graphdef, arrays, num_tokens, cfg, mesh=None, batch_axes=()):
    # mesh / batch_axes: how the rows are sharded, for the chunked log-probs (see its docstring).
    (_, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(
        state, graphdef, arrays, num_tokens, cfg, mesh, batch_axes
    )
    return grads, metrics


@jax.jit
def _accumulate(acc, grads, acc_metrics, metrics):
    return jax.tree.map(jnp.add, acc, grads), jax.tree.map(jnp.add, acc_metrics, metrics)


class Updater:
    """Runs one optimizer step per mini-batch of packed micro-batches."""

    def __init__(
        self,
        graphdef,
        optimizer: optax.GradientTransformation,
        loss_cfg: LossConfig,
        *,
        mesh: jax.sharding.Mesh | None = None,
        batch_axes: tuple[str, ...] = ("data", "fsdp"),
    ):
        self.graphdef = graphdef
        self.optimizer = optimizer
        self.loss_cfg = loss_cfg
        self.mesh = mesh
        self.batch_axes = tuple(batch_axes)
        self._batch_sharding = (
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes, None))
            if mesh is not None
            else None
        )
        self._apply = jax.jit(self._apply_impl, donate_argnums=(0, 1))

    def init(self, state) -> Any:
        # Eager on purpose: under jit, XLA places the zero moments on one device; eagerly they
        # keep each parameter's sharding.
        opt_state = self.optimizer.init(state)
        if self.mesh is None:
            return opt_state
        # Scalars (step counts) land on one device; replicate them on the mesh.
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.tree.map(
            lambda x: jax.device_put(x, replicated) if x.ndim == 0 else x, opt_state
        )

    def _apply_impl(self, state, opt_state, grads):
        updates, opt_state = self.optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, optax.global_norm(grads)

    def _device_arrays(self, micro: PackedBatch) -> dict[str, jax.Array]:
        arrays = {k: getattr(micro, k) for k in _ARRAY_FIELDS}
        if self._batch_sharding is None:
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        # Every process holds the same host batch; each fills only its own shards (device_put
        # would also all-gather every array across processes to check that they agree).
        return distributed.host_batch_to_global(arrays, self._batch_sharding)

    def grads(self, state, micro_batches: list[PackedBatch]):
        """Summed gradients and token-mean metrics over the micro-batches (no update)."""
        if not micro_batches:
            raise ValueError("update called with no micro-batches")
        num_tokens = float(sum(float(m.loss_mask_RT.sum()) for m in micro_batches))
        num_tokens = jnp.float32(max(num_tokens, 1.0))
        acc = acc_metrics = None
        for micro in micro_batches:
            # The mesh in context lets fused attention kernels run per shard (models/attention).
            with jax.set_mesh(self.mesh):
                grads, metrics = _grad_step(
                    state,
                    self.graphdef,
                    self._device_arrays(micro),
                    num_tokens,
                    self.loss_cfg,
                    mesh=self.mesh,
                    batch_axes=self.batch_axes,
                )
            if acc is None:
                acc, acc_metrics = grads, metrics
            else:
                acc, acc_metrics = _accumulate(acc, grads, acc_metrics, metrics)
        return acc, acc_metrics

    def step(self, state, opt_state, micro_batches: list[PackedBatch]):
        """One optimizer step. Returns (state, opt_state, metrics as Python floats)."""
        grads, metrics = self.grads(state, micro_batches)
        state, opt_state, gnorm = self._apply(state, opt_state, grads)
        out = {k: float(v) for k, v in metrics.items()}
        out["grad_norm"] = float(gnorm)
        out["trained_tokens"] = float(sum(float(m.loss_mask_RT.sum()) for m in micro_batches))
        return state, opt_state, out


def round_rows(rows: int, mesh: jax.sharding.Mesh | None) -> int:
    """`rows` rounded up to a multiple of the mesh's batch shards (data x fsdp)."""
    if mesh is None:
        return rows
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return -(-rows // shards) * shards


def split_minibatches(items: list, num_minibatches: int) -> list[list]:
    """Splits items into `num_minibatches` contiguous, near-equal chunks (none empty)."""
    n = max(1, min(num_minibatches, len(items)))
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
