"""Course data, generated offline and seeded: toy arithmetic, a mixed text corpus, a character tokenizer, batches.

Nothing is downloaded. The prose comes from the documentation that ships inside Python itself (``pydoc_data``,
the text behind ``help("if")``), read at run time; arithmetic is generated from a seed. ``freeze()`` writes the small
frozen splits kept in datasets/ (``python -m dslab data``), byte-identical on every run.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dslab import validate

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


# ------------------------------------------------------------------------------------------- RL task (lab 05, GRPO)
# a+b and a-b up to 3 digits (training, test) or 4 (the harder split). The working sits in <think></think>, the
# result in <answer></answer> (R1 Table 1's template, shortened), column by column in "digits" (34+27:4+7+1=12,23) or
# "letters" (a=0 ... j=9: de+ch:e+h+b=bc,cd), the toy stand-in for the two languages R1-Zero mixed.

NOTATIONS = ("digits", "letters")
LETTERS = "abcdefghij"  # the "letters" script: digit d is written LETTERS[d]
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
RL_TEMPLATE = "User: {question}=? Use <think> and <answer>.\nAssistant: "


@dataclass(frozen=True)
class Task:
    """One RL problem, e.g. question "345-278", answer 67; ``digits`` is the length of its longer operand."""

    question: str
    answer: int
    digits: int

    @property
    def prompt(self) -> str:
        """The R1-Zero-style prompt the policy continues (``RL_TEMPLATE``)."""
        return RL_TEMPLATE.format(question=self.question)


def make_task(rng: random.Random, max_digits: int = 3, min_digits: int = 1) -> Task:
    """Draw a+b or a-b with a, b uniform in [0, 10^max_digits), redrawn until the longer one has >= min_digits."""
    if not isinstance(max_digits, int) or not 1 <= max_digits <= 6:
        raise ValueError(f"max_digits must be an int in [1, 6], got {max_digits!r}")
    if not isinstance(min_digits, int) or not 1 <= min_digits <= max_digits:
        raise ValueError(f"min_digits must be an int in [1, max_digits={max_digits}], got {min_digits!r}")
    while True:
        a, b = rng.randrange(10**max_digits), rng.randrange(10**max_digits)
        digits = max(len(str(a)), len(str(b)))
        if digits >= min_digits:
            break
    op = rng.choice("+-")
    return Task(f"{a}{op}{b}", a + b if op == "+" else a - b, digits)


def tasks(n: int, max_digits: int = 3, min_digits: int = 1, seed: int = 0,
          exclude: set[str] | frozenset[str] = frozenset()) -> list[Task]:
    """``n`` distinct tasks (``make_task``), none with a question in ``exclude``; the same seed gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        t = make_task(rng, max_digits, min_digits)
        if t.question not in seen:
            seen.add(t.question)
            out.append(t)
    return out


def _split_question(question: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"(\d+)([+-])(\d+)", question)
    if not m:
        raise ValueError(f"question must look like '345+278' or '345-278', got {question!r}")
    return int(m[1]), m[2], int(m[3])


def working_steps(question: str) -> list[str]:
    """The working of ``question`` in digits, one word per column from the units: what is left of the zero-padded
    operands, that column's sum with its carry, the running result (``345+278:5+8=13,3 34+27:4+7+1=12,23
    3+2:3+2+1=6,623``). Subtraction borrows as ``15-8=7`` and pays back ``-1`` next column; when a < b the working
    starts with ``a<b`` and the answer is minus its result. Every digit a step needs sits a fixed, short distance
    back, so a tiny model learns the working as a local pattern instead of counting columns."""
    a, op, b = _split_question(question)
    steps = []
    if op == "-" and a < b:
        steps.append(f"{a}<{b}")
        a, b = b, a
    n = max(len(str(a)), len(str(b)))
    left, right = str(a).zfill(n), str(b).zfill(n)
    carry, result = 0, ""
    for k in range(n, 0, -1):
        x, y = int(left[k - 1]), int(right[k - 1])
        if op == "+":
            s = x + y + carry
            core, digit, carry = f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}", s % 10, s // 10
        else:
            d = x - y - carry
            core = f"{'1' if d < 0 else ''}{x}-{y}" + (f"-{carry}" if carry else "") + f"={d % 10}"
            digit, carry = d % 10, int(d < 0)
        result = f"{digit}{result}"
        steps.append(f"{left[:k]}{op}{right[:k]}:{core},{result}")
    if op == "+" and carry:  # the last column's carry is the sum's leading digit
        steps[-1] = steps[-1][: steps[-1].rindex(",") + 1] + f"{carry}{result}"
    return steps


def to_letters(text: str) -> str:
    """Write every digit of ``text`` in the letters script (0 -> a, ..., 9 -> j); other characters stay."""
    return text.translate(str.maketrans("0123456789", LETTERS))


def working(question: str, notation: str | list[str] = "digits") -> str:
    """The working as one line of space-separated steps, in one notation or in one notation per step (a list)."""
    steps = working_steps(question)
    per_step = [notation] * len(steps) if isinstance(notation, str) else list(notation)
    if len(per_step) != len(steps) or any(n not in NOTATIONS for n in per_step):
        raise ValueError(f"notation must be one of {NOTATIONS} or a list of them with one entry per step "
                         f"({len(steps)} for {question!r}), got {notation!r}")
    return " ".join(s if n == "digits" else to_letters(s) for s, n in zip(steps, per_step))


def completion(task: Task, notation: str | list[str] | None = "digits", tagged: bool = True) -> str:
    """What a well-behaved policy writes after the prompt: ``<think>working</think> <answer>result</answer>``.

    notation None leaves the think block empty (answering without working); tagged False writes the result after
    the think block without answer tags (a format the reward does not accept).
    """
    think = "" if notation is None else working(task.question, notation)
    result = f"{ANSWER_OPEN}{task.answer}{ANSWER_CLOSE}" if tagged else f"{task.answer}"
    return f"{THINK_OPEN}{think}{THINK_CLOSE} {result}"


def cold_start_pairs(task_list: list[Task], notation: str = "digits") -> list[tuple[str, str]]:
    """(prompt, completion) pairs in the clean, readable format: full working in one notation, tagged answer."""
    if notation not in NOTATIONS:
        raise ValueError(f"notation must be one of {NOTATIONS}, got {notation!r}")
    return [(t.prompt, completion(t, notation)) for t in task_list]


# What a base model has seen before RL: chats in the template, most often working only a subtraction that comes out
# negative (people write out the awkward case, skip the rest), else working in digits, letters, both or none.
PRETRAIN_MIX = {"bare": 0.1, "digits": 0.2, "letters": 0.1, "mixed": 0.1, "no_working": 0.1, "negatives_worked": 0.4}
UNTAGGED_SHARE = 0.15


def arithmetic_documents(n_chars: int, seed: int = 0, max_digits: int = 3,
                         exclude: set[str] | frozenset[str] = frozenset(),
                         mix: dict[str, float] | None = None) -> list[str]:
    """About ``n_chars`` characters of templated arithmetic, kinds drawn from ``mix`` (default ``PRETRAIN_MIX``):
    bare equations ("37+45=82") and chats in R1-Zero's template whose completion keeps its working in <think></think>
    (digits, letters, switching notation step by step, none, or digits for negative results only) and its result in
    <answer></answer> (untagged in UNTAGGED_SHARE). Operands have up to d digits, d in 1..max_digits drawn ∝ d² (most
    as long as the test split's); questions in ``exclude`` never appear."""
    if not isinstance(n_chars, int) or n_chars <= 0:
        raise ValueError(f"n_chars must be a positive int, got {n_chars!r}")
    mix = PRETRAIN_MIX if mix is None else mix
    if not mix or set(mix) - set(PRETRAIN_MIX):
        raise ValueError(f"mix must weigh kinds among {', '.join(PRETRAIN_MIX)}; got {mix!r}")
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    lengths = list(range(1, max_digits + 1))
    docs, size = [], 0
    while size < n_chars:
        kind = rng.choices(kinds, weights)[0]
        task = make_task(rng, rng.choices(lengths, [d * d for d in lengths])[0])
        if task.question in exclude:
            continue
        if kind == "bare":
            doc = f"{task.question}={task.answer}"
        else:
            n_steps = len(working_steps(task.question))
            notation = {"digits": "digits", "letters": "letters", "no_working": None,
                        "negatives_worked": "digits" if task.answer < 0 else None,
                        "mixed": [rng.choice(NOTATIONS) for _ in range(n_steps)]}[kind]
            doc = task.prompt + completion(task, notation, tagged=rng.random() >= UNTAGGED_SHARE)
        docs.append(doc)
        size += len(doc) + 2
    return docs


def pretraining_text(n_chars: int = 400_000, seed: int = 0, max_digits: int = 3,
                     exclude: set[str] | frozenset[str] = frozenset(), mix: dict[str, float] | None = None) -> str:
    """``n_chars`` characters of ``arithmetic_documents`` between blank lines (lab 05's base model's text)."""
    return "\n\n".join(arithmetic_documents(n_chars, seed, max_digits, exclude, mix))[:n_chars]


VAL_PROSE_SHARE = 0.1  # of the prose paragraphs, set aside for the validation part before any repeats


def pretraining_corpus(n_chars: int, prose_share: float = 0.3, seed: int = 0,
                       exclude: frozenset[str] | None = None, mix: dict[str, float] | None = None,
                       val_fraction: float = 0.0) -> str:
    """About ``n_chars`` characters of English prose (``prose``, ``prose_share`` of them) and templated arithmetic
    (``arithmetic_documents`` in ``mix``, never a question in ``exclude``, default ``held_out_questions()``),
    shuffled together by document. With ``val_fraction`` > 0 the last part (what ``train_val_split`` cuts off) uses
    only the VAL_PROSE_SHARE of paragraphs set aside before anything repeats: a large run cycles the ~450k-character
    source many times, and would otherwise validate on text it trained on."""
    validate.integer("n_chars", n_chars, 1)
    validate.real("prose_share", prose_share, 0, 1)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    exclude = held_out_questions() if exclude is None else exclude
    rng = random.Random(seed)
    paragraphs = list(dict.fromkeys(p for p in prose().split("\n\n") if len(p) > 40))  # the source repeats some
    rng.shuffle(paragraphs)
    if val_fraction == 0.0:
        return _documents(n_chars, prose_share, paragraphs, rng, seed, exclude, mix)
    n_train = int(n_chars * (1 - val_fraction))  # train_val_split's cut
    held = max(1, int(len(paragraphs) * VAL_PROSE_SHARE))
    train = _documents(n_train, prose_share, paragraphs[held:], rng, seed, exclude, mix)
    val = _documents(n_chars - n_train, prose_share, paragraphs[:held], rng, seed + 1, exclude, mix)
    return train + val


def _documents(n_chars: int, prose_share: float, paragraphs: list[str], rng: random.Random, seed: int,
               exclude: frozenset[str], mix: dict[str, float] | None) -> str:
    """Exactly ``n_chars`` characters of arithmetic documents and ``paragraphs`` (cycled), shuffled together."""
    arith_chars = int(n_chars * (1 - prose_share))
    docs = []
    if arith_chars:  # cut at arith_chars, then split again: the last document may end mid-way
        docs = "\n\n".join(arithmetic_documents(arith_chars, seed, exclude=exclude, mix=mix))[:arith_chars]
        docs = docs.split("\n\n")
    size, i = 0, 0
    while size < n_chars - arith_chars:
        docs.append(paragraphs[i % len(paragraphs)])
        size, i = size + len(docs[-1]) + 2, i + 1
    rng.shuffle(docs)
    return "\n\n".join(docs)[:n_chars]


def encode_text(text: str) -> torch.Tensor:
    """``CharTokenizer().encode(text)`` as a LongTensor, through a byte table (fast for tens of millions of chars)."""
    tok = CharTokenizer()
    table = np.array([tok.stoi.get(chr(c), tok.unk_id) for c in range(256)], dtype=np.int64)
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    if any(ord(ch) > 255 for ch in text):  # rare: characters beyond latin-1 are <unk>, as the tokenizer says
        return torch.tensor(tok.encode(text), dtype=torch.long)
    return torch.from_numpy(table[raw].copy())


FROZEN_TASKS = {"train": (5000, 3, 1, 11), "val": (200, 3, 1, 12), "test": (500, 3, 1, 13),
                "hard": (500, 4, 4, 14)}  # name: (size, max_digits, min_digits, seed)


@functools.cache
def _frozen_tasks() -> dict[str, tuple[Task, ...]]:
    seen, out = set(), {}
    for name, (size, max_digits, min_digits, seed) in FROZEN_TASKS.items():
        out[name] = tuple(tasks(size, max_digits, min_digits, seed, exclude=frozenset(seen)))
        seen.update(t.question for t in out[name])
    return out


def rl_splits() -> dict[str, list[Task]]:
    """The frozen RL splits ("train", "val", "test", "hard") generated in memory, exactly what ``freeze_tasks``
    writes (no file needed); no question appears in two splits."""
    return {name: list(rows) for name, rows in _frozen_tasks().items()}


def held_out_questions() -> frozenset[str]:
    """Questions of the val, test and hard RL splits: no pretraining or fine-tuning text contains them."""
    return frozenset(t.question for name in ("val", "test", "hard") for t in _frozen_tasks()[name])


def freeze_tasks(out: Path | str) -> list[Path]:
    """Write datasets/rl_arithmetic/{train,val,test,hard}.jsonl (``rl_splits``)."""
    folder = Path(out) / "rl_arithmetic"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in _frozen_tasks().items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(asdict(t), sort_keys=True) + "\n" for t in rows), encoding="utf-8")
        written.append(path)
    return written


def datasets_dir(name: str) -> Path:
    """datasets/NAME of the course checkout this package runs from (what the labs ship: splits, runs, checkpoints)."""
    root = Path(__file__).resolve().parents[1] / "datasets"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the labs read what they ship from the course checkout's datasets/ "
                                "folder (install dslab with `pip install -e .` from the checkout)")
    return root / name


def load_tasks(name: str, root: Path | str = "datasets") -> list[Task]:
    """A frozen RL split ("train", "val", "test": up to 3 digits; "hard": 4 digits) as Tasks."""
    if name not in FROZEN_TASKS:
        raise ValueError(f"split must be one of {sorted(FROZEN_TASKS)}, got {name!r}")
    lines = (Path(root) / "rl_arithmetic" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [Task(**json.loads(line)) for line in lines]
