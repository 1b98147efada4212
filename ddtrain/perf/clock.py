"""Per-step timing that does not stall the GPU.

On CUDA a mark is an event recorded on the current stream: the host runs ahead and the
timeline is read only when ``drain()`` is called (a deliberate sync, at logging steps only).
On CPU a mark is ``time.perf_counter()``: work is synchronous, so wall time is the timeline.
"""

from __future__ import annotations

import time

import torch


class StepClock:
    def __init__(self, device: torch.device):
        self.device = device
        self._cuda = device.type == "cuda"
        self._steps: list[list[tuple[str, object]]] = []

    def _stamp(self):
        if self._cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start_step(self) -> None:
        self._steps.append([("start", self._stamp())])

    def mark(self, name: str) -> None:
        self._steps[-1].append((name, self._stamp()))

    def drain(self) -> list[dict[str, float]]:
        """Seconds from each mark's predecessor to that mark, per step since the last drain; a
        name marked more than once in a step (forward and backward, once per micro-step) gets
        the sum. ``compute`` is forward + backward where the step marks those."""
        if self._cuda and self._steps:
            self._steps[-1][-1][1].synchronize()  # deliberate host sync: logging steps only
        out = []
        for marks in self._steps:
            durations: dict[str, float] = {}
            for (_, a), (name, b) in zip(marks, marks[1:]):
                seconds = a.elapsed_time(b) / 1e3 if self._cuda else b - a
                durations[name] = durations.get(name, 0.0) + seconds
            durations["total"] = sum(durations.values())
            if "compute" not in durations and "forward" in durations and "backward" in durations:
                durations["compute"] = durations["forward"] + durations["backward"]
            out.append(durations)
        self._steps = []
        return out
