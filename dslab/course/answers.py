"""How an answer travels and is judged: one codec, one call with a time limit, one comparison, for both
``dslab.check`` (public cases, in the learner's kernel) and the grader (hidden cases, verdict in the grader's process).

An answer is the value a learner's function returns for one case. It crosses the kernel boundary as JSON built from
plain data only (numbers, strings, lists, dicts, tuples, tensors as raw bytes, NumPy arrays, ``ModelArgs``); nothing is
unpickled, so a submission cannot smuggle an object whose ``__eq__`` lies. ``dslab.check`` sends its answers through
the same encode/decode as the grader, so one answer gets one verdict wherever it is judged.

Kernel side (runs in the submission's kernel, last): ``answer_all`` calls the learner's functions on the hidden cases,
one time limit per call, and notes which registered reference callables ran during each call (delegation), and which
copies of them (the same code under another name).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import math
import signal
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslab.configs import ModelArgs
from dslab.course.manifest import write_atomic

MAX_BYTES = 8_000_000  # one encoded answer; a larger one is refused before it is parsed
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                                     torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                                     torch.bool)}


# ---------------------------------------------------------------------------------------------------------- codec
def encode(obj: Any) -> Any:
    """``obj`` as JSON-able data; TypeError for anything that is not plain data (a module, a lambda, ...)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return encode(obj.item())
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise TypeError(f"cannot encode a tensor of dtype {t.dtype}")
        raw = t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {"__tensor__": name, "shape": list(t.shape), "b64": base64.b64encode(raw).decode()}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("cannot encode a NumPy array of Python objects")
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
    """Inverse of ``encode``; TypeError/ValueError for anything ``encode`` cannot have written."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if "__tensor__" in data:
        return _decode_tensor(data)
    if "__modelargs__" in data:
        return ModelArgs.from_dict(data["__modelargs__"])
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__dict__" in data:
        return {k: decode(v) for k, v in data["__dict__"].items()}
    raise TypeError(f"unknown encoded object with keys {sorted(data)}")


def _decode_tensor(data: dict) -> torch.Tensor:
    dtype = DTYPES.get(data["__tensor__"])
    if dtype is None:
        raise TypeError(f"unknown tensor dtype {data['__tensor__']!r}")
    shape = [int(n) for n in data["shape"]]
    raw = base64.b64decode(data["b64"], validate=True)
    numel = math.prod(shape)
    if len(raw) != numel * torch.empty((), dtype=dtype).element_size():
        raise ValueError(f"tensor data of {len(raw)} bytes does not fit shape {shape} of {dtype}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def to_json(obj: Any) -> str:
    """``encode`` then JSON text; ValueError when it exceeds MAX_BYTES."""
    text = json.dumps(encode(obj))
    if len(text) > MAX_BYTES:
        raise ValueError(f"value too large to grade ({len(text):,} bytes > {MAX_BYTES:,})")
    return text


def from_json(text: str) -> Any:
    """Inverse of ``to_json``; refuses text over MAX_BYTES before parsing it."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"value too large to grade ({len(text):,} bytes > {MAX_BYTES:,})")
    return decode(json.loads(text))


# ----------------------------------------------------------------------------------------------- one timed call
class CallTimeout(Exception):
    """A learner's function ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CallTimeout inside the block after ``seconds`` (SIGALRM: POSIX main thread; elsewhere a no-op)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise CallTimeout(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call(fn, args: tuple, seconds: float, watch: dict | None = None, copies: dict | None = None) -> dict:
    """Run ``fn(*args)`` within ``seconds`` -> {"value": json} or {"error": name, "message": text}.

    watch: {code object: "module.qualname"} of callables to look out for; the names of those that ran during the
    call are added under "called" (how the grader sees an answer delegated to a reference implementation).
    copies: {(file, first line): ("module.qualname", code object)}; other code that ran from the same place (a
    function rebuilt from the reference's ``__code__`` under a new name) is named under "copied".
    """
    seen: set[str] = set()
    copied: set[str] = set()
    profiler = _watcher(watch or {}, copies or {}, seen, copied) if watch or copies else None
    try:
        with time_limit(seconds):
            if profiler:
                sys.setprofile(profiler)
            try:
                value = fn(*args)
            finally:
                if profiler:
                    sys.setprofile(None)
        result = {"value": to_json(value)}
    except NotImplementedError as e:
        result = {"error": "NotImplementedError", "message": str(e)[:300]}
    except CallTimeout as e:
        result = {"error": "Timeout", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - SystemExit & co. are the learner's bug, reported per case
        if isinstance(e, KeyboardInterrupt):
            raise
        result = {"error": type(e).__name__, "message": str(e)[:300]}
    if seen:
        result["called"] = sorted(seen)
    if copied:
        result["copied"] = sorted(copied)
    return result


def _watcher(watch: dict, copies: dict, seen: set, copied: set):
    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code in watch:
                seen.add(watch[code])
            elif copies:
                hit = copies.get((code.co_filename, code.co_firstlineno))
                if hit is not None and code != hit[1]:
                    copied.add(hit[0])
    return profile


def judge(ex, case, result: dict) -> str | None:
    """None when ``result`` (from ``call``) is the right answer to ``case``, else what is wrong, in a few words."""
    if "error" in result:
        return f"{result['error']}: {result['message']}"
    try:
        got = from_json(result["value"])
    except Exception as e:  # noqa: BLE001 - an undecodable answer is a wrong answer
        return f"unreadable answer ({type(e).__name__}: {e})"
    return ex.compare(ex.reference(*case.args), got)


# ------------------------------------------------------------------------------------------------- kernel side
def lookup(qualname: str):
    """The object named "package.module.Name.attr": the longest importable module prefix, then attributes (None when
    it cannot be found)."""
    parts = qualname.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def resolve(qualname: str):
    """The code object of a function named "package.module.Name.attr" (a class: its forward; None when it cannot be
    found)."""
    obj = lookup(qualname)
    obj = getattr(obj, "forward", obj) if isinstance(obj, type) else obj
    return getattr(obj, "__code__", None)


def places(qualnames: list[str]) -> dict:
    """{(file, first line): (qualname, code object)} of the callables named (those that cannot be found are left out):
    where their code lives, which a copy of it keeps whatever it is named."""
    if not isinstance(qualnames, list):
        raise TypeError(f"qualnames must be a list of names, got {type(qualnames).__name__}")
    found = {}
    for q in qualnames:
        code = resolve(q)
        if code is not None:
            found[(code.co_filename, code.co_firstlineno)] = (q, code)
    return found


def answer_all(namespace: dict, request: dict, seconds: float, on_progress=None) -> dict:
    """Answer every hidden case of ``request`` with the functions in ``namespace`` -> {exercise id: answers}.

    request: {"exercises": [{"id", "target", "cases": [json args], "forbidden": [qualnames], "references":
    [qualnames]}]}: a call of a forbidden callable is reported as delegation, one of a copy of a forbidden callable or
    a reference (the same code under another name) as a copy. Each call gets its
    own ``seconds``; a function that is missing, not callable, or raises is reported per case, never fatal.
    ``on_progress(answers)`` runs after each exercise, so a later hang cannot take earlier answers with it.
    """
    answers = {}
    for ex in request["exercises"]:
        fn = namespace.get(ex["target"])
        if fn is None:
            answers[ex["id"]] = {"missing": f"no function named {ex['target']} was defined"}
        elif not callable(fn):
            answers[ex["id"]] = {"missing": f"{ex['target']} is a {type(fn).__name__}, not a function"}
        else:
            codes = {resolve(q): q for q in ex.get("forbidden", [])}
            codes.pop(None, None)
            copies = places([*ex.get("forbidden", []), *ex.get("references", [])])
            answers[ex["id"]] = {"results": [call(fn, from_json(args), seconds, codes, copies)
                                             for args in ex["cases"]]}
        if on_progress:
            on_progress(answers)
    return answers


def grade_cell(namespace: dict, payload: str, seconds: float, path: str) -> None:
    """The grading cell (kernel side): decode the request the executor placed in the cell, answer it, and keep the
    answers in ``path`` after every exercise (written atomically). Prints one line."""
    request = json.loads(zlib.decompress(base64.b64decode(payload)))
    answers = answer_all(namespace, request, seconds, lambda answers: write_atomic(Path(path), json.dumps(answers)))
    print(f"dslab grader: answers collected for {len(answers)} exercise(s)")


__all__ = ["CallTimeout", "MAX_BYTES", "answer_all", "call", "decode", "encode", "from_json", "grade_cell", "judge",
           "places", "resolve", "time_limit", "to_json"]
