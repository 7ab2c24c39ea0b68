"""The parameter update: micro-batched gradient accumulation, AdamW with warmup and clipping.

One `Updater` serves GRPO (clipped surrogate, `rl/loss.py`) and SFT (masked cross-entropy). A
mini-batch arrives as a list of equally shaped packed micro-batches; gradients are summed over
them with the token-mean denominator of the whole mini-batch, so accumulation changes nothing but
memory. The add happens inside the jitted gradient step, into the accumulator passed in and
donated, so one float32 gradient tree lives across micro-batches (plus the leaves being added).
Parameters stay float32 (master weights); the model computes in `cfg.dtype`.

Loss scaling (`OptimConfig.loss_scale`; "auto" turns it on when the model computes in float16):
the loss is multiplied by a scale inside the differentiated function, so float16 activation
gradients neither underflow nor, with a well-sized scale, overflow; the float32 parameter
gradients are divided by it before accumulation. The scale lives in the optimizer state
(`LossScaleState`, wrapped around the AdamW chain by `make_optimizer`), so checkpoints carry it.
A step whose gradients are not all finite is skipped (parameters and AdamW state unchanged) and,
when dynamic, halves the scale; `growth_interval` finite steps in a row double it.
With a mesh, micro-batch rows are sharded over (data, fsdp) and parameters keep the shardings
they were given; jit/GSPMD inserts the collectives. Log-probs come from the model's hidden states
through `loss.chunked_logprobs_and_entropy`, `LossConfig.logprob_chunk` tokens per row at a time,
so neither the forward nor the backward holds [R, T, V] logits.

Letters: R rows, T row length, D embed, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

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
    # "auto": dynamic when the model computes in float16 (`make_optimizer`'s compute_dtype), else
    # none; "dynamic"; "none"; or a number (a float, or a string like "1024"): a static scale.
    loss_scale: str | float = "auto"
    initial_loss_scale: float = 2.0**15
    loss_scale_growth_interval: int = 200
    # Storage dtype of AdamW's first moment (optax's `mu_dtype`): "" = the parameters' (float32)
    # or "bfloat16" (2 bytes a parameter saved). The moment is still updated in float32 and
    # rounded when stored; the second moment stays float32 (optax has no option for it).
    mu_dtype: str = ""


_MU_DTYPES = {"": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_loss_scale(cfg: OptimConfig, compute_dtype: str = "float32") -> tuple[str, float]:
    """("none" | "dynamic" | "static", initial scale) for `cfg.loss_scale`."""
    value = cfg.loss_scale
    if value == "auto":
        value = "dynamic" if jnp.dtype(compute_dtype) == jnp.float16 else "none"
    if value in ("none", "dynamic"):
        return value, float(cfg.initial_loss_scale)
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            "optim.loss_scale must be 'auto', 'dynamic', 'none' or a positive number, "
            f"got {value!r}"
        )
    return "static", scale


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


def make_optimizer(
    cfg: OptimConfig, compute_dtype: str = "float32"
) -> optax.GradientTransformation:
    """Clip + AdamW, wrapped in `loss_scaling` unless `cfg.loss_scale` resolves to "none".

    `compute_dtype`: the model's compute dtype (`ModelConfig.dtype`); "auto" loss scaling reads it.
    """
    if cfg.mu_dtype not in _MU_DTYPES:
        raise ValueError(
            f"optim.mu_dtype must be one of {sorted(_MU_DTYPES)}, got {cfg.mu_dtype!r}"
        )
    opt = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mu_dtype=_MU_DTYPES[cfg.mu_dtype],
        ),
    )
    mode, scale = resolve_loss_scale(cfg, compute_dtype)
    if mode == "none":
        return opt
    return loss_scaling(
        opt,
        initial_scale=scale,
        growth_interval=cfg.loss_scale_growth_interval,
        dynamic=mode == "dynamic",
    )


class LossScaleState(NamedTuple):
    scale: jax.Array  # float32 scalar: the loss multiplier for the next step's gradients
    good_steps: jax.Array  # int32: finite steps since the scale last changed
    inner_state: Any


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def loss_scaling(
    inner: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 200,
    dynamic: bool = True,
) -> optax.GradientTransformation:
    """`inner`, skipped on non-finite gradients, with the loss scale kept in its state.

    The gradients it receives are already unscaled (the `Updater` divides them by
    `state.scale`); a user outside the `Updater` multiplies the loss by `loss_scale_of(state)`
    and divides the gradients by it. A non-finite step yields zero updates and leaves `inner`'s
    state as it was; dynamic scaling then halves the scale (never below 1, as jmp does: a
    persistent NaN shows as every step skipped rather than a vanishing scale), and doubles it
    after `growth_interval` finite steps in a row (while the double stays finite). A static
    scale never changes, but non-finite steps are still skipped.
    """

    def init_fn(params):
        return LossScaleState(
            jnp.asarray(initial_scale, jnp.float32), jnp.zeros([], jnp.int32), inner.init(params)
        )

    def update_fn(updates, state, params=None):
        finite = all_finite(updates)
        new_updates, inner_state = jax.lax.cond(
            finite,
            lambda: inner.update(updates, state.inner_state, params),
            lambda: (jax.tree.map(jnp.zeros_like, updates), state.inner_state),
        )
        scale, good = state.scale, state.good_steps
        if dynamic:
            grow = finite & (good + 1 >= growth_interval) & jnp.isfinite(scale * 2)
            scale = jnp.where(
                finite, jnp.where(grow, scale * 2, scale), jnp.maximum(scale / 2, 1.0)
            )
            good = jnp.where(finite & ~grow, good + 1, 0)
        return new_updates, LossScaleState(scale, good.astype(jnp.int32), inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def _loss_scale_states(opt_state) -> list[LossScaleState]:
    is_ls = lambda x: isinstance(x, LossScaleState)  # noqa: E731
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_ls) if is_ls(x)]


def loss_scale_of(opt_state) -> jax.Array | None:
    """The current loss scale in an optimizer state (None: no loss scaling)."""
    found = _loss_scale_states(opt_state)
    if len(found) > 1:
        raise ValueError("the optimizer state holds more than one LossScaleState")
    return found[0].scale if found else None


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
    # `loss.off_policy` (rl/off_policy.py): anything but "none" multiplies each token's surrogate
    # by the packed `is_weights_RT`; "none" leaves them out of the program.
    off_policy: str = "none"

    @property
    def array_fields(self) -> tuple[str, ...]:
        """The packed arrays the loss reads (sent to the device per micro-batch)."""
        weighted = self.kind != "sft" and self.off_policy != "none"
        return _ARRAY_FIELDS + (("is_weights_RT",) if weighted else ())


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
            is_weights_BT=arrays.get("is_weights_RT"),
        )
    # Metrics already divided by the mini-batch token count sum up as they are; per-micro means
    # are weighted by their token share so the accumulated value is the mini-batch token mean.
    share = jnp.sum(mask_RT) / num_tokens
    return loss, {k: v if k in _MINIBATCH_NORMALIZED else v * share for k, v in metrics.items()}


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "cfg", "mesh", "batch_axes"),
    donate_argnames=("acc",),
)
def _grad_step(
    state, graphdef, arrays, num_tokens, cfg, mesh=None, batch_axes=(), acc=None, loss_scale=None
):
    """(grads, metrics) of one micro-batch, plus `acc` = (grads, metrics) when given.

    mesh / batch_axes: how the rows are sharded, for the chunked log-probs (see its docstring).
    `acc` is donated: the sum is written over it, so accumulation holds one gradient tree.
    `loss_scale` (a float32 scalar): the loss is multiplied by it and the gradients divided.
    """

    def scaled_loss(s):
        loss, metrics = _loss(s, graphdef, arrays, num_tokens, cfg, mesh, batch_axes)
        return (loss if loss_scale is None else loss * loss_scale), metrics

    (_, metrics), grads = jax.value_and_grad(scaled_loss, has_aux=True)(state)
    if loss_scale is not None:
        grads = jax.tree.map(lambda g: g / loss_scale, grads)
    if acc is not None:
        grads = jax.tree.map(jnp.add, acc[0], grads)
        metrics = jax.tree.map(jnp.add, acc[1], metrics)
    return grads, metrics


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
        # The gradients are not donated: no output has their shape besides the parameters,
        # which already take the donated parameter buffers.
        self._apply = jax.jit(self._apply_impl, donate_argnums=(0, 1))
        # One micro-batch: gradient and update in one program (one dispatch, no gradient tree
        # handed between two programs, the AdamW update fused with the gradient's last ops).
        self._fused_step = jax.jit(
            self._fused_step_impl,
            static_argnames=("graphdef", "cfg", "mesh", "batch_axes"),
            donate_argnums=(0, 1),
        )

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
        updates, new_opt_state = self.optimizer.update(grads, opt_state, state)
        new_state = optax.apply_updates(state, updates)
        finite = all_finite(grads)
        if _loss_scale_states(opt_state):
            # A skipped step keeps the parameters bit for bit (p + 0 would turn -0.0 into +0.0).
            new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        return new_state, new_opt_state, optax.global_norm(grads), finite

    def _fused_step_impl(
        self, state, opt_state, graphdef, arrays, num_tokens, cfg, mesh=None, batch_axes=()
    ):
        scale = loss_scale_of(opt_state)
        grads, metrics = _grad_step(
            state, graphdef, arrays, num_tokens, cfg, mesh, batch_axes, loss_scale=scale
        )
        state, opt_state, gnorm, finite = self._apply_impl(state, opt_state, grads)
        return state, opt_state, (metrics, gnorm, finite, scale)

    def _device_arrays(self, micro: PackedBatch) -> dict[str, jax.Array]:
        arrays = {k: getattr(micro, k) for k in self.loss_cfg.array_fields}
        if self._batch_sharding is None:
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        # Every process holds the same host batch; each fills only its own shards (device_put
        # would also all-gather every array across processes to check that they agree).
        return distributed.host_batch_to_global(arrays, self._batch_sharding)

    def grads(self, state, micro_batches: list[PackedBatch], loss_scale: jax.Array | None = None):
        """Summed gradients and token-mean metrics over the micro-batches (no update).

        `loss_scale`: computed with the loss multiplied by it, returned divided by it.
        """
        if not micro_batches:
            raise ValueError("update called with no micro-batches")
        num_tokens = jnp.float32(max(_token_count(micro_batches), 1.0))
        if loss_scale is not None:
            loss_scale = jnp.asarray(loss_scale, jnp.float32)
        acc = None
        for micro in micro_batches:
            # The mesh in context lets fused attention kernels run per shard (models/attention).
            with jax.set_mesh(self.mesh):
                acc = _grad_step(
                    state,
                    self.graphdef,
                    self._device_arrays(micro),
                    num_tokens,
                    self.loss_cfg,
                    mesh=self.mesh,
                    batch_axes=self.batch_axes,
                    acc=acc,
                    loss_scale=loss_scale,
                )
        return acc

    def step(self, state, opt_state, micro_batches: list[PackedBatch]):
        """One optimizer step. Returns (state, opt_state, metrics as Python floats); with loss
        scaling also `loss_scale` (the scale this step's gradients were computed with) and
        `skipped_step` (1.0 when they were not finite and the update was skipped).

        `state` and `opt_state` are donated. One micro-batch runs as one program (gradient and
        update fused); more accumulate gradients first. Metrics reach the host in one transfer.
        """
        if len(micro_batches) == 1:
            num_tokens = _token_count(micro_batches)
            with jax.set_mesh(self.mesh):
                state, opt_state, device_out = self._fused_step(
                    state,
                    opt_state,
                    self.graphdef,
                    self._device_arrays(micro_batches[0]),
                    jnp.float32(max(num_tokens, 1.0)),
                    self.loss_cfg,
                    mesh=self.mesh,
                    batch_axes=self.batch_axes,
                )
        else:
            scale = loss_scale_of(opt_state)
            grads, metrics = self.grads(state, micro_batches, loss_scale=scale)
            scale = None if scale is None else jnp.copy(scale)  # _apply donates opt_state
            state, opt_state, gnorm, finite = self._apply(state, opt_state, grads)
            device_out = (metrics, gnorm, finite, scale)
        metrics, gnorm, finite, scale = jax.device_get(device_out)
        out = {k: float(v) for k, v in metrics.items()}
        out["grad_norm"] = float(gnorm)
        if scale is not None:
            out["loss_scale"] = float(scale)
            out["skipped_step"] = float(not bool(finite))
        out["trained_tokens"] = _token_count(micro_batches)
        return state, opt_state, out


def _token_count(micro_batches: list[PackedBatch]) -> float:
    """Trained (loss-mask) tokens over the micro-batches, counted on the host."""
    return float(sum(float(np.sum(m.loss_mask_RT)) for m in micro_batches))


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
