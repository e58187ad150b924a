"""Lab 02 (FP8): exercise references pass their cases, hidden cases vary and cover the corners (ties, subnormals,
overflow, ragged tiles, zero tiles, promotion intervals that do not divide K), every known wrong answer fails with
its own hint, the explorer reacts to its controls, the harnesses measure what the notebook says, and the solution
builds into a lab with one stub per exercise (and the buggy version shown for the debug exercise)."""

import random
from pathlib import Path

import nbformat
import pytest
import torch
from lab_helpers import hidden_verdict

from dslab import fp8
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.labs import lab02_fp8
from dslab.labs.lab02_fp8 import exercises as lab02_exercises
from dslab.labs.lab02_fp8 import experiments as ex

EXERCISES = {e.id: e for e in lab02_exercises.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]


def test_exercise_registry():
    assert lab02_fp8.NOTEBOOK == "02_fp8"
    assert [(e.id, e.target, e.kind) for e in lab02_exercises.EXERCISES] == [
        ("02.round_e4m3", "round_e4m3", "implement"), ("02.quantize_tiles", "quantize_tiles", "implement"),
        ("02.flush_threshold", "flush_threshold", "predict"), ("02.dequantize_blocks", "dequantize_blocks", "debug"),
        ("02.promoted_matmul", "promoted_matmul", "implement")]
    assert all(e.forbidden and e.mistakes for e in lab02_exercises.EXERCISES)


# ------------------------------------------------------------------------------------------- wrong answers fail


def test_references_pass_hidden_cases_for_many_seeds():
    for e in lab02_exercises.EXERCISES:
        for seed in range(6):
            assert hidden_verdict(e, e.reference, seed) == [None] * len(e.hidden_cases(random.Random(seed)))


def test_hidden_cases_cover_the_corners():
    for seed in range(4):
        rounding = EXERCISES["02.round_e4m3"].hidden_cases(random.Random(seed))
        values = torch.cat([c.args[0].flatten() for c in rounding])
        assert bool(values.isnan().any()) and bool((values.abs() > 464).any()) and bool((values.abs() < 2**-6).any())
        mids = ((fp8.representable_values("e4m3")[1:] + fp8.representable_values("e4m3")[:-1]) / 2).float()
        assert bool(torch.isin(values.abs(), mids).any())  # exact ties
        tiles = EXERCISES["02.quantize_tiles"].hidden_cases(random.Random(seed))
        assert any(c.args[0].shape[1] % c.args[1] for c in tiles)  # a ragged last tile
        assert any(bool((c.args[0][0, :c.args[1]] == 0).all()) for c in tiles)  # an all-zero tile
        acc = EXERCISES["02.promoted_matmul"].hidden_cases(random.Random(seed))
        assert any(c.args[0].shape[1] % c.args[2] for c in acc) and len({c.args[4] for c in acc}) > 1


def test_right_answers_written_differently_pass():
    """Multiplying by 1/scale instead of dividing, or summing chunks in another order, is not a mistake."""
    def tiles_by_reciprocal(x, block=128):
        values, scales = lab02_exercises.quantize_tiles_reference(x, block)
        s = scales.repeat_interleave(block, 1)[:, : x.shape[1]]
        return (x * (1.0 / s)).to(torch.float8_e4m3fn).float(), scales

    def acc_stacked(a, b, every, bits=14, group=4):
        parts = [fp8.accumulate_mm(a[:, s:s + every], b[:, s:s + every], bits, None, group)
                 for s in range(0, a.shape[1], every)]
        return torch.stack(parts).sum(0)

    for ex_id, fn in (("02.quantize_tiles", tiles_by_reciprocal), ("02.promoted_matmul", acc_stacked)):
        e = EXERCISES[ex_id]
        assert run_cases(e, fn, e.public_cases())[0] == "passed"
        assert hidden_verdict(e, fn, 1) == [None] * len(e.hidden_cases(random.Random(1)))


# ------------------------------------------------------------------------------------------------------ widget
def test_quant_explorer_defaults_are_deterministic():
    from dslab.labs.lab02_fp8.widgets import quant_explorer

    a, fig = quant_explorer()
    b, _ = quant_explorer()
    assert a == b and len(fig.axes) == 2
    assert a["gain over per-tensor scaling (dB)"] > 0


def test_quant_explorer_reacts_to_its_controls():
    from dslab.labs.lab02_fp8.widgets import quant_controls, quant_explorer
    from dslab.widgets import Explorer

    explorer = Explorer(quant_explorer, quant_controls())
    tile = dict(explorer.numbers)
    explorer.controls["granularity"].value = "tensor"
    assert explorer.numbers["gain over per-tensor scaling (dB)"] == 0.0
    explorer.controls["outlier"].value = 1e5
    flushed = float(explorer.numbers["bulk flushed to 0"].rstrip("%"))
    assert flushed > float(tile["bulk flushed to 0"].rstrip("%"))
    explorer.controls["fmt"].value = "e5m2"
    assert float(explorer.numbers["bulk flushed to 0"].rstrip("%")) < flushed  # more range, fewer flushed
    with pytest.raises(ValueError, match="granularity"):
        quant_explorer(granularity="column")


# --------------------------------------------------------------------------------------------------- harnesses
def test_outliers_per_tensor_flush_most_tiles_least():
    x, bulk = ex.outlier_activations(256, 512, 3000.0, seed=0)
    r = ex.quantization_report(x, bulk, tiles=lab02_exercises.quantize_tiles_reference)
    flushed = {g: v["bulk flushed to 0"] for g, v in r.items()}
    assert flushed["tile"] < min(flushed["row"], flushed["block"]) <= max(flushed["row"], flushed["block"]) \
        < flushed["tensor"]
    predicted = float((x[bulk].abs() <= fp8.flush_threshold(float(x.abs().max()))).float().mean())
    assert predicted == pytest.approx(flushed["tensor"], abs=1e-6)


def test_scaled_mm_probe_and_comparison():
    probe = ex.scaled_mm_probe()
    assert probe["torch._scaled_mm"] == probe["FP32 GEMM (torch.mm)"]  # the CPU kernel accumulates in FP32
    assert probe["14-bit, never promoted"] == 65536.0 < probe["torch._scaled_mm"]
    cmp = ex.compare_with_scaled_mm(32, 512, 64, dequantize_blocks=lab02_exercises.dequantize_blocks_reference)
    assert all(r["kernel vs FP32 emulation"] < 1e-6 and 0 < r["14-bit emulation vs kernel"] < 2e-3
               for r in cmp.values())


def test_scaled_mm_support_says_why_it_is_missing(monkeypatch):
    assert ex.scaled_mm_support() is None  # the pinned torch runs row-wise scales on the CPU

    def per_tensor_only(a, b, scale_a, scale_b, out_dtype):
        if scale_a.numel() != 1:
            raise RuntimeError("Now _scaled_mm only supports per-tensor scaling for CPU backend.")
        return (a.float() @ b.float()) * scale_a * scale_b

    monkeypatch.setattr(torch, "_scaled_mm", per_tensor_only)
    message = ex.scaled_mm_support()
    assert torch.__version__ in message and "per-tensor scaling" in message and "skipped" in message
    monkeypatch.delattr(torch, "_scaled_mm")
    assert "AttributeError" in ex.scaled_mm_support() or "_scaled_mm" in ex.scaled_mm_support()


def test_calibration_and_accumulator_step():
    table = ex.calibration_table([1, 4, 32], m=32, k=1024, n=32)
    never = [e for _, e, _ in table]
    assert never[0] > never[1] > never[2] > 0  # fewer truncations, less error
    assert all(promoted < e for _, e, promoted in table)  # promotion helps at every truncation interval
    assert ex.accumulator_step(65536, 14) == 8 and ex.accumulator_step(65536, 24) == 2.0**-7
    assert ex.accumulator_step(1.5, 4) == 0.125  # E4M3's step in [1, 2)


def _run(val: float, losses: list[float]) -> ex.PrecisionRun:
    return ex.PrecisionRun("x", torch.tensor(losses), [], val, 0.0)


def test_precision_verdict_reads_the_gap_against_the_floor():
    flat = [2.0] * 8
    base = {("fp32", s): _run(2.00 + 0.10 * s, flat) for s in range(3)}  # the seeds differ a lot ...
    base.update({("bf16", s): _run(2.01 + 0.10 * s, flat) for s in range(3)})  # ... a rounding change a little
    same = ex.precision_verdict({**base, **{("fp8", s): _run(2.015 + 0.10 * s, flat) for s in range(3)}}, [0, 1, 2],
                                window=2)
    assert same["floor"] == pytest.approx(0.01 / 2.00) and "do not differ" in same["verdict"]
    assert same["paired"] == pytest.approx([0.005 / (2.01 + 0.10 * s) for s in range(3)])
    assert same["spread"] == pytest.approx(0.2 / 2.1)  # far above the floor: what comparing seed by seed removes
    growing = [2.0 + 0.01 * i for i in range(8)]
    broken = ex.precision_verdict({**base, **{("fp8", s): _run(2.3 + 0.10 * s, growing) for s in range(3)}},
                                  [0, 1, 2], window=1)
    assert "growing" in broken["verdict"] and broken["train_gap"][1] > broken["train_gap"][0]


def test_training_harness_and_gap():
    from dslab import configs
    from dslab.data import corpus_tensors
    from dslab.train import TrainConfig

    tok, train_ids, val_ids = corpus_tensors(20_000, seed=0)
    args = configs.load("tiny-moe").replace(vocab_size=tok.vocab_size, n_layers=2)
    cfg = TrainConfig(steps=3, batch_size=2, block_size=32, warmup=1, eval_every=3, eval_batches=1)
    runs = {p: ex.train_precision(p, args, train_ids, val_ids, cfg, block=32) for p in ("bf16", "fp8")}
    assert runs["fp8"].converted and runs["fp8"].losses.shape == (3,)
    gap = ex.relative_gap(runs["fp8"], runs["bf16"], window=2)
    assert gap.shape == (3,) and float(gap[0]) == pytest.approx(
        float((runs["fp8"].losses[0] - runs["bf16"].losses[0]) / runs["bf16"].losses[0]), rel=1e-5)
    assert torch.allclose(ex.smoothed(torch.tensor([1.0, 3.0, 5.0]), 2), torch.tensor([1.0, 2.0, 4.0]))
    with pytest.raises(ValueError, match="precision"):
        ex.precision_model(args, "int8")


def test_memory_table_totals():
    from dslab import configs

    table = ex.memory_table(configs.load("deepseek-v3-671b"), 4096)
    assert table["total"]["fp8"] == pytest.approx(sum(v["fp8"] for k, v in table.items() if k != "total"))
    assert table["GEMM weight copies"]["fp8"] < table["GEMM weight copies"]["bf16"]
    assert table["master weights"]["fp8"] == table["master weights"]["bf16"]


def test_diagram_draws():
    from dslab.labs.lab02_fp8.diagrams import DIAGRAMS

    assert set(DIAGRAMS) == {"fp8_recipe.png"}
    assert DIAGRAMS["fp8_recipe.png"]().axes


# ------------------------------------------------------------------------------------------------------ build
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    lab = build_lab(nbformat.read(ROOT / "solutions" / "02_fp8.ipynb", as_version=4), "02_fp8")
    source = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for e in lab02_exercises.EXERCISES:
        assert source.count(f"def {e.target}(") == 1
        assert source.count(e.stub_message) == 1
        assert f'dslab.check("{e.id}", {e.target})' in source
    assert "### BEGIN SOLUTION" not in source and "return q / s" in source  # the buggy version is shown
    tags = [t for c in lab.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags
