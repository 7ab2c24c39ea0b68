"""Engine end to end on the tiny model (fp32): exactness vs the full forward, prefix-cache
equivalence, scoring, 64 concurrent multi-turn sessions vs one by one, preemption, no recompiles.
"""

import asyncio
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.sampling import Engine, EngineConfig, RequestTooLargeError, SamplingParams

CFG = tiny_config()
# Two decode width buckets (8 and 16 pages): the sessions below need both; more only add compiles.
ECFG = EngineConfig(
    page_size=4,
    num_pages=200,
    max_slots=8,
    prefill_chunk=8,
    prefill_blocks=4,
    max_seq_len=64,
    decode_steps=2,
    decode_width_buckets=2,
)
GREEDY = SamplingParams(greedy=True, max_new_tokens=9)


@pytest.fixture(scope="module")
def model():
    return Qwen(CFG, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, ECFG)


@pytest.fixture(scope="module")
def full_logp(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(tokens_1T):
        logits, _ = nnx.merge(graphdef, state)(tokens_1T, jnp.arange(tokens_1T.shape[1])[None])
        return jax.nn.log_softmax(logits[0], axis=-1)

    def logp(tokens):  # pad to a fixed length: one compile; causal so padding is harmless
        padded = np.zeros((1, ECFG.max_seq_len), np.int32)
        padded[0, : len(tokens)] = tokens
        return np.asarray(f(padded))[: len(tokens)]

    return logp


def _prompts(seed, n, lo=2, hi=23):
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(0, CFG.vocab_size, rng.integers(lo, hi)))) for _ in range(n)]


def test_greedy_matches_full_forward_and_cached_rerun(engine, full_logp):
    engine.update_params(engine._state)  # start from an empty prefix cache
    prompts = _prompts(0, 10)
    first = engine.generate_batch(prompts, GREEDY)
    for p, r in zip(prompts, first, strict=True):
        assert r.finish_reason == "length" and len(r.tokens) == GREEDY.max_new_tokens
        assert r.cached_prompt_tokens == 0
        lp = full_logp(p + r.tokens)[len(p) - 1 : -1]
        np.testing.assert_array_equal(r.tokens, lp.argmax(-1))
        np.testing.assert_allclose(r.logprobs, lp[np.arange(len(r.tokens)), r.tokens], atol=1e-5)
    again = engine.generate_batch(prompts, GREEDY)
    for p, a, b in zip(prompts, first, again, strict=True):
        assert b.cached_prompt_tokens == len(p) - 1  # all but the token whose logits we need
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_sampled_logprobs_stop_tokens_and_score(engine, full_logp):
    prompts = _prompts(1, 4)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=12, seed=5)
    res = engine.generate_batch(prompts, params)
    for p, r in zip(prompts, res, strict=True):
        # log_softmax is shift invariant: tempering log-probs == tempering logits.
        lp = np.asarray(jax.nn.log_softmax(full_logp(p + r.tokens) / 0.8, axis=-1))
        lp = lp[len(p) - 1 : -1]
        np.testing.assert_allclose(r.logprobs, lp[np.arange(len(r.tokens)), r.tokens], atol=1e-5)
    # Stop at the 3rd sampled token of the first run: same seed, same first 3 tokens.
    stop = res[0].tokens[2]
    if stop not in res[0].tokens[:2]:
        r = engine.generate_batch(
            [prompts[0]],
            SamplingParams(
                temperature=0.8,
                top_p=0.9,
                top_k=20,
                max_new_tokens=12,
                seed=5,
                stop_token_ids=(stop,),
            ),
        )[0]
        assert r.finish_reason == "stop" and r.tokens == res[0].tokens[:3]
    # score == full forward, with and without a cached prefix, over page boundaries.
    seq = prompts[0] + res[0].tokens
    for start in (1, 5, len(prompts[0])):
        got = engine.score_batch([(seq, start)])[0]
        want = full_logp(seq)[np.arange(start - 1, len(seq) - 1), seq[start:]]
        np.testing.assert_allclose(got, want, atol=1e-5)


def _session_turns(seed):
    rng = np.random.default_rng(seed)
    tool_outputs = [
        list(map(int, rng.integers(0, CFG.vocab_size, rng.integers(2, 7)))) for _ in range(3)
    ]
    prompt = list(map(int, rng.integers(0, CFG.vocab_size, rng.integers(3, 12))))
    return prompt, tool_outputs


async def _session(engine, seed):
    prompt, tool_outputs = _session_turns(seed)
    ctx, out = list(prompt), []
    params = SamplingParams(greedy=True, max_new_tokens=int(3 + seed % 4))
    for tool in tool_outputs:
        r = await engine.generate(ctx, params)
        out.append((r.tokens, r.logprobs, r.cached_prompt_tokens))
        ctx = ctx + r.tokens + tool
    return out


def test_64_concurrent_multiturn_sessions_equal_one_by_one(engine):
    engine.warmup()
    traces = engine.trace_counts
    # One compile per program variant; prefill and decode have one per page-table width bucket.
    assert engine.decode_widths == [8, 16]
    want = {"copy", *(f"{p}/M={w}" for w in engine.decode_widths for p in ("prefill", "decode"))}
    assert set(traces) == want and all(n == 1 for n in traces.values()), traces

    async def all_sessions():
        return await asyncio.gather(*(_session(engine, s) for s in range(64)))

    engine.update_params(engine._state)
    concurrent = asyncio.run(all_sessions())
    sequential = []
    for s in range(64):
        engine.update_params(engine._state)
        sequential.append(asyncio.run(_session(engine, s)))
    for c, q in zip(concurrent, sequential, strict=True):
        for (ct, cl, _), (qt, ql, _) in zip(c, q, strict=True):
            assert ct == qt
            np.testing.assert_allclose(cl, ql, atol=1e-5)
    # Later turns found the whole earlier conversation cached (to the token).
    for s in range(64):
        prompt, tools = _session_turns(s)
        assert sequential[s][1][2] == len(prompt) + len(sequential[s][0][0]) - 1
    assert engine.trace_counts == traces, "recompiled after warm-up"


def test_pool_exhaustion_preempts_and_recomputes(model, engine):
    small = Engine(
        model,
        EngineConfig(
            page_size=4,
            num_pages=14,
            max_slots=4,
            prefill_chunk=8,
            max_seq_len=64,
            decode_steps=2,
            decode_width_buckets=2,
        ),
    )
    prompts = _prompts(3, 6, lo=8, hi=14)
    params = [SamplingParams(max_new_tokens=20, seed=i, temperature=1.0) for i in range(6)]
    got = small.generate_batch(prompts, params)
    assert small.stats["preemptions"] > 0
    small.pages.check_invariants([])
    want = engine.generate_batch(prompts, params)
    for a, b in zip(got, want, strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    with pytest.raises(RequestTooLargeError, match="num_pages"):
        small.generate_batch([prompts[0]], SamplingParams(max_new_tokens=63))
    with pytest.raises(RequestTooLargeError, match="max_seq_len"):
        small.generate_batch([[1] * 64], GREEDY)


def test_gpu_kernel_engine_matches_full_forward_and_packs_prefill(model, full_logp):
    # The GPU Pallas decode kernel in interpret mode; one width bucket keeps it to one compile.
    cfg = dataclasses.replace(
        ECFG, attention="pallas_gpu", interpret_kernels=True, decode_width_buckets=1
    )
    eng = Engine(model, cfg)
    assert eng.attention == "pallas_gpu"
    # Four 2-token prompts = four blocks of 2 (chunk 8 / 4 blocks): one prefill call for all.
    prompts = _prompts(6, 4, lo=2, hi=3)
    res = eng.generate_batch(prompts, SamplingParams(greedy=True, max_new_tokens=5))
    assert eng.stats["prefill_calls"] == 1
    for p, r in zip(prompts, res, strict=True):
        lp = full_logp(p + r.tokens)[len(p) - 1 : -1]
        np.testing.assert_array_equal(r.tokens, lp.argmax(-1))
        np.testing.assert_allclose(r.logprobs, lp[np.arange(len(r.tokens)), r.tokens], atol=1e-5)


def test_update_params_invalidates_prefix_cache(engine, model):
    prompt = _prompts(4, 1)[0]
    engine.generate_batch([prompt], GREEDY)
    assert engine.generate_batch([prompt], GREEDY)[0].cached_prompt_tokens == len(prompt) - 1
    _, state = nnx.split(model)
    zeroed = jax.tree.map(jnp.zeros_like, state)
    engine.update_params(zeroed)
    r = engine.generate_batch([prompt], GREEDY)[0]
    assert r.cached_prompt_tokens == 0
    np.testing.assert_allclose(r.logprobs, -np.log(CFG.vocab_size), atol=1e-5)  # uniform
    engine.update_params(state)
    engine.pages.check_invariants([])


def _logp_at(full_logp, tokens, temperature):
    """log p_T(tokens[i] | tokens[:i]) for i >= 1 from the full forward's T = 1 log-probs."""
    lp1 = full_logp(tokens)[:-1] / temperature
    lp_t = lp1 - jax.nn.logsumexp(lp1, axis=-1, keepdims=True)
    return np.asarray(lp_t)[np.arange(len(tokens) - 1), tokens[1:]]


def test_spliced_mu_is_a_fresh_rescore_at_the_sampling_temperature(engine, full_logp):
    """Issue #30: a SAAR-spliced span's μ is the engine's rescoring under the purified context
    at the sampling temperature (T = 0.7), equal to a fresh rescore and to the full forward."""
    from cleaner_jax.agent.loop import EnginePolicy
    from cleaner_jax.saar import Provenance, SaarConfig, rollout
    from cleaner_jax.saar.testing import (
        CharCodec,
        ScriptedPolicy,
        ScriptedTools,
        call_text,
        failure,
    )

    t = 0.7
    sampler = EnginePolicy(engine, stop_token_ids=[1], temperature=t, seed=5)

    # The sampler's own log-probs at T equal its rescoring of the same tokens at T.
    prompt = [7, 3, 11, 2, 9]
    gen = asyncio.run(sampler.generate(prompt, 6))
    assert gen.versions == [engine.policy_version] * len(gen.tokens)
    rescored = asyncio.run(sampler.score(prompt, gen.tokens))
    np.testing.assert_allclose(gen.logprobs, rescored, atol=1e-5)

    class Scripted(ScriptedPolicy):  # scripted turns, scored by the real engine
        policy_version = None

        async def score(self, context_tokens, tokens):
            self.policy_version = engine.policy_version
            return await sampler.score(context_tokens, tokens)

    codec = CharCodec()
    bad, good = "1+", "1+1"  # a typo-level fix: shallow (short: the engine holds 64 tokens)
    turns = [f"A{call_text(bad)}<|im_end|>", f"B{call_text(good)}<|im_end|>", "ok<|im_end|>"]
    policy = Scripted(codec, turns)
    tools = ScriptedTools({bad: failure("SyntaxError", "'(' was never closed")})
    head = codec.encode("q:")
    traj = asyncio.run(rollout(head, policy, tools, codec, saar=SaarConfig(), seed=0))
    (i,) = [k for k, s in enumerate(traj.segments) if s.provenance is Provenance.SPLICED_SHALLOW]
    spliced = traj.segments[i]
    context = [tok for s in traj.segments[:i] for tok in s.tokens]
    engine.update_params(engine._state)  # empty prefix cache: the fresh rescore prefills again
    fresh = asyncio.run(sampler.score(context, spliced.tokens))
    np.testing.assert_allclose(spliced.logprobs, fresh, atol=1e-5)
    full = _logp_at(full_logp, np.asarray(context + spliced.tokens), t)[len(context) - 1 :]
    np.testing.assert_allclose(spliced.logprobs, full, atol=1e-5)
    at_one = _logp_at(full_logp, np.asarray(context + spliced.tokens), 1.0)[len(context) - 1 :]
    assert np.abs(np.asarray(spliced.logprobs) - at_one).max() > 1e-3  # T matters here
    assert spliced.versions == [engine.policy_version - 1] * len(spliced.tokens)


def _generate_with_push(engine, prompt, params, push_after, new_state, version, reprefill):
    """`engine.generate` with a weight push after `push_after` engine steps (the push runs on
    the driving loop between two steps, as the async producer does it)."""

    async def run():
        task = asyncio.ensure_future(engine.generate(prompt, params))
        for _ in range(push_after):
            await asyncio.sleep(0)  # the engine's driver takes one step per yield
        engine.update_params(new_state, version=version, reprefill=reprefill)
        return await task

    return asyncio.run(run())


@pytest.mark.parametrize("reprefill", [False, True])
def test_a_generation_interrupted_by_a_push_keeps_versions_and_mu(engine, model, reprefill):
    """Issue #31: tokens sampled before a push keep their version; with the same weights pushed
    the trajectory is the one sampled without a push (same tokens, μ within 1e-5); with new
    weights and `reprefill`, each token's μ is its log-prob under the weights that sampled it."""
    prompt = [4, 8, 15, 16, 23, 42]
    params = SamplingParams(temperature=1.0, max_new_tokens=14, seed=11)
    old_state = engine._state
    v0 = engine.policy_version
    ref = engine.generate_batch([prompt], params)[0]
    same = _generate_with_push(engine, prompt, params, 3, old_state, v0 + 1, reprefill)
    assert same.tokens == ref.tokens
    np.testing.assert_allclose(same.logprobs, ref.logprobs, atol=1e-5)
    cut = same.versions.index(v0 + 1)
    assert 0 < cut < len(same.tokens) and set(same.versions[:cut]) == {v0}
    assert set(same.versions[cut:]) == {v0 + 1}

    other = Qwen(CFG, rngs=nnx.Rngs(8))
    new_state = nnx.split(other)[1]
    engine.update_params(old_state, version=v0 + 2)
    out = _generate_with_push(engine, prompt, params, 3, new_state, v0 + 3, reprefill)
    engine.update_params(old_state, version=v0 + 4)  # the module's engine back to its weights
    cut = out.versions.index(v0 + 3)
    assert 0 < cut < len(out.tokens)
    replay = _generate_with_push(engine, prompt, params, 3, new_state, v0 + 5, reprefill)
    engine.update_params(old_state, version=v0 + 6)
    assert replay.tokens == out.tokens  # deterministic: a replay of the same push
    np.testing.assert_allclose(replay.logprobs, out.logprobs, atol=1e-6)
    if reprefill:
        seq = np.asarray(prompt + out.tokens)
        graphdef = nnx.split(model)[0]
        for state, span in ((nnx.split(model)[1], range(cut)), (new_state, range(cut, len(seq)))):
            logits, _ = nnx.merge(graphdef, state)(seq[None], np.arange(len(seq))[None])
            lp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
            for i in span:
                if i < len(out.tokens):
                    pos = len(prompt) + i
                    assert abs(out.logprobs[i] - lp[pos - 1, seq[pos]]) < 1e-4, (i, cut)
