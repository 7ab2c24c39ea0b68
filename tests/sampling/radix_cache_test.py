"""Allocator + radix prefix cache: golden cases and hypothesis property tests.

The property test mirrors the device: every page carries the token ids written into it, writes
and page copies are replayed on that mirror, and after every operation we check that pool
accounting is exact, refcounts are right, no shared page is ever written, and every live
sequence and every cached node still reads back its own tokens.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleaner_jax.sampling.page_allocator import OutOfPagesError, PageAllocator
from cleaner_jax.sampling.radix_cache import PageManager


def test_allocator_hands_out_each_page_once():
    a = PageAllocator(5)
    pages = a.alloc(4)
    assert sorted(pages) == [1, 2, 3, 4] and a.num_free == 0
    with pytest.raises(OutOfPagesError):
        a.alloc(1)
    a.free([3])
    with pytest.raises(ValueError, match="twice"):
        a.free([3])
    with pytest.raises(ValueError, match="not an allocatable"):
        a.free([0])
    assert a.alloc(1) == [3]


def test_prefix_reuse_full_and_partial_pages():
    pm = PageManager(num_pages=16, page_size=4)
    toks = list(range(10))
    seq, copy = pm.begin(toks, max_cached=9)
    assert seq.num_cached == 0 and copy is None
    assert pm.reserve(seq, 10)
    seq.num_written = 10
    pm.finish(seq, toks)
    assert pm.allocator.num_free == 15 - 3  # two full pages + a partial tail page cached
    ext = toks + [50, 51]
    seq2, copy2 = pm.begin(ext, max_cached=11)
    assert seq2.num_cached == 10 and seq2.pages[:2] == [1, 2]
    assert copy2 is not None and copy2[0] == 3 and copy2[1] not in (1, 2, 3)
    # A diverging request shares only what matches, to the token.
    seq3, copy3 = pm.begin(list(range(6)) + [99], max_cached=7)
    assert seq3.num_cached == 6 and copy3[0] == 2
    pm.check_invariants([seq2, seq3])


def test_eviction_is_lru_over_unreferenced_leaves():
    pm = PageManager(num_pages=5, page_size=2)
    for toks in ([1, 2, 3, 4], [5, 6, 7, 8]):
        seq, _ = pm.begin(toks, 0)
        assert pm.reserve(seq, 4)
        seq.num_written = 4
        pm.finish(seq, toks)
    held, _ = pm.begin([5, 6, 7, 8, 9], 4)  # locks the second prefix and touches it
    assert held.num_cached == 4
    assert pm.evict(4) == 2  # only the first prefix's two pages are evictable
    assert pm.begin([1, 2, 3, 4], 4)[0].num_cached == 0


def _run_ops(data, num_pages, page_size):
    pm = PageManager(num_pages, page_size)
    contents = {}  # page -> {offset: token}: what the device would hold
    live = []  # (seq, tokens)
    token = st.integers(0, 2)

    def write(seq, toks, upto):
        for p in range(seq.num_written, upto):
            page = seq.pages[p // page_size]
            assert p // page_size >= len(seq.nodes), "wrote into a shared page"
            contents.setdefault(page, {})[p % page_size] = toks[p]
        seq.num_written = upto

    def do_copy(copy):
        if copy is not None:
            contents[copy[1]] = dict(contents.get(copy[0], {}))

    def check():
        pm.check_invariants([s for s, _ in live])
        for s, toks in live:
            for p in range(s.num_written):
                assert contents[s.pages[p // page_size]][p % page_size] == toks[p]
        for node in pm._walk():
            for i, t in enumerate(node.key):
                assert contents[node.page][i] == t, "a cached page lost its tokens"

    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(
            st.sampled_from(
                ["begin", "begin", "extend", "truncate", "finish", "release", "evict", "reset"]
            )
        )
        if op == "begin":
            toks = data.draw(st.lists(token, min_size=1, max_size=14))
            seq, copy = pm.begin(toks, data.draw(st.integers(0, len(toks))))
            do_copy(copy)
            assert toks[: seq.num_cached] == toks[: seq.num_written]
            if pm.reserve(seq, len(toks)):
                write(seq, toks, len(toks))
                pm.commit(seq, toks)
                live.append((seq, toks))
            else:
                pm.finish(seq, toks)
        elif op == "extend" and live:
            seq, toks = live[data.draw(st.integers(0, len(live) - 1))]
            toks.extend(data.draw(st.lists(token, min_size=1, max_size=6)))
            if pm.reserve(seq, len(toks)):
                write(seq, toks, len(toks))
            else:  # preempted
                del toks[seq.num_written :]
                pm.finish(seq, toks)
                live.remove((seq, toks))
        elif op == "truncate" and live:
            seq, toks = live[data.draw(st.integers(0, len(live) - 1))]
            n = data.draw(st.integers(0, seq.num_written))
            do_copy(pm.truncate(seq, n))
            del toks[seq.num_written :]
        elif op == "finish" and live:
            seq, toks = live.pop(data.draw(st.integers(0, len(live) - 1)))
            pm.finish(seq, toks)
        elif op == "release":
            toks = data.draw(st.lists(token, max_size=14))
            pm.release(toks, data.draw(st.integers(0, len(toks))))
        elif op == "evict":
            pm.evict(data.draw(st.integers(0, 5)))
        elif op == "reset":
            pm.reset()
        check()
    for seq, toks in live:
        pm.finish(seq, toks)
    pm.check_invariants([])
    pm.reset()
    assert pm.allocator.num_free == pm.allocator.capacity, "pages leaked"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), num_pages=st.integers(4, 14), page_size=st.integers(1, 3))
def test_random_operations_keep_pool_exact(data, num_pages, page_size):
    _run_ops(data, num_pages, page_size)
