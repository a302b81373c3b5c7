"""The bench's timers: best and median wall times, alternating calls, and a case's result.

Every bench case (``sae_atoms.bench``) measures our code and a baseline with these, in the same
process, and returns ``measured(...)``. Cases call them through this module (``timing.best_time``),
so a test can watch every time a case takes.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (after ``warmup``), CUDA-synchronised."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def ratio_of(seconds: float, baseline_seconds: float, better: str) -> float:
    """``seconds / baseline_seconds`` when lower is better (a time ratio), the inverse when higher
    is better (a throughput ratio: the same work per second, ours over the baseline's)."""
    if better == "lower":
        return seconds / baseline_seconds
    if better == "higher":
        return baseline_seconds / seconds
    raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")


def measured(seconds: float, baseline_seconds: float, target: float, better: str, **extra: object) -> dict:
    """A case's result: our time, the baseline's time, their :func:`ratio_of` and its target."""
    return {"ratio": ratio_of(seconds, baseline_seconds, better), "target": target, "better": better,
            "seconds": seconds, "baseline_seconds": baseline_seconds, **extra}


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def alternating(ours: Callable[[], object], base: Callable[[], object], quick: bool) -> tuple[float, float]:
    """Times of ``ours()`` and ``base()`` from single calls taken in pairs (base, then ours), the pair
    whose ratio is the median of all pairs' ratios: a load drift or a slow spell hits both calls of
    a pair alike, and a median, unlike a best time, does not rest on one lucky call. Each time is
    one ``best_time`` call's (an odd count of pairs: the median is one of them)."""
    n = 5 if quick else 31
    pairs = []
    for i in range(n):
        t_b = best_time(base, repeat=1, warmup=int(i == 0))
        pairs.append((best_time(ours, repeat=1, warmup=int(i == 0)), t_b))
    return sorted(pairs, key=lambda p: p[0] / p[1])[n // 2]
