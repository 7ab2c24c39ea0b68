"""Trainer-side log-prob recomputation (DESIGN §3, option B) and the sampler/trainer mismatch.

Two paths that must agree:
- `packed_logprobs` / `recompute_sample_logprobs`: the training forward over packed rows of fixed
  shape [rows, row_len], rows sharded over the mesh's batch axes, flash attention; memory linear
  in the row length and one compiled shape per run. The trainer's old-log-prob recompute
  (`train.old_logprobs="recompute"`) runs this path.
- `prefix_shared_logprobs`: the n trajectories of a GRPO group share their prompt, so the prompt
  is run once into a dense KV cache that all n responses then read, instead of n times. Its
  attention is dense (float32 weights [G, heads, S, P + S]) and it compiles one program per
  (prompt, response) bucket: fine for short responses (`launch/bench_train.py` measures it),
  not for the paper's 20k-token responses (issue #29: 26.6 GiB of temporaries at 2,048-token
  responses with 2 Qwen3-4B layers on a v5p chip, RESOURCE_EXHAUSTED at 8,192). The trainer no
  longer uses it.

Both score hidden states through `loss.chunked_logprobs_and_entropy` (`chunk` tokens per row at a
time), never materialising [rows, T, V] logits.

Letters: R rows, T row length, G group size, P prompt length, S response length, D embed, V vocab.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.rl import distributed, packing
from cleaner_jax.rl import loss as loss_lib


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


_DEFAULT_CHUNK = 1024


def _score(model, h_BTD, targets_BT, temperature, chunk, mesh=None, batch_axes=("data", "fsdp")):
    """log p(targets) from hidden states through the chunked head (never [B, T, V] logits)."""
    unembed, transposed = model.unembedding()
    logp_BT, _ = loss_lib.chunked_logprobs_and_entropy(
        h_BTD,
        unembed,
        transposed,
        targets_BT,
        temperature=temperature,
        chunk=chunk,
        with_entropy=False,
        mesh=mesh,
        batch_axes=batch_axes,
    )
    return logp_BT


@functools.partial(
    jax.jit, static_argnames=("graphdef", "temperature", "chunk", "mesh", "batch_axes")
)
def _packed_logprobs(
    graphdef,
    state,
    inputs_RT,
    targets_RT,
    positions_RT,
    segment_ids_RT,
    temperature=1.0,
    chunk=_DEFAULT_CHUNK,
    mesh=None,
    batch_axes=("data", "fsdp"),
):
    model = nnx.merge(graphdef, state)
    h_RTD, _ = model.hidden_states(inputs_RT, positions_RT, segment_ids_BT=segment_ids_RT)
    return _score(model, h_RTD, targets_RT, temperature, chunk, mesh, batch_axes)


# The fields of a PackedBatch the scoring forward reads, in `_packed_logprobs`'s order.
SCORE_FIELDS = ("inputs_RT", "targets_RT", "positions_RT", "segment_ids_RT")


def packed_logprobs(
    graphdef,
    state,
    batch,
    temperature: float = 1.0,
    *,
    chunk: int = _DEFAULT_CHUNK,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> np.ndarray:
    """log p(target) for every slot of a `packing.PackedBatch`, [R, T] float32.

    The training forward (same attention path, remat, chunked head), without the backward.
    ``chunk``: tokens per row whose logits exist at once (<= 0: whole rows). With ``mesh`` the
    rows are sharded over ``batch_axes`` as the update shards them (R must divide; see
    `update.round_rows`) and fused attention kernels run per shard.
    """
    arrays = [getattr(batch, k) for k in SCORE_FIELDS]
    if mesh is None:
        arrays = [jnp.asarray(a) for a in arrays]
    else:
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes, None))
        arrays = distributed.host_batch_to_global(arrays, rows)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        out = _packed_logprobs(
            graphdef,
            state,
            *arrays,
            temperature=temperature,
            chunk=chunk,
            mesh=mesh,
            batch_axes=tuple(batch_axes),
        )
    return distributed.to_host(out)


def recompute_sample_logprobs(
    graphdef,
    state,
    samples: list,
    *,
    row_len: int,
    rows_per_call: int,
    temperature: float = 1.0,
    chunk: int = _DEFAULT_CHUNK,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> list[np.ndarray]:
    """The old-log-prob recompute: log p(tokens[i] | tokens[:i]) of each `TrainSample`, through
    the packed training forward.

    Samples are packed into rows of ``row_len`` tokens (as the update packs them) and scored
    ``rows_per_call`` rows at a time, so every call has the one shape [rows_per_call, row_len]:
    one compile for a whole run, memory linear in the row length (flash attention, chunked
    head; no [S, P + S] attention weights, no prompt KV copied per response), rows sharded over
    the mesh's batch axes. Each group's prompt is recomputed once per response (what the
    prefix-shared path saved; at the paper's 2,560-token prompts and up to 20,480-token
    responses, a bounded share of the tokens).

    Returns one float32 array per sample, aligned with its tokens; entry 0 (no context) is 0.
    """
    if rows_per_call < 1:
        raise ValueError(f"rows_per_call must be >= 1, got {rows_per_call}")
    if not samples:
        return []
    batch = packing.pack(samples, row_len, rows_per_call)
    logp_RT = np.concatenate(
        [
            packed_logprobs(
                graphdef,
                state,
                batch.take_rows(np.arange(start, start + rows_per_call)),
                temperature,
                chunk=chunk,
                mesh=mesh,
                batch_axes=batch_axes,
            )
            for start in range(0, batch.num_rows, rows_per_call)
        ]
    )
    out = packing.unpack_per_sample(logp_RT, batch, samples)
    for lp in out:
        lp[0] = 0.0
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "chunk"))
def _prefix_shared(
    graphdef,
    state,
    prompt_P,
    prompt_len,
    resp_GS,
    resp_len_G,
    temperature=1.0,
    chunk=_DEFAULT_CHUNK,
):
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    p_pad, (g, s_pad) = prompt_P.shape[0], resp_GS.shape
    cache = DenseKVCache.zeros(cfg, 1, p_pad + s_pad)
    pos_P = jnp.where(jnp.arange(p_pad) < prompt_len, jnp.arange(p_pad), -1)
    prompt_h_1PD, cache = model.hidden_states(prompt_P[None], pos_P[None], cache=cache)
    # Only the last prompt position predicts a response token: project that one, not [P, V].
    last_D = jax.lax.dynamic_index_in_dim(prompt_h_1PD[0], prompt_len - 1, keepdims=False)
    cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=1), cache)
    pos_GS = prompt_len + jnp.arange(s_pad)[None, :]
    pos_GS = jnp.where(jnp.arange(s_pad)[None, :] < resp_len_G[:, None], pos_GS, -1)
    h_GSD, _ = model.hidden_states(resp_GS, pos_GS, cache=cache)
    # Position j of each response is predicted by the state before it: the prompt's last state
    # for j = 0, the response's own state j - 1 after that.
    first_G1D = jnp.broadcast_to(last_D, (g, 1, last_D.shape[-1]))
    pred_GSD = jnp.concatenate([first_G1D, h_GSD[:, :-1]], axis=1)
    return _score(model, pred_GSD, resp_GS, temperature, chunk)


def prefix_shared_logprobs(
    graphdef,
    state,
    prompt: np.ndarray,
    responses: list[np.ndarray],
    *,
    temperature: float = 1.0,
    bucket: int = 64,
    chunk: int = _DEFAULT_CHUNK,
) -> list[np.ndarray]:
    """Log-probs of each response's tokens given the shared prompt (prompt run once).

    Returns one float32 array per response, aligned with it: entry j = log p(resp[j] | prompt,
    resp[:j]). Lengths are padded to multiples of `bucket` to bound recompilation; ``chunk`` is
    the number of tokens per response whose logits exist at once (<= 0: whole responses).
    """
    prompt = np.asarray(prompt, np.int32)
    if len(prompt) == 0:
        raise ValueError("prefix-shared recompute needs a non-empty prompt")
    lens = np.array([len(r) for r in responses], np.int32)
    p_pad, s_pad = _bucket(len(prompt), bucket), _bucket(int(lens.max()), bucket)
    prompt_P = np.zeros(p_pad, np.int32)
    prompt_P[: len(prompt)] = prompt
    resp_GS = np.zeros((len(responses), s_pad), np.int32)
    for i, r in enumerate(responses):
        resp_GS[i, : len(r)] = r
    # to_host: with parameters sharded across processes the output may be too.
    out_GS = distributed.to_host(
        _prefix_shared(
            graphdef,
            state,
            prompt_P,
            len(prompt),
            resp_GS,
            lens,
            temperature=temperature,
            chunk=chunk,
        )
    )
    return [out_GS[i, :n] for i, n in enumerate(lens)]


def mismatch_metrics(sampler_lp: np.ndarray, trainer_lp: np.ndarray, mask: np.ndarray) -> dict:
    """Sampler-vs-trainer log-prob mismatch on masked tokens: mean |Δ log p| and a k3 KL."""
    m = mask.astype(bool) & np.isfinite(sampler_lp) & np.isfinite(trainer_lp)
    if not m.any():
        return {"logprob_mismatch/mean_abs": 0.0, "logprob_mismatch/kl_k3": 0.0}
    d = (trainer_lp - sampler_lp)[m].astype(np.float64)
    return {
        "logprob_mismatch/mean_abs": float(np.abs(d).mean()),
        "logprob_mismatch/max_abs": float(np.abs(d).max()),
        # k3 estimator of KL(sampler || trainer) from samples drawn by the sampler.
        "logprob_mismatch/kl_k3": float((np.exp(d) - 1.0 - d).mean()),
    }
