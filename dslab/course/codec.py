"""A small JSON codec for exercise inputs and answers crossing between the grader and a student's kernel.

Only plain data crosses: numbers, strings, lists, dicts, tuples, tensors, NumPy arrays and ``ModelArgs``. Nothing is
unpickled, so a submission cannot smuggle an object whose ``__eq__`` lies into the grader's process.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from dslab.configs import ModelArgs

MAX_BYTES = 8_000_000  # one encoded answer; a larger one is refused rather than filling the grader's memory


def encode(obj: Any) -> Any:
    """Turn ``obj`` into JSON-able data; raises TypeError for anything else (e.g. a module or a lambda)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return encode(obj.item())
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "data": [encode(v) for v in t.flatten().tolist()]}
    if isinstance(obj, np.ndarray):
        return encode(torch.from_numpy(np.ascontiguousarray(obj)))
    if isinstance(obj, ModelArgs):
        return {"__modelargs__": obj.to_dict()}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only dicts with string keys can be encoded")
        return {"__dict__": {k: encode(v) for k, v in obj.items()}}
    raise TypeError(f"cannot encode a value of type {type(obj).__name__}")


def decode(data: Any) -> Any:
    """Inverse of ``encode``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if "__tensor__" in data:
        dtype = getattr(torch, data["__tensor__"], None)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"unknown tensor dtype {data['__tensor__']!r}")
        values = [decode(v) for v in data["data"]]
        return torch.tensor(values, dtype=dtype).reshape(data["shape"])
    if "__modelargs__" in data:
        return ModelArgs.from_dict(data["__modelargs__"])
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__dict__" in data:
        return {k: decode(v) for k, v in data["__dict__"].items()}
    raise TypeError(f"unknown encoded object with keys {sorted(data)}")


def dumps(obj: Any) -> str:
    text = json.dumps(encode(obj))
    if len(text) > MAX_BYTES:
        raise ValueError(f"value too large to grade ({len(text):,} bytes > {MAX_BYTES:,})")
    return text


def loads(text: str) -> Any:
    return decode(json.loads(text))
