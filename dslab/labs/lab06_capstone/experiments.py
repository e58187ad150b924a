"""Lab 06's harnesses: the run the notebook trains (a preset, shrunk for FAST), the references of its exercises, the
shipped reference runs, the figures of a run (expert load, comparisons), the FP8-vs-BF16 short runs, the
data-parallel bias check and speculative decoding with the model's own MTP head.

Everything trains through ``dslab.train`` (the code ``python -m dslab train`` runs) and is seeded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from dslab import accounting as acc
from dslab import capstone, data, plots, train, validate
from dslab.configs import ModelArgs
from dslab.data import CharTokenizer, get_batch
from dslab.model import Block, Transformer
from dslab.moe import bias_update
from dslab.mtp import speculative_generate

FAST_RUN = {"steps": 12, "batch_size": 8, "block_size": 64, "n_chars": 60_000, "eval_every": 6,
            "checkpoint_every": 6, "eval_batches": 2, "warmup": 3, "load_every": 1}
REFERENCE_NAMES = ("healthy", "lr_too_high", "no_balancing", "mtp_off")
PROMPTS = {"arithmetic": "User: 23+45=? Use <think> and <answer>.\nAssistant: ",
           "prose": "The return statement ", "bare": "58+31="}


# ------------------------------------------------------------------------------------------------- the run
def preset_for(device: torch.device | str) -> str:
    """The preset that fits ``device``: gpu-small on a CUDA GPU (about 10 minutes), else cpu."""
    return "gpu-small" if torch.device(device).type == "cuda" else "cpu"


def notebook_config(preset: str, fast: bool = False, seed: int = 0, device: str = "auto",
                    steps: int | None = None) -> capstone.RunConfig:
    """The preset's RunConfig with the notebook's seed; FAST shrinks it to a dozen small steps; ``steps`` (the
    notebook's STEPS) cuts the pretraining short, keeping the rest of the preset (a quick check of a GPU preset)."""
    cfg = capstone.preset_config(preset, seed=seed, data_seed=seed, device=device)
    if fast:
        cfg = cfg.replace(**FAST_RUN)
    if steps is not None:
        validate.integer("steps", steps, 1)
        every = max(1, min(cfg.train.eval_every, steps))
        cfg = cfg.replace(steps=steps, eval_every=every, checkpoint_every=every, warmup=min(cfg.train.warmup, steps))
    return cfg


def run_dir(preset: str, seed: int = 0, fast: bool = False) -> Path:
    """Where the notebook's run lives, under the system's temporary directory: the same folder every time, so that
    re-running the notebook resumes (or reuses) the finished run; with FAST a fresh scratch folder instead
    (``scratch``), so that a smoke run never resumes an old one."""
    if fast:
        return scratch(f"capstone-{preset}-seed{seed}")
    return Path(tempfile.gettempdir()) / "dslab-runs" / f"capstone-{preset}-seed{seed}"


def scratch(name: str) -> Path:
    """An empty folder ``name`` in this process's scratch space (``clean_scratch`` removes it all)."""
    path = Path(tempfile.gettempdir()) / "dslab-runs" / f"scratch-{os.getpid()}" / name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def clean_scratch() -> None:
    """Remove this process's scratch space (FAST runs, the short precision runs)."""
    shutil.rmtree(Path(tempfile.gettempdir()) / "dslab-runs" / f"scratch-{os.getpid()}", ignore_errors=True)


def first_batch(cfg: capstone.RunConfig, train_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``train_lm`` draws at step 0 of this run (the same generator, seeded with cfg.train.seed)."""
    g = torch.Generator().manual_seed(cfg.train.seed)
    with torch.device("cpu"):  # a CPU generator draws it, as in train_lm; the model's user moves it
        return get_batch(train_ids, cfg.train.batch_size, cfg.train.block_size, g)


def fresh_model(args: ModelArgs, seed: int = 0) -> Transformer:
    """``Transformer(args)`` initialised from ``seed``, in training mode."""
    torch.manual_seed(seed)
    return Transformer(args).train()


# ----------------------------------------------------------------------------------- exercise references
def block_forward_reference(args: ModelArgs, layer_id: int, state: dict, x: torch.Tensor) -> torch.Tensor:
    """One transformer block of the model (``dslab.model.Block``) with the weights in ``state``, training path:
    x + attn(attn_norm(x)), then + ffn(ffn_norm(.)), the FFN dense for layer_id < n_dense_layers, else MoE."""
    block = Block(layer_id, args, max_batch_size=max(1, x.shape[0]))
    block.load_state_dict(state)
    with torch.no_grad():
        return block.train()(x)


def built_params_reference(args: ModelArgs) -> int:
    """What ``Transformer(args).num_params()`` returns: lab 00's total with the MTP modules, minus the gate biases,
    which the model keeps as buffers (updated by the balancing rule, never by gradients)."""
    n_moe = (args.n_layers - args.n_dense_layers + args.n_mtp) if args.is_moe else 0
    return acc.total_params(args, include_mtp=True) - (n_moe * args.n_routed_experts if args.gate_bias else 0)


def step_report(model: Transformer, main: torch.Tensor, mtp: torch.Tensor) -> dict:
    """What a training step returns for grading: the main and MTP losses, every MoE gate's bias [layers, E] and three
    weights after the step (embedding, head, the first MTP module's projection)."""
    return {"loss": float(main.detach()), "mtp_loss": float(mtp.detach()),
            "bias": torch.stack([m.gate.bias.detach().clone() for m in model.moe_layers()]),
            "embed": model.embed.weight.detach().clone(), "head": model.head.weight.detach().clone(),
            "eh_proj": model.mtp[0].eh_proj.weight.detach().clone()}


def optimizer_for(model: Transformer, lr: float) -> torch.optim.AdamW:
    """AdamW as the course trainer builds it: weight decay 0.1 on matrices only, β = (0.9, 0.95) (V3 §4.2)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def restore(args: ModelArgs, state: dict, lr: float) -> tuple[Transformer, torch.optim.AdamW]:
    """A model holding ``state`` (training mode) and its fresh optimizer."""
    model = Transformer(args)
    model.load_state_dict(state)
    return model.train(), optimizer_for(model, lr)


def training_step_reference(args: ModelArgs, state: dict, x: torch.Tensor, y: torch.Tensor, lr: float, lam: float,
                            gamma: float) -> dict:
    """One step of the capstone objective L_main + (λ/D) Σ_k L^k_MTP (V3 eq. 25), gradient clipping at 1.0, AdamW,
    then the aux-loss-free bias update with the step's load (V3 §2.1.2). Returns ``step_report``."""
    model, opt = restore(args, state, lr)
    out = train.objective(lambda t: model.forward_mtp(t), x, y, lam)
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    model.update_bias(gamma)
    return step_report(model, out.main, out.total - out.main)


def global_bias_update_reference(bias: torch.Tensor, rank_loads: torch.Tensor, gamma: float) -> torch.Tensor:
    """The bias every rank applies after a data-parallel step: b_i + γ·sign(mean − load_i) with the load of the
    whole batch, i.e. the ranks' loads [R, E] summed (an all-reduce) before the update."""
    return bias_update(bias, rank_loads.sum(0), gamma)


def mfu_reference(args: ModelArgs, seq_len: int, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilization: lab 00's training FLOPs per token (3 × (2 × activated parameters without the input
    embedding + causal attention over seq_len tokens)) × tokens/s ÷ peak FLOP/s."""
    return acc.mfu(acc.training_flops_per_token(args, seq_len), tokens_per_second, peak_flops)


# --------------------------------------------------------------------------------------------- reading runs
def datasets_dir() -> Path:
    """datasets/capstone/ of the course checkout: the shipped reference runs."""
    return data.datasets_dir("capstone")


def reference_runs(names: tuple[str, ...] = REFERENCE_NAMES) -> dict[str, list[dict]]:
    """The shipped reference runs (datasets/capstone/NAME.csv) as {name: rows}."""
    from dslab.labs.lab06_capstone.artifacts import read_csv

    return {n: read_csv(datasets_dir() / f"{n}.csv") for n in names}


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that hold it."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def reference_table(refs: dict[str, list[dict]], tail: int = 50) -> dict[str, dict]:
    """Per run: mean training loss, MaxVio and acceptance over the last ``tail`` steps, the last validation loss,
    and the largest gradient norm after the first 100 steps (the warm-up's large gradients excluded)."""
    def mean(rows: list[dict], key: str) -> float | None:
        return sum(r[key] for r in rows) / len(rows) if key in rows[-1] else None

    out = {}
    for name, rows in refs.items():
        last = rows[-tail:]
        out[name] = {"loss": mean(last, "loss"), "val_loss": series(rows, "val_loss")[1][-1],
                     "max_vio": mean(last, "max_vio"), "mtp_acceptance": mean(last, "mtp_acceptance"),
                     "max_grad_norm": max(r["grad_norm"] for r in rows[100:]) if len(rows) > 100 else None}
    return out


def load_matrix(history: list[dict], layer: int = -1) -> tuple[list[int], torch.Tensor]:
    """(steps, load / mean load [steps, E]) of one MoE layer at the steps whose row logged the loads."""
    rows = [r for r in history if "load" in r]
    if not rows:
        raise ValueError("no row holds expert loads: train with TrainConfig.load_every > 0")
    loads = torch.tensor([r["load"][layer] for r in rows], dtype=torch.float64)
    return [r["step"] for r in rows], loads / loads.mean(1, keepdim=True)


def load_figure(history: list[dict], args: ModelArgs, window: int = 20):
    """Left: each expert's share of the last main MoE layer's load over training (1 = an even share). Right: MaxVio
    of each step's whole batch, mean over MoE layers, raw and smoothed."""
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=3.2)
    n_main = args.n_layers - args.n_dense_layers  # loads list main MoE layers first, then the MTP blocks'
    steps, rel = load_matrix(history, layer=n_main - 1)
    collapsed = args.n_routed_experts / args.n_activated_experts
    im = ax1.imshow(rel.T.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=collapsed, interpolation="nearest",
                    extent=(steps[0], steps[-1], args.n_routed_experts - 0.5, -0.5))
    fig.colorbar(im, ax=ax1, label="load / mean load")
    ax1.set(xlabel="training step", ylabel="expert", title=f"expert load, MoE layer {args.n_layers - 1}")
    s, v = series(history, "max_vio")
    ax2.plot(s, v, color="C3", lw=0.6, alpha=0.4, label="each step")
    ax2.plot(s, plots.smooth(v, window), color="C3", lw=1.4, label=f"{window}-step mean")
    ax2.axhline(collapsed - 1, color="0.4", ls="--", lw=0.8, label="a collapsed router")
    ax2.set(xlabel="training step", ylabel="MaxVio of the batch", title="load imbalance", ylim=(0, None))
    ax2.legend(fontsize=7)
    return fig


def comparison_figure(history: list[dict] | None, refs: dict[str, list[dict]], window: int = 20):
    """Loss, MaxVio and MTP acceptance of the reference runs, with ``history`` (your run) on top when given."""
    fig, axes = plots.figure(3, width=3.6, height=3.0)
    styles = {"healthy": dict(color="C0"), "lr_too_high": dict(color="C3"), "no_balancing": dict(color="C1"),
              "mtp_off": dict(color="C2"), "your run": dict(color="k", lw=1.8, ls="--")}
    runs = dict(refs)
    if history is not None:
        runs["your run"] = history
    for ax, key, title in zip(axes, ("loss", "max_vio", "mtp_acceptance"),
                              ("training loss", "MaxVio", "depth-1 acceptance (teacher-forced)")):
        for name, rows in runs.items():
            s, v = series(rows, key)
            if v:
                ax.plot(s, plots.smooth(v, window), label=name, lw=styles[name].get("lw", 1.1),
                        **{k: x for k, x in styles[name].items() if k != "lw"})
        ax.set(xlabel="training step", title=title)
    axes[0].set_ylabel(f"{window}-step mean")
    axes[0].legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------- the other runs
NOISE = "bf16-emulated, another seed"


def precision_runs(cfg: capstone.RunConfig, steps: int, folder: Path) -> dict[str, list[dict]]:
    """The same short run (same weights, same batches) with the GEMM inputs in BF16 and in FP8 (E4M3, V3's tiles),
    both emulated as lab 02 defines them, and the BF16 run once more with another seed (other initial weights and
    batches): how far two runs drift apart when nothing but chance differs -> {name: history}."""
    out = {}
    for name, precision, seed in (("bf16-emulated", "bf16-emulated", 0), ("fp8-emulated", "fp8-emulated", 0),
                                  (NOISE, "bf16-emulated", 1)):
        c = cfg.replace(precision=precision, steps=steps, eval_every=steps, checkpoint_every=steps,
                        warmup=min(cfg.train.warmup, max(1, steps // 10)), load_every=0, seed=cfg.train.seed + seed)
        out[name] = capstone.pretraining_run(c, folder / name.replace(", ", "-").replace(" ", "-"), measure_peak=False,
                              desc=name).history
    return out


def relative_gap(runs: dict[str, list[dict]], name: str = "fp8-emulated", window: int = 10) -> list[float]:
    """(L_run − L_bf16) / L_bf16 of the smoothed training losses, per step, for run ``name`` (V3 §3.3 reports
    FP8's within 0.25%)."""
    a = plots.smooth([r["loss"] for r in runs[name]], window)
    b = plots.smooth([r["loss"] for r in runs["bf16-emulated"]], window)
    return ((a - b) / b).tolist()


def precision_figure(runs: dict[str, list[dict]], window: int = 10):
    """Left: the smoothed training losses. Right: FP8's relative difference from BF16, beside the difference another
    seed makes (the noise floor of a run this short)."""
    fig, (ax1, ax2) = plots.figure(2, width=4.6, height=3.0)
    for name, rows in runs.items():
        ax1.plot(plots.smooth([r["loss"] for r in rows], window), label=name, lw=1.2)
    ax1.set(xlabel="training step", ylabel=f"training loss ({window}-step mean)", title="the same run, three ways")
    ax1.legend(fontsize=7)
    if NOISE in runs:
        ax2.plot([100 * g for g in relative_gap(runs, NOISE, window)], color="0.6", ls="--", lw=1.0,
                 label="BF16, another seed")
    ax2.plot([100 * g for g in relative_gap(runs, "fp8-emulated", window)], color="C3", lw=1.2, label="FP8")
    ax2.axhspan(-0.25, 0.25, color="#f5d5a0", alpha=0.6, lw=0, label="V3: within ±0.25%")
    ax2.axhline(0, color="0.3", lw=0.6)
    ax2.set(xlabel="training step", ylabel="relative difference (%)", title="difference from the BF16 run")
    ax2.legend(fontsize=7)
    return fig


@torch.no_grad()
def rank_loads(model: Transformer, x: torch.Tensor, ranks: int) -> torch.Tensor:
    """The expert load each of ``ranks`` data-parallel ranks would count for its slice of the batch x [B, S], in
    every MoE layer: [ranks, layers, E] on the model's device (the training path, as the trainer routes; nothing is
    updated). x may sit anywhere (``first_batch`` draws it on the CPU): it is moved to the model's device."""
    validate.tensor("x", x, 2, floating=False)
    validate.integer("ranks", ranks, 1, x.shape[0])
    was = model.training
    model.train()
    out = []
    for part in x.to(next(model.parameters()).device).chunk(ranks):
        model.forward_mtp(part) if len(model.mtp) else model(part)
        out.append(torch.stack([m.last_load.clone() for m in model.moe_layers()]))
    model.train(was)
    return torch.stack(out)


def speculative_check(model: Transformer, prompts: list[str], new_tokens: int, seed: int = 0) -> dict:
    """Greedy speculative decoding with the model's own MTP head on each prompt: acceptance of the drafts, tokens per
    main-model forward, and whether the text equals plain greedy decoding (it must)."""
    tok = CharTokenizer()
    drafted = accepted = tokens = forwards = 0
    same = True
    for p in prompts:
        ids = tok.encode(p)
        res = speculative_generate(model, ids, new_tokens, 0.0, generator=torch.Generator().manual_seed(seed))
        same &= res.tokens == model.generate(ids, new_tokens)
        drafted, accepted = drafted + res.drafted[0], accepted + res.accepted[0]
        tokens, forwards = tokens + len(res.tokens), forwards + res.forwards
    return {"acceptance": accepted / max(1, drafted), "tokens_per_forward": tokens / forwards,
            "drafts": drafted, "same_as_greedy": same}




def grpo_figure(rows: list[dict], stages: dict[str, dict], k: int):
    """Left: reward, accuracy and format reward of the GRPO samples per step. Right: lab 05's evaluation on the
    held-out test tasks at each stage (``stages``: name -> ``capstone.evaluate_r1`` result; None entries skipped)."""
    fig, (ax1, ax2) = plots.figure(2, width=4.6, height=3.0)
    steps = [r for r in rows if "reward" in r]
    for key, color in (("reward", "C0"), ("accuracy", "C2"), ("format", "C1")):
        ax1.plot([r["step"] for r in steps], [r[key] for r in steps], label=key, color=color)
    ax1.set(xlabel="GRPO step", ylabel="mean over the step's samples", title="rewards of the samples")
    ax1.legend(fontsize=8)
    keys = ["greedy", "pass@1", f"cons@{k}", "format"]
    plots.grouped_bars(ax2, keys, {name: [res[x] for x in keys] for name, res in stages.items() if res},
                       ylabel="share of held-out test tasks")
    ax2.set_title("lab 05's evaluation at each stage", fontsize=10)
    return fig


def r1_base_path() -> Path:
    """The shipped base of the cpu preset's tiny R1 (``artifacts r1_base``): weights for ``capstone.grpo_run``."""
    return datasets_dir() / "r1_base.pt"


def r1_base_card() -> dict:
    """runs.json's entry for the shipped tiny-R1 base: its command, settings, CPU seconds and summary."""
    return json.loads((datasets_dir() / "runs.json").read_text(encoding="utf-8"))["r1_base"]


def compare_accuracy(a: float, b: float, n: int) -> str:
    """How greedy accuracy b compares with a on the same n questions: "higher" or "lower" when the difference
    exceeds two binomial standard errors of a difference (sqrt(2 p (1 - p) / n) at their mean p), else "within
    noise". One run each: a seed can move either by about that much."""
    validate.integer("n", n, 1)
    p = (a + b) / 2
    se = max((2 * p * (1 - p) / n) ** 0.5, 1 / n)
    return "within noise" if abs(b - a) <= 2 * se else ("higher" if b > a else "lower")
