"""Trainer-side log-prob recomputation (DESIGN §3, option B) and the sampler/trainer mismatch.

Two paths that must agree:
- `packed_logprobs`: one forward over packed rows (the simple path; also the training forward);
- `prefix_shared_logprobs`: the n trajectories of a GRPO group share their prompt, so the prompt
  is run once into a KV cache that all n responses then read, instead of n times.

Both score hidden states through `loss.chunked_logprobs_and_entropy` (`chunk` tokens per row at a
time), never materialising [rows, T, V] logits.

Letters: R rows, T row length, G group size, P prompt length, S response length, D embed, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.rl import distributed
from cleaner_jax.rl import loss as loss_lib


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


_DEFAULT_CHUNK = 1024


def _score(model, h_BTD, targets_BT, temperature, chunk):
    unembed, transposed = model.unembedding()
    logp_BT, _ = loss_lib.chunked_logprobs_and_entropy(
        h_BTD,
        unembed,
        transposed,
        targets_BT,
        temperature=temperature,
        chunk=chunk,
        with_entropy=False,
    )
    return logp_BT


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "chunk"))
def _packed_logprobs(
    graphdef,
    state,
    inputs_RT,
    targets_RT,
    positions_RT,
    segment_ids_RT,
    temperature=1.0,
    chunk=_DEFAULT_CHUNK,
):
    model = nnx.merge(graphdef, state)
    h_RTD, _ = model.hidden_states(inputs_RT, positions_RT, segment_ids_BT=segment_ids_RT)
    return _score(model, h_RTD, targets_RT, temperature, chunk)


def packed_logprobs(
    graphdef, state, batch, temperature: float = 1.0, *, chunk: int = _DEFAULT_CHUNK
) -> np.ndarray:
    """log p(target) for every slot of a `packing.PackedBatch`, [R, T] float32.

    ``chunk``: tokens per row whose logits exist at once (<= 0: whole rows).
    """
    return distributed.to_host(
        _packed_logprobs(
            graphdef,
            state,
            batch.inputs_RT,
            batch.targets_RT,
            batch.positions_RT,
            batch.segment_ids_RT,
            temperature=temperature,
            chunk=chunk,
        )
    )


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
