"""pass@k: the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained
on Code") and its mean over problems.

With n samples of which c are correct, the probability that at least one of k samples drawn
without replacement is correct is

    pass@k = 1 - C(n - c, k) / C(n, k),

computed as the product 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the huge
binomials. pass@1 reduces to c / n, the mean accuracy over samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` correct out of `n` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}: draw at least k samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def valid_ks(n: int, ks: Iterable[int] = DEFAULT_KS) -> list[int]:
    """The ks that can be estimated from n samples (k <= n), sorted."""
    return sorted({k for k in ks if 1 <= k <= n})


def mean_pass_at_k(
    correct_per_problem: Sequence[Sequence[bool]], ks: Iterable[int] = DEFAULT_KS
) -> dict[int, float]:
    """{k: pass@k averaged over problems}; every problem must have the same number of samples."""
    if not correct_per_problem:
        raise ValueError("mean_pass_at_k needs at least one problem")
    sizes = {len(c) for c in correct_per_problem}
    if len(sizes) != 1:
        raise ValueError(f"problems have different sample counts {sorted(sizes)}; use one n")
    n = sizes.pop()
    counts = [int(sum(bool(x) for x in c)) for c in correct_per_problem]
    return {k: float(np.mean([pass_at_k(n, c, k) for c in counts])) for k in valid_ks(n, ks)}
