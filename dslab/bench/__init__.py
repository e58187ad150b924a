"""Benchmarks: each one times a candidate against a baseline in the same process and reports their ratio.

A benchmark module ``dslab/bench/<name>.py`` defines ``run(quick: bool = False) -> Result``; it is found by its file
name. ``python -m dslab.bench NAME`` prints its details and, as the last line, ``Result.line()``. Benchmarks
are not tests: nothing fails on a slow machine. Timing (``timeit``, ``num_threads``) lives in ``dslab.runtime``; a
benchmark depends on the components and the runtime only, never on a lab.
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from dslab.runtime import timeit

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
