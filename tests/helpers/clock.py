"""A fake ``time.perf_counter`` for the latency-loop tests: only the fake workloads move it."""

from __future__ import annotations


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.calls: list[int] = []

    def __call__(self) -> float:
        return self.now

    def workload(self, index: int, durations_ms):
        """A call that advances the clock by the next of ``durations_ms`` (a number: the same every time)."""
        durations = iter(durations_ms) if not isinstance(durations_ms, (int, float)) else None

        def run():
            self.calls.append(index)
            self.now += (next(durations) if durations is not None else durations_ms) / 1e3

        return run
