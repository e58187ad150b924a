"""The capstone's runs: a tiny DeepSeek-V3 pretrained from a preset, sampled from, and turned into a tiny R1.

``pretraining_run(cfg, out)`` is what ``python -m dslab train --preset NAME --out runs/NAME`` and lab 06 call: the
preset's model (``dslab/configs/capstone-*.json``), the pretraining text (prose mixed with lab 05's templated
arithmetic, ``dslab.data.pretraining_corpus``, so that the format reward is learnable when GRPO starts), trained by
``dslab.train.train_lm`` with metrics to ``out/metrics.jsonl``, checkpoints, a summary, figures, and data
parallelism under ``torchrun --nproc_per_node=N`` (NCCL on GPUs, gloo on CPUs). ``load_run`` gives the trained model
back for sampling (``python -m dslab sample``) and ``grpo_run`` turns it into a tiny R1 (``python -m dslab grpo``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dslab import accounting as acc
from dslab import data, evals, grpo, plots, validate
from dslab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dslab.configs import ModelArgs, load
from dslab.fp8 import enable_real_fp8, enable_training
from dslab.model import Transformer
from dslab.mtp import speculative_generate
from dslab.runtime import init_distributed, peak_flops, peak_flops_source, pick_device, world
from dslab.sft import SFTConfig, cold_start_tasks, train_sft
from dslab.train import CHECKPOINT_FORMAT, PATH_FIELDS, TrainConfig, train_lm

WEIGHTS_FORMAT = "dslab-capstone-weights/1"  # export_weights: a model's weights and its run's config
PRECISIONS = ("fp32", "bf16", "fp8-emulated", "bf16-emulated", "fp8")

# The capstone's own arithmetic mix, fixed here so that its shipped reference runs stay reproducible whatever lab 05
# tunes in ``data.PRETRAIN_MIX``: kinds of document and their shares.
ARITHMETIC_MIX = {"bare": 0.2, "digits": 0.3, "letters": 0.2, "mixed": 0.2, "no_working": 0.1}


@dataclass
class RunConfig:
    """A whole pretraining run: the model (``ModelArgs``), the optimizer schedule (``TrainConfig``, whose checkpoint
    and metrics paths ``run`` fills in), the data, the numeric precision and the device.

    n_chars: characters of pretraining text (prose_share of them prose, the rest lab 05's templated arithmetic);
    precision: "fp32"; "bf16" (bf16 autocast, for a GPU: ``run`` sets TrainConfig.amp); "fp8-emulated" /
    "bf16-emulated" (``dslab.fp8.enable_training``, lab 02's recipe on any device: FP8 E4M3 or BF16 GEMM inputs,
    computed in FP32); "fp8" (real FP8 GEMMs through ``torch._scaled_mm`` with row-wise scales where the device has
    them, see ``enable_real_fp8``).
    device: "auto" (cuda > mps > cpu, ``dslab.pick_device``) or a device name.
    """

    preset: str
    model: ModelArgs
    train: TrainConfig
    n_chars: int = 2_000_000
    prose_share: float = 0.3
    val_fraction: float = 0.02
    data_seed: int = 0
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self):
        if not isinstance(self.model, ModelArgs):
            raise TypeError(f"RunConfig.model must be a ModelArgs, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"RunConfig.train must be a TrainConfig, got {type(self.train).__name__}")
        validate.integer("RunConfig.n_chars", self.n_chars, 10_000)
        validate.real("RunConfig.prose_share", self.prose_share, 0, 1)
        validate.real("RunConfig.val_fraction", self.val_fraction, 0, 0.5, lo_open=True)
        validate.integer("RunConfig.data_seed", self.data_seed, 0)
        validate.choice("RunConfig.precision", self.precision, PRECISIONS)
        if self.train.block_size > self.model.max_seq_len:
            raise ValueError(f"TrainConfig.block_size ({self.train.block_size}) must be <= the model's max_seq_len "
                             f"({self.model.max_seq_len})")
        if self.model.vocab_size < data.CharTokenizer().vocab_size:
            raise ValueError(f"ModelArgs.vocab_size ({self.model.vocab_size}) must hold the character tokenizer's "
                             f"{data.CharTokenizer().vocab_size} ids")

    def to_dict(self) -> dict:
        train = {k: v for k, v in asdict(self.train).items() if k not in PATH_FIELDS}
        return {"preset": self.preset, "model": self.model.to_dict(), "train": train,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("preset", "model", "train")}}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        if not isinstance(d, dict) or not {"preset", "model", "train"} <= d.keys():
            raise ValueError("a run config needs 'preset', 'model' and 'train'")
        rest = {k: v for k, v in d.items() if k not in ("model", "train")}
        return cls(model=ModelArgs.from_dict(d["model"]), train=TrainConfig(**d["train"]), **rest)

    def replace(self, **changes) -> RunConfig:
        """A copy with fields changed: RunConfig fields by name, TrainConfig fields by name (``steps=20``), model
        fields as ``model.dim=64`` (or a ``model=`` ModelArgs). Unknown names raise ValueError listing the known."""
        top = {f.name for f in dataclasses.fields(self)}
        tr = {f.name for f in dataclasses.fields(TrainConfig)} - set(PATH_FIELDS)
        run_kw, train_kw, model_kw = {}, {}, {}
        for k, v in changes.items():
            if k.startswith("model."):
                model_kw[k[6:]] = v
            elif k in top:
                run_kw[k] = v
            elif k in tr:
                train_kw[k] = v
            else:
                raise ValueError(f"unknown setting {k!r}: use a TrainConfig field ({', '.join(sorted(tr))}), a run "
                                 f"field ({', '.join(sorted(top - {'model', 'train'}))}) or model.<ModelArgs field>")
        model = run_kw.pop("model", self.model)
        if model_kw:
            model = model.replace(**model_kw)
        train = dataclasses.replace(run_kw.pop("train", self.train), **train_kw)
        return dataclasses.replace(self, model=model, train=train, **run_kw)


@dataclass(frozen=True)
class Preset:
    """A named run: its RunConfig settings and what it was measured to do (``reached``: "not measured" unless a run
    of exactly this preset was made; ``hardware``: what it is sized for)."""

    name: str
    model: str  # a config in dslab/configs
    settings: dict
    hardware: str
    reached: str = "not measured"
    time: str = "not measured"


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu", "capstone-cpu", dict(
        steps=600, batch_size=16, block_size=128, lr=3e-3, warmup=30, min_lr_ratio=0.1, eval_every=100,
        eval_batches=8, checkpoint_every=100, bias_gamma=0.01, mtp_lambda=0.3, mtp_lambda_final=0.1, load_every=10,
        n_chars=1_500_000, precision="fp32"),
        hardware="2 CPU cores, under 5 minutes",
        reached="val loss 0.890 nats/char (datasets/capstone/healthy.csv)",
        time="311 s of CPU time, 1 thread (a 2-core machine)"),
    Preset("gpu-small", "capstone-gpu-small", dict(
        steps=3000, batch_size=64, block_size=512, lr=1.5e-3, warmup=150, min_lr_ratio=0.1, eval_every=250,
        eval_batches=8, checkpoint_every=500, bias_gamma=0.001, mtp_lambda=0.3, mtp_lambda_final=0.1,
        load_every=50, n_chars=20_000_000, precision="bf16", amp=True),
        hardware="one H100-class GPU, about 10 minutes"),
    Preset("gpu-full", "capstone-gpu-full", dict(
        steps=8000, batch_size=64, block_size=1024, lr=1e-3, warmup=400, min_lr_ratio=0.1, eval_every=500,
        eval_batches=8, checkpoint_every=1000, bias_gamma=0.001, bias_freeze=0.966, mtp_lambda=0.3,
        mtp_lambda_final=0.1, load_every=100, n_chars=50_000_000, precision="bf16", amp=True),
        hardware="one H100-class GPU, about an hour"),
)}


def preset_config(name: str, **changes) -> RunConfig:
    """The RunConfig of preset ``name`` ("cpu", "gpu-small", "gpu-full"), with ``changes`` (see RunConfig.replace)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    base = RunConfig(preset=name, model=load(p.model), train=TrainConfig(steps=1))
    return base.replace(**p.settings).replace(**changes)


def preset_card(name: str) -> dict:
    """What lab 00's accounting says about a preset, and what it was measured to reach: total and activated
    parameters (main model, embedding included, as ``dslab.accounting``), MTP parameters, KV-cache bytes per token
    (BF16), training FLOPs per token, tokens seen, the hardware it is sized for, the loss reached and the time."""
    cfg, p = preset_config(name), PRESETS[name]
    return {"preset": name, "model": p.model, "total_params": acc.total_params(cfg.model),
            "activated_params": acc.activated_params(cfg.model), "mtp_params": acc.mtp_params(cfg.model),
            "kv_bytes_per_token_bf16": acc.kv_bytes_per_token(cfg.model),
            "training_flops_per_token": acc.training_flops_per_token(cfg.model, cfg.train.block_size),
            "tokens": cfg.train.steps * cfg.train.batch_size * cfg.train.block_size,
            "hardware": p.hardware, "reached": p.reached, "time": p.time}


def preset_table() -> str:
    """The presets as a markdown table (the numbers from ``preset_card``)."""
    lines = ["| preset | model | total params | active params | MTP params | tokens seen | sized for | reached "
             "| time |", "|---|---|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        c = preset_card(name)
        lines.append(f"| `{name}` | `{c['model']}` | {c['total_params'] / 1e6:.2f}M | "
                     f"{c['activated_params'] / 1e6:.2f}M | {c['mtp_params'] / 1e6:.2f}M | {c['tokens'] / 1e6:,.1f}M | "
                     f"{c['hardware']} | {c['reached']} | {c['time']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ one run
def apply_precision(model: nn.Module, precision: str) -> list[str]:
    """Switch ``model`` to a RunConfig precision; returns the modules whose GEMMs changed ("fp32", "bf16": none)."""
    validate.choice("precision", precision, PRECISIONS)
    if precision == "fp8-emulated":
        return enable_training(model)
    if precision == "bf16-emulated":
        return enable_training(model, fmt="bf16", grad_fmt="bf16")
    if precision == "fp8":  # real FP8 GEMMs where the device has them, else the emulation (with a warning)
        return enable_real_fp8(model)
    return []


def init_model(cfg: RunConfig, rows: int = 1, device: torch.device | str = "cpu") -> nn.Module:
    """The run's ``Transformer`` (seeded by cfg.train.seed) on ``device`` with cfg.precision; KV caches of ``rows``."""
    torch.manual_seed(cfg.train.seed)
    with torch.device("cpu"):  # built on the CPU on purpose: the same initial weights whatever the device
        model = Transformer(cfg.model, max_batch_size=rows)
    model = model.to(device)
    apply_precision(model, cfg.precision)
    return model


def _device(name: str) -> torch.device:
    device = pick_device(None if name == "auto" else name)
    if device.type == "cuda" and world()[1] > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _run_folder(out: Path, cfg: RunConfig, rank: int) -> None:
    """Write out/config.json on a fresh run; on a resumed one, refuse a different configuration (naming the file).
    The device may differ: a run started on one device can continue on another."""
    path = out / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {path}: {e}; delete the run folder to start over") from None
        same = lambda d: {k: v for k, v in d.items() if k != "device"} if isinstance(d, dict) else d  # noqa: E731
        if same(saved) != same(json.loads(json.dumps(cfg.to_dict()))):  # where it runs is not part of the run
            old = RunConfig.from_dict(saved).to_dict() if isinstance(saved, dict) and "train" in saved else saved
            diff = _diff_dicts(same(old), same(cfg.to_dict())) if isinstance(old, dict) else "unreadable"
            raise CheckpointError(f"{path} describes another run ({diff}); use a new --out folder, or the same "
                                  "preset and settings to resume")
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")


def _diff_dicts(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            sub = _diff_dicts(x, y, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif json.dumps(x) != json.dumps(y):
            out.append(f"{prefix}{k}: {x!r} there, {y!r} now")
    return ", ".join(out)


def _peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where it comes from) for MFU; rank 0 measures, the others receive it."""
    dtype = torch.bfloat16 if precision in ("bf16", "fp8") and device.type == "cuda" else torch.float32
    rank, size = world()
    value = torch.tensor([peak_flops(device, dtype) if rank == 0 else 0.0], dtype=torch.float64, device=device)
    if size > 1:
        dist.all_reduce(value)
    return float(value), peak_flops_source(device, dtype)


@dataclass
class RunResult:
    """What ``pretraining_run`` leaves: the history (one row per step), the trained model (train mode), the summary
    written to out/summary.json, and the run folder."""

    history: list[dict]
    model: nn.Module = field(repr=False)
    summary: dict
    out: Path


def pretraining_run(cfg: RunConfig, out: str | os.PathLike, *, measure_peak: bool = True,
                    desc: str | None = None) -> RunResult:
    """Pretrain cfg's model into the folder ``out`` (config.json, checkpoint.pt, metrics.jsonl, summary.json,
    curves.png), resuming when ``out`` holds a checkpoint of the same configuration. Under ``torchrun`` with N > 1
    processes every rank trains its share of each global batch (DDP) and rank 0 writes the folder.
    measure_peak: measure the device's peak FLOP/s (``runtime.peak_flops``) so that rows carry MFU."""
    rank, size = init_distributed()
    out = Path(out)
    _run_folder(out, cfg, rank)
    if size > 1:
        dist.barrier()
    device = _device(cfg.device)
    with torch.device("cpu"):  # token ids stay on the CPU: the trainer draws batches from them and moves each
        train_ids, val_ids = corpus_ids(cfg)
    model = init_model(cfg, device=device)
    peak, source = _peak(device, cfg.precision) if measure_peak else (None, "not measured")
    tcfg = dataclasses.replace(cfg.train, checkpoint=str(out / "checkpoint.pt"), metrics=str(out / "metrics.jsonl"),
                               amp=cfg.train.amp or cfg.precision == "bf16")  # "bf16" means autocast
    start = time.perf_counter()
    history = train_lm(model, train_ids, val_ids, tcfg, peak_flops=peak, desc=desc or f"{cfg.preset} preset")
    summary = summarize(cfg, history, device, source, size, time.perf_counter() - start, peak_flops=peak)
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        plot_run(history, title=f"{cfg.preset} preset, {summary['device']}").savefig(out / "curves.png", dpi=110)
    return RunResult(history, model, summary, out)


def summarize(cfg: RunConfig, history: list[dict], device: torch.device, peak_source: str, ranks: int,
              seconds: float, peak_flops: float | None = None) -> dict:
    """The run in a few numbers: sizes from lab 00's accounting, tokens, the last losses, MaxVio and acceptance,
    median tokens/s and MFU over the steps (mfu: every module the step runs, MTP included; mfu_main: the main model
    alone), the peak FLOP/s of one device they divide by and where it came from; wall_seconds: this call (a resumed
    run counts only what it added), step_seconds: the training steps of the whole run (evaluation excluded)."""
    last = history[-1]
    val = [r["val_loss"] for r in history if "val_loss" in r]
    median = lambda k: float(np.median([r[k] for r in history if k in r])) if any(k in r for r in history) \
        else None  # noqa: E731
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"preset": cfg.preset, "model": cfg.model.name, "total_params": acc.total_params(cfg.model),
            "activated_params": acc.activated_params(cfg.model), "mtp_params": acc.mtp_params(cfg.model),
            "steps": len(history), "tokens": last["tokens"], "final_loss": last["loss"],
            "final_val_loss": val[-1] if val else None, "max_vio": last.get("max_vio"),
            "mtp_acceptance": last.get("mtp_acceptance"), "tokens_per_s": median("tokens_per_s"),
            "mfu": median("mfu"), "mfu_main": median("mfu_main"), "peak_flops": median("peak_flops") or peak_flops,
            "peak": peak_source, "device": name, "ranks": ranks,
            "threads": torch.get_num_threads(), "precision": cfg.precision, "wall_seconds": round(seconds, 1),
            "step_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def plot_run(history: list[dict], title: str = "", window: int = 20):
    """Loss (training, smoothed, and validation), learning rate, MaxVio and MTP acceptance against the step."""
    fig, axes = plots.figure(4, width=3.4, height=2.8)
    steps = [r["step"] for r in history]
    axes[0].plot(steps, plots.smooth([r["loss"] for r in history], window), lw=1.2, label="train (smoothed)")
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if val:
        axes[0].plot(*zip(*val), "o-", ms=3, lw=1, label="validation")
    axes[0].set(xlabel="step", ylabel="loss (nats/char)", title="loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["lr"] for r in history], color="C2")
    axes[1].set(xlabel="step", ylabel="learning rate", title="warm-up, then cosine")
    for ax, key, label in ((axes[2], "max_vio", "MaxVio (mean over MoE layers)"),
                           (axes[3], "mtp_acceptance", "depth-1 acceptance (teacher-forced)")):
        pts = [(r["step"], r[key]) for r in history if key in r]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, plots.smooth(list(v), window), color="C3" if key == "max_vio" else "C4")
        ax.set(xlabel="step", title=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def load_run(out: str | os.PathLike, rows: int = 1, device: torch.device | str = "cpu") -> tuple[nn.Module,
                                                                                                 RunConfig]:
    """The model a run folder's checkpoint holds (eval mode, KV caches of ``rows`` rows, plain precision) and the
    run's configuration. CheckpointError naming the file when the folder has none or it is damaged."""
    out = Path(out)
    path = out / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path} not found: {out} is not a run folder (python -m dslab train --out {out})")
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    ck = out / "checkpoint.pt"
    if not ck.exists():
        raise CheckpointError(f"{ck} not found: the run has not written a checkpoint yet")
    state = load_checkpoint(ck, ("model",), CHECKPOINT_FORMAT)
    with torch.device("cpu"):  # where the checkpoint's tensors are loaded; moved below
        model = Transformer(cfg.model, max_batch_size=rows)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ck} does not fit the model of {path}: {str(e)[:300]}") from None
    return model.to(device).eval(), cfg


# ------------------------------------------------------------------------------------------ sampling and GRPO
def sample(model: nn.Module, prompt: str, max_new_tokens: int = 120, temperature: float = 0.0, seed: int = 0,
           speculative: bool = False, stop: str | None = None) -> dict:
    """Continue ``prompt`` (text) with the model's KV cache -> {"text", "tokens"}; with ``speculative`` (a model with
    MTP modules) its own MTP head drafts and the main model verifies (``dslab.mtp.speculative_generate``, the same
    tokens as plain greedy decoding), adding "acceptance" and "tokens_per_forward". ``stop``: cut after this text."""
    tok = data.CharTokenizer()
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("prompt must not be empty")
    budget = model.args.max_seq_len - len(ids)
    validate.integer("max_new_tokens", max_new_tokens, 1)
    if budget < 1:
        raise ValueError(f"the prompt ({len(ids)} characters) leaves no room in max_seq_len {model.args.max_seq_len}")
    n = min(max_new_tokens, budget)
    gen = torch.Generator().manual_seed(seed)
    out: dict = {}
    if speculative:
        res = speculative_generate(model, ids, n, temperature, generator=gen)
        tokens = res.tokens
        out.update(acceptance=res.acceptance_rate, tokens_per_forward=res.tokens_per_forward, forwards=res.forwards)
    else:
        tokens = model.generate(ids, n, temperature, generator=gen)
    text = tok.decode(tokens)
    if stop and stop in text:
        text = text[:text.index(stop) + len(stop)]
    return {"text": text, "tokens": len(tokens), **out}


def grpo_config(fast: bool = False, **changes) -> grpo.GRPOConfig:
    """GRPO for the capstone model (R1-Zero's recipe as lab 05 runs it: accuracy + 0.1·format rewards, no KL, G
    completions per prompt, zero-variance groups dropped), sized for the cpu preset; FAST: a few tiny steps."""
    cfg = grpo.GRPOConfig(steps=40, prompts_per_step=16, num_generations=8, max_completion_length=100, lr=2e-4,
                          eval_every=20, eval_tasks=50, max_rows=256, micro_batch_rows=64,
                          reward_weights={"accuracy": 1.0, "format": 0.1})
    if fast:
        cfg = dataclasses.replace(cfg, steps=2, prompts_per_step=2, num_generations=4, eval_every=2, eval_tasks=4,
                                  max_completion_length=48)
    return dataclasses.replace(cfg, **changes)


def cold_start_config(fast: bool = False, **changes) -> SFTConfig:
    """The tiny R1's cold start, lab 05's: its worked examples, 30 steps of 32 at lr 3e-4; FAST: 3 of 8."""
    cfg = SFTConfig(steps=3 if fast else 30, batch_size=8 if fast else 32, lr=3e-4, warmup=5, max_completion_length=100)
    return dataclasses.replace(cfg, **changes)


def evaluate_r1(model: nn.Module, task_list: list, k: int = 8, max_new_tokens: int = 100, seed: int = 0,
                max_rows: int | None = None, sample_tasks: int | None = None) -> dict:
    """Lab 05's evaluation on held-out tasks: greedy accuracy and format on all of ``task_list``; pass@1 over k
    samples at temperature 0.6 / top-p 0.95 (R1 §3), pass@k, cons@k and their format rate on the first
    ``sample_tasks`` of them (all by default), and "greedy_sampled", the greedy accuracy on those same tasks."""
    scores = evals.greedy_scores(model, task_list, max_new_tokens, max_rows)  # one greedy pass serves both sets
    sampled = task_list[:sample_tasks] if sample_tasks is not None else task_list
    mean = lambda key, rows: sum(c[key] for c in rows) / len(rows)  # noqa: E731
    greedy, fmt, same = mean("accuracy", scores), mean("format", scores), mean("accuracy", scores[:len(sampled)])
    res = evals.evaluate(model, sampled, k=k, max_new_tokens=max_new_tokens, seed=seed, greedy=False,
                         max_rows=max_rows)
    return {"greedy": greedy, "greedy_format": fmt, "greedy_sampled": same, "tasks": len(task_list),
            "sampled_tasks": len(sampled), **{key: v for key, v in res.items() if key not in ("samples", "per_task")}}


def load_weights(path: str | os.PathLike, rows: int = 1, device: torch.device | str = "cpu") -> tuple[nn.Module,
                                                                                                     RunConfig]:
    """The model a weights file of ``export_weights`` holds (eval mode, float32) and its run's configuration."""
    state = load_checkpoint(Path(path), ("config", "model"), WEIGHTS_FORMAT)
    cfg = RunConfig.from_dict(state["config"])
    with torch.device("cpu"):  # where the file's tensors are loaded; moved below
        model = Transformer(cfg.model, max_batch_size=rows)
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    return model.to(device).eval(), cfg


def export_weights(model: nn.Module, cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the model's weights (float16: half the bytes, far below the training noise) and its run's config."""
    half = {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
            for k, v in model.state_dict().items()}
    save_checkpoint(Path(path), {"config": cfg.to_dict(), "model": half}, WEIGHTS_FORMAT)


def grpo_run(out: str | os.PathLike, cfg: grpo.GRPOConfig | None = None, *, base: str | os.PathLike | None = None,
             cold_start: SFTConfig | None = None, eval_tasks: int = 100, k: int = 8, sample_tasks: int | None = None,
             fast: bool = False, device: torch.device | str = "cpu") -> dict:
    """Turn a pretrained model into a tiny R1 with lab 05's recipe, into out/grpo/ (before.json, cold_start.jsonl
    and .json, checkpoint.pt, metrics.jsonl, summary.json, policy.pt): optional cold-start SFT on
    ``sft.cold_start_tasks`` worked in digits, then GRPO (``dslab.grpo.train_grpo``) on lab 05's train split; GRPO
    resumes like ``train_grpo``. The model is out/checkpoint.pt, or the weights file ``base`` (``export_weights``).
    Returns ``evaluate_r1`` on the first ``eval_tasks`` test tasks before, after the cold start and after GRPO."""
    cfg = cfg or grpo_config(fast)
    out = Path(out)
    folder = out / "grpo"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, checkpoint=str(folder / "checkpoint.pt"), metrics=str(folder / "metrics.jsonl"))
    if base is None:
        model, _ = load_run(out, rows=cfg.max_rows, device=device)
    else:
        model, _ = load_weights(base, rows=cfg.max_rows, device=device)
    splits = data.rl_splits()
    test = splits["test"][:eval_tasks]

    def measured(name: str) -> dict:  # each evaluation is kept, so a resumed run does not repeat it
        path = folder / f"{name}.json"
        if not path.exists():
            res = evaluate_r1(model.eval(), test, k, cfg.max_completion_length, cfg.seed, cfg.max_rows, sample_tasks)
            path.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        return json.loads(path.read_text(encoding="utf-8"))

    before = measured("before")
    warm = None
    if cold_start is not None:
        if not Path(cfg.checkpoint).exists():  # GRPO's checkpoint already holds the cold-started weights
            train_sft(model, data.cold_start_pairs(cold_start_tasks()),
                      dataclasses.replace(cold_start, metrics=str(folder / "cold_start.jsonl")), desc="cold start")
        warm = measured("cold_start")
    model.train()  # train_grpo computes log-probs in the mode it finds the policy in: the uncached training path
    history = grpo.train_grpo(model, splits["train"], cfg, eval_tasks=splits["val"], desc="GRPO")
    after = evaluate_r1(model.eval(), test, k, cfg.max_completion_length, cfg.seed, cfg.max_rows, sample_tasks)
    summary = {"before": before, "cold_start": warm, "after": after, "test_tasks": len(test), "k": k,
               "steps": cfg.steps, "reward_first": history[1]["reward"] if len(history) > 1 else None,
               "reward_last": history[-1].get("reward")}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    torch.save({k_: v.detach().clone() for k_, v in model.state_dict().items()}, folder / "policy.pt")
    return summary


def corpus_ids(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, val ids) of a run's pretraining text: the last val_fraction of it is the validation split, its
    prose paragraphs never in the training part."""
    text = data.pretraining_corpus(cfg.n_chars, cfg.prose_share, cfg.data_seed, mix=ARITHMETIC_MIX,
                                   val_fraction=cfg.val_fraction)
    return data.train_val_split(data.encode_text(text), cfg.val_fraction)
