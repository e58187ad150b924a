"""Argument checks shared by every module: each raises TypeError (wrong kind) or ValueError (out of range) with a
message that names the parameter and what is allowed, so bad input fails where it enters, not three calls deeper.

    >>> integer("top_k", 3, 1, 8)
    3
"""

from __future__ import annotations

import json
import math
from numbers import Integral, Real

import torch


def integer(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (either bound may be None). NumPy integers pass; bools do not."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int in {_range(lo, hi)}, got {value}")
    return value


def real(name: str, value: object, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
         hi_open: bool = False) -> float:
    """``value`` as a finite float in the range [lo, hi] (an open end with ``lo_open``/``hi_open``)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if not math.isfinite(value) or below or above:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{lo:g}, {hi:g}{right}, got {value!r}")
    return value


def choice(name: str, value: object, allowed: tuple) -> object:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def tensor(name: str, value: object, dims: int | tuple[int, ...] | None = None, *, floating: bool | None = None,
           finite: bool = False) -> torch.Tensor:
    """``value`` when it is a torch.Tensor with ``dims`` dimensions (an int or the allowed ints), floating point or
    integer as asked, and with no NaN/inf when ``finite``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() not in ((dims,) if isinstance(dims, int) else dims):
        raise ValueError(f"{name} must have {dims} dimension(s), got shape {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return value


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"[{lo}, {hi}]"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def settings(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` strings -> {key: value}, each value read as JSON where it parses (20, 3e-3, true), else
    kept as text; ValueError naming --set for a pair without "=" or a key."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


__all__ = ["choice", "integer", "real", "settings", "tensor"]
