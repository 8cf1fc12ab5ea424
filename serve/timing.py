"""Latency timing: the one loop every latency figure of gankd comes from (:func:`measure_interleaved`), and the one
summary of its runs (:func:`latency_stats`, nearest-rank :func:`percentile`).

gankd-bench, ``auto``'s runtime race, gankd-distill's search, inspect, eval and reports, the step benchmark and the
demos all time through :func:`measure_interleaved`, so a warm-up, a round and a statistic mean the same everywhere.
A bottom-layer module: standard library only, it imports nothing of gankd, so gankd.distill and gankd.export import
it (serve imports neither).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

PERCENTILES = (90, 95, 99)
PERCENTILE_DEFINITION = ("nearest rank: the p-th percentile of n sorted latencies is the ceil(p*n/100)-th smallest "
                         "(trtexec's findPercentile in exact arithmetic; trtexec's floats can pick one rank higher)")


def measure_interleaved(calls: Sequence[Callable[[], object]], *, warmup_ms: float | None, duration_s: float | None,
                        iterations: int | None, min_rounds: int = 1, max_rounds: int | None = None,
                        clock: Callable[[], float] | None = None) -> list[list[float]]:
    """Latencies (ms) of each call: a warm-up per call by time (one run, then more until ``warmup_ms`` has passed;
    none with ``warmup_ms=None``, for a caller that warmed up already), then rounds that run every call once in
    turn, so machine-wide slowdowns (a shared, noisy host) hit every call alike and their ratios hold.

    Exactly ``iterations`` rounds when given; else rounds until ``duration_s`` × len(calls) seconds have passed,
    at least ``min_rounds`` and at most ``max_rounds`` (no limit with None) of them."""
    clock = clock or time.perf_counter
    if (duration_s is None) == (iterations is None):
        raise ValueError("give either a duration or a number of iterations")
    if warmup_ms is not None:
        for call in calls:
            start = clock()
            call()
            while (clock() - start) * 1e3 < warmup_ms:
                call()
    latencies: list[list[float]] = [[] for _ in calls]
    start = clock()
    rounds = 0
    while True:
        for i, call in enumerate(calls):
            begin = clock()
            call()
            latencies[i].append((clock() - begin) * 1e3)
        rounds += 1
        if iterations is not None:
            if rounds >= iterations:
                break
        elif rounds >= min_rounds and ((max_rounds is not None and rounds >= max_rounds)
                                       or clock() - start >= duration_s * len(calls)):
            break
    return latencies


def timed_ms(call: Callable, *args, **kwargs) -> tuple[object, float]:
    """``call(*args, **kwargs)`` and the milliseconds it took: one run as a user waits for it (the demo's
    latency line), not a measurement (that is :func:`measure_interleaved`)."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1e3


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``: the smallest value with at least p% of the values
    at or below it. Exact (p is read as a decimal fraction), so p90 of 10 values is the 9th, not the 10th."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    rank = math.ceil(Fraction(str(p)) * len(sorted_values) / 100)
    return sorted_values[max(rank, 1) - 1]


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    """trtexec's latency summary of one row's timed runs (ms), and throughput in queries per second: runs divided
    by the time they took (a query is one batch; runs are serial, so this is 1000 / mean)."""
    if not latencies_ms:
        raise ValueError("no timed runs")
    ordered = sorted(latencies_ms)
    stats = {"runs": len(ordered), "min_ms": ordered[0], "mean_ms": statistics.fmean(ordered),
             "median_ms": statistics.median(ordered)}
    stats.update({f"p{p}_ms": percentile(ordered, p) for p in PERCENTILES})
    stats["max_ms"] = ordered[-1]
    stats["qps"] = 1000.0 * len(ordered) / math.fsum(ordered)
    return stats
