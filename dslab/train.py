"""The course trainer: ``train_lm``, the loop every lab trains with (the capstone's whole runs are ``dslab.capstone``).

``train_lm(model, train_ids, val_ids, cfg)`` does, per optimizer step: a learning rate from a linear warm-up then a
cosine decay (``lr_at``); ``cfg.batch_size`` sequences drawn from one seeded generator (the *global* batch: under
data parallelism every rank draws the same rows and keeps its own slice), split into ``cfg.grad_accum``
micro-batches; the objective L_main + (λ/D) Σ_k L^k_MTP (V3 eq. 25, λ on V3's schedule) for a model with D > 0
Multi-Token Prediction modules, else L_main; optional bf16 autocast and ``torch.compile``; gradient clipping and
AdamW (weight decay on matrices only, β = (0.9, 0.95) as V3 §4.2); then the auxiliary-loss-free bias update of every
MoE gate, b_i += γ·sign(mean load − load_i), from the load of the step's *whole* batch — summed over micro-batches
and, under ``torchrun``, over ranks before the update, as V3 §2.1.2 monitors "the expert load on the whole batch of
each training step". Each step logs a row: loss, lr, MaxVio, MTP acceptance (depth 1's argmax equal to the main
model's next argmax, teacher-forced), gradient norm, and the wall-clock figures tokens/s and MFU
(``dslab.accounting.mfu``). A non-finite loss or gradient stops the run before the optimizer step
(``TrainingDiverged``), so the last checkpoint stays the last good one. Checkpoints are written atomically every
``cfg.checkpoint_every`` steps; a run resumes from its checkpoint and, on a CPU, continues bit for bit as if it had
never stopped (parameters, optimizer, data order, gate biases, history). A checkpoint that cannot be read or was
written for another configuration or model raises ``CheckpointError`` naming the file."""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dslab import validate
from dslab.accounting import mfu, training_flops_per_token
from dslab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_metrics
from dslab.data import get_batch
from dslab.moe import max_vio
from dslab.mtp import V3_LAMBDA_SWITCH, depth_losses, mtp_lambda
from dslab.runtime import progress, world

# the row entries a resumed run does not reproduce
WALL_CLOCK_KEYS = ("seconds", "tokens_per_s", "mfu", "mfu_main", "peak_flops")
CHECKPOINT_FORMAT = "dslab-train/2"
PATH_FIELDS = ("checkpoint", "metrics")  # where a run writes, not how it trains: never part of the resume check


@dataclass
class OptimConfig:
    """What every trainer's optimizer and schedule take (``train_lm``, ``train_sft``, ``train_grpo``): ``steps``
    optimizer steps, AdamW at peak ``lr`` on ``lr_at``'s schedule (``warmup`` steps up, cosine down to
    lr·min_lr_ratio at the last step), ``weight_decay``, the gradient-norm clip ``grad_clip``, and the ``seed`` of
    the run's data order or sampling. Each trainer's config extends it and sets its own defaults."""

    steps: int = 300
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        validate.integer(f"{name}.steps", self.steps, 1)
        validate.real(f"{name}.lr", self.lr, 0, lo_open=True)
        validate.real(f"{name}.min_lr_ratio", self.min_lr_ratio, 0, 1)
        validate.integer(f"{name}.warmup", self.warmup, 0)
        validate.real(f"{name}.weight_decay", self.weight_decay, 0)
        validate.real(f"{name}.grad_clip", self.grad_clip, 0, lo_open=True)
        validate.integer(f"{name}.seed", self.seed, 0)


@dataclass
class TrainConfig(OptimConfig):
    """Hyper-parameters of one run (``OptimConfig``'s, and the LM trainer's own). Defaults suit the course's tiny
    models on a CPU.

    batch_size is the global batch (sequences per optimizer step, over all ranks and micro-batches); grad_accum
    splits each rank's share into that many micro-batches. bias_gamma: γ of the aux-loss-free update the trainer
    applies after every step (None: the trainer leaves the gate biases to ``after_step``); bias_freeze: the fraction
    of the steps after which γ becomes 0 (V3 §4.2: 14.3T of 14.8T tokens). amp: bf16 autocast on a GPU.
    load_every: every so many steps a row also holds each MoE layer's expert load (0: never).
    metrics: a JSON-lines file with one row per step (rewritten from the checkpoint's history on resume).
    """

    batch_size: int = 16
    block_size: int = 64
    betas: tuple[float, float] = (0.9, 0.95)  # V3 §4.2
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint: str | None = None
    checkpoint_every: int = 100
    mtp_lambda: float = 0.3  # λ of L_MTP (V3 eq. 25); only models with MTP modules use these three
    mtp_lambda_final: float | None = None  # None: λ stays constant; V3 §4.2: 0.1
    mtp_lambda_switch: float = V3_LAMBDA_SWITCH  # fraction of the steps after which λ becomes mtp_lambda_final
    grad_accum: int = 1
    bias_gamma: float | None = None
    bias_freeze: float = 1.0
    amp: bool = False
    compile: bool = False
    load_every: int = 0
    metrics: str | None = None

    def __post_init__(self):
        super().__post_init__()
        for k in ("batch_size", "block_size", "eval_every", "eval_batches", "checkpoint_every", "grad_accum"):
            validate.integer(f"TrainConfig.{k}", getattr(self, k), 1)
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.grad_accum ({self.grad_accum}) must divide batch_size ({self.batch_size})")
        validate.real("TrainConfig.mtp_lambda", self.mtp_lambda, 0)
        if self.mtp_lambda_final is not None:
            validate.real("TrainConfig.mtp_lambda_final", self.mtp_lambda_final, 0)
        validate.real("TrainConfig.mtp_lambda_switch", self.mtp_lambda_switch, 0, 1)
        if self.bias_gamma is not None:
            validate.real("TrainConfig.bias_gamma", self.bias_gamma, 0)
        validate.real("TrainConfig.bias_freeze", self.bias_freeze, 0, 1)
        validate.integer("TrainConfig.load_every", self.load_every, 0)
        for k in ("amp", "compile"):
            if not isinstance(getattr(self, k), bool):
                raise TypeError(f"TrainConfig.{k} must be a bool, got {getattr(self, k)!r}")
        self.betas = tuple(self.betas)  # JSON gives a list


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the run stopped before the optimizer step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# ------------------------------------------------------------------------------------------------- schedule, loss
def lr_at(step: int, cfg: OptimConfig) -> float:
    """The one learning-rate schedule of every trainer (LM, GRPO, SFT): for any ``cfg`` with steps, lr, warmup and
    min_lr_ratio, a linear warm-up to cfg.lr over the first ``warmup`` steps, then a cosine decay that reaches
    cfg.lr · min_lr_ratio exactly at the last step (step = steps − 1), and stays there past it."""
    validate.integer("step", step, 0)
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def bias_gamma_at(step: int, cfg: TrainConfig) -> float:
    """γ at ``step``: cfg.bias_gamma, then 0 from bias_freeze·steps on (V3 §4.2); 0 when bias_gamma is None."""
    if cfg.bias_gamma is None or step >= cfg.bias_freeze * cfg.steps:
        return 0.0
    return float(cfg.bias_gamma)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x, y [B, S] -> scalar."""
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@dataclass
class Objective:
    """One forward's losses: total = main + (λ/D) Σ_k mtp_ce[k] (V3 eq. 25); agree/count: depth 1's argmax at i equal
    to the main model's argmax at i + 1, over count positions (0 and 0 without MTP)."""

    total: torch.Tensor
    main: torch.Tensor
    mtp_ce: list[torch.Tensor]
    agree: int = 0
    count: int = 0


class _Forward(nn.Module):
    """The training forward as one module call (what DDP and torch.compile wrap): tokens -> (logits, [depth logits])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        if len(getattr(self.model, "mtp", None) or ()):
            return self.model.forward_mtp(x)
        return self.model(x), []


def objective(forward: Callable, x: torch.Tensor, y: torch.Tensor, lam: float) -> Objective:
    """The training objective of one micro-batch. forward(x) -> (logits [B, S, V], [depth k's logits [B, S-k, V]])
    (e.g. ``lambda x: model.forward_mtp(x)``); x, y [B, S]; λ of eq. 25. Returns an ``Objective``."""
    logits, mtp_logits = forward(x)
    main = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    if not mtp_logits:
        return Objective(main, main, [])
    ce = depth_losses(mtp_logits, torch.cat([x, y[:, -1:]], dim=1))
    with torch.no_grad():  # greedy acceptance of the second token, teacher-forced (V3 §5.4.3 measures it decoding)
        agree = int((mtp_logits[0].argmax(-1) == logits[:, 1:].argmax(-1)).sum())
    return Objective(main + lam / len(ce) * torch.stack(ce).sum(), main, ce, agree, mtp_logits[0].shape[:2].numel())


def mtp_lm_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main next-token loss, [L^k_MTP for k = 1..D]) from one ``model.forward_mtp`` pass; x, y [B, S].

    The window is x with y's last token appended: depth k's targets are y shifted by k (``dslab.mtp.mtp_shift``).
    """
    out = objective(lambda t: model.forward_mtp(t), x, y, 0.0)
    return out.main, out.mtp_ce


@torch.no_grad()
def estimate_loss(model: nn.Module, data: torch.Tensor, cfg: TrainConfig, seed: int = 1234) -> float:
    """Mean loss over cfg.eval_batches fixed batches of ``data`` (the same batches at every evaluation)."""
    was_training = model.training
    model.train()  # the training path (no KV cache) evaluates whole sequences of any batch size
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = _cpu_batch(data, cfg.batch_size, cfg.block_size, g)
        losses.append(lm_loss(model, x.to(device), y.to(device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def _cpu_batch(data: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.get_batch`` made on the CPU whatever the default device: a CPU generator draws the windows of the CPU
    token ids [N]; the caller moves x, y [batch_size, block_size] to the model's device."""
    with torch.device("cpu"):
        return get_batch(data, batch_size, block_size, generator)


# ------------------------------------------------------------------------------------------------- distributed
def _all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (itself without a process group)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------- checkpoints
def _check_config(path: str, saved: dict, cfg: TrainConfig) -> None:
    defaults = asdict(TrainConfig())  # fields added since the checkpoint was written count at their defaults
    old = {**{k: defaults[k] for k in defaults.keys() - saved.keys()}, **saved}
    new = asdict(cfg)
    for k in PATH_FIELDS:
        old.pop(k, None), new.pop(k, None)
    old["betas"] = tuple(old["betas"])
    diff = sorted(k for k in new if old.get(k) != new[k])
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in diff)
        raise CheckpointError(f"checkpoint {path} was written with another TrainConfig ({detail}); delete it to "
                              f"restart, or resume with the same settings")


def _restore(path: str, state: dict, model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    _check_config(path, state["config"], cfg)
    saved_args, args = state.get("model_args"), getattr(model, "args", None)
    if saved_args is not None and args is not None and saved_args != args.to_dict():
        diff = sorted(k for k in saved_args if saved_args[k] != args.to_dict().get(k))
        raise CheckpointError(f"checkpoint {path} was written for another model (differs in {', '.join(diff)})")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e)[:400]}") from None


# --------------------------------------------------------------------------------------------------- the loop
def micro_batches(n: int, size: int) -> list[slice]:
    """Slices cutting ``n`` rows into consecutive pieces of at most ``size`` rows (the last may be shorter)."""
    validate.integer("n", n, 0)
    validate.integer("size", size, 1)
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def _rank_micro_batches(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, rank: int, size: int):
    """This rank's slice of the global batch, cut into cfg.grad_accum micro-batches."""
    per_rank = cfg.batch_size // size
    x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
    return [(x[mb], y[mb]) for mb in micro_batches(per_rank, per_rank // cfg.grad_accum)]


def _moe_layers(model: nn.Module) -> list:
    return model.moe_layers() if hasattr(model, "moe_layers") else []


def _balance(model: nn.Module, before: list[torch.Tensor], gamma: float, update: bool) -> tuple[torch.Tensor, dict]:
    """The step's expert load [layers, E] summed over micro-batches and ranks; MaxVio; the bias update with it."""
    layers = _moe_layers(model)
    if not layers:
        return torch.zeros(0, device="cpu"), {}
    load = _all_sum(torch.stack([m.step_load - b for m, b in zip(layers, before)]))
    if update:
        for m, layer_load in zip(layers, load):
            if m.gate.bias is not None:
                m.step_load = layer_load.clone()  # the whole batch's load, all ranks (V3 §2.1.2)
                m.update_bias(gamma)
    vio = [max_vio(x) for x in load.cpu() if x.sum() > 0]
    return load, ({"max_vio": sum(vio) / len(vio)} if vio else {})


def _step(forward, model, opt, x, y, cfg, step, depth, ddp, extra_loss, device) -> tuple[dict, torch.Tensor]:
    """Forward and backward of every micro-batch -> (the step's summed statistics, grad norm)."""
    lam = mtp_lambda(step, cfg.steps, cfg.mtp_lambda, cfg.mtp_lambda_final, cfg.mtp_lambda_switch) if depth else 0.0
    rank, size = world()
    micro = _rank_micro_batches(x, y, cfg, rank, size)
    sums = torch.zeros(5 + depth, dtype=torch.float64, device="cpu")  # main, extra, agree, count, total, mtp_ce...
    opt.zero_grad(set_to_none=True)
    for i, (xb, yb) in enumerate(micro):
        sync = ddp is None or i == len(micro) - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = objective(forward, xb.to(device), yb.to(device), lam)
            total = out.total
            extra = extra_loss(model) if extra_loss else None
            if extra is not None:
                total = total + extra
        (total / len(micro)).backward() if len(micro) > 1 else total.backward()
        sums += torch.tensor([out.main.item(), extra.item() if extra is not None else 0.0, out.agree, out.count,
                              total.item(), *[c.item() for c in out.mtp_ce]], dtype=torch.float64, device="cpu")
    sums = _all_sum(sums.to(device)).cpu()
    n = len(micro) * size
    stats = {"loss": sums[0].item() / n, "lam": lam, "mtp_ce": [v / n for v in sums[5:].tolist()],
             "objective": sums[4].item() / n}
    if extra_loss is not None and extra is not None:
        stats["extra_loss"] = sums[1].item() / n
    if depth:
        stats["mtp_acceptance"] = sums[2].item() / max(1.0, sums[3].item())
    if not math.isfinite(stats["objective"]):
        return stats, torch.tensor(float("nan"), device="cpu")
    return stats, nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)


def _diverged(step: int, stats: dict, norm: float, cfg: TrainConfig, lr: float) -> TrainingDiverged:
    what = f"the loss is {stats['loss']}" if not math.isfinite(stats["loss"]) else \
        f"an MTP loss is {stats['mtp_ce']}" if not all(math.isfinite(v) for v in stats["mtp_ce"]) else \
        f"the objective is {stats['objective']} (extra loss {stats.get('extra_loss')})" \
        if not math.isfinite(stats["objective"]) else f"the gradient norm is {norm}"
    last = (step // cfg.checkpoint_every) * cfg.checkpoint_every
    kept = (f"the last good checkpoint, {cfg.checkpoint} (step {last}), is kept" if cfg.checkpoint and last else
            "no checkpoint was written before it")
    return TrainingDiverged(f"training stopped at step {step}: {what} (lr {lr:.3g}); the optimizer step was not "
                            f"taken and {kept}. Lower the learning rate or lengthen the warm-up, and start a new run",
                            step)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains, biases and gate biases are not pulled towards 0)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """(the training forward, its DDP wrapper or None): DDP over ranks under torchrun, then torch.compile if asked."""
    forward, ddp = _Forward(model), None
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        # Each rank keeps its own MoE load counters (summed explicitly in _balance): buffers are never broadcast.
        no_sync_buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
            inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
        forward = ddp = DistributedDataParallel(forward, device_ids=ids, **no_sync_buffers)
    return (torch.compile(forward) if cfg.compile else forward), ddp


def _resume(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig) -> tuple[torch.Generator, list, int]:
    """(data generator, history, first step): fresh, or restored from cfg.checkpoint when it exists."""
    g = torch.Generator().manual_seed(cfg.seed)
    if not (cfg.checkpoint and Path(cfg.checkpoint).exists()):
        return g, [], 0
    state = load_checkpoint(cfg.checkpoint, ("model", "optimizer", "step", "generator", "history", "config"),
                            CHECKPOINT_FORMAT)
    _restore(cfg.checkpoint, state, model, opt, cfg)
    g.set_state(state["generator"])
    return g, state["history"], state["step"]


def _row(step: int, lr: float, stats: dict, norm: float, balance: dict, load: torch.Tensor, depth: int,
         cfg: TrainConfig) -> dict:
    """One step's logged numbers (wall clock, evaluation and the caller's extras are added by ``train_lm``)."""
    row = {"step": step, "lr": lr, "loss": stats["loss"], "tokens": (step + 1) * cfg.batch_size * cfg.block_size,
           "grad_norm": norm, **balance}
    if depth:
        row.update(mtp_lambda=stats["lam"], mtp_loss=stats["lam"] / depth * sum(stats["mtp_ce"]),
                   mtp_ce=stats["mtp_ce"], mtp_acceptance=stats["mtp_acceptance"])
    if "extra_loss" in stats:
        row["extra_loss"] = stats["extra_loss"]
    if cfg.bias_gamma is not None and load.numel():
        row["bias_gamma"] = bias_gamma_at(step, cfg)
    if cfg.load_every and load.numel() and (step % cfg.load_every == 0 or step + 1 == cfg.steps):
        row["load"] = load.cpu().tolist()
    return row


def _save(model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, history: list, cfg: TrainConfig) -> None:
    save_checkpoint(cfg.checkpoint, {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": len(history), "generator": g.get_state(),
        "history": history, "config": asdict(cfg),
        "model_args": model.args.to_dict() if hasattr(model, "args") else None}, CHECKPOINT_FORMAT)


def _step_flops(model: nn.Module, cfg: TrainConfig, depth: int, peak: float | None,
                 given: float | None) -> tuple[float | None, float | None]:
    """(FLOPs per token of everything a step runs, of the main model alone) for MFU: lab 00's counts for
    ``model.args``, the MTP modules included when the model runs them; ``given`` replaces the first (no second)."""
    if given is not None or peak is None or not hasattr(model, "args"):
        return given, None
    main = training_flops_per_token(model.args, cfg.block_size)
    return training_flops_per_token(model.args, cfg.block_size, include_mtp=depth > 0), main


def _mfu_row(flops: float, main_flops: float | None, tokens_per_s: float, peak: float, step: int) -> dict:
    """mfu (every module the step runs), mfu_main (the main model alone) and the peak_flops they divide by (a resumed
    run may measure another); none when above 1, which is a timing error (the peak measured on a busier machine
    than the step ran on), never a result."""
    out = {"mfu": mfu(flops, tokens_per_s, peak), "peak_flops": peak}
    if main_flops is not None:
        out["mfu_main"] = mfu(main_flops, tokens_per_s, peak)
    if out["mfu"] > 1.0:
        warnings.warn(f"step {step}: MFU {out['mfu']:.0%} > 100% against a peak of {peak / 1e9:,.1f} GFLOP/s: the "
                      "peak was under-measured (dslab.runtime.peak_flops(..., refresh=True)); not logged", stacklevel=3)
        return {}
    return out


def train_lm(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig,
             extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None,
             after_step: Callable[[nn.Module, int], dict | None] | None = None, *,
             peak_flops: float | None = None, flops_per_token: float | None = None,
             stop_after: int | None = None, desc: str = "training") -> list[dict]:
    """Train ``model`` on next-token prediction; returns the history, one dict per step (see the module docstring).

    extra_loss(model) is added to the objective (e.g. ``Transformer.aux_loss``, a balance loss); after_step(model,
    step) runs after the optimizer step and the trainer's bias update, and may return numbers to log. Rows hold step,
    lr, loss (the main next-token loss, mean over the global batch), tokens (seen so far), grad_norm, and for an MoE
    model max_vio (of the step's whole batch, mean over MoE layers; ``load`` every cfg.load_every steps); for a model
    with MTP modules mtp_lambda, mtp_loss ((λ/D) Σ_k L^k), mtp_ce (the list of L^k) and mtp_acceptance; every
    ``eval_every`` steps and at the end val_loss (main loss). Wall clock: seconds, tokens_per_s, and given
    ``peak_flops`` (FLOP/s of one device) mfu, of every module the step runs (``flops_per_token``, default lab 00's
    count for ``model.args`` with its MTP modules), and mfu_main, the main model alone (with the default count).
    stop_after: train only the first so many steps of the schedule. Under ``torch.distributed`` every rank calls
    this with the same arguments; rank 0 writes the checkpoint and the metrics file."""
    device = next(model.parameters()).device
    rank, size = world()
    if cfg.batch_size % (size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must split evenly over {size} ranks x grad_accum "
                         f"{cfg.grad_accum}")
    end = cfg.steps if stop_after is None else validate.integer("stop_after", stop_after, 1, cfg.steps)
    opt = _optimizer(model, cfg)
    g, history, start = _resume(model, opt, cfg)
    if rank == 0:
        write_metrics(cfg.metrics, history, append=False)
    model.train()
    depth = len(getattr(model, "mtp", None) or ())
    forward, ddp = _wrap(model, cfg, device)
    flops_per_token, main_flops = _step_flops(model, cfg, depth, peak_flops, flops_per_token)
    tokens_per_step = cfg.batch_size * cfg.block_size
    for step in progress(range(start, end), desc=desc, initial=start, total=end, disable=rank != 0 or None):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x, y = _cpu_batch(train_ids, cfg.batch_size, cfg.block_size, g)
        before = [m.step_load.clone() for m in _moe_layers(model)]
        stats, norm = _step(forward, model, opt, x, y, cfg, step, depth, ddp, extra_loss, device)
        if not math.isfinite(float(norm)):
            raise _diverged(step, stats, float(norm), cfg, lr)
        opt.step()
        load, balance = _balance(model, before, bias_gamma_at(step, cfg), cfg.bias_gamma is not None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        row = _row(step, lr, stats, float(norm), balance, load, depth, cfg)
        row.update((after_step(model, step) or {}) if after_step else {})
        if (step + 1) % cfg.eval_every == 0 or step + 1 in (cfg.steps, end):
            row["val_loss"] = estimate_loss(model, val_ids, cfg)
        row.update(seconds=seconds, tokens_per_s=tokens_per_step / seconds)
        if peak_flops is not None and flops_per_token is not None:
            row.update(_mfu_row(flops_per_token, main_flops, tokens_per_step / seconds, peak_flops * size, step))
        history.append(row)
        if rank == 0:
            write_metrics(cfg.metrics, [row])
        if cfg.checkpoint and rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.steps, end)):
            _save(model, opt, g, history, cfg)
    return history
