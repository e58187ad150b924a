"""``python -m dslab.labs.lab06_capstone.gpu_check``: the capstone's GPU measurements in one prepared script.

On one CUDA GPU it trains, for a fixed number of steps each (no checkpoints kept): the ``gpu-small`` and ``gpu-full``
presets in bf16 (tokens/s, MFU against the datasheet peak, peak memory), then ``gpu-small`` with real FP8 GEMMs
(``precision="fp8"``, ``torch._scaled_mm``) and with lab 02's emulated FP8, to compare their speed and their loss
with bf16 over the same steps. It prints one line per run and writes ``OUT/gpu_check.json`` with the GPU's name,
torch's version and every run's summary. About five minutes on an H100.

``--device cpu --set ...`` runs the same code on a CPU with a smaller model (what the tests do); ``--steps`` changes
the number of steps per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from dslab import capstone
from dslab.fp8 import real_fp8_supported

RUNS = (("gpu-small", "bf16"), ("gpu-full", "bf16"), ("gpu-small", "fp8"), ("gpu-small", "fp8-emulated"))


def measure(preset: str, precision: str, steps: int, device: str, changes: dict) -> dict:
    """Train ``preset`` at ``precision`` for ``steps`` steps in a temporary folder -> its summary (plus the mean
    training loss over the last quarter of the steps)."""
    settings = {"precision": precision, "device": device, "steps": steps, "eval_every": steps,
                "checkpoint_every": steps, "warmup": max(1, steps // 10), "load_every": 0,
                "n_chars": min(5_000_000, capstone.preset_config(preset).n_chars), **changes}
    cfg = capstone.preset_config(preset, **settings)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        result = capstone.pretraining_run(cfg, Path(tmp) / "run", desc=f"{preset} {precision}")
    tail = result.history[-max(1, steps // 4):]
    return {**result.summary, "preset": preset, "precision": precision,
            "loss_last_quarter": sum(r["loss"] for r in tail) / len(tail)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.labs.lab06_capstone.gpu_check", description=__doc__)
    p.add_argument("--steps", type=int, default=100, help="training steps per run")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run with --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--runs", default=",".join(f"{a}:{b}" for a, b in RUNS), help="preset:precision,...")
    p.add_argument("--out", type=Path, default=Path("build") / "gpu_check")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (the tables keep saying 'not measured')")
        return 1
    changes = {}
    for pair in a.set:
        key, _, value = pair.partition("=")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    report = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "steps": a.steps, "runs": []}
    for item in a.runs.split(","):
        preset, precision = item.split(":")
        if precision == "fp8" and not real_fp8_supported(a.device):
            print(f"{preset} fp8: skipped, this device has no FP8 GEMMs")
            continue
        s = measure(preset, precision, a.steps, a.device, changes)
        report["runs"].append(s)
        memory = f"{s['peak_memory_bytes'] / 2**30:.1f} GiB" if s["peak_memory_bytes"] else "n/a"
        print(f"{preset:<10} {precision:<13} {s['tokens_per_s']:>12,.0f} tokens/s  MFU {s['mfu']:.1%}  peak memory "
              f"{memory}  loss (last quarter) {s['loss_last_quarter']:.3f}  [{s['peak']}]", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
