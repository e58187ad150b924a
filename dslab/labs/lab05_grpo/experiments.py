"""Lab 05's experiment harnesses: the policies, their pretraining, the run configurations the notebook and the artifacts
script share, the cold-start examples, rejection sampling for distillation, the evaluation of a policy on the splits,
and the tables and figures of the live run.

Everything here is seeded and CPU-sized. What the lab ships (checkpoints with their cards, the metrics of the
comparison runs) is read and written by ``shipped``; the names of it the notebook uses are re-exported here, so the
notebook reaches every harness as ``ex.<name>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

from dslab import data, evals, grpo, plots, sampling
from dslab.configs import ModelArgs, load
from dslab.labs.lab05_grpo.shipped import (  # noqa: F401 - re-exported: the notebook calls them as ex.<name>
    REACH,
    ablation_extras_figure,
    ablation_figure,
    at_equal_cpu,
    claims_table,
    compare,
    comparison_figure,
    is_finding,
    load_policy,
    mean_range,
    print_summaries,
    read_card,
    read_runs,
    read_summary,
    seed_values,
    seeds_of,
    split,
)
from dslab.labs.lab05_grpo.widgets import plot_curves
from dslab.model import Transformer
from dslab.rewards import (
    accuracy_reward,
    consistency_reward,
    format_reward,
    notation_of,
    parse_answer,
    reward_components,
    think_text,
)
from dslab.sft import SFTConfig, cold_start_tasks
from dslab.train import TrainConfig, train_lm

MAX_SEQ_LEN = 192  # prompt (<= 55 characters) + completion (<= 95 on the test split, <= 122 on the 4-digit one)
MAX_NEW = {"test": 100, "val": 100, "train": 100, "hard": 128}
SIZES = {  # the policy (a dense transformer with MHA) and the smaller student of the distillation comparison
    "base": dict(dim=64, n_heads=4, head_dim=16, inter_dim=192, n_layers=3),
    "student": dict(dim=48, n_heads=4, head_dim=12, inter_dim=128, n_layers=2),
}


# --------------------------------------------------------------------------------------------------- policies
def policy_args(size: str = "base") -> ModelArgs:
    """The architecture of the lab's policy ("base") or of the smaller distillation student ("student")."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    s = SIZES[size]
    return load("tiny-mha").replace(name=f"lab05-{size}", vocab_size=data.CharTokenizer().vocab_size,
                                    n_kv_heads=s["n_heads"], n_dense_layers=s["n_layers"], max_seq_len=MAX_SEQ_LEN,
                                    original_seq_len=MAX_SEQ_LEN, **s)


def new_policy(size: str = "base", rows: int = 256, seed: int = 0) -> Transformer:
    """A freshly initialised policy whose KV caches hold ``rows`` rows (the rollout batch)."""
    torch.manual_seed(seed)
    return Transformer(policy_args(size), max_batch_size=rows)


def clone_policy(model: Transformer, rows: int | None = None) -> Transformer:
    """A copy of ``model`` with its own weights (and caches of ``rows`` rows)."""
    copy = Transformer(model.args, max_batch_size=rows or sampling.cache_rows(model))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


# ------------------------------------------------------------------------------------------------ pretraining
@dataclass(frozen=True)
class Pretraining:
    """How a base model is made: next-token prediction on ``data.pretraining_text`` with ``dslab.train.train_lm``
    (AdamW, warm-up then cosine decay over ``schedule_steps``), stopped after ``steps`` (<= schedule_steps; the
    shipped models run the whole schedule). Blocks of 192 characters hold a whole chat, so every position a
    4-digit problem reaches has been trained."""

    size: str = "base"
    steps: int = 3000
    schedule_steps: int = 3000
    batch_size: int = 32
    block_size: int = 192
    lr: float = 3e-3
    warmup: int = 100
    n_chars: int = 3_000_000
    val_fraction: float = 0.05
    seed: int = 0


def pretrain(spec: Pretraining, eval_tasks: Sequence[data.Task] = (), eval_every: int = 250) -> tuple[Transformer,
                                                                                                          list[dict]]:
    """Pretrain a policy from scratch on arithmetic text (never a held-out question: ``data.held_out_questions``);
    every ``eval_every`` steps the greedy accuracy on ``eval_tasks`` is added to the history. Returns (model in eval
    mode, history)."""
    if not 1 <= spec.steps <= spec.schedule_steps:
        raise ValueError(f"steps must be in [1, schedule_steps={spec.schedule_steps}], got {spec.steps}")
    tok = data.CharTokenizer()
    text = data.pretraining_text(spec.n_chars, seed=spec.seed, exclude=data.held_out_questions())
    train_ids, val_ids = data.train_val_split(torch.tensor(tok.encode(text)), spec.val_fraction)
    model = new_policy(spec.size, seed=spec.seed)
    cfg = TrainConfig(steps=spec.schedule_steps, batch_size=spec.batch_size, block_size=spec.block_size, lr=spec.lr,
                      warmup=spec.warmup, eval_every=eval_every, eval_batches=4, seed=spec.seed)
    history: list[dict] = []

    def after(m, step):
        row = {"step": step + 1}
        if eval_tasks and ((step + 1) % eval_every == 0 or step + 1 == spec.steps):
            acc, fmt = evals.greedy_accuracy(m, eval_tasks, MAX_NEW["test"])
            row.update(greedy_accuracy=acc, greedy_format=fmt)
            m.train()
        history.append(row)

    train_lm(model, train_ids, val_ids, cfg, after_step=after, stop_after=spec.steps)
    return model.eval(), history


# ----------------------------------------------------------------------------------------- run configurations
def r1_zero_config(fast: bool = False, **changes) -> grpo.GRPOConfig:
    """R1-Zero at the lab's defaults: GRPO from the base with accuracy + 0.1·format rewards, G = 16, no KL,
    ε = 0.2, lr 3e-4 with cosine decay, zero-variance groups dropped. FAST: a few small steps."""
    cfg = grpo.GRPOConfig(steps=20, prompts_per_step=32, num_generations=16, lr=3e-4, eval_every=5, eval_tasks=200,
                          max_completion_length=MAX_NEW["train"], reward_weights={"accuracy": 1.0, "format": 0.1})
    if fast:
        cfg = replace(cfg, steps=3, prompts_per_step=4, num_generations=8, eval_every=3, eval_tasks=20)
    return replace(cfg, **changes)


# Two passes over the 500 examples at lr 3e-4: a gentler SFT than lr 1e-3 x 60 steps (four passes), which overfits
# the examples and left a policy that GRPO could no longer lift (96.6% test greedy for R1's recipe on three seeds).
COLD_START = SFTConfig(steps=30, batch_size=32, lr=3e-4, warmup=5, max_completion_length=MAX_NEW["train"])
COLD_START_EXAMPLES = 500


def after_cold_start_config(fast: bool = False, **changes) -> grpo.GRPOConfig:
    """GRPO after the cold start: R1-Zero's settings at a third of the learning rate for 30 steps. The cold start
    leaves a policy right on ~98% of its samples, so most groups are all right and drop out; Adam turns the few left
    into full-size steps, and at lr 3e-4 those noisy steps undo as much as they fix."""
    return r1_zero_config(fast, **({} if fast else {"lr": 1e-4, "steps": 30}) | changes)


CONSISTENCY_WEIGHTS = {"accuracy": 1.0, "format": 0.1, "consistency": 0.2}


def cold_start_examples(n: int = COLD_START_EXAMPLES, seed: int = 21) -> list[tuple[str, str]]:
    """The lab's cold-start set: ``n`` train-split tasks drawn with ``seed``, as readable (prompt, completion) pairs
    with their full working in the digits notation (``data.cold_start_pairs``)."""
    return data.cold_start_pairs(cold_start_tasks(n, seed), "digits")


def scorer(accuracy=None, format=None, target: str = "digits"):  # noqa: A002 - the reward's name
    """completion, task -> the rewards (accuracy and format from the given functions, default the course's; the
    consistency reward) plus two diagnostics that no reward weighs: "working" (1 when the think block holds any
    working) and "mixed" (1 when the working uses both notations). The trainer logs the mean of each per step."""
    accuracy = accuracy or accuracy_reward
    format = format or format_reward

    def score(completion: str, task: data.Task) -> dict:
        style = describe(completion)
        return {"accuracy": accuracy(completion, task.answer), "format": format(completion),
                "consistency": consistency_reward(completion, target), "working": float(style["has_working"]),
                "mixed": float(style["mixed"])}

    return score


# ------------------------------------------------------------------------------------------ distillation data
@torch.no_grad()
def rejection_sample(teacher: Transformer, task_list: Sequence[data.Task], k: int = 4, temperature: float = 0.6,
                     seed: int = 0, target: str = "digits") -> list[tuple[str, str]]:
    """R1 §2.3.3 in miniature: k samples per task from ``teacher``; keep the completions that are right, well
    formatted and written entirely in the target notation (at most one per task, the first such)."""
    samples = evals.sample_answers(teacher, task_list, k, MAX_NEW["train"], temperature, 0.95, seed)
    kept = []
    for task, outs in zip(task_list, samples):
        for text in outs:
            if parse_answer(text) == task.answer and consistency_reward(text, target) == 1.0 and \
                    format_reward(text) == 1.0:
                kept.append((task.prompt, text))
                break
    return kept


# ---------------------------------------------------------------------------------------------------- reading
def describe(completion: str) -> dict:
    """How a completion is written: has_working, share of its working in each notation, mixed or not."""
    think = think_text(completion)
    words = (think or "").split()
    kinds = [notation_of(w) for w in words]
    return {"has_working": bool(words), "digits": kinds.count("digits") / len(words) if words else 0.0,
            "letters": kinds.count("letters") / len(words) if words else 0.0,
            "mixed": "digits" in kinds and "letters" in kinds}


def writing_style(samples: Sequence[Sequence[str]]) -> dict:
    """Over all completions: share without working, share with mixed notations, mean share in digits."""
    rows = [describe(s) for ss in samples for s in ss]
    n = max(1, len(rows))
    return {"no_working": sum(not r["has_working"] for r in rows) / n,
            "mixed": sum(r["mixed"] for r in rows) / n,
            "digits_share": sum(r["digits"] for r in rows) / n,
            "letters_share": sum(r["letters"] for r in rows) / n}


def timed(fn, *args, **kwargs):
    """(result, CPU seconds, wall seconds) of one call."""
    c, w = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c, time.perf_counter() - w


# ------------------------------------------------------------------------------------------- the shipped runs
@dataclass(frozen=True)
class RunSpec:
    """One comparison run: where it starts ("base", "cold_start": base + the cold-start SFT, "student", or
    "distill": the student fine-tuned on the R1-Zero policy's rejection-sampled completions), its GRPO config
    (None for the distillation run, which is SFT only) and what it shows."""

    name: str
    start: str
    cfg: grpo.GRPOConfig | None
    about: str


def run_specs() -> dict[str, RunSpec]:
    """Every run ``artifacts runs`` makes; the notebook plots their metrics files. One alternative per ablated
    setting (each run costs 4 to 9 CPU minutes on one thread, as the shipped metrics files record)."""
    r1, after = r1_zero_config(), after_cold_start_config()
    specs = [
        RunSpec("r1_zero", "base", r1, "R1-Zero at the lab's defaults (the run the notebook repeats live)"),
        RunSpec("consistency", "base", replace(r1, reward_weights=CONSISTENCY_WEIGHTS),
                "R1-Zero plus the notation-consistency reward (weight 0.2)"),
        RunSpec("cold_start", "cold_start", after, "cold-start SFT, then GRPO at lr 1e-4 for 30 steps"),
        RunSpec("cold_start_consistency", "cold_start", replace(after, reward_weights=CONSISTENCY_WEIGHTS),
                "cold-start SFT, then GRPO with the consistency reward: R1's recipe"),
        RunSpec("scale_none", "base", replace(r1, scale_rewards="none"), "no std scaling (Dr. GRPO's advantage)"),
        RunSpec("beta_0.04", "base", replace(r1, beta=0.04), "KL penalty β = 0.04 (DeepSeekMath)"),
        RunSpec("mu2_eps_0.2", "base", replace(r1, num_iterations=2), "μ = 2 updates per batch, ε = 0.2"),
        RunSpec("mu2_eps_10", "base", replace(r1, num_iterations=2, epsilon=10.0), "μ = 2, ε = 10 (R1's first RL "
                                                                                       "stage)"),
        RunSpec("G_4", "base", replace(r1, num_generations=4, prompts_per_step=128), "G = 4 (same 512 completions "
                                                                                     "per step)"),
        RunSpec("student_grpo", "student", r1, "GRPO directly on the smaller student"),
        RunSpec("student_distill", "distill", None, "the student fine-tuned on the R1-Zero policy's correct samples"),
    ]
    return {s.name: s for s in specs}


DISTILL = SFTConfig(steps=150, batch_size=32, lr=1e-3, warmup=10, eval_every=15, max_completion_length=MAX_NEW["train"])
DISTILL_TASKS = 2000  # train-split tasks the teacher samples for


def config_dict(cfg) -> dict:
    return asdict(cfg)


# ------------------------------------------------------------------------------------------- notebook helpers
def evaluate_splits(model: Transformer, splits: dict[str, Sequence[data.Task]], k: int, seed: int = 0) -> dict:
    """``evals.evaluate`` on each split (greedy, pass@1, pass@k, cons@k at temperature 0.6, top-p 0.95), plus the
    writing style of the samples and the tasks themselves."""
    out = {}
    for name, task_list in splits.items():
        res = evals.evaluate(model, task_list, k=k, max_new_tokens=MAX_NEW.get(name, 80), seed=seed)
        res["style"] = writing_style(res["samples"])
        res["tasks"] = list(task_list)
        out[name] = res
    return out


def vote_accuracy(split_result: dict, cons) -> float:
    """cons@k over a split's samples with the vote function ``cons(answers, truth)``."""
    votes = [cons([parse_answer(s) for s in ss], t.answer) for ss, t in zip(split_result["samples"],
                                                                           split_result["tasks"])]
    return sum(votes) / len(votes)


def _k(res: dict) -> int:
    return len(res["samples"][0])


def print_evaluation(results: dict[str, dict]) -> None:
    """One line per model and split: greedy, pass@1, cons@k, pass@k, format rate, share of samples without working."""
    any_res = next(iter(next(iter(results.values())).values()))
    k = _k(any_res)
    print(f"{'model':<14}{'split':<7}{'greedy':>8}{'pass@1':>8}{f'cons@{k}':>9}{f'pass@{k}':>9}{'format':>8}"
          f"{'no working':>12}{'mixed':>7}")
    for model, splits in results.items():
        for name, r in splits.items():
            print(f"{model:<14}{name:<7}{r['greedy']:>8.1%}{r['pass@1']:>8.1%}{r[f'cons@{k}']:>9.1%}"
                  f"{r[f'pass@{k}']:>9.1%}{r['format']:>8.1%}{r['style']['no_working']:>12.1%}"
                  f"{r['style']['mixed']:>7.1%}")


def print_greedy_habits(model: Transformer, task_list: Sequence[data.Task]) -> None:
    """The greedy completions split by the sign of the result: how often each group is worked, how often right."""
    texts = [ss[0] for ss in evals.sample_answers(model, task_list, 1, MAX_NEW["test"], 0.0, 1.0, 0)]
    print(f"{'problems':<28}{'count':>6}{'worked':>8}{'right':>8}")
    for label, negative in (("a-b with a < b (negative)", True), ("every other problem", False)):
        rows = [(describe(x)["has_working"], parse_answer(x) == t.answer)
                for x, t in zip(texts, task_list) if (t.answer < 0) == negative]
        n = max(1, len(rows))
        print(f"{label:<28}{len(rows):>6}{sum(w for w, _ in rows) / n:>8.1%}{sum(r for _, r in rows) / n:>8.1%}")


def evaluation_figure(results: dict[str, dict], k: int):
    """Bars of greedy, pass@1, cons@k and pass@k per model, one panel per split."""
    splits = list(next(iter(results.values())))
    fig, axes = plots.figure(len(splits), width=4.6, height=3.2)
    metrics = ["greedy", "pass@1", f"cons@{k}", f"pass@{k}"]
    for ax, name in zip(axes, splits):
        plots.grouped_bars(ax, metrics, {m: [results[m][name][x] for x in metrics] for m in results},
                           ylabel="share of problems")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} split ({len(results[next(iter(results))][name]['tasks'])} problems)", fontsize=10)
    return fig


@torch.no_grad()
def sample_groups(model: Transformer, task_list: Sequence[data.Task], G: int, seed: int = 0,
                  weights: dict | None = None) -> dict:
    """G completions per task at temperature 1 (as in training) and their rewards: {"reward", "accuracy", "format"}
    tensors [N·G] and the texts."""
    weights = weights or {"accuracy": 1.0, "format": 0.1}
    texts = [t for ss in evals.sample_answers(model, task_list, G, MAX_NEW["train"], 1.0, 1.0, seed) for t in ss]
    comps = [reward_components(text, task_list[i // G].answer) for i, text in enumerate(texts)]
    out = {name: torch.tensor([c[name] for c in comps]) for name in ("accuracy", "format")}
    out["reward"] = torch.tensor([sum(w * c[n] for n, w in weights.items()) for c in comps])
    out["texts"] = texts
    return out


def print_groups(groups: dict, advantages: torch.Tensor, G: int, predicted: tuple[float, float],
                 accuracy_advantages: torch.Tensor | None = None) -> None:
    """How the base model's groups look to GRPO: spread, zero-variance share, and a lone success. The lone success
    is read on the accuracy reward alone (``accuracy_advantages``: the advantages of groups["accuracy"]), since
    the 0.1 format reward makes the group's rewards more than two values."""
    acc = groups["accuracy"].view(-1, G)
    n = acc.shape[0]
    zero = grpo.zero_variance_groups(groups["reward"], G)
    print(f"{n} groups of {G}: right answers per group {acc.sum(-1).int().tolist()}")
    print(f"groups whose rewards are all equal (no signal): {int(zero.sum())} of {n}")
    print(f"advantages: min {advantages.min().item():+.3f}, max {advantages.max().item():+.3f}")
    lone = [g for g in range(n) if int(acc[g].sum()) == 1]
    if lone and accuracy_advantages is not None:
        g = lone[0]
        a = accuracy_advantages.view(-1, G)[g]
        right = int(acc[g].argmax())
        print(f"{len(lone)} groups with exactly one right answer; on the accuracy reward alone group {g} gives it "
              f"{a[right].item():+.4f} and the others {a[(right + 1) % G].item():+.4f}; your prediction "
              f"{predicted[0]:+.4f}, {predicted[1]:+.4f}")
    else:
        print(f"no group with exactly one right answer this time; your prediction for one: {predicted[0]:+.4f}, "
              f"{predicted[1]:+.4f}")


def training_figure(live: dict[str, list[dict]], reference: dict[str, list[dict]] | None = None):
    """Four panels over GRPO steps: reward (with its accuracy and format parts), held-out greedy accuracy, format
    rate of the samples, mean completion length. ``reference`` runs are dashed."""
    fig, axes = plots.figure(4, width=3.4, height=3.0)
    panels = [("reward", "reward (training samples)"), ("val_accuracy", "held-out greedy accuracy"),
              ("format", "format rate (training samples)"), ("completion_length", "completion length (tokens)")]
    for style, group in (("-", live), ("--", reference or {})):
        for name, rows in group.items():
            for ax, (metric, title) in zip(axes, panels):
                pts = [(r["step"], r[metric]) for r in rows if metric in r]
                if pts:
                    ax.plot(*zip(*pts), style, label=name, lw=1.3)
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("GRPO step")
    for ax in (axes[1], axes[2]):
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    return fig


def print_styles(styles: dict[str, dict]) -> None:
    """Writing style of several models' samples: no working, mixed notations, share of the working in each."""
    print(f"{'model':<24}{'no working':>11}{'mixed':>8}{'in digits':>11}{'in letters':>12}")
    for name, s in styles.items():
        print(f"{name:<24}{s['no_working']:>11.1%}{s['mixed']:>8.1%}{s['digits_share']:>11.1%}"
              f"{s['letters_share']:>12.1%}")


def aha_figure(history: Sequence[dict], policy: Transformer, base: Transformer, task_list: Sequence[data.Task],
               seed: int = 0):
    """Completion length and consistency over the live run, and one problem answered by the base and the trained
    policy (printed)."""
    fig, axes = plots.figure(2, width=4.4, height=3.0)
    plot_curves({"your run": list(history)}, "completion_length", window=3, ax=axes[0], title="completion length")
    plot_curves({"your run": list(history)}, "consistency", window=3, ax=axes[1],
                title="share of the working in digits")
    for name, model in (("base", base), ("after GRPO", policy)):
        outs = evals.sample_answers(model, task_list[:1], 4, MAX_NEW["test"], 1.0, 1.0, seed)[0]
        print(f"{name} on {task_list[0].question} (truth {task_list[0].answer}):")
        for text in outs:
            print("   ", text)
    return fig


def print_cost(cpu_seconds: dict[str, float], price_per_cpu_hour: float) -> None:
    """CPU minutes and dollars per run at ``price_per_cpu_hour``."""
    for name, sec in cpu_seconds.items():
        print(f"{name:<24}{sec / 60:>7.1f} CPU min   ${sec / 3600 * price_per_cpu_hour:.4f}")
    total = sum(cpu_seconds.values())
    print(f"{'all of them':<24}{total / 60:>7.1f} CPU min   ${total / 3600 * price_per_cpu_hour:.3f}")
