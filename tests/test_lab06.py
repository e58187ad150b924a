"""Lab 06 (capstone): the exercise registry in notebook order, every known wrong answer fails with its own hint,
delegation to a reference is seen, hidden cases vary with the seed and cover the corners, the references agree with
the real modules (a built model's parameter count, a block, the trainer's step), the lab's buggy version is the
registry's draft, the experiment helpers, the explorer reacts to its controls, the diagram is drawn, and the solution
builds into a lab with one stub per exercise."""

from __future__ import annotations

import random
from pathlib import Path

import nbformat
import pytest
import torch

from dslab import capstone, train
from dslab.course import answers
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.labs import lab06_capstone
from dslab.labs.lab06_capstone import exercises as lab06
from dslab.labs.lab06_capstone import experiments
from dslab.model import Transformer

EXERCISES = {ex.id: ex for ex in lab06.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "06_capstone.ipynb"


# ------------------------------------------------------------------------------------------------------ registry
def test_exercise_registry_in_notebook_order():
    assert lab06_capstone.NOTEBOOK == "06_capstone" and lab06_capstone.TEACHES and lab06_capstone.REPRODUCES
    assert [(e.id, e.number, e.target, e.kind) for e in lab06.EXERCISES] == [
        ("06.block", "6.1", "block_forward", "implement"),
        ("06.built_params", "6.2", "built_params", "predict"),
        ("06.training_step", "6.3", "training_step", "implement"),
        ("06.global_bias", "6.4", "global_bias_update", "debug"),
        ("06.mfu", "6.5", "mfu", "implement")]


def test_hidden_cases_vary_with_the_seed_and_keep_their_labels():
    for ex in lab06.EXERCISES:
        a, b = ex.hidden_cases(random.Random(1)), ex.hidden_cases(random.Random(2))
        assert [c.label for c in a] == [c.label for c in b]
        assert answers.to_json([c.args for c in a]) != answers.to_json([c.args for c in b])


def test_public_checks_are_quick_and_their_cases_leave_the_global_rng_alone():
    import time

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cases = {ex.id: ex.public_cases() for ex in lab06.EXERCISES}
    assert torch.equal(torch.rand(3), expected)  # drawing the cases does not move the learner's RNG
    start = time.process_time()
    for ex in lab06.EXERCISES:
        run_cases(ex, ex.reference, cases[ex.id])
    assert time.process_time() - start < 6.0  # five exercises, each well under the 2 s a check may take


def test_hidden_cases_cover_the_corners():
    for seed in range(3):
        rng = random.Random(seed)
        blocks = EXERCISES["06.block"].hidden_cases(rng)
        kinds = {c.args[1] >= c.args[0].n_dense_layers for c in blocks}
        assert kinds == {True, False} or all(c.args[0].n_dense_layers == 0 for c in blocks[:1])
        assert any(c.args[1] == c.args[0].n_layers for c in blocks)  # the MTP block's layer id
        counts = [c.args[0] for c in EXERCISES["06.built_params"].hidden_cases(rng)]
        assert any(a.tie_embeddings for a in counts) and any(a.n_mtp == 2 for a in counts)
        assert any(not a.is_moe for a in counts) and any(a.name == "deepseek-v3-671b" for a in counts)
        steps = EXERCISES["06.training_step"].hidden_cases(rng)
        assert {c.args[0].n_mtp for c in steps} == {1, 2}
        loads = EXERCISES["06.global_bias"].hidden_cases(rng)
        assert any(lab06.global_bias_update_draft(*c.args).ne(experiments.global_bias_update_reference(*c.args))
                   .any() for c in loads)


# ------------------------------------------------------------------------------------- references vs modules
def test_built_params_reference_is_what_the_model_reports():
    for case in lab06._count_hidden(random.Random(0))[1:] + lab06._count_public()[::2]:
        args = case.args[0]
        assert experiments.built_params_reference(args) == Transformer(args).num_params(), case.label


def test_block_reference_is_the_models_own_block():
    model = experiments.fresh_model(lab06.small_args(), seed=0)
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        h = model.embed(x)
        for i, layer in enumerate(model.layers):
            h = experiments.block_forward_reference(model.args, i, layer.state_dict(), h)
        assert torch.allclose(h, model.hidden(x), atol=1e-6)


def test_training_step_reference_is_the_trainers_first_step():
    """The exercise's reference and ``dslab.train.train_lm`` take the same first step on the same batch."""
    cfg = capstone.preset_config("cpu", **{"model.dim": 32, "model.n_heads": 2, "model.q_lora_rank": 16,
                                        "model.kv_lora_rank": 16, "model.qk_nope_head_dim": 8,
                                        "model.qk_rope_head_dim": 8, "model.v_head_dim": 8, "model.inter_dim": 80,
                                        "model.moe_inter_dim": 16, "model.n_layers": 2, "model.max_seq_len": 64,
                                        "model.original_seq_len": 64, "steps": 1, "batch_size": 4,
                                        "block_size": 32, "n_chars": 30_000, "eval_batches": 1, "warmup": 2})
    train_ids, val_ids = capstone.corpus_ids(cfg)
    model = capstone.init_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    history = train.train_lm(model, train_ids, val_ids, cfg.train)
    x, y = experiments.first_batch(cfg, train_ids)
    ref = experiments.training_step_reference(cfg.model, state, x, y, train.lr_at(0, cfg.train),
                                              cfg.train.mtp_lambda, cfg.train.bias_gamma)
    assert ref["loss"] == pytest.approx(history[0]["loss"], rel=1e-6)
    assert ref["mtp_loss"] == pytest.approx(history[0]["mtp_loss"], rel=1e-5)
    assert torch.equal(ref["bias"], torch.stack([m.gate.bias for m in model.moe_layers()]))
    assert torch.allclose(ref["embed"], model.embed.weight, atol=1e-6)


def test_the_labs_buggy_version_is_the_registrys_draft():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "06_capstone")
    cell = next(c.source for c in lab.cells if c.cell_type == "code" and "def global_bias_update(" in c.source)
    namespace = {"torch": torch}
    exec("\n".join(line for line in cell.split("\n") if "raise NotImplementedError" not in line), namespace)
    for case in EXERCISES["06.global_bias"].hidden_cases(random.Random(1)):
        assert torch.equal(namespace["global_bias_update"](*case.args), lab06.global_bias_update_draft(*case.args))


# ------------------------------------------------------------------------------------------------- experiments
def test_preset_choice_and_notebook_config():
    assert experiments.preset_for("cpu") == "cpu" and experiments.preset_for("cuda") == "gpu-small"
    fast = experiments.notebook_config("cpu", fast=True, seed=3)
    assert fast.train.steps == 12 and fast.train.seed == 3 and fast.data_seed == 3
    assert experiments.notebook_config("cpu").train.steps == capstone.PRESETS["cpu"].settings["steps"]
    fast_dir = experiments.run_dir("cpu", 0, fast=True)
    fast_dir.mkdir()
    (fast_dir / "checkpoint.pt").write_text("old")
    assert not experiments.run_dir("cpu", 0, fast=True).exists()  # FAST never resumes
    assert experiments.run_dir("cpu", 0) == experiments.run_dir("cpu", 0)  # the full run does
    experiments.scratch("x").mkdir()
    experiments.clean_scratch()
    assert not fast_dir.parent.exists()


def test_rank_loads_sum_to_the_whole_batch():
    model = experiments.fresh_model(lab06.small_args(), seed=0)
    x = torch.randint(0, 40, (4, 8))
    loads = experiments.rank_loads(model, x, 2)
    assert loads.shape == (2, len(model.moe_layers()), 8)
    whole = experiments.rank_loads(model, x, 1)[0]
    assert torch.equal(loads.sum(0), whole)
    assert int(loads[0, 0].sum()) == 2 * 8 * model.args.n_activated_experts


def test_speculative_check_matches_greedy():
    model = experiments.fresh_model(lab06.small_args(vocab=100), seed=0).eval()
    out = experiments.speculative_check(model, ["12+3=", "ab"], 10)
    assert out["same_as_greedy"] and 0 <= out["acceptance"] <= 1 and out["tokens_per_forward"] >= 1


def test_reference_runs_load_and_the_load_figure_draws():
    refs = experiments.reference_runs()
    assert set(refs) == set(experiments.REFERENCE_NAMES) and all(len(r) > 10 for r in refs.values())
    assert "mtp_acceptance" not in refs["mtp_off"][-1] and "mtp_acceptance" in refs["healthy"][-1]
    history = [{"step": s, "max_vio": 0.5, "load": [[1, 3, 2, 2], [2, 2, 2, 2]]} for s in range(5)]
    args = lab06.small_args(n_layers=2, n_dense=1, experts=4, groups=1)
    steps, rel = experiments.load_matrix(history, layer=0)
    assert steps == list(range(5)) and torch.allclose(rel[0], torch.tensor([0.5, 1.5, 1.0, 1.0], dtype=rel.dtype))
    fig = experiments.load_figure(history, args)
    assert len(fig.axes) == 3  # two panels and a colour bar
    with pytest.raises(ValueError, match="load_every"):
        experiments.load_matrix([{"step": 0}])


# ------------------------------------------------------------------------------------------------------- widget
def test_reference_explorer_defaults_are_deterministic():
    from dslab.labs.lab06_capstone.widgets import reference_explorer

    a, _ = reference_explorer()
    b, _ = reference_explorer()
    assert a == b and len(a) == 4
    acc, _ = reference_explorer(metric="mtp_acceptance")
    assert acc["MTP off (D = 0)"] == "-"
    with pytest.raises(ValueError, match="metric"):
        reference_explorer(metric="speed")


def test_reference_explorer_reacts_to_its_controls():
    from dslab.labs.lab06_capstone.widgets import reference_controls, reference_explorer
    from dslab.widgets import Explorer

    explorer = Explorer(reference_explorer, reference_controls())
    loss = dict(explorer.numbers)
    explorer.controls["metric"].value = "max_vio"
    vio = dict(explorer.numbers)
    assert vio != loss
    assert vio["no balancing (γ = 0)"] > vio["healthy (the cpu preset)"]
    explorer.controls["runs"].value = ("healthy",)
    assert list(explorer.numbers) == ["healthy (the cpu preset)"]
    explorer.controls["window"].value = 1
    assert explorer.numbers["healthy (the cpu preset)"] == round(experiments.reference_runs(("healthy",))["healthy"]
                                                                 [-1]["max_vio"], 4)


def test_reference_explorer_widget_is_static_when_headless(monkeypatch):
    from dslab.labs.lab06_capstone.widgets import reference_explorer_widget

    monkeypatch.setenv("DSLAB_HEADLESS", "1")
    assert reference_explorer_widget([{"step": 0, "loss": 3.0}]) is None


# ------------------------------------------------------------------------------------------------------ diagram
def test_architecture_diagram_names_the_parts_with_the_configs_numbers():
    from dslab.labs.lab06_capstone.diagrams import DIAGRAMS

    fig = DIAGRAMS["capstone_architecture.png"]()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "1.66M parameters" in text and "layer 0:" in text and "dense SwiGLU, width 320" in text
    assert "1 + 4 of 16" in text and "eh_proj M_1 [256 → 128]" in text and "layer id 4" in text


# ----------------------------------------------------------------------------------------------------- notebook
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "06_capstone")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab06.EXERCISES:
        assert source.count(f"def {ex.target}(") == 1
        assert source.count(ex.stub_message) == 1 and "### BEGIN SOLUTION" not in source
        assert f'dslab.check("{ex.id}", {ex.target})' in source
    assert "return torch.stack(updates).mean(0)" in source  # the bug to find, uncommented
