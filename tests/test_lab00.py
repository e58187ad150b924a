"""Lab 00 (by the numbers): the exercise registry in notebook order, every known wrong answer fails with its own hint,
answers that delegate to the reference are seen, the notebook's draft is the registry's, the FLOP-counter harness
agrees with the accounting, the config explorer reacts (its MHA bar follows the chosen precision), the diagram is
drawn from the counts, and the solution builds into a lab with one stub per exercise."""

import random
from pathlib import Path

import nbformat
import pytest

from dslab import accounting as acc
from dslab import configs
from dslab.course.build import build_lab
from dslab.labs import lab00_by_the_numbers
from dslab.labs.lab00_by_the_numbers import exercises as lab00
from dslab.labs.lab00_by_the_numbers import experiments

EXERCISES = {ex.id: ex for ex in lab00.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_by_the_numbers.ipynb"
V3 = configs.load("deepseek-v3-671b")


# ------------------------------------------------------------------------------------------------------ registry
def test_exercise_registry_in_notebook_order():
    assert lab00_by_the_numbers.NOTEBOOK == "00_by_the_numbers"
    assert [(e.id, e.number, e.target, e.kind, e.points) for e in lab00.EXERCISES] == [
        ("00.mla_params", "0.1", "mla_params", "implement", 2),
        ("00.moe_activated", "0.2", "moe_activated_params", "implement", 2),
        ("00.total_params", "0.3", "total_params", "debug", 2),
        ("00.forward_flops", "0.4", "forward_flops", "implement", 2),
        ("00.crossover", "0.5", "attention_crossover", "predict", 2)]


# ------------------------------------------------------------------------------------------- wrong answers fail
def test_hidden_cases_cover_dense_tied_and_mtp_models():
    cases = EXERCISES["00.total_params"].hidden_cases(random.Random(0))
    kinds = [(c.args[0].is_moe, c.args[0].tie_embeddings, c.args[0].n_mtp) for c in cases]
    assert any(not moe for moe, _, _ in kinds) and any(tied for _, tied, _ in kinds)
    assert any(mtp for _, _, mtp in kinds) and any(moe and not tied for moe, tied, _ in kinds)
    flops = EXERCISES["00.forward_flops"].hidden_cases(random.Random(0))
    assert {c.args[0].attn for c in flops} == {"mla", "gqa", "mqa", "mha"}


def test_the_labs_buggy_version_is_the_registrys_draft():
    """The lab shows the first attempt after the raise; deleting the raise must give the registry's draft."""
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "00_by_the_numbers")
    cell = next(c.source for c in lab.cells if c.cell_type == "code" and "def total_params(" in c.source)
    namespace = {"acc": acc, "configs": configs}
    exec("\n".join(line for line in cell.split("\n") if "raise NotImplementedError" not in line), namespace)
    for args in (V3, configs.load("deepseek-v2-236b"), configs.load("tiny-v3")):
        assert namespace["total_params"](args) == lab00.total_params_draft(args) != acc.total_params(args)


# ------------------------------------------------------------------------------------------------- experiments
def test_flop_counter_sees_the_formula_minus_the_norms():
    args = configs.load("tiny-gqa")
    measured = experiments.decode_flops(args, [64, 512])
    norms = acc.param_breakdown(args)["norms"]
    for ctx, flops in measured.items():
        assert flops == acc.forward_flops_per_token(args, ctx) - 2 * norms
    crossing = experiments.measured_crossover(measured)
    assert crossing == pytest.approx(lab00.crossover_reference(args), rel=0.01)
    mla = configs.load("tiny-mla")  # the model decodes absorbed
    got = experiments.decode_flops(mla, [128])[128]
    assert got == acc.forward_flops_per_token(mla, 128, "absorb") - 2 * (acc.param_breakdown(mla)["norms"] + 4 * 64)


def test_breakdown_figure_labels_components_in_plain_words():
    fig = experiments.breakdown_figure(acc.param_breakdown(V3), acc.param_breakdown(V3, activated=True), "V3")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "routed experts" in labels and not any("_" in label for label in labels)
    assert any("97.4%" in t.get_text() for t in fig.axes[0].texts)


def test_diagram_is_drawn_from_the_counts():
    from dslab.labs.lab00_by_the_numbers.diagrams import DIAGRAMS

    fig = DIAGRAMS["v3_parameters.png"]()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"{acc.total_params(V3) / 1e9:,.2f}B" in text and f"{acc.mtp_params(V3) / 1e9:,.2f}B" in text


# ------------------------------------------------------------------------------------------------------- widget
def test_config_explorer_defaults_are_deepseek_v3():
    from dslab.labs.lab00_by_the_numbers.widgets import config_explorer

    numbers, fig = config_explorer()
    assert numbers["total params (B)"] == 671.03 and numbers["activated params (B)"] == 37.55
    assert numbers["MLA KV bytes/token"] == 70_272 and numbers["MHA KV bytes/token (same heads)"] == 2 * 128**2 * 61 * 2
    assert len(fig.axes) == 2


def test_config_explorer_callback_updates_numbers_and_both_cache_bars(monkeypatch):
    monkeypatch.delenv("DSLAB_HEADLESS", raising=False)
    from dslab.labs.lab00_by_the_numbers.widgets import config_explorer_widget

    w = config_explorer_widget()
    w.controls["n_routed_experts"].value = 64
    assert w.numbers["total params (B)"] < 200 and w.numbers["activated params (B)"] == 37.47
    w.controls["kv_bits"].value = 8
    assert w.numbers["MLA KV bytes/token"] == 35_136
    assert w.numbers["MHA KV bytes/token (same heads)"] == 2 * 128**2 * 61  # the MHA bar follows the precision too
    assert "35,136" in w.summary.value


def test_config_explorer_draws_what_it_reports():
    from dslab.labs.lab00_by_the_numbers.widgets import config_explorer

    numbers, fig = config_explorer(kv_bits=4)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == pytest.approx([numbers["MLA KV bytes/token"] / 1024,
                                     numbers["MHA KV bytes/token (same heads)"] / 1024])
    assert "4-bit" in fig.axes[1].get_title()


# ----------------------------------------------------------------------------------------------------- notebook
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "00_by_the_numbers")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab00.EXERCISES:
        assert source.count(f"def {ex.target}(") == 1
        assert source.count(ex.stub_message) == 1 and "### BEGIN SOLUTION" not in source
        assert f'dslab.check("{ex.id}", {ex.target})' in source
    assert "moe_layer = (acc.attention_params(args)" in source  # the bug hunt needs the first attempt in view
    assert "**Time:** <!-- dslab:time -->" in lab.cells[0].source
