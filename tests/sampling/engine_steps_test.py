"""The engine's device programs on the tiny model (fp32): packed prefill == per-sequence prefill,
K-step decode == K single-step calls, stop tokens and budgets honoured on device, and the jnp
path's view decode == direct paged decode (jnp gather, and the GPU kernel in interpret mode)."""

import functools

import numpy as np
import pytest
from flax import nnx

from cleaner_jax.models.config import tiny_config
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.sampling.engine_steps import EngineSteps
from cleaner_jax.sampling.engine_types import SamplingParams, SamplingRows
from cleaner_jax.sampling.paged_cache import PagedKVCache

CFG = tiny_config()
S, M, P, B, X = 4, 8, 64, 3, 2  # page size, pages per row, pool pages, slots, stop width
GREEDY = SamplingParams(greedy=True)


@pytest.fixture(scope="module")
def split():
    return nnx.split(Qwen(CFG, rngs=nnx.Rngs(7)))


@functools.cache
def _steps(graphdef, k, impl="jnp", view=True):  # shared across tests: each compiles once
    return EngineSteps(graphdef, k, impl=impl, interpret=impl != "jnp", decode_view=view)


def _pool():
    pool = PagedKVCache.zeros(CFG, P, S)
    return pool.k_pages, pool.v_pages


def _tables(rows):
    return np.arange(1, 1 + rows * M, dtype=np.int32).reshape(rows, M)


def _prefill(steps, state, pool, table_JM, seqs, blocks, u):
    """Prefill `seqs` (lists of tokens), sequence i in blocks `blocks[i]`; one call."""
    j = table_JM.shape[0]
    tokens, targets = np.zeros((j * u,), np.int32), np.zeros((j * u,), np.int32)
    positions = np.full((j * u,), -1, np.int32)
    table = np.zeros((j, M), np.int32)
    last, block_row = np.zeros((j,), np.int32), np.zeros((j,), np.int32)
    for row, (seq, bl) in enumerate(zip(seqs, blocks, strict=True)):
        off, n = bl[0] * u, len(seq)
        tokens[off : off + n], positions[off : off + n] = seq, np.arange(n)
        targets[off : off + n - 1] = seq[1:]
        table[bl] = table_JM[row]
        block_row[bl], last[row] = row, off + n - 1
    sample_pos = np.array([len(s) for s in seqs] + [0] * (j - len(seqs)), np.int32)
    sampling = SamplingRows.build(j, ((row, GREEDY) for row in range(j)))
    tok, lp, tlp, k, v = steps.prefill(
        state, *pool, table, tokens.reshape(j, u), positions.reshape(j, u),
        targets.reshape(j, u), last, sample_pos, block_row, sampling,
    )  # fmt: skip
    return np.asarray(tok), np.asarray(lp), np.asarray(tlp).reshape(j, u), (k, v)


def test_packed_prefill_equals_per_sequence_prefill(split):
    graphdef, state = split
    steps = EngineSteps(graphdef, 1)  # its own: the trace count below is checked
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, CFG.vocab_size, n)) for n in (5, 3, 8)]
    u, j = 4, 4
    table = np.zeros((j, M), np.int32)
    table[:3] = _tables(3)
    # Packed: seq 0 in blocks 0-1, seq 1 in block 2; seq 2 needs two blocks: the next call.
    tok, lp, tlp, pool = _prefill(steps, state, _pool(), table, seqs[:2], [[0, 1], [2]], u)
    rest = np.zeros((j, M), np.int32)
    rest[0] = table[2]
    tok2, lp2, tlp2, _ = _prefill(steps, state, pool, rest, seqs[2:], [[0, 1]], u)
    for i, (seq, bl) in enumerate(zip(seqs, [[0, 1], [2], [0, 1]], strict=True)):
        alone = np.zeros((j, M), np.int32)
        alone[0] = table[i]
        t1, l1, tl1, _ = _prefill(steps, state, _pool(), alone, [seq], [[0, 1]], u)
        got_tok, got_lp, got_tlp = (tok, lp, tlp) if i < 2 else (tok2, lp2, tlp2)
        row = i if i < 2 else 0
        assert got_tok[row] == t1[0]
        np.testing.assert_allclose(got_lp[row], l1[0], atol=1e-5)
        n = len(seq) - 1
        np.testing.assert_allclose(
            got_tlp[bl].reshape(-1)[:n], tl1[[0, 1]].reshape(-1)[:n], atol=1e-5
        )
    assert steps.trace_counts == {f"prefill/M={M}": 1}


def _decode_setup(split, k):
    graphdef, state = split
    steps = _steps(graphdef, k)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, CFG.vocab_size, n)) for n in (6, 2, 9)]
    table = np.zeros((4, M), np.int32)
    table[:3] = _tables(3)
    tok, _, _, pool = _prefill(steps, state, _pool(), table, prompts, [[0, 1], [2], [3]], 9)
    return steps, state, pool, prompts, tok


def _sampling(greedy=True):
    params = (SamplingParams(temperature=0.7, seed=b, greedy=greedy) for b in range(B))
    return SamplingRows.build(B, enumerate(params))


def _run(steps, state, pool, prompts, tok, calls, budget=None, stop=None, greedy=True):
    """`calls` decode calls; returns the tokens and log-probs per slot (-1: not emitted)."""
    k = steps.decode_steps
    table, toks = _tables(B), np.array(tok[:B], np.int32)
    pos = np.array([len(p) for p in prompts], np.int32)
    left = np.full((B,), 1000, np.int32) if budget is None else np.array(budget, np.int32)
    stop = np.full((B, X), -1, np.int32) if stop is None else np.asarray(stop, np.int32)
    out_t, out_l = [[] for _ in range(B)], [[] for _ in range(B)]
    for _ in range(calls):
        t_KB, l_KB, *pool = steps.decode(
            state, *pool, table, toks, pos, _sampling(greedy), np.minimum(left, k), stop
        )
        t_KB, l_KB = np.asarray(t_KB), np.asarray(l_KB)
        for b in range(B):
            n = int((t_KB[:, b] >= 0).sum())
            out_t[b] += t_KB[:n, b].tolist()
            out_l[b] += l_KB[:n, b].tolist()
            if n and pos[b] >= 0:
                toks[b], pos[b], left[b] = t_KB[n - 1, b], pos[b] + n, left[b] - n
                stopped = left[b] <= 0 or t_KB[n - 1, b] in stop[b]
                pos[b] = -1 if stopped else pos[b]
    return out_t, out_l


@pytest.mark.parametrize("greedy", [True, False])
def test_multi_step_decode_equals_single_step(split, greedy):
    four = _run(*_decode_setup(split, 4), calls=3, greedy=greedy)
    one = _run(*_decode_setup(split, 1), calls=12, greedy=greedy)
    assert four[0] == one[0]
    for a, b in zip(four[1], one[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_stop_token_and_budget_end_a_slot_inside_the_call(split):
    setup = _decode_setup(split, 4)
    free, _ = _run(*setup, calls=2, greedy=False)  # sampled: greedy repeats one token here
    # Slot 0 stops at a stop token inside a call (not its last step), slot 1 after a budget of
    # 3, slot 2 runs on.
    i = next(i for i in range(1, 8) if i % 4 != 3 and free[0][i] not in free[0][:i])
    stop = np.full((B, X), -1, np.int32)
    stop[0, 1] = free[0][i]
    got, _ = _run(
        *_decode_setup(split, 4), calls=2, budget=[1000, 3, 1000], stop=stop, greedy=False
    )
    assert got[0] == free[0][: i + 1]
    assert got[1] == free[1][:3]
    assert got[2] == free[2]


@pytest.mark.parametrize("impl", ["jnp", "pallas_gpu"])
def test_view_decode_equals_direct_paged_decode(split, impl):
    graphdef, _ = split
    view = _run(*_decode_setup(split, 3), calls=2)
    _, state, pool, prompts, tok = _decode_setup(split, 3)
    direct = _steps(graphdef, 3, impl, view=False)
    if impl != "jnp":  # the kernel layout stores keys [K, P, S, H]
        pool = (tuple(k.transpose(0, 1, 3, 2) for k in pool[0]), pool[1])
    got = _run(direct, state, pool, prompts, tok, calls=2)
    assert view[0] == got[0]
    for a, b in zip(view[1], got[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
