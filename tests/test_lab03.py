"""Lab 03 (MLA): exercise references pass their public cases, hidden cases are valid and vary, wrong answers fail,
the KV-memory widget reacts to its controls, and the solution notebook builds into a lab with one stub per exercise."""

import random
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from lab_helpers import apply_rotary_emb_half, hidden_verdict

from dslab import mla
from dslab.course import answers
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.labs import lab03_mla
from dslab.labs.lab03_mla import exercises as lab03_exercises
from dslab.nn import rotary_freqs

EXERCISES = {ex.id: ex for ex in lab03_exercises.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]


def test_exercise_registry():
    assert lab03_mla.NOTEBOOK == "03_mla"
    assert [(e.id, e.target, e.points) for e in lab03_exercises.EXERCISES] == [
        ("03.kv_bytes", "kv_cache_bytes", 2), ("03.latent_cache", "latent_cache_step", 2),
        ("03.absorb", "absorbed_attention", 3)]


# ------------------------------------------------------------------------------------------- wrong answers fail
def kv_bytes_without_rope_key(args, n_tokens, bits):
    per_layer = args.kv_lora_rank if args.attn == "mla" else 2 * args.kv_heads * args.attn_head_dim
    return per_layer * args.n_layers * n_tokens * bits / 8


def kv_bytes_all_query_heads(args, n_tokens, bits):  # GQA/MQA counted as MHA
    mla_layer = args.kv_lora_rank + args.qk_rope_head_dim
    per_layer = mla_layer if args.attn == "mla" else 2 * args.n_heads * args.attn_head_dim
    return per_layer * args.n_layers * n_tokens * bits / 8


def cache_step_without_norm(x, wkv_a, w, start_pos):
    d_c = w.shape[0]
    kv = F.linear(x, wkv_a)
    _, k_pe = lab03_exercises.latent_cache_at(x, wkv_a, w, start_pos)
    return kv[..., :d_c] * w, k_pe


def cache_step_ignoring_positions(x, wkv_a, w, start_pos):
    return lab03_exercises.latent_cache_at(x, wkv_a, w, 0)


def cache_step_rotate_half(x, wkv_a, w, start_pos):  # HF's layout without de-interleaving the weights
    c_kv, _ = lab03_exercises.latent_cache_at(x, wkv_a, w, start_pos)
    k = F.linear(x, wkv_a[w.shape[0]:]).unsqueeze(2)
    freqs = rotary_freqs(k.shape[-1], start_pos + x.shape[1])[start_pos:]
    return c_kv, apply_rotary_emb_half(k, freqs).squeeze(2)


def absorb_values_first(q_nope, q_pe, kv_cache, pe_cache, wkv_b, scale):  # per head [W_UV; W_UK], not [W_UK; W_UV]
    h, nope = q_nope.shape[2], q_nope.shape[3]
    w = wkv_b.view(h, -1, wkv_b.shape[1])
    d_v = w.shape[1] - nope
    wrong = torch.cat([w[:, d_v:], w[:, :d_v]], 1).flatten(0, 1)
    return mla.absorbed_attention(q_nope, q_pe, kv_cache, pe_cache, wrong, scale)


def absorb_without_rope_part(q_nope, q_pe, kv_cache, pe_cache, wkv_b, scale):
    return mla.absorbed_attention(q_nope, torch.zeros_like(q_pe), kv_cache, pe_cache, wkv_b, scale)


def absorb_unscaled(q_nope, q_pe, kv_cache, pe_cache, wkv_b, scale):
    return mla.absorbed_attention(q_nope, q_pe, kv_cache, pe_cache, wkv_b, 1.0)


WRONG = {
    "03.kv_bytes": [kv_bytes_without_rope_key, kv_bytes_all_query_heads],
    "03.latent_cache": [cache_step_without_norm, cache_step_ignoring_positions, cache_step_rotate_half],
    "03.absorb": [absorb_values_first, absorb_without_rope_part, absorb_unscaled],
}


@pytest.mark.parametrize("ex_id,wrong", [(k, f) for k, fs in WRONG.items() for f in fs],
                         ids=lambda v: getattr(v, "__name__", v))
def test_wrong_answers_fail_public_and_hidden_cases(ex_id, wrong):
    ex = EXERCISES[ex_id]
    status, message = run_cases(ex, wrong, ex.public_cases())
    assert status == "failed" and ex.hint in message
    assert any(msg is not None for msg in hidden_verdict(ex, wrong, seed=3))


def test_hard_coded_public_answers_fail_hidden_cases():
    for ex in lab03_exercises.EXERCISES:
        table = [(answers.to_json(c.args), ex.reference(*c.args)) for c in ex.public_cases()]
        memorized = lambda *args, table=table: next(v for k, v in table if k == answers.to_json(args))
        assert run_cases(ex, memorized, ex.public_cases())[0] == "passed"
        assert run_cases(ex, memorized, ex.hidden_cases(random.Random(5)))[0] == "failed"


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError("Exercise 3.1: ...")

    for ex in lab03_exercises.EXERCISES:
        assert run_cases(ex, stub, ex.public_cases())[0] == "not-attempted"


# ------------------------------------------------------------------------------------------------------- widget
def test_kv_memory_defaults_are_v3():
    from dslab.labs.lab03_mla.widgets import kv_memory

    numbers, fig = kv_memory()
    assert numbers["MLA KiB/token"] == round(576 * 61 * 2 / 1024, 2)  # 70,272 bytes: V3 in BF16
    assert numbers["MHA KiB/token"] == 2 * 128 * 128 * 61 * 2 / 1024
    assert numbers["MLA / MHA"] == round(576 / (2 * 128 * 128), 4)
    assert numbers["MLA = GQA with this many KV heads"] == 2.25  # V2 §2.1.2
    assert numbers["MLA naive KiB/token"] > numbers["MHA KiB/token"]
    assert len(fig.axes) == 2


def test_kv_memory_explorer_reacts_to_its_controls():
    from dslab.labs.lab03_mla.widgets import kv_memory, kv_memory_controls
    from dslab.widgets import Explorer

    explorer = Explorer(kv_memory, kv_memory_controls())
    assert explorer.numbers == kv_memory()[0]
    explorer.controls["bits"].value = 8
    assert explorer.numbers["MLA KiB/token"] == round(576 * 61 / 1024, 2)
    explorer.controls["n_kv_heads"].value = 1
    assert explorer.numbers["GQA-1 KiB/token"] == explorer.numbers["MQA KiB/token"]
    explorer.controls["n_heads"].value = 8
    explorer.controls["n_kv_heads"].value = 64  # more KV heads than query heads: clamped to MHA
    assert explorer.numbers["GQA-8 KiB/token"] == explorer.numbers["MHA KiB/token"]
    explorer.controls["kv_lora_rank"].value = 1024
    explorer.controls["n_layers"].value = 10
    explorer.controls["context"].value = 2**20
    assert explorer.numbers["MLA KiB/token"] == round((1024 + 64) * 10 / 1024, 2)
    assert explorer.numbers["MLA GiB at 1,048,576 tokens"] == round((1024 + 64) * 10 * 2**20 / 2**30, 2)


# ----------------------------------------------------------------------------------------------------- notebook
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    path = ROOT / "solutions" / "03_mla.ipynb"
    lab = build_lab(nbformat.read(path, as_version=4), "03_mla")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab03_exercises.EXERCISES:
        assert source.count(f"def {ex.target}(") == 1
        assert source.count(ex.stub_message) == 1 and "### BEGIN SOLUTION" not in source
        assert f'dslab.check("{ex.id}", {ex.target})' in source
    tags = [t for c in lab.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags
