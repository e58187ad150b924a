"""Lab 03 (MLA): the exercise registry in notebook order, every known wrong answer fails with its own hint, answers
that delegate to the reference are seen, the lab's buggy version is the registry's draft, the three MLA decode paths
agree and cache what they should, the serving arithmetic behind V2's 5.76x, the KV-memory widget reacts to its
controls, the diagram is drawn, and the solution builds into a lab with one stub per exercise."""

import random
import re
from pathlib import Path

import nbformat
import pytest
import torch
from lab_helpers import apply_rotary_emb_half

from dslab import accounting, configs, mla
from dslab.course import answers
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.labs import lab03_mla
from dslab.labs.lab03_mla import exercises as lab03
from dslab.labs.lab03_mla import experiments
from dslab.nn import rotary_freqs, yarn_mscale

EXERCISES = {ex.id: ex for ex in lab03.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_mla.ipynb"


# ------------------------------------------------------------------------------------------------------ registry
def test_exercise_registry_in_notebook_order():
    assert lab03_mla.NOTEBOOK == "03_mla"
    assert [(e.id, e.number, e.target, e.kind, e.points) for e in lab03.EXERCISES] == [
        ("03.kv_bytes", "3.1", "kv_cache_bytes", "predict", 2),
        ("03.rope", "3.2", "rope", "implement", 2),
        ("03.latent_cache", "3.3", "latent_cache_step", "implement", 2),
        ("03.softmax_scale", "3.4", "softmax_scale", "debug", 2),
        ("03.absorb", "3.5", "absorbed_attention", "implement", 3)]


def test_rope_may_not_use_the_course_helpers():
    from dslab.nn import apply_rotary_emb

    ex = EXERCISES["03.rope"]
    helper = lambda x, p, b=10000.0: apply_rotary_emb(  # noqa: E731
        x.unsqueeze(2), rotary_freqs(x.shape[-1], p + x.shape[1], b)[p:]).squeeze(2)
    case = ex.public_cases()[0]
    called = answers.call(helper, case.args, 5.0, {answers.resolve(q): q for q in ex.forbidden})["called"]
    assert {"dslab.nn.apply_rotary_emb", "dslab.nn.rotary_freqs"} <= set(called)


# ------------------------------------------------------------------------------------------- wrong answers fail
def test_tensor_feedback_says_where_and_what():
    ex = EXERCISES["03.latent_cache"]
    status, message = run_cases(ex, ex.mistakes[0].fn, ex.public_cases())  # RoPE key cached before rotation
    assert status == "failed" and re.search(r"item 1: at \[\d+, \d+, \d+\] expected -?\d", message), message


def test_the_halves_mistake_is_hf_rotate_half():
    x = torch.randn(2, 3, 2, 8)
    freqs = rotary_freqs(8, 5 + 3)[5:]
    torch.testing.assert_close(lab03.ROPE_MISTAKES[0].fn(x, 5), apply_rotary_emb_half(x, freqs), atol=1e-5, rtol=0)


def test_hidden_cases_cover_heads_positions_and_yarn():
    rope = EXERCISES["03.rope"].hidden_cases(random.Random(0))
    assert {c.args[0].dim() for c in rope} == {3, 4} and any(c.args[1] > 0 for c in rope)
    scale = EXERCISES["03.softmax_scale"].hidden_cases(random.Random(0))
    assert {c.args[0].max_seq_len > c.args[0].original_seq_len for c in scale} == {True, False}


def test_the_labs_buggy_version_is_the_registrys_draft():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "03_mla")
    cell = next(c.source for c in lab.cells if c.cell_type == "code" and "def softmax_scale(" in c.source)
    namespace = {"ModelArgs": configs.ModelArgs, "yarn_mscale": yarn_mscale}
    exec("\n".join(line for line in cell.split("\n") if "raise NotImplementedError" not in line), namespace)
    for name in ("deepseek-v3-671b", "deepseek-v2-lite-16b", "tiny-mla"):
        args = configs.load(name)
        assert namespace["softmax_scale"](args) == lab03.softmax_scale_draft(args)
    assert lab03.softmax_scale_draft(configs.load("deepseek-v3-671b")) != mla.softmax_scale(
        configs.load("deepseek-v3-671b"))


# ------------------------------------------------------------------------------------------------- experiments
def test_three_decode_paths_agree_and_two_cache_the_latent():
    args = configs.load("tiny-mla").replace(max_seq_len=16, original_seq_len=16)
    torch.manual_seed(0)
    paths = {impl: mla.MLA(args, 2, impl).eval() for impl in mla.ATTN_IMPLS}
    for m in paths.values():
        m.load_state_dict(paths["absorb"].state_dict())
    x = torch.randn(2, 12, args.dim)
    with torch.no_grad():
        outs = {impl: torch.cat([m(x[:, :5], 0), m(x[:, 5:6], 5), m(x[:, 6:], 6)], 1) for impl, m in paths.items()}
    for impl in ("naive", "recompute"):
        torch.testing.assert_close(outs[impl], outs["absorb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(paths["recompute"].kv_cache, paths["absorb"].kv_cache)
    assert paths["recompute"].cache_bytes() == paths["absorb"].cache_bytes() < paths["naive"].cache_bytes()
    assert mla.cache_elements_per_layer(args, "recompute") == mla.cache_elements_per_layer(args, "absorb") == 80


def test_time_decode_paths_reports_every_mode_and_its_cache():
    found = experiments.time_decode_paths(n_heads=2, context=16, rounds=1, batch=1)
    assert set(found) == set(mla.ATTN_IMPLS) and all(t["ms"] > 0 for t in found.values())
    assert found["recompute"]["cache_mib"] == found["absorb"]["cache_mib"] < found["naive"]["cache_mib"]


def test_decode_bounds_follow_the_configs():
    v2, llm67 = configs.load("deepseek-v2-236b"), configs.load("deepseek-llm-67b")
    base = experiments.decode_bounds(llm67, 16, 16, 4096)
    served = experiments.decode_bounds(v2, 8, 6, 4096)
    assert base["sequences"] == int((640e9 - accounting.total_params(llm67) * 2) // (194_560 * 2 * 4096))
    assert served["sequences"] == int((640e9 - accounting.total_params(v2)) // (34_560 * 6 / 8 * 4096))
    assert round(served["sequences"] / base["sequences"], 1) == 12.0
    assert base["bound_tok_s"] == base["memory_bound_tok_s"] < base["compute_bound_tok_s"]  # 67B: memory-bound
    assert served["bound_tok_s"] == served["compute_bound_tok_s"] < served["memory_bound_tok_s"]  # V2: compute
    assert 5 < served["bound_tok_s"] / base["bound_tok_s"] < 6


def test_lowrank_error_is_exact_for_a_low_rank_matrix():
    x = torch.randn(50, 3) @ torch.randn(3, 20)
    err = experiments.lowrank_error(x)
    assert err[0] == pytest.approx(1.0) and err[3] < 1e-5 and len(err) == 21


def test_diagram_names_what_is_cached():
    from dslab.labs.lab03_mla.diagrams import DIAGRAMS

    fig = DIAGRAMS["mla_dataflow.png"]()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "cached" in text and "576 numbers per token and layer" in text and "40,960" in text


# ------------------------------------------------------------------------------------------------------- widget
def test_kv_memory_defaults_are_v3():
    from dslab.labs.lab03_mla.widgets import kv_memory

    numbers, fig = kv_memory()
    assert numbers["MLA (latent) KiB/token"] == round(576 * 61 * 2 / 1024, 2)  # 70,272 bytes: V3 in BF16
    assert numbers["MHA KiB/token"] == 2 * 128 * 128 * 61 * 2 / 1024
    assert numbers["MLA / MHA"] == round(576 / (2 * 128 * 128), 4)
    assert numbers["MLA = GQA with this many KV heads"] == 2.25  # V2 §2.1.2
    assert numbers["MLA (expanded K/V) KiB/token"] == 128 * (128 + 64 + 128) * 61 * 2 / 1024 > numbers["MHA KiB/token"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["MHA", "GQA-8", "MQA", "MLA (latent)", "MLA (expanded K/V)"]


def test_kv_memory_explorer_reacts_to_its_controls():
    from dslab.labs.lab03_mla.widgets import kv_memory, kv_memory_controls
    from dslab.widgets import Explorer

    explorer = Explorer(kv_memory, kv_memory_controls())
    assert explorer.numbers == kv_memory()[0]
    explorer.controls["bits"].value = 8
    assert explorer.numbers["MLA (latent) KiB/token"] == round(576 * 61 / 1024, 2)
    explorer.controls["n_kv_heads"].value = 1
    assert explorer.numbers["GQA-1 KiB/token"] == explorer.numbers["MQA KiB/token"]
    explorer.controls["n_heads"].value = 8
    explorer.controls["n_kv_heads"].value = 64  # more KV heads than query heads: clamped to MHA
    assert explorer.numbers["GQA-8 KiB/token"] == explorer.numbers["MHA KiB/token"]
    explorer.controls["kv_lora_rank"].value = 1024
    explorer.controls["n_layers"].value = 10
    explorer.controls["context"].value = 2**20
    assert explorer.numbers["MLA (latent) KiB/token"] == round((1024 + 64) * 10 / 1024, 2)
    assert explorer.numbers["MLA GiB at 1,048,576 tokens"] == round((1024 + 64) * 10 * 2**20 / 2**30, 2)


# ----------------------------------------------------------------------------------------------------- notebook
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    lab = build_lab(nbformat.read(SOLUTION, as_version=4), "03_mla")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab03.EXERCISES:
        assert source.count(f"def {ex.target}(") == 1
        assert source.count(ex.stub_message) == 1 and "### BEGIN SOLUTION" not in source
        assert f'dslab.check("{ex.id}", {ex.target})' in source
    assert "scale = args.qk_nope_head_dim ** -0.5" in source  # the bug hunt needs the first attempt in view
    tags = [t for c in lab.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags
    assert "**Time:** <!-- dslab:time -->" in lab.cells[0].source
