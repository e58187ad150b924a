"""Course data: seeded arithmetic, the offline corpus, the tokenizer, batches and the frozen splits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from dslab import data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("level", sorted(data.LEVELS))
def test_problems_are_correct_and_seeded(level):
    rng = random.Random(0)
    for _ in range(200):
        p = data.make_problem(rng, level)
        assert p.answer == eval(p.question) and p.text == f"{p.question}={p.answer}" and p.level == level
    assert data.arithmetic_problems(20, (level,), seed=3) == data.arithmetic_problems(20, (level,), seed=3)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="level"):
        data.make_problem(random.Random(0), 9)
    with pytest.raises(ValueError, match="levels"):
        data.arithmetic_problems(3, levels=(0,))
    with pytest.raises(ValueError, match="n_chars"):
        data.mixed_corpus(0)
    with pytest.raises(ValueError, match="block_size"):
        data.get_batch(torch.arange(5), 2, 5)


def test_corpus_is_offline_mixed_and_deterministic():
    text = data.mixed_corpus(20_000, seed=1)
    assert len(text) == 20_000 and text == data.mixed_corpus(20_000, seed=1)
    assert any(line.count("=") == 1 and line.split("=")[1].lstrip("-").isdigit() for line in text.splitlines())
    assert " the " in text and set(text) <= set(data.CharTokenizer().itos)


def test_tokenizer_round_trip_and_specials():
    tok = data.CharTokenizer()
    ids = tok.encode("12+3=15\nHi!", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == "12+3=15\nHi!"
    assert tok.encode("é") == [tok.unk_id] and tok.vocab_size == 100
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([1000])


def test_batches_are_shifted_windows():
    ids = torch.arange(100)
    x, y = data.get_batch(ids, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y, x + 1)


def test_frozen_splits_regenerate_byte_identically(tmp_path):
    data.freeze(tmp_path)
    for name in data.FROZEN_SPLITS:
        fresh = (tmp_path / "arithmetic" / f"{name}.jsonl").read_bytes()
        assert fresh == (ROOT / "datasets" / "arithmetic" / f"{name}.jsonl").read_bytes(), name
    splits = {n: {p.question for p in data.load_split(n, ROOT / "datasets")} for n in data.FROZEN_SPLITS}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
