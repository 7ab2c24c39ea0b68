"""Trainer-side log-prob recomputation (DESIGN §3, option B) and the sampler/trainer mismatch.

Two paths that must agree:
- `packed_logprobs`: one forward over packed rows (the simple path; also the training forward);
- `prefix_shared_logprobs`: the n trajectories of a GRPO group share their prompt, so the prompt
  is run once into a KV cache that all n responses then read, instead of n times.

Letters: R rows, T row length, G group size, P prompt length, S response length, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cleaner_jax.models.kv_cache import DenseKVCache
from cleaner_jax.models.qwen import token_logprobs
from cleaner_jax.rl import distributed


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature"))
def _packed_logprobs(
    graphdef, state, inputs_RT, targets_RT, positions_RT, segment_ids_RT, temperature=1.0
):
    model = nnx.merge(graphdef, state)
    logits_RTV, _ = model(inputs_RT, positions_RT, segment_ids_BT=segment_ids_RT)
    return token_logprobs(logits_RTV, targets_RT, temperature)


def packed_logprobs(graphdef, state, batch, temperature: float = 1.0) -> np.ndarray:
    """log p(target) for every slot of a `packing.PackedBatch`, [R, T] float32."""
    return distributed.to_host(
        _packed_logprobs(
            graphdef,
            state,
            batch.inputs_RT,
            batch.targets_RT,
            batch.positions_RT,
            batch.segment_ids_RT,
            temperature=temperature,
        )
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature"))
def _prefix_shared(graphdef, state, prompt_P, prompt_len, resp_GS, resp_len_G, temperature=1.0):
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    p_pad, (g, s_pad) = prompt_P.shape[0], resp_GS.shape
    cache = DenseKVCache.zeros(cfg, 1, p_pad + s_pad)
    pos_P = jnp.where(jnp.arange(p_pad) < prompt_len, jnp.arange(p_pad), -1)
    prompt_logits_1PV, cache = model(prompt_P[None], pos_P[None], cache=cache)
    last_V = jax.lax.dynamic_index_in_dim(prompt_logits_1PV[0], prompt_len - 1, keepdims=False)
    cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=1), cache)
    pos_GS = prompt_len + jnp.arange(s_pad)[None, :]
    pos_GS = jnp.where(jnp.arange(s_pad)[None, :] < resp_len_G[:, None], pos_GS, -1)
    logits_GSV, _ = model(resp_GS, pos_GS, cache=cache)
    first_G = token_logprobs(
        jnp.broadcast_to(last_V, (g, 1, last_V.shape[-1])), resp_GS[:, :1], temperature
    )
    rest_GS = token_logprobs(logits_GSV[:, :-1], resp_GS[:, 1:], temperature)
    return jnp.concatenate([first_G, rest_GS], axis=1)


def prefix_shared_logprobs(
    graphdef,
    state,
    prompt: np.ndarray,
    responses: list[np.ndarray],
    *,
    temperature: float = 1.0,
    bucket: int = 64,
) -> list[np.ndarray]:
    """Log-probs of each response's tokens given the shared prompt (prompt run once).

    Returns one float32 array per response, aligned with it: entry j = log p(resp[j] | prompt,
    resp[:j]). Lengths are padded to multiples of `bucket` to bound recompilation.
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
            graphdef, state, prompt_P, len(prompt), resp_GS, lens, temperature=temperature
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
