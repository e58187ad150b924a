"""Course data, generated offline and seeded: toy arithmetic, a mixed text corpus, a character tokenizer, batches.

Nothing is downloaded. The prose comes from the documentation that ships inside Python itself (``pydoc_data``,
the text behind ``help("if")``), read at run time; arithmetic is generated from a seed. ``freeze()`` writes the small
frozen splits kept in datasets/ (``python -m dslab data``), byte-identical on every run.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# ---------------------------------------------------------------------------------------------------------- arithmetic

LEVELS = {
    1: "a+b with single digits",
    2: "a+b or a-b with two-digit numbers",
    3: "a+b, a-b with three-digit numbers, or a*b with a two-digit and a one-digit number",
    4: "a*b with two-digit numbers, or a+b*c / a*b-c with small numbers",
}


@dataclass(frozen=True)
class Problem:
    """One arithmetic question, e.g. question "37+45", answer 82. ``text`` is what a language model reads."""

    question: str
    answer: int
    level: int

    @property
    def prompt(self) -> str:
        return f"{self.question}="

    @property
    def text(self) -> str:
        return f"{self.question}={self.answer}"


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem of ``level`` (see LEVELS) from ``rng``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    r = rng.randint
    if level == 1:
        q = f"{r(0, 9)}+{r(0, 9)}"
    elif level == 2:
        q = f"{r(10, 99)}{rng.choice('+-')}{r(10, 99)}"
    elif level == 3:
        q = f"{r(10, 99)}*{r(2, 9)}" if rng.random() < 1 / 3 else f"{r(100, 999)}{rng.choice('+-')}{r(100, 999)}"
    else:
        q = f"{r(10, 99)}*{r(10, 99)}" if rng.random() < 0.5 else rng.choice(
            [f"{r(1, 20)}+{r(2, 9)}*{r(2, 9)}", f"{r(2, 9)}*{r(2, 9)}-{r(1, 20)}"])
    return Problem(q, _evaluate(q), level)


def _evaluate(question: str) -> int:
    """Integer value of a question made of digits, +, - and * (the usual precedence); no eval()."""
    if not re.fullmatch(r"\d+([+\-*]\d+)*", question):
        raise ValueError(f"not an arithmetic question: {question!r}")
    total, sign = 0, 1
    for term in re.split(r"([+-])", question):
        if term in "+-":
            sign = 1 if term == "+" else -1
            continue
        product = 1
        for factor in term.split("*"):
            product *= int(factor)
        total += sign * product
    return total


def arithmetic_problems(n: int, levels: tuple[int, ...] = (1, 2, 3), seed: int = 0) -> list[Problem]:
    """``n`` problems with levels drawn uniformly from ``levels``; the same seed gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {sorted(LEVELS)}, got {levels!r}")
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(levels)) for _ in range(n)]


# -------------------------------------------------------------------------------------------------------------- corpus

def prose(max_chars: int | None = None) -> str:
    """English prose from Python's bundled documentation topics, printable ASCII only, topics in sorted order."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    text = text.encode("ascii", "ignore").decode()
    text = re.sub(r"[^\n\x20-\x7e]", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text if max_chars is None else text[:max_chars]


def mixed_corpus(n_chars: int = 200_000, arithmetic_share: float = 0.3, seed: int = 0) -> str:
    """About ``n_chars`` characters: paragraphs of prose interleaved with lines of arithmetic ("37+45=82").

    ``arithmetic_share`` is the fraction of characters that are arithmetic. Paragraph order is shuffled by ``seed``.
    """
    if not isinstance(n_chars, int) or n_chars <= 0:
        raise ValueError(f"n_chars must be a positive int, got {n_chars!r}")
    if not 0.0 <= arithmetic_share <= 1.0:
        raise ValueError(f"arithmetic_share must be in [0, 1], got {arithmetic_share!r}")
    rng = random.Random(seed)
    paragraphs = [p for p in prose().split("\n\n") if len(p) > 40]
    rng.shuffle(paragraphs)
    parts, size, p_iter = [], 0, iter(paragraphs * 100)
    while size < n_chars:
        if rng.random() < arithmetic_share:
            chunk = "\n".join(make_problem(rng, rng.choice((1, 2, 3))).text for _ in range(8))
        else:
            chunk = next(p_iter)
        parts.append(chunk)
        size += len(chunk) + 2
    return "\n\n".join(parts)[:n_chars]


# ----------------------------------------------------------------------------------------------------------- tokenizer

class CharTokenizer:
    """Characters to ids: 4 special tokens, newline and printable ASCII (100 ids). Unknown characters map to <unk>."""

    specials = ("<pad>", "<bos>", "<eos>", "<unk>")
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self):
        chars = ["\n"] + [chr(c) for c in range(32, 127)]
        self.itos = list(self.specials) + chars
        self.stoi = {ch: i for i, ch in enumerate(self.itos) if i >= len(self.specials)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = [self.stoi.get(ch, self.unk_id) for ch in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must be ints in [0, {self.vocab_size}), got {bad[:3]}")
        return "".join(self.itos[i] for i in ids if not (skip_special and i < len(self.specials)))


# ------------------------------------------------------------------------------------------------------------- batches

def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D token tensor [N] into a leading train part and a trailing validation part."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a 1-D token tensor [N] -> inputs x [batch_size, block_size] and next-token targets y."""
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D, got shape {tuple(data.shape)}")
    if batch_size <= 0 or block_size <= 0:
        raise ValueError(f"batch_size and block_size must be > 0, got {batch_size}, {block_size}")
    if len(data) <= block_size:
        raise ValueError(f"block_size ({block_size}) must be smaller than the data length ({len(data)})")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]
    y = data[starts[:, None] + offsets + 1]
    return x, y


def corpus_tensors(n_chars: int = 200_000, seed: int = 0, val_fraction: float = 0.1):
    """(tokenizer, train ids, val ids) for the mixed corpus: the one-liner the language-model labs start from."""
    tok = CharTokenizer()
    ids = torch.tensor(tok.encode(mixed_corpus(n_chars, seed=seed)), dtype=torch.long)
    return (tok, *train_val_split(ids, val_fraction))


# -------------------------------------------------------------------------------------------------------------- frozen

FROZEN_SPLITS = {"train": (2000, 1), "val": (200, 2), "test": (200, 3)}  # name: (size, seed)


def freeze(out: Path | str) -> list[Path]:
    """Write datasets/arithmetic/{train,val,test}.jsonl; a question that appears in an earlier split is skipped."""
    folder = Path(out) / "arithmetic"
    folder.mkdir(parents=True, exist_ok=True)
    seen, written = set(), []
    for name, (size, seed) in FROZEN_SPLITS.items():
        rng, rows = random.Random(seed), []
        while len(rows) < size:
            p = make_problem(rng, rng.choice((1, 2, 3, 4)))
            if p.question not in seen:
                seen.add(p.question)
                rows.append(json.dumps(asdict(p), sort_keys=True))
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        written.append(path)
    return written


def load_split(name: str, root: Path | str = "datasets") -> list[Problem]:
    """A frozen split ("train", "val" or "test") as Problems."""
    if name not in FROZEN_SPLITS:
        raise ValueError(f"split must be one of {sorted(FROZEN_SPLITS)}, got {name!r}")
    lines = (Path(root) / "arithmetic" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [Problem(**json.loads(line)) for line in lines]
