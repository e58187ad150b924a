"""A small, resumable language-model training loop shared by the labs (AdamW, warm-up + cosine, grad clipping).

``train_lm`` checkpoints model, optimizer, step, RNG and history to one file every ``checkpoint_every`` steps and
resumes from it when it exists, so a long CPU run survives a restarted kernel. A model with Multi-Token Prediction
modules (``n_mtp`` > 0) also trains them: the step's objective is L_main + L_MTP (V3 eq. 25) with λ from
``TrainConfig.mtp_lambda`` (constant, or V3's 0.3 → 0.1 schedule with ``mtp_lambda_final``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.data import get_batch
from dslab.mtp import V3_LAMBDA_SWITCH, depth_losses, mtp_lambda
from dslab.runtime import progress


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. Defaults suit the course's tiny models on a CPU."""

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

    def __post_init__(self):
        for k in ("steps", "batch_size", "block_size", "eval_every", "eval_batches", "checkpoint_every"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) <= 0:
                raise ValueError(f"TrainConfig.{k} must be a positive int, got {getattr(self, k)!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup >= 0; got {self.lr}, "
                             f"{self.min_lr_ratio}, {self.warmup}")
        validate.real("TrainConfig.mtp_lambda", self.mtp_lambda, 0)
        if self.mtp_lambda_final is not None:
            validate.real("TrainConfig.mtp_lambda_final", self.mtp_lambda_final, 0)
        validate.real("TrainConfig.mtp_lambda_switch", self.mtp_lambda_switch, 0, 1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr · min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


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


def _save(path: str, state: dict) -> None:
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_lm(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig,
             extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None,
             after_step: Callable[[nn.Module, int], dict | None] | None = None) -> list[dict]:
    """Train ``model`` on next-token prediction; returns the history, one dict per step.

    extra_loss(model) is added to the LM loss (e.g. a balance loss); after_step(model, step) runs after the optimizer
    step (e.g. the aux-loss-free bias update) and may return numbers to log. Rows hold step, lr, loss (the main
    next-token loss) and, every ``eval_every`` steps and at the end, val_loss (main loss too). A model with MTP modules
    (a non-empty ``model.mtp``) adds L_MTP to the objective and logs mtp_lambda, mtp_loss (λ/D Σ_k L^k) and mtp_ce
    (the list of L^k_MTP).
    """
    device = next(model.parameters()).device
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    g, history, start = torch.Generator().manual_seed(cfg.seed), [], 0
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        state = torch.load(cfg.checkpoint, weights_only=False)
        defaults = asdict(TrainConfig())  # fields added since the checkpoint was written count at their defaults
        if {**{k: defaults[k] for k in defaults.keys() - state["config"].keys()}, **state["config"]} != asdict(cfg):
            raise ValueError(f"checkpoint {cfg.checkpoint} was written with another TrainConfig; delete it to restart")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        history, start = state["history"], state["step"]
    model.train()
    depth = len(getattr(model, "mtp", None) or ())
    for step in progress(range(start, cfg.steps), desc="training", initial=start, total=cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, g)
        mtp_row = {}
        if depth:
            loss, ce = mtp_lm_losses(model, x.to(device), y.to(device))
            lam = mtp_lambda(step, cfg.steps, cfg.mtp_lambda, cfg.mtp_lambda_final, cfg.mtp_lambda_switch)
            mtp = lam / depth * torch.stack(ce).sum()  # V3 eq. 25
            total = loss + mtp
            mtp_row = {"mtp_lambda": lam, "mtp_loss": mtp.item(), "mtp_ce": [c.item() for c in ce]}
        else:
            loss = total = lm_loss(model, x.to(device), y.to(device))
        extra = extra_loss(model) if extra_loss else None
        total = total + extra if extra is not None else total
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        row = {"step": step, "lr": lr_at(step, cfg), "loss": loss.item(), **mtp_row}
        if extra is not None:
            row["extra_loss"] = extra.item()
        row.update((after_step(model, step) or {}) if after_step else {})
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["val_loss"] = evaluate(model, val_ids, cfg)
        history.append(row)
        if cfg.checkpoint and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save(cfg.checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                                   "generator": g.get_state(), "history": history, "config": asdict(cfg)})
    return history
