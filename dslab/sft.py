"""Supervised fine-tuning on (prompt, completion) pairs, the loss on the completion tokens only: R1's cold start
(a few thousand readable long-CoT examples before RL, R1 §2.3.1) and distillation (a small model fine-tuned on a
large one's rejection-sampled completions, R1 §2.3.3, §4.1).

The schedule is the kit's (``dslab.train.lr_at``: linear warm-up, then cosine to lr·min_lr_ratio at the last step),
the metrics log is written by ``dslab.checkpoint.write_metrics``, and the held-out numbers are
``dslab.evals.greedy_accuracy``'s, as in the GRPO trainer, so an SFT curve and a GRPO curve can share an axis.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.checkpoint import write_metrics
from dslab.data import CharTokenizer, Task, rl_splits
from dslab.evals import greedy_accuracy
from dslab.runtime import progress
from dslab.train import OptimConfig, lr_at


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where loss_mask is 1 (the completion tokens): the prompt
    tokens are context only. logits [B, S, V], targets [B, S], loss_mask [B, S] -> scalar."""
    validate.tensor("logits", logits, 3, floating=True)
    validate.tensor("targets", targets, 2, floating=False)
    validate.tensor("loss_mask", loss_mask, 2)
    if logits.shape[:2] != targets.shape or targets.shape != loss_mask.shape:
        raise ValueError(f"logits [B, S, V], targets and loss_mask [B, S] must agree, got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(loss_mask.shape)}")
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    m = loss_mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1)


def sft_batch(pairs: Sequence[tuple[str, str]], tok: CharTokenizer,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, completion) pairs -> inputs [B, S], next-token targets [B, S], loss mask [B, S] (1 on completion
    targets), right-padded, on ``device`` (the model's; built from token lists on the CPU, then moved)."""
    if not pairs:
        raise ValueError("pairs must hold at least one (prompt, completion) pair")
    if not isinstance(tok, CharTokenizer):
        raise TypeError(f"tok must be a dslab.data.CharTokenizer, got {type(tok).__name__}")
    seqs = [(tok.encode(p), tok.encode(c)) for p, c in pairs]
    if any(not p or not c for p, c in seqs):
        raise ValueError("every pair needs a non-empty prompt and a non-empty completion")
    width = max(len(p) + len(c) for p, c in seqs) - 1
    x = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long, device="cpu")
    y = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long, device="cpu")
    m = torch.zeros(len(seqs), width, device="cpu")
    for i, (p, c) in enumerate(seqs):
        full = torch.tensor(p + c, dtype=torch.long, device="cpu")
        x[i, : len(full) - 1], y[i, : len(full) - 1] = full[:-1], full[1:]
        m[i, len(p) - 1: len(full) - 1] = 1.0
    return x.to(device), y.to(device), m.to(device)


@dataclass
class SFTConfig(OptimConfig):
    """Supervised fine-tuning on (prompt, completion) pairs: the cold start and distillation (R1 §2.3.1, §4.1).
    The optimizer and schedule fields are ``OptimConfig``'s."""

    steps: int = 100
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    batch_size: int = 32
    eval_every: int = 20
    eval_tasks: int = 200
    max_completion_length: int = 64
    metrics: str | None = None

    def __post_init__(self):
        super().__post_init__()
        for k in ("batch_size", "eval_every", "max_completion_length"):
            validate.integer(f"SFTConfig.{k}", getattr(self, k), 1)
        validate.integer("SFTConfig.eval_tasks", self.eval_tasks, 0)


def train_sft(model: nn.Module, pairs: Sequence[tuple[str, str]], cfg: SFTConfig,
              eval_tasks: Sequence[Task] | None = None, desc: str = "SFT") -> list[dict]:
    """Fine-tune ``model`` on ``pairs`` with the loss on completion tokens only; one row per step (loss, lr, CPU and
    wall seconds, evaluation excluded). With ``eval_tasks``, row 0 and every ``cfg.eval_every`` steps (and the last)
    add the greedy accuracy and format rate on ``cfg.eval_tasks`` of them, as ``train_grpo`` does. With
    ``cfg.metrics`` the rows also go, one JSON line each as they come, to that file (started over)."""
    if not pairs:
        raise ValueError("pairs must hold at least one (prompt, completion) pair")
    tok, rng = CharTokenizer(), random.Random(cfg.seed)
    eval_tasks = list(eval_tasks or [])[: cfg.eval_tasks]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    history, cpu, wall, device = [], 0.0, 0.0, next(model.parameters()).device

    def log(row: dict, evaluate: bool) -> None:
        if evaluate and eval_tasks:
            acc, fmt = greedy_accuracy(model, eval_tasks, cfg.max_completion_length)
            row.update(val_accuracy=acc, val_format=fmt)
        history.append(row)
        write_metrics(cfg.metrics, [row])

    write_metrics(cfg.metrics, [], append=False)
    log({"step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0}, evaluate=True)
    for step in progress(range(cfg.steps), desc=desc):
        c0, w0 = time.process_time(), time.perf_counter()
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()  # whatever mode the evaluation or the caller left it in
        x, y, m = sft_batch([pairs[rng.randrange(len(pairs))] for _ in range(cfg.batch_size)], tok, device)
        loss = sft_loss(model(x), y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        row = {"step": step + 1, "lr": lr, "loss": float(loss.detach()), "cpu_seconds": cpu, "wall_seconds": wall}
        log(row, evaluate=(step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps)
    model.eval()
    return history


def cold_start_tasks(n: int = 500, seed: int = 21) -> list[Task]:
    """The cold-start set of lab 05 and the capstone: ``n`` train-split tasks drawn with ``seed`` (never held out)."""
    tasks = rl_splits()["train"]
    validate.integer("n", n, 1, len(tasks))
    # an index list, CPU by design whatever the default device
    order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed), device="cpu")
    return [tasks[i] for i in order[:n].tolist()]
