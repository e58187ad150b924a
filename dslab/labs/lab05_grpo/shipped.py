"""What lab 05 ships in ``datasets/`` and how it is read and written: the frozen RL splits, the policy checkpoints
with their JSON cards (``base.pt``, ``student.pt``, ``r1_zero.pt``, ``r1.pt``: R1's recipe), and the metrics and
summaries of the comparison runs (``runs/<name>.jsonl``, ``runs/<name>.summary.json``), with the tables and figures
the notebook draws from them.

Everything here is written by ``python -m dslab.labs.lab05_grpo.artifacts`` and only read by the notebook; the
harnesses that make the runs are in ``experiments``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dslab import data, plots
from dslab.checkpoint import read_metrics
from dslab.configs import ModelArgs
from dslab.labs.lab05_grpo.widgets import plot_curves
from dslab.model import Transformer


# ------------------------------------------------------------------------------------------------------ files
def artifacts_dir() -> Path:
    """datasets/grpo/ of the course checkout: the lab's shipped checkpoints and runs."""
    return data.datasets_dir("grpo")


def split(name: str) -> list[data.Task]:
    """A frozen RL split ("train", "val", "test" or "hard") from datasets/rl_arithmetic/."""
    return data.load_tasks(name, artifacts_dir().parent)


def read_card(name: str) -> dict:
    """The JSON card of a shipped checkpoint (datasets/grpo/<name>.json)."""
    return json.loads((artifacts_dir() / f"{name}.json").read_text(encoding="utf-8"))


def load_policy(name: str = "base", rows: int = 256, path: Path | None = None) -> Transformer:
    """A shipped checkpoint ("base", "student", "r1_zero" or "r1", from datasets/grpo/) as a policy in eval mode."""
    path = path or artifacts_dir() / f"{name}.pt"
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    model = Transformer(ModelArgs.from_dict(card["args"]), max_batch_size=rows)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in torch.load(path, weights_only=True, map_location="cpu").items()})
    return model.eval()


def save_policy(model: Transformer, path: Path, card: dict) -> None:
    """Write the weights in float16 (half the bytes; ``load_policy`` turns them back into float32) and a JSON card
    (architecture, how it was made) beside them. The model's own weights are rounded the same way first, so whatever
    is measured on it afterwards (the card's scores) describes exactly the shipped file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = {k: v.detach().half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(rounded)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in rounded.items()}, path)
    card = {"args": model.args.to_dict(), "params": model.num_params(), **card}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def update_card(path: Path, **fields) -> None:
    """Add fields to a checkpoint's card."""
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card.update(fields)
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- the comparison runs
# Every comparison run is made with several training seeds (``runs/<name>-s<seed>.jsonl`` and ``.summary.json``):
# one evaluation's binomial error says nothing about how much a run moves when only its seed changes.

def run_path(name: str, seed: int, suffix: str = ".jsonl", folder: Path | None = None) -> Path:
    """datasets/grpo/runs/<name>-s<seed><suffix>."""
    return (folder or artifacts_dir() / "runs") / f"{name}-s{seed}{suffix}"


def seeds_of(name: str, folder: Path | None = None) -> list[int]:
    """The training seeds shipped for run ``name``, sorted."""
    folder = folder or artifacts_dir() / "runs"
    return sorted(int(p.name[len(name) + 2:-len(".summary.json")]) for p in folder.glob(f"{name}-s*.summary.json")
                  if p.name[len(name) + 2:-len(".summary.json")].isdigit())


def read_runs(names: Sequence[str], folder: Path | None = None, seed: int | None = None) -> dict[str, list[dict]]:
    """Shipped metrics files as {name: rows}, of ``seed`` (default: each run's first shipped seed)."""
    folder = folder or artifacts_dir() / "runs"
    out = {}
    for n in names:
        seeds = seeds_of(n, folder)
        if not seeds:
            raise FileNotFoundError(f"no shipped run {n!r} in {folder}")
        out[n] = read_metrics(run_path(n, seeds[0] if seed is None else seed, folder=folder))
    return out


def read_summary(name: str, seed: int | None = None) -> dict:
    """A run's summary (its final evaluation), of ``seed`` (default: the first shipped)."""
    seed = seeds_of(name)[0] if seed is None else seed
    return json.loads(run_path(name, seed, ".summary.json").read_text(encoding="utf-8"))


def seed_values(name: str, key: str) -> list[float]:
    """One number per shipped seed of run ``name``: a summary field ("test.greedy", "hard.greedy",
    "test.style.mixed", "cpu_seconds") or "val_end", the last held-out accuracy of its metrics file."""
    values = []
    for seed in seeds_of(name):
        if key == "val_end":
            rows = read_metrics(run_path(name, seed))
            values.append([r for r in rows if "val_accuracy" in r][-1]["val_accuracy"])
            continue
        v = read_summary(name, seed)
        for part in key.split("."):
            v = v[part]
        values.append(float(v))
    return values


def is_finding(a: Sequence[float], b: Sequence[float]) -> bool:
    """The lab's one noise standard: two settings differ when the gap between their seed means is larger than the
    larger of their two seed ranges (max − min). One seed has no range, so nothing measured once is a finding."""
    if len(a) < 2 or len(b) < 2:
        return False
    gap = abs(sum(a) / len(a) - sum(b) / len(b))
    return gap > max(max(a) - min(a), max(b) - min(b))


def mean_range(values: Sequence[float], pct: bool = True) -> str:
    """"mean [min–max]" of a run's seeds (as percentages unless pct is False)."""
    m = sum(values) / len(values)
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.1f}")
    return f"{f(m)} [{f(min(values))}–{f(max(values))}]" if len(values) > 1 else f(m)


# The held-out accuracy at which the run comparisons are timed: the default R1-Zero run gets there within its steps,
# so a faster or slower recipe shows as an earlier or later step (or "never").
REACH = 0.9


def first_reaching(rows: Sequence[dict], metric: str, level: float) -> dict | None:
    """The first row whose ``metric`` is >= level (None if no row gets there)."""
    return next((r for r in rows if r.get(metric, -1) >= level), None)


def _at_cpu(rows: Sequence[dict], seconds: float, metric: str = "val_accuracy") -> float | None:
    """The last logged ``metric`` at or before ``seconds`` CPU seconds."""
    vals = [r[metric] for r in rows if metric in r and r["cpu_seconds"] <= seconds]
    return vals[-1] if vals else None


def print_summaries(names: Sequence[str], level: float = REACH) -> None:
    """Per shipped run, over its seeds (mean [min–max]): final held-out accuracy, test greedy and cons@16, 4-digit
    greedy, CPU minutes, share of the samples' working written in letters; and in how many seeds held-out accuracy
    reached ``level``."""
    print(f"{'run':<24}{'seeds':>6}{'val end':>22}{'test greedy':>22}{'test cons@16':>22}{'hard greedy':>22}"
          f"{'CPU min':>18}{'letters':>9}{f'  reached {level:.0%}':>13}")
    for name in names:
        seeds = seeds_of(name)
        hits = [first_reaching(read_runs([name], seed=s)[name], "val_accuracy", level) for s in seeds]
        steps = [h["step"] for h in hits if h]
        reached = f"{len(steps)}/{len(seeds)}" + (f" (step {min(steps)}–{max(steps)})" if steps else "")
        letters = sum(seed_values(name, "test.style.letters_share")) / len(seeds)
        cpu = [v / 60 for v in seed_values(name, "cpu_seconds")]
        print(f"{name:<24}{len(seeds):>6}{mean_range(seed_values(name, 'val_end')):>22}"
              f"{mean_range(seed_values(name, 'test.greedy')):>22}{mean_range(seed_values(name, 'test.cons@16')):>22}"
              f"{mean_range(seed_values(name, 'hard.greedy')):>22}{mean_range(cpu, pct=False):>18}{letters:>9.1%}"
              f"  {reached}")


def compare(a: str, b: str, key: str = "test.greedy") -> str:
    """One line: runs ``a`` and ``b`` on ``key`` over their seeds, and whether the gap passes ``is_finding``."""
    va, vb = seed_values(a, key), seed_values(b, key)
    gap = sum(va) / len(va) - sum(vb) / len(vb)
    verdict = "a finding" if is_finding(va, vb) else "within the seeds' spread: not a finding"
    return f"{a} {mean_range(va)} vs {b} {mean_range(vb)}: {gap:+.1%}, {verdict}"


def comparison_figure(runs: dict[str, list[dict]], metrics: Sequence[str], x: str = "step"):
    """One panel per metric, one line per run, against GRPO step or CPU minutes."""
    fig, axes = plots.figure(len(metrics), width=4.2, height=3.2)
    for ax, metric in zip(axes, metrics):
        plot_curves(runs, metric, x, window=1 if metric.startswith("val") else 5, ax=ax)
    return fig


def ablation_figure(runs: dict[str, list[dict]], groups: dict[str, list[str]]):
    """One panel per ablation: held-out accuracy against CPU minutes, one line per setting."""
    fig, axes = plots.figure(len(groups), width=3.6, height=3.0)
    for ax, (title, names) in zip(axes, groups.items()):
        plot_curves({n: runs[n] for n in names}, "val_accuracy", "cpu_minutes", ax=ax, title=title)
        ax.set_ylim(0, 1.02)
    return fig


def ablation_extras_figure(runs: dict[str, list[dict]]):
    """What each ablation changes inside the run: KL to the reference (β), clip fraction (ε), the share of groups
    with no signal (G and std scaling)."""
    fig, axes = plots.figure(3, width=4.2, height=3.0)
    plot_curves({n: runs[n] for n in ("r1_zero", "beta_0.04")}, "kl", window=5, ax=axes[0],
                title="KL to the reference (k3, per token)")
    plot_curves({n: runs[n] for n in ("mu2_eps_0.2", "mu2_eps_10")}, "clip_fraction", window=5,
                ax=axes[1], title="tokens clipped (μ = 2)")
    plot_curves({n: runs[n] for n in ("G_4", "r1_zero")}, "zero_variance", window=5, ax=axes[2],
                title="groups with no signal")
    return fig


def reach_steps(name: str, level: float = REACH) -> list[int | None]:
    """Per shipped seed of run ``name``: the first GRPO step whose held-out accuracy is >= level (None: never)."""
    out = []
    for seed in seeds_of(name):
        hit = first_reaching(read_runs([name], seed=seed)[name], "val_accuracy", level)
        out.append(hit["step"] if hit else None)
    return out


def at_equal_cpu(a: str, b: str) -> tuple[list[float], list[float], float]:
    """Held-out accuracy of runs ``a`` and ``b`` per seed at the CPU time of ``a``'s shortest seed (what distillation
    and RL each reach for the same CPU minutes), and that time in seconds."""
    budget = min(read_runs([a], seed=s)[a][-1]["cpu_seconds"] for s in seeds_of(a))
    va = [_at_cpu(read_runs([a], seed=s)[a], budget) for s in seeds_of(a)]
    vb = [_at_cpu(read_runs([b], seed=s)[b], budget) for s in seeds_of(b)]
    return [v for v in va if v is not None], [v for v in vb if v is not None], budget


def _verdict(a: Sequence[float], b: Sequence[float]) -> str:
    return "a finding" if is_finding(a, b) else "within the seeds' spread"


def claims_table(history: Sequence[dict], results: dict, k: int) -> None:
    """The papers' claims next to this notebook's numbers: the live run and its evaluation, and the shipped runs
    over their seeds, each comparison judged by the lab's one noise standard (``is_finding``)."""
    base, after = results["base"]["test"], results["after GRPO"]["test"]
    vals = [r for r in history if "val_accuracy" in r]
    lengths = [r["completion_length"] for r in history if "completion_length" in r]
    n = max(1, min(5, len(lengths) // 3))
    cold_only = [read_summary("cold_start_consistency", s)["cold_start_only"]["test"]["greedy"]
                 for s in seeds_of("cold_start_consistency")]
    recipe = seed_values("cold_start_consistency", "test.greedy")
    zero, consistent = seed_values("r1_zero", "test.greedy"), seed_values("consistency", "test.greedy")
    distilled, rl = seed_values("student_distill", "test.greedy"), seed_values("student_grpo", "test.greedy")
    minutes = [sum(v) / len(v) / 60 for v in (seed_values("student_distill", "cpu_seconds"),
                                              seed_values("student_grpo", "cpu_seconds"))]
    ahead = "distillation" if sum(distilled) / len(distilled) > sum(rl) / len(rl) else "RL"
    vote = next(key for key in read_summary("r1_zero", seeds_of("r1_zero")[0])["test"] if key.startswith("cons@"))
    cons, pass1 = seed_values("r1_zero", f"test.{vote}"), seed_values("r1_zero", "test.pass@1")  # the shipped k
    reach = {name: "/".join("never" if s is None else str(s) for s in reach_steps(name))
             for name in ("r1_zero", "cold_start")}
    rows = [
        ("R1-Zero: accuracy rises with RL from a base model and rule-based rewards",
         "AIME pass@1 15.6% -> 71.0% (R1 §2.2.4)",
         f"your run: held-out greedy {vals[0]['val_accuracy']:.1%} -> {vals[-1]['val_accuracy']:.1%}, test pass@1 "
         f"{base['pass@1']:.1%} -> {after['pass@1']:.1%}; shipped seeds: test greedy {mean_range(zero)}"),
        ("majority voting beats a single sample", "cons@64 86.7% vs pass@1 71.0% (R1 §2.2.4)",
         f"after RL, shipped seeds: test {vote} {mean_range(cons)} vs pass@1 {mean_range(pass1)}: "
         f"{_verdict(cons, pass1)}; your base: {base[f'cons@{k}']:.1%} vs {base['pass@1']:.1%}"),
        ("responses grow longer during RL", "R1 Fig. 3: thousands of tokens by the end",
         f"mean completion {sum(lengths[:n]) / n:.0f} -> {sum(lengths[-n:]) / n:.0f} tokens (first vs last {n} steps)"),
        ("a cold start makes RL converge faster", "R1 §2.3.1 (qualitative)",
         f"first step at {REACH:.0%} held-out, per seed: R1-Zero {reach['r1_zero']}, cold start {reach['cold_start']}"),
        ("RL after the cold start improves on the cold start alone", "R1 §2.3 (reasoning-oriented RL)",
         f"test greedy {mean_range(cold_only)} -> {mean_range(recipe)}: {_verdict(recipe, cold_only)}"),
        ("language consistency: readability for a little accuracy", "R1 §2.3.2 (ablation, qualitative)",
         f"working in letters {mean_range(seed_values('r1_zero', 'test.style.letters_share'))} -> "
         f"{mean_range(seed_values('consistency', 'test.style.letters_share'))}; test greedy {mean_range(zero)} -> "
         f"{mean_range(consistent)}: {_verdict(zero, consistent)}"),
        ("distillation beats RL on the small model", "Qwen-32B AIME 72.6 vs 47.0 (R1 §4.1, Table 6)",
         f"student, test greedy at the end of the runs ({minutes[0]:.1f} vs {minutes[1]:.1f} CPU min): distilled "
         f"{mean_range(distilled)}, GRPO {mean_range(rl)}: {_verdict(distilled, rl)}"
         + (f", {ahead} ahead" if is_finding(distilled, rl) else "")),
    ]
    width = max(len(r[0]) for r in rows)
    for claim, paper, ours in rows:
        print(f"{claim:<{width}}\n    paper: {paper}\n    here:  {ours}")
