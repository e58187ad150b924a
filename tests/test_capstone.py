"""The capstone's benchmark and shipped data: the bench compares the MoE model with a dense twin of the same activated
parameters, and datasets/capstone/ holds the reference runs its README and runs.json describe, whose first steps the
course's code reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dslab import accounting as acc
from dslab import capstone, data, evals, train, validate
from dslab.bench import BENCHMARKS
from dslab.bench import capstone as bench
from dslab.checkpoint import read_metrics
from dslab.labs.lab06_capstone import artifacts
from dslab.moe import max_vio

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "capstone"


# --------------------------------------------------------------------------------------------------------- bench
def test_dense_twin_activates_the_same_ffn_width():
    moe = capstone.preset_config("cpu").model
    dense = bench.dense_twin(moe)
    assert "capstone" in BENCHMARKS and not dense.is_moe and dense.n_dense_layers == dense.n_layers
    assert dense.inter_dim == (moe.n_shared_experts + moe.n_activated_experts) * moe.moe_inter_dim == moe.inter_dim
    gates = (moe.n_layers - moe.n_dense_layers) * acc.gate_params(moe)
    assert acc.activated_params(moe) - acc.activated_params(dense) == gates  # only the routers differ
    assert acc.training_flops_per_token(moe, 128) - acc.training_flops_per_token(dense, 128) == 3 * 2 * gates


def test_bench_runs_quick_and_reports_mfu():
    result = bench.run(quick=True)
    assert result.name == "capstone" and result.op == ">=" and result.target == 0.8 and result.value > 0
    assert {"tokens/s (MoE, dense)", "MFU (MoE, dense)", "peak"} <= set(result.details)
    assert "measured" in result.details["peak"]


# ------------------------------------------------------------------------------------------------- reference runs
def test_readme_describes_every_file_and_its_command():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    entries = json.loads((DATA / "runs.json").read_text(encoding="utf-8"))
    assert set(entries) == set(artifacts.RUNS)
    for name, entry in entries.items():
        assert f"`{name}.csv`" in readme and entry["command"] == artifacts.command(name)
        assert artifacts.command(name) in readme
        cfg = capstone.preset_config("cpu", **artifacts.RUNS[name][1])
        assert entry["settings"]["steps"] == cfg.train.steps and entry["settings"]["lr"] == cfg.train.lr
    assert "python -m dslab.labs.lab06_capstone.artifacts" in readme
    for name in artifacts.WEIGHTS:
        assert f"`{name}.pt`" in readme and (DATA / f"{name}.pt").stat().st_size < 5_000_000  # float16 weights
    sizes = sum(p.stat().st_size for p in DATA.iterdir() if p.suffix != ".pt")
    assert sizes < 1_000_000  # small files only


@pytest.mark.parametrize("name", list(artifacts.RUNS))
def test_reference_csv_is_a_whole_run_with_the_logged_metrics(name):
    rows = artifacts.read_csv(DATA / f"{name}.csv")
    entry = json.loads((DATA / "runs.json").read_text(encoding="utf-8"))[name]
    cfg = capstone.preset_config("cpu", **artifacts.RUNS[name][1])
    assert len(rows) == entry["steps"] and [r["step"] for r in rows] == list(range(len(rows)))
    assert entry["stopped"] is not None or len(rows) == cfg.train.steps
    per_step = cfg.train.batch_size * cfg.train.block_size
    assert all(r["tokens"] == (r["step"] + 1) * per_step for r in rows)
    assert all(r["lr"] == pytest.approx(train.lr_at(int(r["step"]), cfg.train), rel=1e-5) for r in rows)
    assert ("mtp_acceptance" in rows[-1]) == (cfg.model.n_mtp > 0)
    vals = [r for r in rows if "val_loss" in r]
    assert [int(r["step"]) for r in vals] == [s for s in range(len(rows)) if (s + 1) % cfg.train.eval_every == 0
                                              or s + 1 == cfg.train.steps]


def test_the_shipped_r1_base_is_the_run_its_card_describes_and_can_add():
    """The tiny R1's base: the cpu preset with the card's changes, and (lab 06's premise) it already answers most
    held-out questions greedily; the notebook measured 96% on all 500, here the first 40 (a few seconds)."""
    model, cfg = capstone.load_weights(DATA / "r1_base.pt", rows=40)
    assert cfg == capstone.preset_config("cpu", **artifacts.RUNS["r1_base"][1])
    assert evals.greedy_accuracy(model, data.rl_splits()["test"][:40], 100, 40)[0] >= 0.85


def test_reference_runs_show_what_their_names_say():
    runs = {n: artifacts.read_csv(DATA / f"{n}.csv") for n in artifacts.RUNS}
    last = {n: sum(r["loss"] for r in rows[-50:]) / len(rows[-50:]) for n, rows in runs.items()}
    vio = {n: sum(r["max_vio"] for r in rows[-50:]) / len(rows[-50:]) for n, rows in runs.items()}
    assert last["healthy"] < runs["healthy"][0]["loss"] - 2.0  # it learns
    assert vio["no_balancing"] > 2 * vio["healthy"]
    assert last["lr_too_high"] > last["healthy"]


@pytest.mark.slow
def test_the_first_steps_of_each_reference_run_are_reproduced(tmp_path):
    """Regenerating a whole run takes minutes; its first steps (the same data, initial weights and schedule) must come
    out as the file says, to the CSV's six significant digits (CPU float rounding may differ between machines)."""
    from dataclasses import replace

    def stop(model, step):
        if step == 2:
            raise KeyboardInterrupt  # after steps 0 and 1 were written to the metrics file

    for name, (_, changes) in artifacts.RUNS.items():
        cfg = capstone.preset_config("cpu", **changes)
        train_ids, val_ids = capstone.corpus_ids(cfg)
        metrics = tmp_path / f"{name}.jsonl"
        with pytest.raises(KeyboardInterrupt):
            train.train_lm(capstone.init_model(cfg), train_ids, val_ids, replace(cfg.train, metrics=str(metrics)),
                           after_step=stop)
        fresh = read_metrics(metrics)
        shipped = artifacts.read_csv(DATA / f"{name}.csv")[:2]
        assert len(fresh) == 2
        for got, want in zip(fresh, shipped):
            for key in ("loss", "grad_norm", "max_vio", "mtp_acceptance", "mtp_loss"):
                if key in want:
                    assert got[key] == pytest.approx(want[key], rel=1e-4), (name, key)


def test_to_csv_keeps_only_deterministic_columns():
    rows = [{"step": 0, "loss": 1.23456789, "tokens": 10, "seconds": 3.2, "tokens_per_s": 9.0, "mfu": 0.1,
             "mtp_acceptance": 0.5, "load": [[1, 2]]}]
    text = artifacts.to_csv(rows)
    assert text.splitlines()[0] == ",".join(artifacts.COLUMNS) and "3.2" not in text and "1.23457" in text
    assert max_vio(torch.tensor([1.0, 3.0])) == 0.5


SMALL = {"model.dim": 32, "model.n_heads": 2, "model.q_lora_rank": 16, "model.kv_lora_rank": 16,
         "model.qk_nope_head_dim": 8, "model.qk_rope_head_dim": 8, "model.v_head_dim": 8, "model.inter_dim": 80,
         "model.moe_inter_dim": 16, "model.n_layers": 2, "model.n_routed_experts": 8, "model.n_expert_groups": 2,
         "model.n_limited_groups": 1, "model.max_seq_len": 64, "model.original_seq_len": 64, "batch_size": 4,
         "block_size": 32, "n_chars": 30_000, "eval_batches": 1}


def _gpu_check(out: Path, runs: str, *extra: str) -> int:
    """gpu_check on the CPU with SMALL's model, 2 steps per run."""
    from dslab.labs.lab06_capstone import gpu_check

    args = ["--device", "cpu", "--steps", "2", "--runs", runs, "--out", str(out), *extra]
    return gpu_check.main(args + [a for k, v in SMALL.items() for a in ("--set", f"{k}={json.dumps(v)}")])


def test_gpu_check_runs_its_code_on_a_cpu_with_a_small_model(tmp_path, capsys):
    assert _gpu_check(tmp_path, "gpu-small:bf16,gpu-small:fp8", "--no-notebook") == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["preset"], r["precision"]) for r in report["runs"]] == [("gpu-small", "bf16"), ("gpu-small", "fp8")]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in report["runs"]) and "notebook" not in report
    assert report["runs"][1]["gemms"] == "real FP8 (torch._scaled_mm)"  # the CPU's reference kernel
    rows = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert [r.split(" | ")[1] for r in rows if r.startswith("| `gpu-small`")] == ["bf16 autocast",
                                                                                 "real FP8 (torch._scaled_mm)"]
    assert "tokens/s" in capsys.readouterr().out


def test_gpu_check_records_a_failed_run_and_an_fp8_fallback_and_goes_on(tmp_path, monkeypatch):
    from dslab.labs.lab06_capstone import gpu_check

    def refuse(*args, **kwargs):
        raise RuntimeError("Only bf16 high precision output types are supported for row-wise scaling.")

    measure = gpu_check.measure
    monkeypatch.setattr(torch, "_scaled_mm", refuse)  # enable_real_fp8's trial GEMM fails: the emulation runs
    monkeypatch.setattr(gpu_check, "measure", lambda preset, precision, *a: refuse() if precision == "bf16"
                        else measure(preset, precision, *a))
    assert _gpu_check(tmp_path, "gpu-small:bf16,gpu-small:fp8", "--no-notebook") == 1  # a run failed
    bf16, fp8 = json.loads((tmp_path / "gpu_check.json").read_text())["runs"]
    assert bf16["error"].startswith("RuntimeError: Only bf16") and "tokens_per_s" not in bf16
    assert fp8["gemms"].startswith("emulated FP8 (fallback: torch._scaled_mm failed") and fp8["tokens_per_s"] > 0
    assert "| failed |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_checks_its_inputs(capsys):
    from dslab.labs.lab06_capstone import gpu_check

    assert gpu_check.notebook_parameters("cuda", 300) == {"PRESET": "gpu-small", "STEPS": 300}
    assert gpu_check.notebook_parameters("cuda", 0) == {"PRESET": "gpu-small"}
    assert gpu_check.notebook_parameters("cpu", 300) == {"PRESET": "cpu", "FAST": True}
    with pytest.raises(ValueError, match="steps"):
        gpu_check.notebook_parameters("cuda", -1)
    with pytest.raises(ValueError, match="runs"):
        gpu_check.parse_runs("gpu-small:fp16")
    with pytest.raises(ValueError, match="--set"):
        validate.settings(["steps"])
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 1 and "no CUDA GPU" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a cut-short or CPU run is not the course map's GPU time
        gpu_check.main(["--device", "cpu", "--record"])


def test_gpu_check_records_only_a_whole_preset_run_for_the_course_map(tmp_path):
    from dslab.labs.lab06_capstone import gpu_check

    whole = {"status": "ok", "parameters": {"PRESET": "gpu-small"}, "wall_seconds": 612.3, "recorded": {"mfu": 0.3}}
    for bad in ({"parameters": {"PRESET": "gpu-small", "STEPS": 300}}, {"status": "FAILED (x)"}):
        with pytest.raises(ValueError, match="nb must"):
            gpu_check.record_gpu_run({**whole, **bad}, tmp_path / "06_capstone.ipynb")
    gpu_check.record_gpu_run(whole, tmp_path / "06_capstone.ipynb")
    entry = json.loads((tmp_path / "runs.json").read_text())["06_capstone"]["gpu"]
    assert entry["seconds"] == 612.3 and entry["numbers"] == {"mfu": 0.3}


@pytest.mark.slow
def test_gpu_check_executes_the_capstone_notebook_and_reads_its_record(tmp_path):
    """The notebook at PRESET="cpu", FAST=True (about 80 s on one busy core): its recorded numbers land in the JSON
    and its row, with the tiny R1's accuracy, in the table."""
    from dslab.course.notebook import fmt

    assert _gpu_check(tmp_path, "gpu-small:bf16") == 0
    nb = json.loads((tmp_path / "gpu_check.json").read_text())["notebook"]
    assert nb["status"] == "ok" and nb["parameters"] == {"PRESET": "cpu", "FAST": True} and nb["wall_seconds"] > 0
    assert nb["recorded"]["preset"] == "cpu" and nb["recorded"]["tokens_per_s"] > 0
    assert {"val_loss", "mfu", "greedy_after"} <= nb["recorded"].keys() and (tmp_path / "06_capstone.ipynb").exists()
    row = next(r for r in (tmp_path / "gpu_check.md").read_text().splitlines() if r.startswith("| notebook"))
    assert f"tiny R1 greedy accuracy {fmt(nb['recorded']['greedy_after'])}" in row
    assert f"{nb['recorded']['tokens_per_s']:,}" in row and "FAST" in row


def test_readme_preset_table_is_the_accounting_and_the_reference_run():
    """datasets/capstone/README.md's preset table: lab 00's counts of each preset and, for the cpu preset, the loss the
    shipped healthy run reached (the only preset the course has run)."""
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    healthy = json.loads((DATA / "runs.json").read_text(encoding="utf-8"))["healthy"]["summary"]
    for name in capstone.PRESETS:
        card = capstone.preset_card(name)
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` |"))
        for key in ("total_params", "activated_params", "tokens", "mtp_params"):
            assert f"{card[key]:,}" in row, (name, key)
        assert ("not measured" in row) == (name != "cpu") and ("not measured" in card["reached"]) == (name != "cpu")
    assert f"{healthy['final_val_loss']:.3f}" in capstone.PRESETS["cpu"].reached
    cpu_row = next(line for line in readme.splitlines() if line.startswith("| `cpu`"))
    assert f"{healthy['final_val_loss']:.3f}" in cpu_row


def test_the_executed_solution_records_a_tiny_r1_that_answers():
    """The cpu preset's tiny R1 (the shipped r1_base, cold start, GRPO) answers >= 70% of lab 05's 500 held-out test
    questions greedily in the executed solution, and `make run` kept the same figure in solutions/runs.json."""
    nb = json.loads((ROOT / "solutions" / "06_capstone.ipynb").read_text(encoding="utf-8"))
    records = [o["data"]["application/vnd.dslab.result+json"] for c in nb["cells"] for o in c.get("outputs", [])
               if "application/vnd.dslab.result+json" in o.get("data", {})]
    assert len(records) == 1 and records[0]["preset"] == "cpu"
    assert records[0]["greedy_after"] >= 0.70 and records[0]["greedy_before"] >= 0.70
    kept = json.loads((ROOT / "solutions" / "runs.json").read_text(encoding="utf-8"))["06_capstone"]["defaults"]
    assert kept["numbers"]["greedy_after"] == pytest.approx(records[0]["greedy_after"], abs=0.02)
