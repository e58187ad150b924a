"""Benchmarks: each one times a candidate against a baseline in the same process and reports their ratio.

A benchmark module ``dslab/bench/<name>.py`` defines ``run(quick: bool = False) -> Result``; it is found by its file
name. ``python -m dslab.bench NAME`` prints its details and, as the last line, ``Result.line()``. Benchmarks
are not tests: nothing fails on a slow machine.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

BENCHMARKS: tuple[str, ...] = tuple(
    sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
)


@dataclass
class Result:
    """One benchmark's headline figure, e.g. name='moe', value=1.18, unit='x', op='<=', target=1.25."""

    name: str
    value: float
    unit: str
    op: str
    target: float
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def line(self) -> str:
        return f"{self.name}: {self.value:.2f}{self.unit} (target {self.op} {self.target:g}{self.unit})"


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run with n intra-op threads (None: leave as is), restoring the setting afterwards. One thread keeps timings
    steadier on a busy machine, where a multi-threaded kernel waits for whichever of its threads was descheduled."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_ratios(candidate: Callable[[], object], baseline: Callable[[], object], rounds: int = 5) -> list[float]:
    """Per-round time(candidate)/time(baseline), interleaved so machine noise hits both alike."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    candidate(), baseline()  # warm up both
    return [timeit(candidate, repeats=1, warmup=0) / timeit(baseline, repeats=1, warmup=0) for _ in range(rounds)]


def paired_ratio(candidate: Callable[[], object], baseline: Callable[[], object], rounds: int = 5) -> float:
    """Median of ``paired_ratios``."""
    return statistics.median(paired_ratios(candidate, baseline, rounds))


def run(name: str, quick: bool = False) -> Result:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS) or '(none yet)'}")
    return importlib.import_module(f"dslab.bench.{name}").run(quick=quick)
