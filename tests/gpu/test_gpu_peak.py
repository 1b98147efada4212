"""On a GPU: the peak lookup and the matmul probe agree with each other."""

from __future__ import annotations

import pytest
import torch

from ddtrain.perf.mfu import fraction_of_peak
from ddtrain.perf.peak import match_device, probe_peak, resolve_peak

pytestmark = pytest.mark.gpu


def test_probe_stays_below_the_datasheet_peak_of_a_known_gpu():
    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    peak = resolve_peak(device, "bf16")
    probe = probe_peak(device, "bf16", seconds=0.5)
    assert probe.measured and probe.flops > 0
    if match_device(name) is None:
        assert peak.measured  # an unknown GPU is probed, never given another device's figure
        return
    assert not peak.measured
    # A real matmul reaches a good part of the dense datasheet peak and never exceeds it.
    frac = fraction_of_peak(probe.flops, peak)
    assert 0.3 < frac <= 1.0, (name, probe.label, peak.label)
