"""``python -m dslab.labs.lab05_grpo.artifacts``: make what lab 05 ships in datasets/ (seeded, CPU, one torch thread).

    python -m dslab.labs.lab05_grpo.artifacts data         # datasets/rl_arithmetic/{train,val,test,hard}.jsonl
    python -m dslab.labs.lab05_grpo.artifacts base         # datasets/grpo/{base,student}.{pt,json}: pretraining
    python -m dslab.labs.lab05_grpo.artifacts runs [NAME]  # datasets/grpo/runs/<name>-s<seed>.jsonl (+ r1_zero, r1.pt)
    python -m dslab.labs.lab05_grpo.artifacts all

``--out DIR`` writes elsewhere (DIR/rl_arithmetic, DIR/grpo); ``--seeds 0 1 2`` makes each run with those training
seeds (the default); ``--reduced`` makes everything tiny (seconds: what the tests run). ``runs`` starts from the
checkpoints in DIR/grpo, so run ``base`` first. Times in the metrics files are CPU seconds of the run's own process
(``time.process_time``), so they hold on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from dslab import data, evals, grpo, sft
from dslab.checkpoint import write_metrics
from dslab.labs.lab05_grpo import experiments as ex
from dslab.labs.lab05_grpo import shipped

FINAL_EVAL_TASKS = {"test": 500, "hard": 200}  # the whole test split; each problem with 16 samples as well
REDUCED_PRETRAIN = {"steps": 30, "schedule_steps": 30, "batch_size": 8, "n_chars": 60_000}
SHIPPED_POLICIES = {"r1_zero": "r1_zero.pt", "cold_start_consistency": "r1.pt"}  # seed 0's policy, with its card


def _reduce(cfg: grpo.GRPOConfig) -> grpo.GRPOConfig:
    return replace(cfg, steps=2, prompts_per_step=4, num_generations=4, eval_every=2, eval_tasks=8)


def make_data(out: Path) -> list[Path]:
    return data.freeze_tasks(out)


def make_base(out: Path, reduced: bool = False, sizes: tuple[str, ...] = ("base", "student")) -> dict:
    """Pretrain the base policy and the student; write each checkpoint with a card (how, how long, scores)."""
    test = shipped.split("test")
    cards = {}
    for size in sizes:
        spec = ex.Pretraining(size=size, **(REDUCED_PRETRAIN if reduced else {}))
        (model, history), cpu, wall = ex.timed(ex.pretrain, spec, test[:20 if reduced else 100],
                                               10 if reduced else 500)
        card = {"made_by": f"python -m dslab.labs.lab05_grpo.artifacts base{' --reduced' if reduced else ''}",
                "pretraining": spec.__dict__, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
                "torch_threads": torch.get_num_threads(), "curve": [r for r in history if "greedy_accuracy" in r]}
        path = out / "grpo" / f"{size}.pt"
        shipped.save_policy(model, path, card)  # rounds the weights to what is shipped, then they are scored
        scores = score_base(model, test[:20] if reduced else test, k=4 if reduced else 16)
        shipped.update_card(path, **scores)
        card.update(scores)
        cards[size] = card
        print(f"{size}: {model.num_params():,} params, test greedy accuracy {scores['test_greedy_accuracy']:.3f}, "
              f"pass@k {scores['test_pass_at_k']:.3f}, {cpu / 60:.1f} CPU min", flush=True)
    return cards


def score_base(model: torch.nn.Module, tasks: list[data.Task], k: int = 16) -> dict:
    """What a base's card records: greedy accuracy and format on ``tasks``, and pass@1 / pass@k of k samples at
    R1's temperature 0.6 (how much room RL has: greedy after RL rarely rises above the base's pass@k)."""
    acc, fmt = evals.greedy_accuracy(model, tasks, ex.MAX_NEW["test"])
    res = evals.evaluate(model, tasks, k=k, max_new_tokens=ex.MAX_NEW["test"], seed=0, greedy=False)
    return {"test_tasks": len(tasks), "test_greedy_accuracy": acc, "test_greedy_format": fmt,
            "test_pass_at_1": res["pass@1"], "test_pass_at_k": res[f"pass@{k}"], "k": k}


def _start(spec: ex.RunSpec, folder: Path, reduced: bool, log: dict, seed: int) -> torch.nn.Module:
    """The policy a run starts from (a fresh copy)."""
    size = "student" if spec.start in ("student", "distill") else "base"
    model = shipped.load_policy(size, rows=256, path=folder / f"{size}.pt")
    if spec.start == "cold_start":
        pairs = ex.cold_start_examples(40 if reduced else ex.COLD_START_EXAMPLES)
        cfg = replace(ex.COLD_START, steps=3 if reduced else ex.COLD_START.steps, eval_tasks=0, seed=seed)
        _, cpu, _ = ex.timed(sft.train_sft, model, pairs, cfg)
        log["sft_cpu_seconds"] = cpu
        test = shipped.split("test")[: 8 if reduced else FINAL_EVAL_TASKS["test"]]  # the cold start alone
        acc, fmt = evals.greedy_accuracy(model.eval(), test, ex.MAX_NEW["test"])
        log["cold_start_only"] = {"test": {"greedy": acc, "format": fmt, "tasks": len(test)}}
    return model


def make_run(name: str, out: Path, reduced: bool = False, seed: int = 0) -> dict:
    """One run of ``ex.run_specs()`` with training seed ``seed``: its metrics file, and a summary of the final policy
    on test and hard (evaluated with the same sampling seed for every run)."""
    spec = ex.run_specs()[name]
    folder = out / "grpo"
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    val = shipped.split("val")
    log: dict = {"name": name, "about": spec.about, "seed": seed}
    metrics = shipped.run_path(name, seed, folder=runs)
    model = _start(spec, folder, reduced, log, seed)
    if spec.start == "distill":
        teacher = shipped.load_policy("base", rows=256, path=folder / "r1_zero.pt")
        tasks = shipped.split("train")[: 16 if reduced else ex.DISTILL_TASKS]
        pairs, cpu, _ = ex.timed(ex.rejection_sample, teacher, tasks, 4, seed=seed)
        log.update(teacher_sampling_cpu_seconds=cpu, distill_pairs=len(pairs), distill_tasks=len(tasks))
        cfg = replace(ex.DISTILL, steps=3 if reduced else ex.DISTILL.steps, eval_tasks=8 if reduced else 200,
                      metrics=str(metrics), seed=seed)
        rows = sft.train_sft(model, pairs or [(tasks[0].prompt, data.completion(tasks[0]))], cfg, val)
        for r in rows:  # the teacher's sampling is part of what distillation costs
            r["cpu_seconds"] += cpu
        write_metrics(metrics, rows, append=False)
    else:
        cfg = replace(_reduce(spec.cfg) if reduced else spec.cfg, metrics=str(metrics), seed=seed)
        rows = grpo.train_grpo(model, shipped.split("train"), cfg, val, score=ex.scorer(), desc=name)
        if log.get("sft_cpu_seconds"):  # the cold start's SFT is part of the run's cost
            for r in rows:
                r["cpu_seconds"] += log["sft_cpu_seconds"]
            write_metrics(metrics, rows, append=False)
        if name in SHIPPED_POLICIES and seed == 0:
            shipped.save_policy(model, folder / SHIPPED_POLICIES[name], {
                "made_by": f"python -m dslab.labs.lab05_grpo.artifacts runs {name}{' --reduced' if reduced else ''}",
                "grpo": ex.config_dict(cfg), "seed": seed})
            test = shipped.split("test")[: 8 if reduced else FINAL_EVAL_TASKS["test"]]
            acc, fmt = evals.greedy_accuracy(model, test, ex.MAX_NEW["test"])
            shipped.update_card(folder / SHIPPED_POLICIES[name], test_tasks=len(test), test_greedy_accuracy=acc,
                                test_greedy_format=fmt)
    k = 4 if reduced else 16
    for split_name in ("test", "hard"):
        tasks = shipped.split(split_name)[: 8 if reduced else FINAL_EVAL_TASKS[split_name]]
        res = evals.evaluate(model, tasks, k=k, max_new_tokens=ex.MAX_NEW[split_name], seed=0)
        log[split_name] = {m: res[m] for m in ("greedy", "pass@1", f"pass@{k}", f"cons@{k}", "format")}
        log[split_name]["tasks"] = len(tasks)
        log[split_name]["style"] = ex.writing_style(res["samples"])
    log["cpu_seconds"] = rows[-1]["cpu_seconds"]
    shipped.run_path(name, seed, ".summary.json", runs).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n",
                                                                   encoding="utf-8")
    print(f"{name} seed {seed}: test greedy {log['test']['greedy']:.3f}, hard greedy {log['hard']['greedy']:.3f}, "
          f"{log['cpu_seconds'] / 60:.1f} CPU min", flush=True)
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.labs.lab05_grpo.artifacts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["data", "base", "runs", "all"])
    p.add_argument("names", nargs="*", help="runs to make (default: all, r1_zero first)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[3] / "datasets")
    p.add_argument("--reduced", action="store_true", help="tiny sizes, seconds (for tests)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of each run")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = a.names or list(ex.run_specs())
    unknown = set(names) - set(ex.run_specs())
    if unknown:
        p.error(f"unknown run(s) {sorted(unknown)}; runs: {', '.join(ex.run_specs())}")
    t0 = time.perf_counter()
    if a.what in ("data", "all"):
        for path in make_data(a.out):
            print(f"wrote {path}")
    if a.what in ("base", "all"):
        make_base(a.out, a.reduced)
    if a.what in ("runs", "all"):
        for name in names:
            for seed in a.seeds:
                make_run(name, a.out, a.reduced, seed)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
