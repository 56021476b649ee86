"""Statistics of durations and a concurrent load runner."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize_ms(seconds: Iterable[float]) -> dict:
    """count, mean, p50/p95/p99, min, max of durations given in seconds, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def fmt_summary(s: dict) -> str:
    if not s.get("n"):
        return "no samples"
    return (
        f"p50 {s['p50_ms']:.1f} ms  p95 {s['p95_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  "
        f"mean {s['mean_ms']:.1f} ms  (n={s['n']}, min {s['min_ms']:.1f}, max {s['max_ms']:.1f})"
    )


def run_concurrent(clients: int, total: int, work: Callable[[int], Any]) -> tuple[list, float]:
    """Run `work(api_index)` `total` times over `clients` threads; returns (results, wall seconds).
    `work` gets the thread number and returns one result; exceptions are returned as results."""
    results: list = []
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients + 1)

    def worker(n: int) -> None:
        barrier.wait()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            try:
                value = work(n)
            except Exception as exc:  # counted as an error by the caller
                value = exc
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started
