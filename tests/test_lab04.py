"""Lab 04 (MTP): the exercise registry in notebook order, every known wrong answer fails with its own hint, answers
that delegate to the reference are seen, the lab's buggy version is the registry's draft, the experiment harnesses
(prompts, decoding summaries, depth accuracy), the speculation explorer reacts to its controls, the diagrams are drawn
(the one that states 4.3's and 4.4's rules is shown after them), and the solution builds into a lab with one stub per
exercise."""

import random
import re
from pathlib import Path

import nbformat
import pytest
import torch

from dslab import mtp
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.data import mixed_corpus
from dslab.labs import lab04_mtp
from dslab.labs.lab04_mtp import exercises as lab04
from dslab.labs.lab04_mtp import experiments
from dslab.model import Transformer

EXERCISES = {ex.id: ex for ex in lab04.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "04_mtp.ipynb"


# ------------------------------------------------------------------------------------------------------ registry
def test_exercise_registry_in_notebook_order():
    assert lab04_mtp.NOTEBOOK == "04_mtp"
    assert [(e.id, e.number, e.target, e.kind, e.points) for e in lab04.EXERCISES] == [
        ("04.shift", "4.1", "mtp_shift", "implement", 2),
        ("04.loss", "4.2", "mtp_loss", "implement", 2),
        ("04.greedy_verify", "4.3", "greedy_verify", "debug", 2),
        ("04.accept", "4.4", "accept_and_residual", "implement", 3),
        ("04.speedup", "4.5", "expected_speedup", "predict", 2)]


# ------------------------------------------------------------------------------------------- wrong answers fail
def _mismatch_then_match(draft, best):
    wrong = [i for i, (d, b) in enumerate(zip(draft, best)) if d != b]
    return bool(wrong) and any(d == b for d, b in zip(draft[wrong[0] + 1:], best[wrong[0] + 1:]))


def test_hidden_cases_cover_the_corners():
    for seed in range(4):
        rng = random.Random(seed)
        loss = EXERCISES["04.loss"].hidden_cases(rng)
        assert {len(c.args[0]) for c in loss} == {1, 2, 3} and max(c.args[1].shape[1] for c in loss) <= 9
        verify = EXERCISES["04.greedy_verify"].hidden_cases(rng)
        assert any(not c.args[0] for c in verify)  # no draft
        assert any(_mismatch_then_match(c.args[0], c.args[1].argmax(-1).tolist()) for c in verify)
        accept = EXERCISES["04.accept"].hidden_cases(rng)
        ratios = [float(c.args[0][c.args[2]] / c.args[1][c.args[2]]) for c in accept]
        assert min(ratios) < 1 < max(ratios)  # both sides of the min(1, p/q)
        speed = EXERCISES["04.speedup"].hidden_cases(rng)
        assert {c.args[0] for c in speed} >= {0.0, 1.0} and max(c.args[1] for c in speed) >= 2


def test_compare_tokens_accepts_lists_and_tensors_only_of_ints():
    ex = EXERCISES["04.greedy_verify"]
    assert ex.compare([1, 2], torch.tensor([1, 2])) is None and ex.compare([1, 2], (1, 2)) is None
    assert ex.compare([1, 2], [1.0, 2.0]) is not None and ex.compare([1], 1) is not None


def test_the_labs_buggy_version_is_the_registrys_draft():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "04_mtp")
    cell = next(c.source for c in lab.cells if c.cell_type == "code" and "def greedy_verify(" in c.source)
    namespace = {"torch": torch}
    exec("\n".join(line for line in cell.split("\n") if "raise NotImplementedError" not in line), namespace)
    gen = torch.Generator().manual_seed(0)
    for case in EXERCISES["04.greedy_verify"].hidden_cases(random.Random(1)) + [
            lab04.Case(([3, 1, 2], torch.randn(4, 5, generator=gen)), "")]:
        assert namespace["greedy_verify"](*case.args) == lab04.greedy_verify_draft(*case.args)
    assert run_cases(EXERCISES["04.greedy_verify"], lab04.greedy_verify_draft,
                     EXERCISES["04.greedy_verify"].public_cases())[0] == "failed"


# ------------------------------------------------------------------------------------------------- experiments
def test_prompts_are_of_their_kind_and_spread():
    text = mixed_corpus(30_000, seed=0)
    digits = experiments.prompts(text, "digits", 4)
    words = experiments.prompts(text, "words", 4)
    assert all(len(p) == 32 and re.fullmatch(r"[\d+\-*=\n]+", p) and p.endswith("\n") for p in digits)
    assert all(len(p) == 32 and not re.search(r"\d", p) and p.endswith(" ") for p in words)
    assert len(set(digits)) == len(set(words)) == 4
    with pytest.raises(ValueError, match="kind"):
        experiments.prompts(text, "emoji", 1)
    with pytest.raises(ValueError, match="prompts"):
        experiments.prompts(text[:200], "digits", 50)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    args = experiments.lab_args(2, 20).replace(dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2, n_heads=2,
                                               kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                               max_seq_len=64, original_seq_len=64)
    return {(0.3, 2): Transformer(args, max_batch_size=1).eval(),
            (0.3, 1): Transformer(args.replace(n_mtp=1), max_batch_size=1).eval()}


def test_decode_summarizes_acceptance_and_forwards(tiny_models):
    model = tiny_models[(0.3, 2)]
    ids = {"words": [[4, 5, 6, 7]], "digits": [[8, 9, 10]]}
    itos = [chr(ord("a") + i) if i % 3 else str(i % 10) for i in range(20)]
    out = experiments.decode(model, ids, 12, 0.0, n_draft=2, seed=0, itos=itos)
    direct = [mtp.speculative_generate(model, p, 12, n_draft=2) for p in (ids["words"][0], ids["digits"][0])]
    assert out["all"]["drafts"] == sum(r.drafted[0] for r in direct)
    assert out["all"]["tokens_per_forward"] == pytest.approx(24 / sum(r.forwards for r in direct))
    assert sum(n for _, n in out["by_class"].values()) == out["all"]["drafts"]
    assert set(out["by_class"]) <= {"digit", "letter", "other"} and len(out["all"]["by_depth"]) == 2


def test_sweep_covers_every_model_and_temperature(tiny_models):
    from dslab.labs.lab04_mtp.widgets import is_complete

    table = experiments.sweep(tiny_models, {"words": [[1, 2, 3]], "digits": [[4, 5]]}, [0.0, 1.0], 6)
    assert set(table) == {(0.3, 2, 0.0), (0.3, 2, 1.0), (0.3, 1, 0.0), (0.3, 1, 1.0)} and is_complete(table)


def test_depth_accuracy_reports_each_depth(tiny_models):
    val = torch.randint(0, 20, (400,), generator=torch.Generator().manual_seed(0))
    acc = experiments.depth_accuracy(tiny_models[(0.3, 2)], val, batches=1)
    assert set(acc) == {"main", "depth 1", "depth 2", "depth 1 = main's next argmax"}
    assert all(0 <= v <= 1 for v in acc.values()) and not tiny_models[(0.3, 2)].training
    itos = [str(i % 10) if i < 10 else chr(ord("a") + i - 10) for i in range(20)]
    by_class = experiments.depth_accuracy(tiny_models[(0.3, 2)], val, batches=1, itos=itos)
    assert {"agree, digit", "agree, letter", "agree, other"} <= set(by_class)
    assert min(by_class["agree, digit"], by_class["agree, letter"]) <= by_class["depth 1 = main's next argmax"] <= \
        max(by_class["agree, digit"], by_class["agree, letter"])  # an average of the two (no "other" here)


def test_char_class():
    assert [experiments.char_class(c) for c in "7a \n="] == ["digit", "letter", "other", "other", "other"]


# ------------------------------------------------------------------------------------------------------- widget
def _table():
    table = {}
    for lam in (0.1, 0.3):
        for depth in (1, 2):
            for t in (0.0, 1.0):
                a = 0.9 - t * 0.3 - (lam == 0.1) * 0.1
                row = {"acceptance": a, "by_depth": [a, a - 0.1][:depth], "drafts": 10,
                       "tokens_per_forward": 1 + a + (depth - 1) * a * (a - 0.1)}
                table[(lam, depth, t)] = {"all": row, "words": dict(row, acceptance=a + 0.05),
                                          "digits": dict(row, acceptance=a - 0.2)}
    return table


COSTS = {"main_2": 1.0, "main_3": 1.2, "mtp": 0.3}
LOSSES = {(0.0, 0): 2.0, (0.1, 1): 2.01, (0.1, 2): 2.02, (0.3, 1): 2.03, (0.3, 2): 2.04}


def test_speculation_numbers_follow_the_table():
    from dslab.labs.lab04_mtp.widgets import predicted_speedup, speculation

    numbers, fig = speculation(_table(), COSTS, LOSSES)
    assert numbers["2nd-token acceptance"] == 0.9 and numbers["tokens per main-model forward"] == 1.9
    assert numbers["predicted tokens/s speedup (isolated costs, no loop overhead)"] == round(1.9 / 1.3, 2)
    assert "3rd-token acceptance (after an accepted 2nd)" not in numbers and len(fig.axes) == 2
    numbers, _ = speculation(_table(), COSTS, LOSSES, lam=0.1, depth=2, temperature=1.0)
    assert numbers["3rd-token acceptance (after an accepted 2nd)"] == 0.4
    assert numbers["main validation loss (no MTP)"] == "2.020 (2.000)"
    assert predicted_speedup(2.0, 2, COSTS) == pytest.approx(2.0 / (1.2 + 0.6))


def test_speculation_explorer_reacts_to_its_controls():
    from dslab.labs.lab04_mtp.widgets import speculation, speculation_controls
    from dslab.widgets import Explorer

    table = _table()
    explorer = Explorer(lambda **v: speculation(table, COSTS, LOSSES, **v), speculation_controls(table))
    assert explorer.numbers == speculation(table, COSTS, LOSSES)[0]
    explorer.controls["temperature"].value = 1.0
    assert explorer.numbers["2nd-token acceptance"] == 0.6
    explorer.controls["lam"].value = 0.1
    explorer.controls["depth"].value = 2
    assert explorer.numbers["2nd-token acceptance"] == 0.5
    assert "3rd-token acceptance (after an accepted 2nd)" in explorer.numbers


def test_speculation_widget_is_static_when_headless(monkeypatch):
    from dslab.labs.lab04_mtp.widgets import speculation_widget

    monkeypatch.setenv("DSLAB_HEADLESS", "1")
    assert speculation_widget(_table(), COSTS, LOSSES) is None


# ------------------------------------------------------------------------------------------------------ diagrams
def test_diagrams_name_what_each_depth_reads_and_predicts():
    from dslab.labs.lab04_mtp.diagrams import DIAGRAMS

    fig = DIAGRAMS["mtp_shift.png"]()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "Emb($t_{3}$)\n→ $t_{4}$" in text and "$h^0_5$ → $t_{6}$" in text and "MTP module 2" in text
    assert text.count("in the window") == 3  # depth 1 loses one position, depth 2 two
    assert "divides by" not in text  # how eq. 24 normalizes is Exercise 4.2's to find
    step = " ".join(t.get_text() for t in DIAGRAMS["speculative_step.png"]().axes[0].texts)
    assert "min(1, p(x)/q(x))" in step and "bonus" in step


# ----------------------------------------------------------------------------------------------------- notebook
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "04_mtp")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab04.EXERCISES:
        assert source.count(f"def {ex.target}(") == 1
        assert source.count(ex.stub_message) == 1 and "### BEGIN SOLUTION" not in source
        assert f'dslab.check("{ex.id}", {ex.target})' in source
    assert "return [d for d, b in zip(draft, best) if d == b]" in source  # the bug hunt shows the first attempt
    tags = [t for c in lab.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags
    assert "**Time:** <!-- dslab:time -->" in lab.cells[0].source
    attachments = {n for c in lab.cells if c.cell_type == "markdown" for n in c.get("attachments", {})}
    assert attachments == {"mtp_shift.png", "speculative_step.png"}


def test_the_picture_of_both_verification_rules_comes_after_the_exercises_that_ask_for_them():
    """speculative_step.png draws the greedy step's two outcomes and the sampled acceptance rule, the answers of 4.3
    and 4.4; the test that no statement gives its answer away reads text, not pictures, so this one checks where the
    picture is shown."""
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "04_mtp")
    first = lambda text: next(i for i, c in enumerate(lab.cells) if text in c.source)  # noqa: E731
    assert first("attachment:speculative_step.png") > first('dslab.check("04.accept"') > first("### Exercise 4.3")
