"""Command-line faces: doctor, run, bench, and the notebook set-up contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dslab(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dslab", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_doctor_prints_one_line_per_requirement():
    out = _dslab("doctor")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    names = [ln.split("]")[1].split(":")[0].strip() for ln in lines]
    assert {"python", "torch", "jupyterlab", "ipywidgets", "matplotlib", "papermill", "nbval", "disk"} <= set(names)
    assert out.returncode == (1 if any(ln.startswith("[FAIL]") for ln in lines) else 0)
    assert "device" in next(ln for ln in lines if "] torch:" in ln)


def test_doctor_fails_when_a_requirement_is_missing(monkeypatch, capsys):
    from dslab.course import doctor

    monkeypatch.setattr(doctor, "CHECKS", [("ghost", doctor._module("no_such_module_xyz", "test"))])
    assert doctor.doctor() == 1
    assert capsys.readouterr().out.startswith("[FAIL] ghost")


def test_bench_lists_and_rejects_unknown_names():
    out = subprocess.run([sys.executable, "-m", "dslab.bench", "no-such-bench"], capture_output=True, text=True)
    assert out.returncode == 2 and "available" in out.stderr


def test_bench_result_line_format():
    from dslab.bench import Result

    assert Result("moe", 1.18, "x", "<=", 1.25).line() == "moe: 1.18x (target <= 1.25x)"
    assert Result("mla", 1.4, "x", ">=", 1.5).met is False


def test_paired_ratios_one_per_round_and_validated():
    from dslab.bench import paired_ratio, paired_ratios

    calls = []
    ratios = paired_ratios(lambda: calls.append("c"), lambda: calls.append("b"), rounds=4)
    assert len(ratios) == 4 and all(r > 0 for r in ratios)
    assert calls[:2] == ["c", "b"] and calls.count("c") == 5  # one warm-up each, then interleaved
    assert paired_ratio(lambda: None, lambda: None, rounds=1) > 0
    with pytest.raises(ValueError, match="rounds"):
        paired_ratios(lambda: None, lambda: None, rounds=0)


def test_num_threads_sets_and_restores():
    import torch

    from dslab.runtime import num_threads

    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with num_threads(0):
            pass
    out = subprocess.run([sys.executable, "-m", "dslab.bench", "moe", "--threads", "0"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "--threads" in out.stderr


def test_moe_bench_counts_matmul_time_only():
    import torch

    from dslab.bench.moe import _dense_gemm_flops, _moe_gemm_flops, gemm_ms

    a = torch.randn(256, 256)
    assert gemm_ms(lambda: a @ a) > 0
    assert gemm_ms(lambda: a.add(1.0).sigmoid_()) == 0
    assert _moe_gemm_flops(8192) / _dense_gemm_flops(8192) == pytest.approx(1 + 64 / (3 * 896))


@pytest.mark.slow
def test_run_executes_a_notebook_and_reports_its_numbers(tmp_path):
    out = _dslab("run", "00", "--fast", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("00_by_the_numbers"))
    assert " ok " in line and "v3_total_B=671" in line and "kv_reduction_pct=93.3" in line
    executed = nbformat.read(tmp_path / "00_by_the_numbers.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "FAST = True" in injected[0].source


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_honours_the_contract(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SEED" in params[0].source and "FAST" in params[0].source
    setup = code[0].source
    assert "import dslab" in setup and "ModuleNotFoundError" in setup and "dslab.require(" in setup
    assert nb.cells[0].cell_type == "markdown" and "Time" in nb.cells[0].source
    assert any("nbval-check-output" in c.metadata.get("tags", []) for c in code)
    assert any("dslab.record(" in c.source for c in code)
    assert nb.metadata.kernelspec["name"] == "python3"
    for c in code:  # committed executed: every cell has run, in order, without errors
        assert c.execution_count is not None
        assert not any(o.get("output_type") == "error" for o in c.outputs), c.source[:80]
    json.dumps(nb)  # serialisable as committed
