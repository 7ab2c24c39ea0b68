"""Host-side free list of KV-cache pages.

The pool holds `num_pages` pages; page 0 is the null page (padding rows of a page table point at
it and nothing is ever written there by a live sequence), so pages 1..num_pages-1 are allocatable.
Ownership (which sequence or radix-tree node holds a page) is tracked by the callers; this class
only guarantees that a page is handed out at most once until it is given back.
"""

from __future__ import annotations

NULL_PAGE = 0


class OutOfPagesError(RuntimeError):
    """The free list cannot satisfy an allocation (callers evict or preempt, then retry)."""


class PageAllocator:
    """A LIFO free list over pages 1..num_pages-1."""

    def __init__(self, num_pages: int):
        if num_pages < 2:
            raise ValueError(f"num_pages={num_pages}: need at least 2 (page 0 is the null page)")
        self.num_pages = num_pages
        # Reversed so that pages come out in increasing order, which keeps tests readable.
        self._free: list[int] = list(range(num_pages - 1, 0, -1))
        self._is_free = [False] + [True] * (num_pages - 1)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def capacity(self) -> int:
        """Allocatable pages (all but the null page)."""
        return self.num_pages - 1

    def alloc(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPagesError(f"asked for {n} pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._is_free[p] = False
        return pages

    def free(self, pages: list[int]) -> None:
        for p in pages:
            if p == NULL_PAGE or not 0 < p < self.num_pages:
                raise ValueError(f"page {p} is not an allocatable page of this pool")
            if self._is_free[p]:
                raise ValueError(f"page {p} freed twice")
            self._is_free[p] = True
            self._free.append(p)

    def is_free(self, page: int) -> bool:
        return self._is_free[page]
