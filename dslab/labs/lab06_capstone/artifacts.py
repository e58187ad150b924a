"""``python -m dslab.labs.lab06_capstone.artifacts [NAME ...]``: make the reference runs lab 06 ships in
datasets/capstone/ (seeded, CPU, one torch thread).

Each run is the ``cpu`` preset (``dslab.capstone.preset_config("cpu")``) with one change, trained by the same code as
``python -m dslab train --preset cpu --out runs/NAME --set KEY=VALUE``; its per-step metrics are written as
datasets/capstone/NAME.csv (wall-clock columns dropped: they depend on the machine) and its command, settings and
summary into datasets/capstone/runs.json. ``r1_base`` is the tiny R1's starting point (lab 06 section 11): the preset
trained 4x longer on whole chats of mostly arithmetic; its weights go to datasets/capstone/r1_base.pt (float16).
``--out DIR`` writes elsewhere; ``--steps N`` shortens every run (what the tests do); ``--work DIR`` keeps the run
folders there, so that a stopped run resumes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dslab import capstone, train
from dslab.checkpoint import read_metrics

RUNS = {  # name: (what it shows, the settings that differ from the cpu preset)
    "healthy": ("the cpu preset as it is", {}),
    "lr_too_high": ("learning rate 10x the preset's (3e-2)", {"lr": 0.03}),
    "no_balancing": ("no aux-loss-free bias update (gamma = 0) and no balance loss", {"bias_gamma": 0.0}),
    "mtp_off": ("no MTP module (D = 0): the main model alone", {"model.n_mtp": 0}),
    "r1_base": ("the tiny R1's base: 4x the steps on whole chats (192 characters) of mostly arithmetic",
                {"steps": 2400, "block_size": 192, "prose_share": 0.1, "n_chars": 4_000_000, "warmup": 100,
                 "eval_every": 200, "checkpoint_every": 200}),
}
WEIGHTS = ("r1_base",)  # runs whose final weights are shipped too (NAME.pt, capstone.export_weights)
COLUMNS = ("step", "tokens", "lr", "loss", "val_loss", "grad_norm", "max_vio", "mtp_acceptance", "mtp_loss")


def command(name: str) -> str:
    """The command line that makes reference run ``name``."""
    sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in RUNS[name][1].items())
    return f"python -m dslab train --preset cpu --out runs/{name} --threads 1" + (f" {sets}" if sets else "")


def to_csv(history: list[dict]) -> str:
    """The deterministic columns of a history as CSV text (empty where a row has no value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in history:
        w.writerow(["" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                    for c in COLUMNS])
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    """A reference CSV as rows of floats (missing values left out)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def make_run(name: str, out: Path, steps: int | None = None, work: Path | None = None) -> dict:
    """Train reference run ``name`` and write out/NAME.csv (and out/NAME.pt for the runs in WEIGHTS); return its
    entry for runs.json. ``work``: where the run folder lives (a kept folder resumes; default a temporary one)."""
    about, changes = RUNS[name]
    cfg = capstone.preset_config("cpu", **changes, **({"steps": steps} if steps else {}))
    with tempfile.TemporaryDirectory() as tmp:
        folder = (work or Path(tmp)) / name
        t0 = time.process_time()
        try:
            res = capstone.pretraining_run(cfg, folder)
            history, summary, stopped = res.history, res.summary, None
            if name in WEIGHTS:
                capstone.export_weights(res.model, cfg, out / f"{name}.pt")
        except train.TrainingDiverged as e:
            history = read_metrics(folder / "metrics.jsonl")
            summary, stopped = {}, str(e)
        cpu = time.process_time() - t0
    (out / f"{name}.csv").write_text(to_csv(history), encoding="utf-8")
    keep = ("final_loss", "final_val_loss", "max_vio", "mtp_acceptance", "tokens", "total_params",
            "activated_params", "wall_seconds", "step_seconds", "tokens_per_s", "mfu", "mfu_main", "peak", "threads")
    return {"about": about, "command": command(name) + (f" --set steps={steps}" if steps else ""),
            "settings": cfg.to_dict()["train"] | {k: v for k, v in changes.items() if k not in cfg.to_dict()["train"]},
            "cpu_seconds": round(cpu, 1), "stopped": stopped, "steps": len(history),
            "summary": {k: summary.get(k) for k in keep} if summary else None,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.labs.lab06_capstone.artifacts", description=__doc__)
    p.add_argument("names", nargs="*", help=f"runs to make (default: all of {', '.join(RUNS)})")
    p.add_argument("--out", type=Path, default=Path("datasets") / "capstone")
    p.add_argument("--steps", type=int, help="shorten every run (a smoke run)")
    p.add_argument("--work", type=Path, help="keep the run folders here (an interrupted run resumes)")
    a = p.parse_args(argv)
    unknown = set(a.names) - set(RUNS)
    if unknown:
        p.error(f"unknown run(s) {sorted(unknown)}; runs: {', '.join(RUNS)}")
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    index = a.out / "runs.json"
    entries = json.loads(index.read_text(encoding="utf-8")) if index.exists() else {}
    for name in a.names or list(RUNS):
        entries[name] = make_run(name, a.out, a.steps, a.work)
        index.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{name}: {entries[name]['steps']} steps, {entries[name]['cpu_seconds']} CPU s"
              + (f", stopped: {entries[name]['stopped']}" if entries[name]["stopped"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
