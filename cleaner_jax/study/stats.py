"""The statistics the miniature study reports (issue #17): effects, 95% intervals, p-values, MDE.

Each claim in the report is one effect with its interval and a significance verdict: Wilson,
t and percentile-bootstrap intervals, paired t-tests (per pair or per seed), the design's power
and minimum detectable effect, seed bands for plots, steps to a target, and one plain-English
sentence per effect (describe). Sign convention everywhere: a difference is treatment - baseline
(cleaner - baseline), so a negative difference in a failure rate means SAAR lowers it. scipy
comes with jax (jax requires scipy>=1.14).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import optimize, special


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at `level`, from `n` units."""

    estimate: float
    low: float
    high: float
    level: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


@dataclasses.dataclass(frozen=True)
class PairedEffect(Interval):
    """A mean difference (treatment - baseline) with its t-test: statistic, df, two-sided p."""

    t_stat: float = math.nan
    df: int = 0
    p_value: float = math.nan

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (equivalently p < 1 - level)."""
        return self.excludes_zero


@dataclasses.dataclass(frozen=True)
class Band:
    """Per-step mean over seeds and its t-band; n counts the finite seeds at each step."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray


def _check_level(level: float, name: str = "level") -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1 (e.g. 0.95), got {level}")


def _check_boot(n_boot: int) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")


def _finite_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or inf; drop or impute missing values first")
    return arr


def _t_quantile(q: float | np.ndarray, df: float | np.ndarray) -> float | np.ndarray:
    return special.stdtrit(df, q)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion; estimate is successes / n.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, which
    is where tool-failure rates of a trained policy live.
    """
    _check_level(level)
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in [0, n={n}], got {successes}")
    n, p, z = int(n), successes / n, float(special.ndtri(0.5 + level / 2))
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # The interval contains p exactly; min/max keep it so through rounding at k = 0 and k = n.
    return Interval(p, max(0.0, min(p, center - half)), min(1.0, max(p, center + half)), level, n)


def mean_ci(x: Any, level: float = 0.95) -> Interval:
    """Mean with a Student-t interval (sample sd, ddof=1, df = n - 1).

    n = 1 gives low = -inf, high = inf: one value says nothing about the spread, and the t
    quantile diverges as df -> 0, so the honest interval is the whole line.
    """
    _check_level(level)
    arr = _finite_1d(x, "x")
    mean, n = float(arr.mean()), arr.size
    if n == 1:
        return Interval(mean, -math.inf, math.inf, level, 1)
    half = float(_t_quantile(0.5 + level / 2, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, level, n)


def _one_sample_t(d: np.ndarray, level: float) -> PairedEffect:
    ci, n = mean_ci(d, level), d.size
    if n == 1:
        return PairedEffect(ci.estimate, ci.low, ci.high, level, 1)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:  # identical differences: no noise, so p is 0 unless the effect is exactly 0
        t, p = (math.copysign(math.inf, ci.estimate), 0.0) if ci.estimate else (0.0, 1.0)
    else:
        t = ci.estimate / se
        p = float(2 * special.stdtr(n - 1, -abs(t)))
    return PairedEffect(ci.estimate, ci.low, ci.high, level, n, t, n - 1, p)


def paired_difference(baseline: Any, treatment: Any, level: float = 0.95) -> PairedEffect:
    """Paired t-test on treatment - baseline (e.g. cleaner vs baseline per (seed, step)).

    The estimate is mean(treatment - baseline); p is two-sided; `significant` means the
    interval excludes 0. One pair gives an infinite interval and p = NaN (not significant).
    Pairs from one seed's steps are not independent: use paired_difference_by_cluster.
    """
    a, b = _finite_1d(baseline, "baseline"), _finite_1d(treatment, "treatment")
    if a.size != b.size:
        raise ValueError(f"baseline and treatment must pair up, got {a.size} vs {b.size} values")
    _check_level(level)
    return _one_sample_t(b - a, level)


def paired_difference_by_cluster(diffs: Any, clusters: Any, level: float = 0.95) -> PairedEffect:
    """Paired t-test on per-cluster means of `diffs` (treatment - baseline); n = #clusters.

    The steps of one seed share its initialisation, data order and policy, so their differences
    are correlated; testing them as independent pairs understates the standard error and
    overstates significance (pseudo-replication). Averaging within each seed first leaves one
    independent value per seed, and df = seeds - 1.
    """
    d = _finite_1d(diffs, "diffs")
    labels = np.asarray(clusters)
    if labels.shape != d.shape:
        raise ValueError(f"clusters must label each diff, got shape {labels.shape} vs {d.shape}")
    _check_level(level)
    _, inverse = np.unique(labels, return_inverse=True)
    means = np.bincount(inverse, weights=d) / np.bincount(inverse)
    return _one_sample_t(means, level)


def bootstrap_ci(
    values: Any,
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    groups: Any = None,
) -> Interval:
    """Percentile bootstrap interval of `statistic(values)`; deterministic given `seed`.

    values: rows along axis 0 (1-D, or 2-D such as columns (advantage, recovered)). groups: an
    optional label per row; then whole groups are resampled with replacement (e.g. a prompt's n
    trajectories, whose group-relative advantages are dependent), and n counts groups.
    Resamples whose statistic is not finite (e.g. no recovered call drawn) are dropped with a
    warning; if none is finite this raises.
    """
    _check_level(level)
    data = np.asarray(values, dtype=float)
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValueError("values is empty; need at least one row")
    _check_boot(n_boot)
    if groups is None:
        n_units, rows = data.shape[0], lambda draw: draw
    else:
        labels = np.asarray(groups)
        if labels.shape != (data.shape[0],):
            raise ValueError(f"groups needs a label per row ({data.shape[0]}), got {labels.shape}")
        units = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        n_units, rows = len(units), lambda draw: np.concatenate([units[j] for j in draw])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    stats = np.array([statistic(data[rows(draw)]) for draw in draws], dtype=float)
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        raise ValueError("statistic was not finite on any bootstrap resample")
    if finite.size < stats.size:
        logging.warning("bootstrap_ci: dropped %d non-finite resamples", stats.size - finite.size)
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(statistic(data)), float(low), float(high), level, n_units)


def paired_t_power(effect: float, sd_diff: float, n_pairs: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at `alpha` (exact, noncentral t with df = n - 1)."""
    if n_pairs < 2:
        raise ValueError(f"a paired t-test needs n_pairs >= 2, got {n_pairs}")
    if sd_diff <= 0:
        raise ValueError(f"sd_diff must be positive, got {sd_diff}")
    _check_level(alpha, "alpha")
    df, nc = n_pairs - 1, abs(effect) / sd_diff * math.sqrt(n_pairs)
    crit = float(_t_quantile(1 - alpha / 2, df))
    # P(T > crit | nc) + P(T < -crit | nc), the second as P(T > crit | -nc): scipy's nctdtr
    # returns NaN at large nc for a negative argument.
    return float(2 - special.nctdtr(df, nc, crit) - special.nctdtr(df, -nc, crit))


def _check_design(sd_diff: float, alpha: float, power: float, method: str) -> None:
    if sd_diff <= 0:
        raise ValueError(f"sd_diff must be positive, got {sd_diff}")
    _check_level(alpha, "alpha")
    if not alpha / 2 < power < 1:
        raise ValueError(f"power must lie in (alpha/2, 1), got {power}")
    if method not in ("t", "normal"):
        raise ValueError(f"method must be 't' (noncentral t) or 'normal', got {method!r}")


def minimum_detectable_effect(
    sd_diff: float, n_pairs: int, alpha: float = 0.05, power: float = 0.8, method: str = "t"
) -> float:
    """Smallest true mean difference a two-sided paired t-test detects with `power`.

    method "t" (default) solves paired_t_power(effect) = power on the noncentral t, exact for
    normal differences; "normal" is (z_{1-alpha/2} + z_power) * sd_diff / sqrt(n_pairs), which
    is too optimistic at the few seeds of the study (n = 3: 1.62 sd vs the exact 3.26 sd).
    """
    _check_design(sd_diff, alpha, power, method)
    if n_pairs < (1 if method == "normal" else 2):
        raise ValueError(f"n_pairs must be >= {1 if method == 'normal' else 2}, got {n_pairs}")
    normal = float(special.ndtri(1 - alpha / 2) + special.ndtri(power)) * sd_diff / n_pairs**0.5
    if method == "normal":
        return normal
    gap = lambda e: paired_t_power(e, sd_diff, n_pairs, alpha) - power
    hi = normal
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12 * sd_diff, rtol=1e-12))


def required_pairs(
    effect: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8, method: str = "t"
) -> int:
    """Fewest pairs whose minimum_detectable_effect is <= |effect| (its inverse)."""
    _check_design(sd_diff, alpha, power, method)
    if effect == 0:
        raise ValueError("effect must be nonzero; no finite design detects a zero effect")
    z = float(special.ndtri(1 - alpha / 2) + special.ndtri(power))
    n = max(1, math.ceil((z * sd_diff / abs(effect)) ** 2 - 1e-9))
    if method == "normal":
        return n
    n = max(n, 2)
    while paired_t_power(abs(effect), sd_diff, n, alpha) < power - 1e-9:
        n += 1
    return n


def band_over_seeds(curves: Any, level: float = 0.95) -> Band:
    """Per-step mean and t-band across seeds; curves is seeds x steps, NaN marks a missing value.

    Each step uses its finite seeds only. A step with one finite seed has a mean but NaN band
    edges, and a step with none is NaN throughout, so a plot leaves a gap instead of a lie.
    """
    _check_level(level)
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"curves must be a non-empty seeds x steps array, got shape {c.shape}")
    ok = np.isfinite(c)
    n = ok.sum(axis=0)
    filled = np.where(ok, c, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / n
        var = np.where(ok, (c - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
        half = _t_quantile(0.5 + level / 2, np.maximum(n - 1, 1)) * np.sqrt(var / n)
    half = np.where(n >= 2, half, np.nan)
    return Band(mean, mean - half, mean + half, n)


def steps_to_target(curve: Any, target: float, higher_is_better: bool = True) -> int | None:
    """First index where curve >= target (<= if not higher_is_better); None if never. NaN never
    counts as reaching it."""
    c = np.asarray(curve, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"curve must be a non-empty 1-D array, got shape {c.shape}")
    hit = np.flatnonzero(c >= target if higher_is_better else c <= target)
    return int(hit[0]) if hit.size else None


def steps_to_target_ci(
    curves_by_seed: Any,
    target: float,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    higher_is_better: bool = True,
) -> Interval:
    """steps_to_target of the mean-over-seeds curve, with a percentile bootstrap over seeds.

    "Never reached" counts as inf, so high = inf reads "may not reach it within the run".
    Bounds are observed step indices (inverted-CDF percentiles), never interpolated.
    """
    _check_level(level)
    c = np.asarray(curves_by_seed, dtype=float)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"curves_by_seed must be a non-empty seeds x steps array, got {c.shape}")
    _check_boot(n_boot)

    def first(rows: np.ndarray) -> float:
        mean = band_over_seeds(rows, level).mean
        hit = steps_to_target(mean, target, higher_is_better)
        return math.inf if hit is None else float(hit)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
    stats = np.array([first(c[row]) for row in draws])
    q = [50 * (1 - level), 50 * (1 + level)]
    low, high = np.percentile(stats, q, method="inverted_cdf")
    return Interval(first(c), float(low), float(high), level, c.shape[0])


def describe(
    effect: Interval | Mapping[str, Any], quantity: str, subject: str = "SAAR", digits: int = 3
) -> str:
    """One sentence for the report, e.g. "SAAR lowers the first-attempt failure rate by 0.031
    (95% CI 0.012 to 0.050, p = 0.004): significant."

    effect: an Interval / PairedEffect, or a mapping with estimate, low, high, level and
    optionally p_value. A negative estimate reads "lowers ... by |estimate|" with the interval
    negated to match; significance means the interval excludes 0. Numbers get `digits` decimals.
    """
    e = dataclasses.asdict(effect) if isinstance(effect, Interval) else dict(effect)
    missing = {"estimate", "low", "high", "level"} - set(e)
    if missing:
        raise ValueError(f"effect lacks {sorted(missing)}; pass an Interval or PairedEffect")
    est, low, high = e["estimate"], e["low"], e["high"]
    verb = "raises" if est > 0 else "lowers" if est < 0 else "changes"
    if est < 0:
        est, low, high = -est, -high, -low
    p = e.get("p_value", math.nan)
    p_text = "" if not np.isfinite(p) else ", p < 0.001" if p < 0.001 else f", p = {p:.3f}"
    verdict = "significant" if (low > 0 or high < 0) else "not significant"
    f = lambda v: f"{v:.{digits}f}"
    return (
        f"{subject} {verb} the {quantity} by {f(est)} "
        f"({100 * e['level']:g}% CI {f(low)} to {f(high)}{p_text}): {verdict}."
    )
