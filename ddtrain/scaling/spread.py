"""How much step times vary: the statistics every timing in a study is summarised with."""

from __future__ import annotations

import statistics

# IQR / 1.349 is the standard deviation of a normal distribution: a spread in the units of sd
# that one hiccup of a shared machine (a step 10x slower) barely moves, where sd would.
_IQR_PER_SD = 1.349


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def robust_cv(values: list[float]) -> float:
    """Step-time jitter for the straggler model: (IQR / 1.349) / median; 0 for fewer than two."""
    if len(values) < 2:
        return 0.0
    med = statistics.median(values)
    return (percentile(values, 75) - percentile(values, 25)) / _IQR_PER_SD / med if med > 0 else 0.0


def relative_range(values: list[float]) -> float | None:
    """(max - min) / median of a few repeated measurements of one thing, e.g. a study's passes
    at one size; None for fewer than two. With a handful of values a range is the honest
    summary: it shows how far a single pass could have landed."""
    if len(values) < 2:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else None
