"""``python -m dslab.labs.lab06_capstone.gpu_check``: the capstone's GPU measurements in one prepared script.

On one CUDA GPU it first trains, for a fixed number of steps each (no checkpoints kept): the ``gpu-small`` and
``gpu-full`` presets in bf16 (tokens/s, MFU against the datasheet peak, peak memory), then ``gpu-small`` with real FP8
GEMMs (``precision="fp8"``, ``torch._scaled_mm``) and with lab 02's emulated FP8, to compare their speed and their
loss with bf16 over the same steps. A run that fails (an FP8 kernel the GPU rejects, memory) is recorded with its
error and the script goes on; ``gemms`` says whether the fp8 run used real FP8 GEMMs or fell back to the emulation.

Then it executes the lab 06 notebook (``solutions/06_capstone.ipynb``) with papermill, as ``python -m dslab run``
does, at ``PRESET="gpu-small"`` with pretraining cut to ``--notebook-steps`` steps (default 300; 0: the preset's
own), and reads back what the notebook records (``dslab.record``: tokens/s, MFU, validation loss, and the tiny R1's
accuracy from the notebook's own ``capstone.grpo_run``, which is therefore not run a second time).

It prints one line per run and writes into OUT (``--out``, default build/gpu_check): ``gpu_check.json`` (the GPU's
name, torch's version, every run's summary, and ``notebook``: its parameters, status, wall seconds and recorded
numbers), ``gpu_check.md`` (one table, a row per run and one for the notebook, to paste into README's benchmark
table) and the executed ``06_capstone.ipynb``. Both files are rewritten after every run, so an interrupted check
keeps what it measured. It exits 1 when a run or the notebook failed. ``--no-notebook`` skips the notebook;
``--notebook-steps 0 --record`` runs it whole and keeps its time in solutions/runs.json ("gpu"), from which
``python -m dslab coursemap`` fills the course map's GPU column.

``--device cpu --set ...`` runs the same code on a CPU with a smaller model and the notebook at ``PRESET="cpu",
FAST=True`` (what the tests do); ``--steps`` changes the number of steps per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from dslab import capstone, validate
from dslab.course.notebook import fmt
from dslab.course.run import record_run, run_notebook
from dslab.fp8 import real_fp8_supported

RUNS = (("gpu-small", "bf16"), ("gpu-full", "bf16"), ("gpu-small", "fp8"), ("gpu-small", "fp8-emulated"))
NOTEBOOK = Path(__file__).resolve().parents[3] / "solutions" / "06_capstone.ipynb"
FALLBACK = "using the FP8 emulation"  # what enable_real_fp8 warns when the device cannot run torch._scaled_mm
GEMMS = {"fp32": "fp32", "bf16": "bf16 autocast", "fp8-emulated": "emulated FP8", "bf16-emulated": "emulated BF16",
         "fp8": "real FP8 (torch._scaled_mm)"}


def parse_runs(text: str) -> list[tuple[str, str]]:
    """``--runs`` "preset:precision,..." -> [(preset, precision), ...], each checked against the capstone's names."""
    runs = []
    for item in filter(None, text.split(",")):
        preset, _, precision = item.partition(":")
        if preset not in capstone.PRESETS or precision not in capstone.PRECISIONS:
            raise ValueError(f"runs must be preset:precision pairs with a preset in {sorted(capstone.PRESETS)} and a "
                             f"precision in {capstone.PRECISIONS}, got {item!r}")
        runs.append((preset, precision))
    return runs


def measure(preset: str, precision: str, steps: int, device: str, changes: dict) -> dict:
    """Train ``preset`` at ``precision`` for ``steps`` steps in a temporary folder -> its summary (plus the mean
    training loss over the last quarter of the steps, and ``gemms``: the GEMMs the run really used)."""
    validate.integer("steps", steps, 1)
    settings = {"precision": precision, "device": device, "steps": steps, "eval_every": steps,
                "checkpoint_every": steps, "warmup": max(1, steps // 10), "load_every": 0,
                "n_chars": min(5_000_000, capstone.preset_config(preset).n_chars), **changes}
    cfg = capstone.preset_config(preset, **settings)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        # the fp8 fallback warns once per model; "always" so that an earlier run's warning does not hide this one's
        warnings.filterwarnings("always", message=f".*{FALLBACK}", category=RuntimeWarning)
        result = capstone.pretraining_run(cfg, Path(tmp) / "run", desc=f"{preset} {precision}")
    fallback = [str(w.message) for w in caught if FALLBACK in str(w.message)]
    for w in caught:
        if FALLBACK not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    tail = result.history[-max(1, steps // 4):]
    return {**result.summary, "preset": preset, "precision": precision,
            "gemms": f"emulated FP8 (fallback: {fallback[0]})" if fallback else GEMMS.get(precision, precision),
            "loss_last_quarter": sum(r["loss"] for r in tail) / len(tail)}


def measure_or_record(preset: str, precision: str, steps: int, device: str, changes: dict) -> dict:
    """``measure``, or {preset, precision, error} when the run raises: one GPU that rejects a kernel or runs out of
    memory must not cost the other runs' numbers."""
    try:
        return measure(preset, precision, steps, device, changes)
    except Exception as e:  # noqa: BLE001 - recorded in the report; the next run still gets its turn
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return {"preset": preset, "precision": precision, "error": f"{type(e).__name__}: {first}"}


def run_line(s: dict) -> str:
    """One run as the line the script prints."""
    if "error" in s:
        return f"{s['preset']:<10} {s['precision']:<13} FAILED  {s['error']}"
    memory = f"{s['peak_memory_bytes'] / 2**30:.1f} GiB" if s["peak_memory_bytes"] else "n/a"
    return (f"{s['preset']:<10} {s['precision']:<13} {s['tokens_per_s']:>12,.0f} tokens/s  MFU {s['mfu']:.1%}  peak "
            f"memory {memory}  loss (last quarter) {s['loss_last_quarter']:.3f}  [{s['gemms']}; {s['peak']}]")


def notebook_parameters(device: str, steps: int) -> dict:
    """The notebook's papermill parameters: on a GPU gpu-small cut to ``steps`` pretraining steps (0: the preset's
    own), on a CPU the cpu preset at FAST (a smoke run of every cell)."""
    validate.integer("steps", steps, 0)
    if not device.startswith("cuda"):
        return {"PRESET": "cpu", "FAST": True}
    return {"PRESET": "gpu-small", **({"STEPS": steps} if steps else {})}


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (which the notebook's kernel inherits) and put every touched one back after,
    including the ones ``run_notebook`` sets for itself."""
    keys = [*values, "DSLAB_HEADLESS", "TQDM_DISABLE"]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_capstone_notebook(path: Path, out: Path, device: str, steps: int) -> dict:
    """Execute the capstone notebook into ``out`` on ``device`` -> {path, parameters, status, wall_seconds,
    recorded}. The kernel gets a fresh temporary directory: the notebook keeps its run under the system's temporary
    folder and resumes a finished one, which would turn the measurement into a reload."""
    params = notebook_parameters(device, steps)
    dst = out / path.name
    tmp = Path(tempfile.mkdtemp(prefix="dslab-gpu-check-"))
    status, seconds, numbers = f"FAILED (no notebook at {path})", 0.0, {}
    try:
        if path.exists():
            with environment(DSLAB_DEVICE=device, TMPDIR=str(tmp)):
                status, seconds, numbers = run_notebook(path, dst, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(dst), "parameters": params, "status": status, "wall_seconds": round(seconds, 1),
            "recorded": numbers}


def record_gpu_run(nb: dict, notebook: Path) -> None:
    """Keep a whole-preset notebook run as the "gpu" entry of runs.json beside the notebook, from which
    ``python -m dslab coursemap`` writes the course map's GPU column (a cut-short run's time would understate it)."""
    if nb["status"] != "ok" or "STEPS" in nb["parameters"] or nb["parameters"].get("FAST"):
        raise ValueError(f"nb must be a whole-preset run that finished, got {nb['status']} with {nb['parameters']}")
    record_run(notebook.parent, notebook.stem, "gpu", nb["wall_seconds"], nb["recorded"])


def _cell(value: object, pattern: str) -> str:
    """A recorded number formatted for the table ("n/a" when the notebook did not record it, as is otherwise)."""
    if value is None:
        return "n/a"
    return format(value, pattern) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def table(report: dict) -> str:
    """gpu_check.md: one markdown row per training run and one for the notebook, then where it was measured."""
    lines = ["| run | GEMMs | tokens/s | MFU | peak memory | loss | notes |", "|---|---|---|---|---|---|---|"]
    for s in report["runs"]:
        name = f"`{s['preset']}` {s['precision']}, {report['steps']} steps"
        if "error" in s:
            lines.append(f"| {name} | failed | | | | | {s['error'].replace('|', '/')} |")
            continue
        memory = f"{s['peak_memory_bytes'] / 2**30:.1f} GiB" if s["peak_memory_bytes"] else "n/a"
        lines.append(f"| {name} | {s['gemms']} | {s['tokens_per_s']:,.0f} | {s['mfu']:.1%} | {memory} | "
                     f"{s['loss_last_quarter']:.3f} (train, last quarter) | peak FLOP/s: {s['peak']} |")
    nb = report.get("notebook")
    if nb:
        lines.append(notebook_row(nb))
    lines.append(f"\nMeasured on {report['device']}, torch {report['torch']}.")
    return "\n".join(lines) + "\n"


def notebook_row(nb: dict) -> str:
    """The notebook's row: its speed and loss as recorded, the tiny R1's greedy accuracy, and its wall time."""
    r, p = nb["recorded"], nb["parameters"]
    steps = f"{p['STEPS']} steps" if "STEPS" in p else "FAST" if p.get("FAST") else "the preset's steps"
    r1 = (f"tiny R1 greedy accuracy {fmt(r['greedy_after'])}" if "greedy_after" in r
          else "tiny R1 accuracy not recorded")
    if "format_before" in r and "format_after" in r:
        r1 += f" (format {fmt(r['format_before'])} → {fmt(r['format_after'])})"
    status = "" if nb["status"] == "ok" else f"; {nb['status'].replace('|', '/')}"
    speed = f"{_cell(r.get('tokens_per_s'), ',.0f')} | {_cell(r.get('mfu'), '.1%')}"
    return (f"| notebook `06_capstone`, `{p['PRESET']}`, {steps} | as the preset | {speed} | n/a | "
            f"{_cell(r.get('val_loss'), '.3f')} (validation) | {r1}; {nb['wall_seconds']:.0f} s wall{status} |")


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "gpu_check.md").write_text(table(report), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.labs.lab06_capstone.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="training steps per run")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run with --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--runs", default=",".join(f"{a}:{b}" for a, b in RUNS), help="preset:precision,... ('' for none)")
    p.add_argument("--out", type=Path, default=Path("build") / "gpu_check")
    p.add_argument("--notebook-steps", type=int, default=300,
                   help="the notebook's pretraining steps on a GPU (0: the preset's own); a CPU runs it at FAST")
    p.add_argument("--notebook", type=Path, default=NOTEBOOK, help="the capstone notebook to execute")
    p.add_argument("--no-notebook", action="store_true", help="only the training runs")
    p.add_argument("--record", action="store_true", help="keep the notebook's time and numbers as runs.json's "
                   "'gpu' entry for the course map (needs a GPU and --notebook-steps 0)")
    a = p.parse_args(argv)
    if a.record and (a.no_notebook or a.notebook_steps or not a.device.startswith("cuda")):
        p.error("--record keeps a whole-preset GPU run of the notebook: use it with --notebook-steps 0 on cuda")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (the tables keep saying 'not measured')")
        return 1
    validate.integer("steps", a.steps, 1)
    validate.integer("notebook_steps", a.notebook_steps, 0)
    changes, runs = validate.settings(a.set), parse_runs(a.runs)
    report = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "steps": a.steps, "runs": []}
    for preset, precision in runs:
        if precision == "fp8" and not real_fp8_supported(a.device):
            print(f"{preset} fp8: skipped, this device has no FP8 GEMMs")
            continue
        report["runs"].append(measure_or_record(preset, precision, a.steps, a.device, changes))
        print(run_line(report["runs"][-1]), flush=True)
        write(report, a.out)
    if not a.no_notebook:
        print(f"executing {a.notebook} ...", flush=True)
        report["notebook"] = run_capstone_notebook(a.notebook, a.out, a.device, a.notebook_steps)
        nb = report["notebook"]
        print(f"notebook {nb['status']} in {nb['wall_seconds']:.0f} s: "
              + ", ".join(f"{k}={fmt(v)}" for k, v in nb["recorded"].items()), flush=True)
        if a.record and nb["status"] == "ok":
            record_gpu_run(nb, a.notebook)
            print(f"recorded in {a.notebook.parent / 'runs.json'}: `python -m dslab coursemap` fills the GPU column")
    write(report, a.out)
    print(f"wrote {a.out / 'gpu_check.json'} and {a.out / 'gpu_check.md'}")
    failed = any("error" in s for s in report["runs"]) or report.get("notebook", {}).get("status", "ok") != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
