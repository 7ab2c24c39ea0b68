"""Radix prefix cache at page granularity, and the page bookkeeping of live sequences.

The tree (SGLang RadixAttention's idea, one node per KV page) maps token prefixes to pages whose
K/V are already computed. A full node holds exactly `page_size` tokens and may have children; a
partial node holds fewer tokens (the tail of a finished sequence) and is always a leaf. Nodes are
shared by refcount (`ref` = live sequences whose page table points at the node's page); nodes with
`ref == 0` and no children are evictable, least recently used first.

A live sequence (`SequencePages`) owns a page list: its first `len(nodes)` pages belong to locked
tree nodes (read-only to it; a sequence locks a contiguous path from the root, so an unreferenced
node has no referenced descendant), the rest are private pages it writes. Writes never touch a
shared page: a prefix match that ends inside a page copies that page into a private one first
(`begin` and `truncate` return the `(src, dst)` page copy for the device to perform).

`update_params` calls `reset`: the whole tree is detached (its K/V were computed with the old
weights); pages still referenced by live sequences are freed when the last one lets go.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

from cleaner_jax.sampling.page_allocator import PageAllocator

PageCopy = tuple[int, int]


@dataclasses.dataclass(eq=False)
class _Node:
    key: tuple[int, ...]
    page: int
    parent: _Node | None
    children: dict[tuple[int, ...], _Node] = dataclasses.field(default_factory=dict)
    partials: dict[tuple[int, ...], _Node] = dataclasses.field(default_factory=dict)
    ref: int = 0
    last_access: int = 0
    attached: bool = True

    def is_leaf(self) -> bool:
        return not self.children and not self.partials


@dataclasses.dataclass(eq=False)
class SequencePages:
    """Pages of one live sequence; positions 0..num_written-1 hold valid K/V."""

    pages: list[int]
    nodes: list[_Node]
    num_written: int
    num_cached: int
    generation: int
    live: bool = True


def _common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PageManager:
    """Allocator + radix tree + the page lists of live sequences (all host-side Python)."""

    def __init__(self, num_pages: int, page_size: int):
        if page_size < 1:
            raise ValueError(f"page_size={page_size} must be >= 1")
        self.page_size = page_size
        self.allocator = PageAllocator(num_pages)
        self.generation = 0
        self._root = _Node(key=(), page=-1, parent=None)
        self._clock = itertools.count(1)

    # ------------------------------------------------------------------ tree helpers
    def _touch(self, node: _Node) -> None:
        node.last_access = next(self._clock)

    def _lock(self, node: _Node) -> None:
        node.ref += 1
        self._touch(node)

    def _unlock(self, node: _Node) -> None:
        if node.ref <= 0:
            raise AssertionError(f"refcount of page {node.page} would go negative")
        node.ref -= 1
        if node.ref == 0 and not node.attached:
            self.allocator.free([node.page])

    def _ensure_free(self, n: int) -> bool:
        if self.allocator.num_free < n:
            self.evict(n - self.allocator.num_free)
        return self.allocator.num_free >= n

    def num_cached_pages(self) -> int:
        return sum(1 for _ in self._walk())

    def _walk(self):
        stack = [self._root]
        while stack:
            node = stack.pop()
            kids = list(node.children.values()) + list(node.partials.values())
            stack.extend(kids)
            if node is not self._root:
                yield node

    # ------------------------------------------------------------------ sequences
    def begin(self, tokens: list[int], max_cached: int) -> tuple[SequencePages, PageCopy | None]:
        """Start a sequence over `tokens`, reusing at most `max_cached` cached leading tokens."""
        ps = self.page_size
        limit = max(0, min(max_cached, len(tokens)))
        node, nodes = self._root, []
        while (len(nodes) + 1) * ps <= limit:
            i = len(nodes)
            child = node.children.get(tuple(tokens[i * ps : (i + 1) * ps]))
            if child is None:
                break
            nodes.append(child)
            node = child
        for n in nodes:
            self._lock(n)
        matched = len(nodes) * ps
        pages = [n.page for n in nodes]
        copy = None
        rest = tokens[matched : min(limit, matched + ps)]
        src, best = None, 0
        if rest:
            for cand in itertools.chain(node.children.values(), node.partials.values()):
                j = _common_prefix(cand.key, rest)
                if j > best:
                    src, best = cand, j
        if src is not None:
            # Lock the source so that the eviction below cannot hand its page out.
            self._lock(src)
            if self._ensure_free(1):
                dst = self.allocator.alloc(1)[0]
                pages.append(dst)
                copy = (src.page, dst)
                matched += best
            self._unlock(src)
        seq = SequencePages(pages, nodes, matched, matched, self.generation)
        return seq, copy

    def reserve(self, seq: SequencePages, num_positions: int) -> bool:
        """Make sure positions 0..num_positions-1 have pages; False if the pool cannot."""
        need = -(-num_positions // self.page_size) - len(seq.pages)
        if need <= 0:
            return True
        if not self._ensure_free(need):
            return False
        seq.pages.extend(self.allocator.alloc(need))
        return True

    def commit(self, seq: SequencePages, tokens: list[int]) -> None:
        """Insert the sequence's written full pages into the tree (it keeps them locked).

        A page whose content is already cached is swapped for the cached one (same tokens at the
        same positions under the same weights) and its private copy freed.
        """
        if seq.generation != self.generation:
            return
        ps = self.page_size
        parent = seq.nodes[-1] if seq.nodes else self._root
        for i in range(len(seq.nodes), seq.num_written // ps):
            key = tuple(tokens[i * ps : (i + 1) * ps])
            child = parent.children.get(key)
            if child is None:
                child = _Node(key=key, page=seq.pages[i], parent=parent)
                parent.children[key] = child
            elif child.page != seq.pages[i]:
                self.allocator.free([seq.pages[i]])
                seq.pages[i] = child.page
            self._lock(child)
            seq.nodes.append(child)
            parent = child

    def finish(self, seq: SequencePages, tokens: list[int]) -> None:
        """Cache what the sequence wrote (its partial last page too) and drop its references."""
        if not seq.live:
            raise ValueError("sequence already finished")
        self.commit(seq, tokens)
        ps = self.page_size
        full, rem = divmod(seq.num_written, ps)
        keep_tail = False
        if rem and seq.generation == self.generation and len(seq.pages) > full:
            parent = seq.nodes[-1] if seq.nodes else self._root
            key = tuple(tokens[full * ps : seq.num_written])
            covered = key in parent.partials or any(k[:rem] == key for k in parent.children)
            if not covered:
                tail = _Node(key=key, page=seq.pages[full], parent=parent)
                parent.partials[key] = tail
                self._touch(tail)
                keep_tail = True
        private = seq.pages[len(seq.nodes) :]
        if keep_tail:
            private = private[1:]
        self.allocator.free(private)
        for n in seq.nodes:
            self._unlock(n)
        seq.pages, seq.nodes, seq.live = [], [], False

    def truncate(self, seq: SequencePages, n: int) -> PageCopy | None:
        """Forget positions >= n of a live sequence (rollback); returns a page copy to perform."""
        if not 0 <= n <= seq.num_written:
            raise ValueError(f"truncate to {n}: sequence has {seq.num_written} written positions")
        ps = self.page_size
        keep = -(-n // ps)
        self._drop_pages_from(seq, keep)
        seq.num_written = n
        copy = None
        if n % ps and keep <= len(seq.nodes):
            # The last kept page is shared and the sequence will write into it: copy on write.
            node = seq.nodes[-1]
            self._lock(node)
            ok = self._ensure_free(1)
            if ok:
                dst = self.allocator.alloc(1)[0]
                copy = (node.page, dst)
            self._unlock(node)
            self._drop_pages_from(seq, keep - 1)
            if ok:
                seq.pages.append(dst)
            else:
                seq.num_written = (keep - 1) * ps
        seq.num_cached = min(seq.num_cached, seq.num_written)
        return copy

    def _drop_pages_from(self, seq: SequencePages, keep: int) -> None:
        for i in range(len(seq.pages) - 1, keep - 1, -1):
            if i < len(seq.nodes):
                self._unlock(seq.nodes.pop())
            else:
                self.allocator.free([seq.pages[i]])
            seq.pages.pop()

    # ------------------------------------------------------------------ cache maintenance
    def evict(self, n: int) -> int:
        """Free up to n unreferenced leaf pages, least recently used first; returns how many."""
        heap = [(x.last_access, id(x), x) for x in self._walk() if x.ref == 0 and x.is_leaf()]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            table = parent.children if len(node.key) == self.page_size else parent.partials
            del table[node.key]
            node.attached = False
            self.allocator.free([node.page])
            freed += 1
            if parent is not self._root and parent.ref == 0 and parent.is_leaf():
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def release(self, tokens: list[int], position: int) -> int:
        """Drop cached pages of `tokens` that hold any position >= `position` (unless in use).

        SAAR calls this for the abandoned branch after a rollback so its pages are free at once
        instead of waiting for LRU eviction. Returns the number of pages freed.
        """
        ps = self.page_size
        node, i = self._root, 0
        while (i + 1) * ps <= position:
            node = node.children.get(tuple(tokens[i * ps : (i + 1) * ps]))
            if node is None:
                return 0
            i += 1
        rest = tokens[i * ps : (i + 1) * ps]
        off = position - i * ps
        victims = [
            c
            for c in node.partials.values()
            if len(c.key) > off and _common_prefix(c.key, rest) == len(c.key)
        ]
        full = node.children.get(tuple(rest))
        if full is not None:
            victims.append(full)
        freed = 0
        for v in victims:
            if v.ref:
                continue
            (node.children if len(v.key) == ps else node.partials).pop(v.key)
            freed += self._free_subtree(v)
        return freed

    def _free_subtree(self, top: _Node) -> int:
        stack, pages = [top], []
        while stack:
            x = stack.pop()
            stack.extend(list(x.children.values()) + list(x.partials.values()))
            x.attached = False
            if x.ref:
                raise AssertionError(f"page {x.page} is referenced below an unreferenced node")
            pages.append(x.page)
        self.allocator.free(pages)
        return len(pages)

    def reset(self) -> None:
        """Invalidate the whole cache (new weights); pages in use are freed on their release."""
        self.generation += 1
        nodes = list(self._walk())
        self._root.children.clear()
        self._root.partials.clear()
        for x in nodes:
            x.attached = False
            x.children, x.partials = {}, {}
            if x.ref == 0:
                self.allocator.free([x.page])

    # ------------------------------------------------------------------ checking
    def check_invariants(self, live: list[SequencePages]) -> None:
        """Raise AssertionError unless pool accounting is exact; used by the property tests."""
        owner: dict[int, str] = {}

        def claim(page: int, who: str) -> None:
            assert 0 < page < self.allocator.num_pages, f"{who} holds invalid page {page}"
            assert page not in owner, f"page {page} held by {owner[page]} and {who}"
            owner[page] = who

        expected_ref: dict[int, int] = {}
        detached: dict[int, _Node] = {}
        for s in live:
            assert s.live, "a finished sequence is in the live list"
            assert len(s.nodes) <= len(s.pages)
            for i, node in enumerate(s.nodes):
                assert node.page == s.pages[i], "sequence page list out of sync with its nodes"
                expected_ref[id(node)] = expected_ref.get(id(node), 0) + 1
                if not node.attached:
                    detached[id(node)] = node
            for p in s.pages[len(s.nodes) :]:
                claim(p, "a sequence")
        for x in self._walk():
            assert x.attached
            assert x.ref >= 0
            assert x.ref == expected_ref.get(id(x), 0), f"page {x.page}: ref {x.ref} is wrong"
            if x.ref:
                assert x.parent is self._root or x.parent.ref > 0, "locked node under free parent"
            claim(x.page, "the tree")
        for x in detached.values():
            assert x.ref == expected_ref[id(x)] > 0
            claim(x.page, "a detached node")
        for p in range(1, self.allocator.num_pages):
            if self.allocator.is_free(p):
                claim(p, "the free list")
        assert len(owner) == self.allocator.capacity, "pages leaked"
