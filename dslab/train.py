"""The course trainer: ``train_lm``, the loop every lab trains with, and ``run``, a whole capstone pretraining run.

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
written for another configuration or model raises ``CheckpointError`` naming the file.

``run(cfg, out)`` is what ``python -m dslab train --preset NAME --out runs/NAME`` and lab 06 call: the preset's model
(``dslab/configs/capstone-*.json``), the pretraining text (prose mixed with lab 05's templated arithmetic, so that
the format reward is learnable when GRPO starts), metrics to ``out/metrics.jsonl``, checkpoints, figures, and data
parallelism under ``torchrun --nproc_per_node=N`` (NCCL on GPUs, gloo on CPUs). ``load_run`` gives the trained model
back for sampling (``python -m dslab sample``) and ``grpo_run`` turns it into a tiny R1 (``python -m dslab grpo``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.data import get_batch
from dslab.mtp import V3_LAMBDA_SWITCH, depth_losses, mtp_lambda
from dslab.runtime import progress

PRECISIONS = ("fp32", "bf16", "fp8-emulated", "bf16-emulated", "fp8")
WALL_CLOCK_KEYS = ("seconds", "tokens_per_s", "mfu")  # the only row entries a resumed run does not reproduce
CHECKPOINT_FORMAT = "dslab-train/2"
_PATH_FIELDS = ("checkpoint", "metrics")  # where a run writes, not how it trains: never part of the resume check


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. Defaults suit the course's tiny models on a CPU.

    batch_size is the global batch (sequences per optimizer step, over all ranks and micro-batches); grad_accum
    splits each rank's share into that many micro-batches. bias_gamma: γ of the aux-loss-free update the trainer
    applies after every step (None: the trainer leaves the gate biases to ``after_step``); bias_freeze: the fraction
    of the steps after which γ becomes 0 (V3 §4.2: 14.3T of 14.8T tokens). amp: bf16 autocast on a GPU.
    load_every: every so many steps a row also holds each MoE layer's expert load (0: never).
    metrics: a JSON-lines file with one row per step (rewritten from the checkpoint's history on resume).
    """

    steps: int = 300
    batch_size: int = 16
    block_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)  # V3 §4.2
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0
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
        for k in ("steps", "batch_size", "block_size", "eval_every", "eval_batches", "checkpoint_every", "grad_accum"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) <= 0:
                raise ValueError(f"TrainConfig.{k} must be a positive int, got {getattr(self, k)!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup >= 0; got {self.lr}, "
                             f"{self.min_lr_ratio}, {self.warmup}")
        validate.real("TrainConfig.lr", self.lr, 0, lo_open=True)
        validate.real("TrainConfig.grad_clip", self.grad_clip, 0, lo_open=True)
        validate.real("TrainConfig.weight_decay", self.weight_decay, 0)
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


class CheckpointError(ValueError):
    """A checkpoint (or run folder) that cannot be read, or that was written for another configuration or model."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the run stopped before the optimizer step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# ------------------------------------------------------------------------------------------------- schedule, loss
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr · min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def bias_gamma_at(step: int, cfg: TrainConfig) -> float:
    """γ at ``step``: cfg.bias_gamma, then 0 from bias_freeze·steps on (V3 §4.2); 0 when bias_gamma is None."""
    if cfg.bias_gamma is None or step >= cfg.bias_freeze * cfg.steps:
        return 0.0
    return float(cfg.bias_gamma)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x, y [B, S] -> scalar."""
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def mtp_lm_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main next-token loss, [L^k_MTP for k = 1..D]) from one ``model.forward_mtp`` pass; x, y [B, S].

    The window is x with y's last token appended: depth k's targets are y shifted by k (``dslab.mtp.mtp_shift``).
    """
    logits, mtp_logits = model.forward_mtp(x)
    main = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    return main, depth_losses(mtp_logits, torch.cat([x, y[:, -1:]], dim=1))


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


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, cfg: TrainConfig, seed: int = 1234) -> float:
    """Mean loss over cfg.eval_batches fixed batches of ``data`` (the same batches at every evaluation)."""
    was_training = model.training
    model.train()  # the training path (no KV cache) evaluates whole sequences of any batch size
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(data, cfg.batch_size, cfg.block_size, g)
        losses.append(lm_loss(model, x.to(device), y.to(device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------------------------------- distributed
def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(timeout_s: float = 120.0) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (NCCL with one GPU per rank, else gloo over
    loopback when all ranks share this machine); (0, 1) when the process was not started by torchrun with N > 1."""
    if dist.is_initialized():
        return world()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and os.environ.get("LOCAL_WORLD_SIZE") == os.environ["WORLD_SIZE"] \
            and "GLOO_SOCKET_IFNAME" not in os.environ:
        names = [n for _, n in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
        loop = next((n for n in names if n in ("lo", "lo0")), None)
        if loop:
            os.environ["GLOO_SOCKET_IFNAME"] = loop  # one machine: talk over loopback, never a NIC
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (itself without a process group)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: to ``path.tmp`` first, then renamed, so a kill leaves the old file intact."""
    tmp = f"{path}.tmp"
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


_save = save_checkpoint  # the name earlier code used


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``save_checkpoint`` (or by earlier versions of the trainer); CheckpointError naming
    the file when it cannot be read or is not a training checkpoint."""
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - truncated zip, random bytes, a pickle of something else: all unreadable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is damaged "
                              f"(e.g. a copy that stopped half-way); delete it to start the run over") from None
    missing = [k for k in ("model", "optimizer", "step", "generator", "history", "config")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a dslab training checkpoint (missing {', '.join(missing)}); delete it "
                              f"or write the run elsewhere")
    return state


def _check_config(path: str, saved: dict, cfg: TrainConfig) -> None:
    defaults = asdict(TrainConfig())  # fields added since the checkpoint was written count at their defaults
    old = {**{k: defaults[k] for k in defaults.keys() - saved.keys()}, **saved}
    new = asdict(cfg)
    for k in _PATH_FIELDS:
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
def _micro_batches(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, rank: int, size: int):
    """This rank's slice of the global batch, cut into cfg.grad_accum micro-batches."""
    per_rank = cfg.batch_size // size
    x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
    n = per_rank // cfg.grad_accum
    return [(x[i * n:(i + 1) * n], y[i * n:(i + 1) * n]) for i in range(cfg.grad_accum)]


def _moe_layers(model: nn.Module) -> list:
    return model.moe_layers() if hasattr(model, "moe_layers") else []


def _balance(model: nn.Module, before: list[torch.Tensor], gamma: float, update: bool) -> tuple[torch.Tensor, dict]:
    """The step's expert load [layers, E] summed over micro-batches and ranks; MaxVio; the bias update with it."""
    from dslab.moe import max_vio

    layers = _moe_layers(model)
    if not layers:
        return torch.zeros(0), {}
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
    micro = _micro_batches(x, y, cfg, rank, size)
    sums = torch.zeros(5 + depth, dtype=torch.float64)  # main, extra, agree, count, total, mtp_ce...
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
                              total.item(), *[c.item() for c in out.mtp_ce]], dtype=torch.float64)
    sums = _all_sum(sums.to(device)).cpu()
    n = len(micro) * size
    stats = {"loss": sums[0].item() / n, "lam": lam, "mtp_ce": [v / n for v in sums[5:].tolist()],
             "objective": sums[4].item() / n}
    if extra_loss is not None and extra is not None:
        stats["extra_loss"] = sums[1].item() / n
    if depth:
        stats["mtp_acceptance"] = sums[2].item() / max(1.0, sums[3].item())
    if not math.isfinite(stats["objective"]):
        return stats, torch.tensor(float("nan"))
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


def _write_metrics(path: str | None, rows: list[dict], append: bool) -> None:
    if path is None:
        return
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def train_lm(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig,
             extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None,
             after_step: Callable[[nn.Module, int], dict | None] | None = None, *,
             peak_flops: float | None = None, flops_per_token: float | None = None,
             desc: str = "training") -> list[dict]:
    """Train ``model`` on next-token prediction; returns the history, one dict per step (see the module docstring).

    extra_loss(model) is added to the objective (e.g. ``Transformer.aux_loss``, a balance loss); after_step(model,
    step) runs after the optimizer step and the trainer's bias update, and may return numbers to log. Rows hold step,
    lr, loss (the main next-token loss, mean over the global batch), tokens (seen so far), grad_norm, and for an MoE
    model max_vio (of the step's whole batch, mean over MoE layers; ``load`` every cfg.load_every steps); for a model
    with MTP modules mtp_lambda, mtp_loss ((λ/D) Σ_k L^k), mtp_ce (the list of L^k) and mtp_acceptance; every
    ``eval_every`` steps and at the end val_loss (main loss). Wall clock: seconds, tokens_per_s, and mfu when
    ``peak_flops`` (FLOP/s of one device) is given, with ``flops_per_token`` (default: lab 00's
    ``training_flops_per_token`` of ``model.args`` at cfg.block_size). Under ``torch.distributed`` every rank calls
    this with the same arguments; rank 0 writes the checkpoint and the metrics file.
    """
    device = next(model.parameters()).device
    rank, size = world()
    if cfg.batch_size % (size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must split evenly over {size} ranks x grad_accum "
                         f"{cfg.grad_accum}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    g, history, start = torch.Generator().manual_seed(cfg.seed), [], 0
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = read_checkpoint(cfg.checkpoint)
        _restore(cfg.checkpoint, state, model, opt, cfg)
        g.set_state(state["generator"])
        history, start = state["history"], state["step"]
    if rank == 0:
        _write_metrics(cfg.metrics, history, append=False)
    model.train()
    depth = len(getattr(model, "mtp", None) or ())
    forward, ddp = _Forward(model), None
    if size > 1:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Each rank keeps its own MoE load counters (summed explicitly in _balance): buffers are never broadcast.
        no_sync_buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
            inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
        forward = ddp = DistributedDataParallel(forward, device_ids=ids, **no_sync_buffers)
    if cfg.compile:
        forward = torch.compile(forward)
    if peak_flops is not None and flops_per_token is None and hasattr(model, "args"):
        from dslab.accounting import training_flops_per_token

        flops_per_token = training_flops_per_token(model.args, cfg.block_size)
    tokens_per_step = cfg.batch_size * cfg.block_size
    bar = progress(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, disable=rank != 0 or None)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, g)
        before = [m.step_load.clone() for m in _moe_layers(model)]
        stats, norm = _step(forward, model, opt, x, y, cfg, step, depth, ddp, extra_loss, device)
        if not math.isfinite(float(norm)):
            raise _diverged(step, stats, float(norm), cfg, lr)
        opt.step()
        gamma = bias_gamma_at(step, cfg)
        load, balance = _balance(model, before, gamma, cfg.bias_gamma is not None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        row = {"step": step, "lr": lr, "loss": stats["loss"], "tokens": (step + 1) * tokens_per_step,
               "grad_norm": float(norm), **balance}
        if depth:
            mtp = stats["lam"] / depth * sum(stats["mtp_ce"])
            row.update(mtp_lambda=stats["lam"], mtp_loss=mtp, mtp_ce=stats["mtp_ce"],
                       mtp_acceptance=stats["mtp_acceptance"])
        if "extra_loss" in stats:
            row["extra_loss"] = stats["extra_loss"]
        if cfg.bias_gamma is not None and load.numel():
            row["bias_gamma"] = gamma
        if cfg.load_every and load.numel() and (step % cfg.load_every == 0 or step + 1 == cfg.steps):
            row["load"] = load.cpu().tolist()
        row.update((after_step(model, step) or {}) if after_step else {})
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["val_loss"] = evaluate(model, val_ids, cfg)
        row.update(seconds=seconds, tokens_per_s=tokens_per_step / seconds)
        if peak_flops is not None and flops_per_token is not None:
            from dslab.accounting import mfu

            row["mfu"] = mfu(flops_per_token, tokens_per_step / seconds, peak_flops * size)
        history.append(row)
        if rank == 0:
            _write_metrics(cfg.metrics, [row], append=True)
        if cfg.checkpoint and rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(cfg.checkpoint, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                "generator": g.get_state(), "history": history, "config": asdict(cfg),
                "model_args": model.args.to_dict() if hasattr(model, "args") else None})
    return history


# ================================================================================================== capstone runs
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
    model: object  # ModelArgs (kept loose here so that this module imports without the configs package cycle)
    train: TrainConfig
    n_chars: int = 2_000_000
    prose_share: float = 0.3
    val_fraction: float = 0.02
    data_seed: int = 0
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self):
        from dslab.configs import ModelArgs

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
        if self.model.vocab_size < _tokenizer().vocab_size:
            raise ValueError(f"ModelArgs.vocab_size ({self.model.vocab_size}) must hold the character tokenizer's "
                             f"{_tokenizer().vocab_size} ids")

    def to_dict(self) -> dict:
        train = {k: v for k, v in asdict(self.train).items() if k not in _PATH_FIELDS}
        return {"preset": self.preset, "model": self.model.to_dict(), "train": train,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("preset", "model", "train")}}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        from dslab.configs import ModelArgs

        if not isinstance(d, dict) or not {"preset", "model", "train"} <= d.keys():
            raise ValueError("a run config needs 'preset', 'model' and 'train'")
        rest = {k: v for k, v in d.items() if k not in ("model", "train")}
        return cls(model=ModelArgs.from_dict(d["model"]), train=TrainConfig(**d["train"]), **rest)

    def replace(self, **changes) -> RunConfig:
        """A copy with fields changed: RunConfig fields by name, TrainConfig fields by name (``steps=20``), model
        fields as ``model.dim=64`` (or a ``model=`` ModelArgs). Unknown names raise ValueError listing the known."""
        top = {f.name for f in dataclasses.fields(self)}
        tr = {f.name for f in dataclasses.fields(TrainConfig)} - set(_PATH_FIELDS)
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
        reached="val loss 0.689 nats/char (datasets/capstone/healthy.csv)",
        time="228 s of CPU time, 1 thread (a busy shared 2-core machine)"),
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
    from dslab.configs import load

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    base = RunConfig(preset=name, model=load(p.model), train=TrainConfig(steps=1))
    return base.replace(**p.settings).replace(**changes)


def preset_card(name: str) -> dict:
    """What lab 00's accounting says about a preset, and what it was measured to reach: total and activated
    parameters (main model, embedding included, as ``dslab.accounting``), MTP parameters, KV-cache bytes per token
    (BF16), training FLOPs per token, tokens seen, the hardware it is sized for, the loss reached and the time."""
    from dslab import accounting as acc

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


# ------------------------------------------------------------------------------------------------------- data
def _tokenizer():
    from dslab.data import CharTokenizer

    return CharTokenizer()


_SPLITS: dict[str, list] = {}


def rl_splits() -> dict[str, list]:
    """Lab 05's frozen RL splits ("train", "val", "test", "hard"), regenerated in memory exactly as
    ``dslab.data.freeze_tasks`` writes them (no file needed)."""
    from dslab import data

    if not _SPLITS:
        with tempfile.TemporaryDirectory() as tmp:
            data.freeze_tasks(tmp)
            _SPLITS.update({name: data.load_tasks(name, tmp) for name in data.FROZEN_TASKS})
    return dict(_SPLITS)


def held_out_questions() -> frozenset[str]:
    """Questions of the val, test and hard RL splits: the pretraining text never contains them."""
    return frozenset(t.question for name in ("val", "test", "hard") for t in rl_splits()[name])


# The capstone's own arithmetic mix, fixed here so that its shipped reference runs stay reproducible whatever lab 05
# tunes in ``data.PRETRAIN_MIX``: kinds of document and their shares, and the share of results without answer tags.
ARITHMETIC_MIX = {"bare": 0.2, "digits": 0.3, "letters": 0.2, "mixed": 0.2, "no_working": 0.1}
UNTAGGED_SHARE = 0.15


def arithmetic_documents(n_chars: int, seed: int = 0, max_digits: int = 3,
                         exclude: frozenset[str] = frozenset()) -> list[str]:
    """Documents of lab 05's templated arithmetic, about ``n_chars`` characters in all, in ``ARITHMETIC_MIX``: bare
    equations ("37+45=82") and chats in R1-Zero's template (``data.RL_TEMPLATE``) whose completion keeps its working
    inside <think></think> (in digits, in letters, switching notation step by step, or none) and its result inside
    <answer></answer> (untagged in UNTAGGED_SHARE of them). Operands have up to d digits, d uniform in
    1..max_digits; questions in ``exclude`` never appear."""
    import random

    from dslab import data

    rng = random.Random(seed)
    kinds, weights = list(ARITHMETIC_MIX), list(ARITHMETIC_MIX.values())
    docs, size = [], 0
    while size < n_chars:
        kind = rng.choices(kinds, weights)[0]
        task = data.make_task(rng, rng.randint(1, max_digits))
        if task.question in exclude:
            continue
        if kind == "bare":
            doc = f"{task.question}={task.answer}"
        else:
            n_steps = len(data.working_steps(task.question))
            notation = {"digits": "digits", "letters": "letters", "no_working": None,
                        "mixed": [rng.choice(data.NOTATIONS) for _ in range(n_steps)]}[kind]
            doc = task.prompt + data.completion(task, notation, tagged=rng.random() >= UNTAGGED_SHARE)
        docs.append(doc)
        size += len(doc) + 2
    return docs


def pretraining_corpus(n_chars: int, prose_share: float = 0.3, seed: int = 0,
                       exclude: frozenset[str] | None = None) -> str:
    """About ``n_chars`` characters: documents of English prose (Python's bundled documentation, ``data.prose``) and
    of lab 05's templated arithmetic (``arithmetic_documents``: chats with <think>/<answer> tags, bare equations),
    shuffled together at the document level and separated by blank lines. ``prose_share`` of the characters are
    prose (the paragraphs repeat when more is asked than exists); held-out RL questions never appear (``exclude``,
    default ``held_out_questions()``)."""
    import random

    from dslab import data

    validate.integer("n_chars", n_chars, 1)
    validate.real("prose_share", prose_share, 0, 1)
    exclude = held_out_questions() if exclude is None else exclude
    rng = random.Random(seed)
    arith_chars = int(n_chars * (1 - prose_share))
    docs = _cut(arithmetic_documents(arith_chars, seed, exclude=exclude), arith_chars) if arith_chars else []
    paragraphs = [p for p in data.prose().split("\n\n") if len(p) > 40]
    rng.shuffle(paragraphs)
    size, i = 0, 0
    while size < n_chars - arith_chars:
        docs.append(paragraphs[i % len(paragraphs)])
        size, i = size + len(docs[-1]) + 2, i + 1
    rng.shuffle(docs)
    return "\n\n".join(docs)[:n_chars]


def _cut(docs: list[str], n_chars: int) -> list[str]:
    """The documents joined by blank lines and cut at n_chars, split again (the last one may end mid-way)."""
    return "\n\n".join(docs)[:n_chars].split("\n\n")


def encode_text(text: str) -> torch.Tensor:
    """``CharTokenizer().encode(text)`` as a LongTensor, through a byte table (fast for tens of millions of chars)."""
    tok = _tokenizer()
    table = np.array([tok.stoi.get(chr(c), tok.unk_id) for c in range(256)], dtype=np.int64)
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    ids = torch.from_numpy(table[raw].copy())
    if any(ord(ch) > 255 for ch in text):  # rare: characters beyond latin-1 are <unk>, as the tokenizer says
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return ids


def corpus_ids(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, val ids) of a run's pretraining text: the last val_fraction of it is the validation split."""
    from dslab.data import train_val_split

    text = pretraining_corpus(cfg.n_chars, cfg.prose_share, cfg.data_seed)
    return train_val_split(encode_text(text), cfg.val_fraction)


# ------------------------------------------------------------------------------------------------- real FP8 path
E4M3_MAX = 448.0


def _rowwise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [R, C] -> (E4M3 values [R, C], FP32 scales [R, 1]) with scale = max(amax of the row, 1e-4) / 448."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-4) / E4M3_MAX
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def _fp8_mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] @ b [N, K]ᵀ with both operands quantized row-wise to E4M3, one ``torch._scaled_mm`` call."""
    qa, sa = _rowwise_fp8(a)
    qb, sb = _rowwise_fp8(b)
    return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=out_dtype)


class _RealFP8Linear(torch.autograd.Function):
    """y = x Wᵀ with its three GEMMs as real FP8 GEMMs (E4M3, FP32 accumulation inside the kernel): Fprop contracts
    over K (rows of x and W scaled per row), Dgrad over N (dY per token, W per input channel), Wgrad over the tokens
    (dYᵀ per output channel, xᵀ per input channel, re-quantized from the cached activation as V3 converts 1×128 tiles
    to 128×1)."""

    @staticmethod
    def forward(ctx, x, weight):
        qx, sx = _rowwise_fp8(x)
        qw, sw = _rowwise_fp8(weight)
        ctx.save_for_backward(qx, sx, weight)
        ctx.x_dtype = x.dtype
        return torch._scaled_mm(qx, qw.t(), scale_a=sx, scale_b=sw.t(), out_dtype=x.dtype)

    @staticmethod
    def backward(ctx, gy):
        qx, sx, weight = ctx.saved_tensors
        gx = _fp8_mm(gy, weight.t().contiguous(), ctx.x_dtype)
        x = qx.float() * sx  # the cached FP8 activation
        gw = _fp8_mm(gy.t().contiguous(), x.t().contiguous(), torch.float32)
        return gx, gw.to(weight.dtype)


class RealFP8Linear(nn.Linear):
    """An nn.Linear whose GEMMs run in real FP8 (``torch._scaled_mm``) with row-wise scales; same parameters and
    state dict as the layer it replaces. Row-wise (per token / per channel) scales are coarser than V3's 1×128 tiles
    and 128×128 blocks, which would need one kernel call per 128-wide slice of K in PyTorch; lab 02 measures what
    the finer tiles buy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _RealFP8Linear.apply(x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def real_fp8_supported(device: torch.device | str) -> bool:
    """Whether ``torch._scaled_mm`` runs FP8 GEMMs on ``device``: the CPU (a reference kernel, slow) or an NVIDIA
    GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


def enable_real_fp8(model: nn.Module) -> list[str]:
    """Swap every nn.Linear of ``model`` except the output head for a ``RealFP8Linear`` sharing its parameters;
    returns the names swapped. The routed experts' grouped GEMMs, the router, the embedding, the head, the norms and
    the attention core stay in higher precision (PyTorch has no grouped FP8 GEMM; lab 02's emulation covers
    experts too: precision "fp8-emulated")."""
    keep = {id(getattr(getattr(model, n, None), "weight", None)) for n in ("head", "embed")}
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and id(child.weight) not in keep:
                new = RealFP8Linear(child.in_features, child.out_features, child.bias is not None, device="meta")
                new.weight, new.bias = child.weight, child.bias
                setattr(module, child_name, new)
                swapped.append(f"{name}.{child_name}" if name else child_name)
    return swapped


# ------------------------------------------------------------------------------------------------------ one run
def apply_precision(model: nn.Module, precision: str) -> list[str]:
    """Switch ``model`` to a RunConfig precision; returns the modules whose GEMMs changed ("fp32", "bf16": none)."""
    from dslab import fp8

    validate.choice("precision", precision, PRECISIONS)
    if precision == "fp8-emulated":
        return fp8.enable_training(model)
    if precision == "bf16-emulated":
        return fp8.enable_training(model, fmt="bf16", grad_fmt="bf16")
    if precision == "fp8":
        device = next(model.parameters()).device
        if not real_fp8_supported(device):
            raise ValueError(f"precision 'fp8' needs torch._scaled_mm with FP8 on {device} (an NVIDIA GPU of compute "
                             "capability >= 8.9, or the CPU); use 'fp8-emulated' instead")
        return enable_real_fp8(model)
    return []


def build_model(cfg: RunConfig, rows: int = 1, device: torch.device | str = "cpu") -> nn.Module:
    """The run's ``Transformer`` (initialised from cfg.train.seed) on ``device`` with cfg.precision applied; ``rows``
    is the batch its KV caches hold when decoding."""
    from dslab.model import Transformer

    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model, max_batch_size=rows).to(device)
    apply_precision(model, cfg.precision)
    return model


def _device(name: str) -> torch.device:
    from dslab.runtime import pick_device

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
    from dslab.runtime import peak_flops, peak_flops_source

    dtype = torch.bfloat16 if precision in ("bf16", "fp8") and device.type == "cuda" else torch.float32
    rank, size = world()
    value = torch.tensor([peak_flops(device, dtype) if rank == 0 else 0.0], dtype=torch.float64, device=device)
    return float(_all_sum(value)), peak_flops_source(device, dtype)


@dataclass
class RunResult:
    """What ``run`` leaves: the history (one row per step), the trained model (train mode), the summary written to
    out/summary.json, and the run folder."""

    history: list[dict]
    model: nn.Module = field(repr=False)
    summary: dict
    out: Path


def run(cfg: RunConfig, out: str | os.PathLike, *, measure_peak: bool = True, desc: str | None = None) -> RunResult:
    """Pretrain cfg's model into the folder ``out`` (config.json, checkpoint.pt, metrics.jsonl, summary.json,
    curves.png), resuming when ``out`` holds a checkpoint of the same configuration. Under ``torchrun`` with N > 1
    processes every rank trains its share of each global batch (DDP) and rank 0 writes the folder.
    measure_peak: measure the device's peak FLOP/s (on a CPU, a 2048² float32 GEMM) so that rows carry MFU."""
    rank, size = init_distributed()
    out = Path(out)
    _run_folder(out, cfg, rank)
    if size > 1:
        dist.barrier()
    device = _device(cfg.device)
    train_ids, val_ids = corpus_ids(cfg)
    model = build_model(cfg, device=device)
    peak, source = _peak(device, cfg.precision) if measure_peak else (None, "not measured")
    tcfg = dataclasses.replace(cfg.train, checkpoint=str(out / "checkpoint.pt"), metrics=str(out / "metrics.jsonl"),
                               amp=cfg.train.amp or cfg.precision == "bf16")  # "bf16" means autocast
    start = time.perf_counter()
    history = train_lm(model, train_ids, val_ids, tcfg, peak_flops=peak, desc=desc or f"{cfg.preset} preset")
    summary = summarize(cfg, history, device, source, size, time.perf_counter() - start)
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        plot_run(history, title=f"{cfg.preset} preset, {summary['device']}").savefig(out / "curves.png", dpi=110)
    return RunResult(history, model, summary, out)


def summarize(cfg: RunConfig, history: list[dict], device: torch.device, peak_source: str, ranks: int,
              seconds: float) -> dict:
    """The run in a few numbers: sizes from lab 00's accounting, tokens, the last losses, MaxVio and acceptance,
    median tokens/s and MFU over the steps, where the peak came from; wall_seconds: this call (a resumed run counts
    only what it added), step_seconds: the training steps of the whole run (evaluation excluded)."""
    from dslab import accounting as acc

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
            "mfu": median("mfu"), "peak": peak_source, "device": name, "ranks": ranks,
            "threads": torch.get_num_threads(), "precision": cfg.precision, "wall_seconds": round(seconds, 1),
            "step_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file (one JSON object per line); a half-written last line (a killed run) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def smooth(values: list[float], window: int = 20) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_run(history: list[dict], title: str = "", window: int = 20):
    """Loss (training, smoothed, and validation), learning rate, MaxVio and MTP acceptance against the step."""
    from dslab import plots

    fig, axes = plots.figure(4, width=3.4, height=2.8)
    steps = [r["step"] for r in history]
    axes[0].plot(steps, smooth([r["loss"] for r in history], window), lw=1.2, label="train (smoothed)")
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
            ax.plot(s, smooth(list(v), window), color="C3" if key == "max_vio" else "C4")
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
    state = read_checkpoint(ck)
    from dslab.model import Transformer

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
    from dslab.mtp import speculative_generate

    tok = _tokenizer()
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


def grpo_config(fast: bool = False, **changes):
    """GRPO for the capstone model (R1-Zero's recipe as lab 05 runs it: accuracy + 0.1·format rewards, no KL, G
    completions per prompt, zero-variance groups dropped), sized for the cpu preset; FAST: a few tiny steps."""
    from dslab import grpo

    cfg = grpo.GRPOConfig(steps=40, prompts_per_step=16, num_generations=8, max_completion_length=64, lr=2e-4,
                          eval_every=10, eval_tasks=100, max_rows=128, micro_batch_rows=64,
                          reward_weights={"accuracy": 1.0, "format": 0.1})
    if fast:
        cfg = dataclasses.replace(cfg, steps=2, prompts_per_step=2, num_generations=4, eval_every=2, eval_tasks=4,
                                  max_completion_length=48)
    return dataclasses.replace(cfg, **changes)


def evaluate_r1(model: nn.Module, task_list: list, k: int = 8, max_new_tokens: int = 64, seed: int = 0,
                max_rows: int | None = None) -> dict:
    """Lab 05's evaluation on held-out tasks: greedy accuracy, pass@1 over k samples at temperature 0.6 / top-p 0.95
    (R1 §3), pass@k, cons@k and the format rate (the samples themselves are dropped)."""
    from dslab import grpo

    res = grpo.evaluate(model, task_list, k=k, max_new_tokens=max_new_tokens, seed=seed, max_rows=max_rows)
    return {key: v for key, v in res.items() if key not in ("samples", "per_task")}


def grpo_run(out: str | os.PathLike, cfg=None, *, eval_tasks: int = 100, k: int = 8, fast: bool = False,
             device: torch.device | str = "cpu") -> dict:
    """Turn a pretrained run into a tiny R1: GRPO (``dslab.grpo.train_grpo``) on lab 05's train split, starting from
    out/checkpoint.pt, into out/grpo/ (checkpoint.pt, metrics.jsonl, summary.json); resumes like ``train_grpo``.
    Returns the summary: lab 05's evaluation on the first ``eval_tasks`` held-out test tasks before and after."""
    from dslab import grpo

    cfg = cfg or grpo_config(fast)
    out = Path(out)
    folder = out / "grpo"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, checkpoint=str(folder / "checkpoint.pt"), metrics=str(folder / "metrics.jsonl"))
    model, _ = load_run(out, rows=cfg.max_rows, device=device)
    splits = rl_splits()
    test = splits["test"][:eval_tasks]
    before_path = folder / "before.json"
    if before_path.exists():
        before = json.loads(before_path.read_text(encoding="utf-8"))
    else:
        before = evaluate_r1(model, test, k, cfg.max_completion_length, cfg.seed, cfg.max_rows)
        before_path.write_text(json.dumps(before, indent=1) + "\n", encoding="utf-8")
    model.train()  # train_grpo computes log-probs in the mode it finds the policy in: the uncached training path
    history = grpo.train_grpo(model, splits["train"], cfg, eval_tasks=splits["val"], desc="GRPO")
    after = evaluate_r1(model, test, k, cfg.max_completion_length, cfg.seed, cfg.max_rows)
    summary = {"before": before, "after": after, "test_tasks": len(test), "k": k, "steps": cfg.steps,
               "reward_first": history[1]["reward"] if len(history) > 1 else None,
               "reward_last": history[-1].get("reward")}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    torch.save({k_: v.detach().clone() for k_, v in model.state_dict().items()}, folder / "policy.pt")
    return summary
