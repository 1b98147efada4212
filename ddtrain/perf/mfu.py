"""Fraction of peak (MFU): the one place ddtrain defines it.

    fraction_of_peak = achieved FLOP/s per worker / peak FLOP/s per worker
    achieved FLOP/s per worker = samples/s per worker x training FLOPs per sample

The FLOPs per sample are each model's analytic forward+backward count
(``model.flops_per_sample()``, checked against torch's FlopCounterMode in tests/unit/test_models.py);
the peak comes from ``ddtrain.perf.peak`` (datasheet or measured probe, labelled).
"""

from __future__ import annotations

import math

from ddtrain.perf.peak import Peak


class ImpossibleMeasurement(ValueError):
    """A measured rate that cannot be true (above peak, negative, NaN): a bug, not a result."""


def achieved_flops(samples_per_s: float, flops_per_sample: float) -> float:
    return samples_per_s * flops_per_sample


def fraction_of_peak(achieved: float, peak: Peak) -> float:
    """``achieved / peak.flops`` in (0, 1]; anything else is reported as an error."""
    if not math.isfinite(achieved) or achieved <= 0:
        raise ImpossibleMeasurement(f"achieved {achieved!r} FLOP/s is not a positive finite rate")
    if not math.isfinite(peak.flops) or peak.flops <= 0:
        raise ImpossibleMeasurement(f"peak {peak.flops!r} FLOP/s of {peak.device} is not a positive rate")
    frac = achieved / peak.flops
    if frac > 1.0:
        hint = (
            "the probe under-measured the device (a busy machine, or too short a probe): rerun "
            "on a quiet machine or give a datasheet peak"
            if peak.measured
            else "the FLOP count or the timing is wrong (or the peak is for another device or dtype)"
        )
        raise ImpossibleMeasurement(
            f"achieved {achieved / 1e12:.4g} TFLOP/s exceeds the peak {peak.label}: fraction "
            f"{frac:.3f} > 1 is impossible; {hint}"
        )
    return frac
