"""Checkpoints and metrics logs: the two files every training run in the kit writes, written and read one way.

A checkpoint is a dict saved with ``torch.save`` under a ``format`` tag (which trainer wrote it), written atomically so
that a kill never leaves a half-written file in its place, and always loaded onto the CPU first (``map_location``),
so a run checkpointed on a GPU resumes or is inspected on a laptop. A metrics log holds one JSON object per line; a
run killed mid-write leaves a torn last line, which the reader skips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint (or run folder) that cannot be read, or that was written for another configuration or model."""


def save_checkpoint(path: str | os.PathLike, state: dict, kind: str) -> None:
    """Write ``state`` tagged ``format=kind``: to ``path.tmp`` first, then renamed over ``path``, so a kill leaves
    the previous checkpoint intact."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"format": kind, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, required: Iterable[str], kind: str | None = None) -> dict:
    """The state ``save_checkpoint`` wrote, on the CPU. CheckpointError naming the file when it cannot be read,
    lacks one of the ``required`` keys, or (given ``kind``) was written by another trainer."""
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - truncated zip, random bytes, a pickle of something else: all unreadable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is damaged "
                              f"(e.g. a copy that stopped half-way); delete it to start the run over") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a dslab training checkpoint (missing {', '.join(missing)}); delete it "
                              f"or write the run elsewhere")
    # Checkpoints written before the tag existed carry none: they are taken as the kind asked for.
    if kind is not None and state.get("format", kind).split("/")[0] != kind.split("/")[0]:
        raise CheckpointError(f"{path} was written by another trainer ({state['format']}, expected {kind})")
    return state


def write_metrics(path: str | os.PathLike | None, rows: Iterable[dict], append: bool = True) -> None:
    """Append ``rows`` to the JSON-lines file at ``path`` (``append=False``: start it over with them); None: no file."""
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file; a half-written line (a run killed while writing it) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
