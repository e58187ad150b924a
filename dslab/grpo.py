"""Group Relative Policy Optimization (DeepSeekMath §4.1, R1 §2.2.1) for a small causal LM, on a CPU.

For each question q the policy samples a group of G completions o_1..o_G; each gets a rule-based reward r_i
(``dslab.rewards``). GRPO needs no value model: the baseline is the group itself,

    Â_{i,t} = (r_i − mean(r)) / (std(r) + eps)                                  (DeepSeekMath §4.1.2; TRL eps 1e-4)

and the policy maximizes, token by token, the clipped objective minus a KL penalty towards a frozen reference,

    J = E[ agg_{i,t} { min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_i) − β D_KL } ]     (DeepSeekMath eq. 3)
    ρ_{i,t} = π_θ(o_{i,t}|q, o_{i,<t}) / π_old(o_{i,t}|q, o_{i,<t})
    D_KL    = π_ref/π_θ − log(π_ref/π_θ) − 1        (the k3 estimator, eq. 4: >= 0, 0 when π_θ = π_ref)

``agg`` is how per-token terms become one number (TRL's ``loss_type``): ``grpo`` averages each sequence over its
tokens and then over sequences (eq. 3's 1/|o_i|), ``bnpo``/``dapo`` average over every token of the batch, and
``dr_grpo`` sums and divides by B × max_completion_length (Dr. GRPO).

The module holds per-token log-probs, advantages, the loss (``policy_loss``, term by term as TRL's
``_compute_loss``) and the trainer (``train_grpo``: μ inner iterations on stored old log-probs, frozen reference,
metrics, checkpoints and resume). Its neighbours each hold one idea of the R1 recipe: ``dslab.sampling`` (rollouts),
``dslab.evals`` (greedy, pass@1, pass@k, cons@k) and ``dslab.sft`` (cold start and distillation); their names are
re-exported here, so ``grpo.sample_answers`` or ``grpo.train_sft`` name the same functions. The trainer shares the
kit's plumbing: ``dslab.train.lr_at`` (schedule), ``dslab.train.micro_batches`` and ``dslab.checkpoint``.
"""

from __future__ import annotations

import copy
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dslab import validate
from dslab.checkpoint import CheckpointError, load_checkpoint, read_metrics, save_checkpoint, write_metrics
from dslab.data import ANSWER_CLOSE, CharTokenizer, Task
from dslab.evals import cons_at_k, encode_prompts, evaluate, greedy_accuracy, majority_vote, pass_at_k, sample_answers
from dslab.rewards import reward_components, weighted_reward
from dslab.runtime import progress
from dslab.sampling import Rollout, cache_rows, generate, rollout, sample_next, top_p_filter
from dslab.sft import SFTConfig, sft_batch, sft_loss, train_sft
from dslab.train import OptimConfig, lr_at, micro_batches

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
EPS = 1e-4  # TRL adds it to the std, outside the square root (veRL/TinyZero: 1e-6)
KIND = "dslab-grpo/1"  # the checkpoint's format tag (``dslab.checkpoint``)


# ------------------------------------------------------------------------------------------------- log-probs
def join(prompts: Sequence[Sequence[int]], rollout_: Rollout, num_generations: int,
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + completion per row, right-padded -> (ids [R, S], loss mask [R, S − 1] over next-token targets: 1 where
    the target is a generated token), both on the rollout's device (the policy's)."""
    validate.integer("num_generations", num_generations, 1)
    if len(prompts) * num_generations != len(rollout_.ids):
        raise ValueError(f"rollout_ must hold len(prompts) x num_generations = {len(prompts) * num_generations} rows, "
                         f"got {len(rollout_.ids)}")
    device = rollout_.ids.device
    lengths = [len(p) for p in prompts for _ in range(num_generations)]
    comp = rollout_.lengths.tolist()
    width = max(p + c for p, c in zip(lengths, comp))
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(lengths), width - 1, device=device)
    for r, (p_len, c_len) in enumerate(zip(lengths, comp)):
        ids[r, :p_len] = torch.tensor(list(prompts[r // num_generations]), dtype=torch.long, device=device)
        ids[r, p_len:p_len + c_len] = rollout_.ids[r, :c_len]
        mask[r, p_len - 1:p_len - 1 + c_len] = 1.0
    return ids, mask


def token_logps(model: nn.Module, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(ids[:, t+1] | ids[:, :t+1]) for every position: ids [B, S] -> [B, S − 1] (float32).

    The logits are divided by the sampling temperature first, as TRL does, so that the ratio and the KL refer to the
    distribution the completions were sampled from. Runs the model in whatever mode it is in (train: full sequence).
    """
    validate.tensor("ids", ids, 2, floating=False)
    validate.real("temperature", temperature, 0.0, lo_open=True)
    logits = model(ids)[:, :-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     eps: float = EPS) -> torch.Tensor:
    """Group-relative advantages. rewards [B] (B = N·G, the G rewards of a prompt next to each other) -> [B].

    A = r − mean of its group; scale_rewards "group" divides by the group's std (Bessel, n − 1) + eps, "batch" by the
    std of all B rewards + eps, "none" (Dr. GRPO) not at all. A group whose rewards are all equal gets A = 0. With
    G = 1 there is no group to compare with: every advantage is 0 (with a warning).
    """
    validate.tensor("rewards", rewards, 1, floating=True, finite=True)
    validate.integer("num_generations", num_generations, 1)
    validate.choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    validate.real("eps", eps, 0.0, lo_open=True)
    if rewards.numel() == 0 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must hold N · num_generations values (N >= 1), got {rewards.numel()} for "
                         f"num_generations={num_generations}")
    if num_generations == 1:
        warnings.warn("a group of size 1 has no baseline to compare with: every advantage is 0", stacklevel=2)
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, num_generations)
    adv = (grouped - grouped.mean(-1, keepdim=True)).flatten()
    if scale_rewards == "group":
        adv = adv / (grouped.std(-1).repeat_interleave(num_generations) + eps)
    elif scale_rewards == "batch":
        adv = adv / (rewards.std() + eps)
    return adv


def zero_variance_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[N] bool: True for the groups whose G rewards are all equal (no learning signal). rewards [N·G]."""
    validate.tensor("rewards", rewards, 1, floating=True)
    validate.integer("num_generations", num_generations, 1)
    if rewards.numel() % num_generations:
        raise ValueError(f"rewards must hold N · num_generations values, got {rewards.numel()}")
    g = rewards.view(-1, num_generations)
    return (g == g[:, :1]).all(-1)


# ------------------------------------------------------------------------------------------------------- loss
def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ‖π_ref) per token (DeepSeekMath eq. 4): exp(ref − logp) − (ref − logp) − 1 >= 0."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def clipped_objective(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      epsilon_low: float = 0.2, epsilon_high: float = 0.2) -> torch.Tensor:
    """min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) per token, ρ = exp(logp − old_logp). [B, T], advantages [B]."""
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(-1)
    return torch.min(ratio * a, ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * a)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> torch.Tensor:
    """Per-token values [B, T] -> scalar, over the tokens where mask [B, T] is 1 (TRL's loss_type):

    grpo: each sequence's masked mean, then the mean over the B sequences; bnpo, dapo: sum over the batch's masked
    tokens / their count (one process, no accumulation: the two coincide); dr_grpo: masked sum / (B ·
    max_completion_length). Empty sequences count as 0 (their token count is clamped to 1).
    """
    validate.choice("loss_type", loss_type, LOSS_TYPES)
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / mask.sum().clamp(min=1)
    if max_completion_length is None:
        raise ValueError("max_completion_length is required for loss_type='dr_grpo'")
    validate.integer("max_completion_length", max_completion_length, 1)
    return masked.sum() / (per_token.shape[0] * max_completion_length)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.0, epsilon_low: float = 0.2,
                epsilon_high: float = 0.2, loss_type: str = "grpo",
                max_completion_length: int | None = None) -> torch.Tensor:
    """The GRPO loss (to minimize), term by term as TRL's ``_compute_loss`` with token-level importance sampling.

    logps, old_logps, ref_logps, mask: [B, T] (log-probs of the sampled tokens under π_θ, π_old, π_ref; mask 1 on
    completion tokens); advantages [B]. Per token: −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) + β·k3, then
    ``aggregate`` by loss_type. ref_logps may be None when beta == 0. Returns a scalar.
    """
    validate.tensor("logps", logps, 2, floating=True)
    for name, t in (("old_logps", old_logps), ("mask", mask)):
        validate.tensor(name, t, 2)
        if t.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}")
    validate.tensor("advantages", advantages, 1, floating=True)
    if advantages.shape[0] != logps.shape[0]:
        raise ValueError(f"advantages must be [B] = [{logps.shape[0]}], got {tuple(advantages.shape)}")
    validate.real("beta", beta, 0.0)
    validate.real("epsilon_low", epsilon_low, 0.0)
    validate.real("epsilon_high", epsilon_high, 0.0)
    validate.choice("loss_type", loss_type, LOSS_TYPES)
    loss = -clipped_objective(logps, old_logps, advantages, epsilon_low, epsilon_high)
    if beta != 0.0:
        if ref_logps is None or ref_logps.shape != logps.shape:
            raise ValueError(f"ref_logps must have the shape of logps {tuple(logps.shape)} when beta > 0")
        loss = loss + beta * per_token_kl(logps, ref_logps)
    return aggregate(loss, mask.to(loss.dtype), loss_type, max_completion_length)


def clip_fraction(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  epsilon_low: float = 0.2, epsilon_high: float = 0.2) -> float:
    """Share of masked tokens where the clip is active (ρ > 1 + ε_high with A > 0, or ρ < 1 − ε_low with A < 0): the
    tokens whose gradient the clip sets to zero."""
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(-1)
    active = ((ratio > 1 + epsilon_high) & (a > 0)) | ((ratio < 1 - epsilon_low) & (a < 0))
    return float((active.float() * mask).sum() / mask.sum().clamp(min=1))


# ------------------------------------------------------------------------------------------------------ trainer
@dataclass
class GRPOConfig(OptimConfig):
    """One GRPO run (the optimizer and schedule fields are ``OptimConfig``'s). Names follow TRL's GRPOConfig where
    one exists (num_generations = G, num_iterations = μ, epsilon/epsilon_high, beta, loss_type, scale_rewards,
    max_completion_length, temperature, top_p).

    reward_weights: weight of each rule-based reward (``dslab.rewards.reward_components``: accuracy, format,
    consistency). lr, warmup, min_lr_ratio: the schedule ``dslab.train.lr_at`` (warm-up, then cosine to
    lr·min_lr_ratio at the last step). Times in the history are CPU seconds of this process (``time.process_time``)
    and wall seconds, rollout and update only, evaluation excluded.

    drop_zero_variance: with beta = 0, leave the groups whose G rewards are all equal out of the update. Their
    advantage is 0, so their clipped term has no gradient and they would only cost time; but they no longer count in
    the aggregation's denominator (the rows for grpo and dr_grpo, the tokens for bnpo/dapo), so the remaining groups'
    gradient is scaled up by (all rows or tokens)/(kept ones), a step size that moves with the share of groups
    without signal. TRL keeps them with advantage 0 (set False for that). With beta > 0 they are always kept, with
    advantage 0, so the KL term sees every group (dropping them would lose their pull towards the reference).
    """

    steps: int = 60
    lr: float = 3e-4
    warmup: int = 0
    weight_decay: float = 0.0
    prompts_per_step: int = 32
    num_generations: int = 16
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    drop_zero_variance: bool = True
    reward_weights: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.1})
    target_notation: str = "digits"
    micro_batch_rows: int = 128
    max_rows: int = 256
    eval_every: int = 10
    eval_tasks: int = 200
    kl_rows: int = 32
    checkpoint: str | None = None
    checkpoint_every: int = 10
    metrics: str | None = None

    def __post_init__(self):
        super().__post_init__()
        for k in ("prompts_per_step", "num_generations", "max_completion_length", "num_iterations",
                  "micro_batch_rows", "max_rows", "eval_every", "checkpoint_every"):
            validate.integer(f"GRPOConfig.{k}", getattr(self, k), 1)
        for k in ("eval_tasks", "kl_rows"):
            validate.integer(f"GRPOConfig.{k}", getattr(self, k), 0)
        validate.real("GRPOConfig.temperature", self.temperature, 0.0, lo_open=True)
        validate.real("GRPOConfig.top_p", self.top_p, 0.0, 1.0, lo_open=True)
        validate.real("GRPOConfig.beta", self.beta, 0.0)
        validate.real("GRPOConfig.epsilon", self.epsilon, 0.0)
        if self.epsilon_high is not None:
            validate.real("GRPOConfig.epsilon_high", self.epsilon_high, 0.0)
        validate.choice("GRPOConfig.loss_type", self.loss_type, LOSS_TYPES)
        validate.choice("GRPOConfig.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        if not isinstance(self.reward_weights, dict) or not self.reward_weights:
            raise ValueError(f"GRPOConfig.reward_weights must be a non-empty dict, got {self.reward_weights!r}")
        for name, w in self.reward_weights.items():
            validate.real(f"GRPOConfig.reward_weights[{name!r}]", w, 0.0)

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


Scorer = Callable[[str, Task], dict]


def default_scorer(target_notation: str = "digits") -> Scorer:
    """completion, task -> every rule-based reward (``dslab.rewards.reward_components``)."""
    return lambda completion, task: reward_components(completion, task.answer, target_notation)


@torch.no_grad()
def _logps_no_grad(model: nn.Module, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    was = model.training
    model.train()  # the full-sequence path (nothing is updated; no dropout in these models)
    out = token_logps(model, ids, temperature)
    model.train(was)
    return out


def _length_batches(ids: torch.Tensor, mask: torch.Tensor, size: int) -> list[tuple[slice, int]]:
    """Micro-batches of rows sorted by length, each with the width that holds its longest sequence."""
    out = []
    for mb in micro_batches(len(ids), size):
        last = int(mask[mb].sum(0).nonzero().max()) + 2 if bool(mask[mb].any()) else 2  # +1 target shift, +1 slice
        out.append((mb, min(ids.shape[1], last)))
    return out


def _monitor_kl(policy: nn.Module, ref: nn.Module | None, ids: torch.Tensor, mask: torch.Tensor,
                cfg: GRPOConfig) -> float:
    """k3 KL to the reference, per completion token, on ``cfg.kl_rows`` rows spread over the batch (β = 0: logged
    only, never in the loss)."""
    if ref is None or cfg.kl_rows == 0:
        return 0.0
    rows = torch.linspace(0, len(ids) - 1, min(cfg.kl_rows, len(ids)), device=ids.device).round().long().unique()
    logps = _logps_no_grad(policy, ids[rows], cfg.temperature)
    kl = per_token_kl(logps, _logps_no_grad(ref, ids[rows], cfg.temperature))
    return float((kl * mask[rows]).sum() / mask[rows].sum().clamp(min=1))


def _weight(loss_type: str, mask_mb: torch.Tensor, mask: torch.Tensor) -> float:
    """Factor that makes Σ over micro-batches of aggregate(micro-batch) equal aggregate(whole batch)."""
    if loss_type in ("bnpo", "dapo"):
        return float(mask_mb.sum().clamp(min=1) / mask.sum().clamp(min=1))
    return mask_mb.shape[0] / mask.shape[0]  # grpo: mean over sequences; dr_grpo: divides by rows


@dataclass
class _State:
    step: int
    history: list
    rng: random.Random
    gen: torch.Generator


_SAVED = ("policy", "ref", "optimizer", "step", "history", "rng", "generator", "config")


def _config_changes(saved: dict, cfg: GRPOConfig) -> list[str]:
    """"field: saved -> now" for each GRPOConfig field whose value differs from the one a checkpoint was made with;
    where and how often the run is written (checkpoint, checkpoint_every, metrics) does not change the run."""
    now = asdict(cfg)
    return [f"{k}: {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) and k not in ("checkpoint", "checkpoint_every", "metrics")]


def _load_or_start(policy: nn.Module, ref: nn.Module, opt: torch.optim.Optimizer, cfg: GRPOConfig) -> _State:
    """A fresh run's state, or the one in ``cfg.checkpoint`` (weights, optimizer, RNGs and history restored); the
    metrics file starts over with the history so far, so steps logged after the last checkpoint are not repeated."""
    state = _State(0, [], random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed))
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        saved = load_checkpoint(cfg.checkpoint, _SAVED, KIND)
        changes = _config_changes(saved["config"], cfg)
        if changes:
            raise CheckpointError(f"checkpoint {cfg.checkpoint} was written with another GRPOConfig ("
                                  f"{'; '.join(changes)}); delete it to restart, or resume with its config")
        policy.load_state_dict(saved["policy"])
        ref.load_state_dict(saved["ref"])
        opt.load_state_dict(saved["optimizer"])
        state.rng.setstate(saved["rng"])
        state.gen.set_state(saved["generator"])
        state.step, state.history = saved["step"], saved["history"]
    write_metrics(cfg.metrics, state.history, append=False)
    return state


def _save(cfg: GRPOConfig, policy: nn.Module, ref: nn.Module, opt: torch.optim.Optimizer, state: _State) -> None:
    save_checkpoint(cfg.checkpoint, {
        "policy": policy.state_dict(), "ref": ref.state_dict(), "optimizer": opt.state_dict(), "step": state.step,
        "history": state.history, "rng": state.rng.getstate(), "generator": state.gen.get_state(),
        "config": asdict(cfg)}, KIND)


def _log(cfg: GRPOConfig, state: _State, row: dict) -> None:
    state.history.append(row)
    write_metrics(cfg.metrics, [row])


def _eval_row(policy: nn.Module, eval_tasks: Sequence[Task], cfg: GRPOConfig) -> dict:
    acc, fmt = greedy_accuracy(policy, eval_tasks, cfg.max_completion_length, cfg.max_rows)
    return {"val_accuracy": acc, "val_format": fmt}


def grpo_step(policy: nn.Module, ref: nn.Module | None, opt: torch.optim.Optimizer, batch: Sequence[Task],
              cfg: GRPOConfig, score: Scorer, gen: torch.Generator, tok: CharTokenizer) -> dict:
    """One GRPO step: sample G completions per task, score them, compute advantages, then μ optimizer updates on the
    same samples (``_update``). Returns the step's metrics."""
    G, prompts = cfg.num_generations, encode_prompts(batch, tok)
    r = rollout(policy, prompts, G, cfg.max_completion_length, tok.encode(ANSWER_CLOSE), cfg.temperature,
                cfg.top_p, gen, tok.pad_id, cfg.max_rows)
    texts = [tok.decode(row[:n]) for row, n in zip(r.ids.tolist(), r.lengths.tolist())]
    comps = [score(text, batch[i // G]) for i, text in enumerate(texts)]
    # the rewards are Python numbers, scored on the CPU; the advantages go to the policy's device with the rows
    rewards = torch.tensor([weighted_reward(c, cfg.reward_weights) for c in comps], device="cpu")
    adv = group_advantages(rewards, G, cfg.scale_rewards) if G > 1 else torch.zeros_like(rewards)
    zero_var = zero_variance_groups(rewards, G)
    row = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
           **{name: sum(c[name] for c in comps) / len(comps) for name in comps[0]},
           "completion_length": float(r.lengths.float().mean()), "stopped": float(r.stopped.float().mean()),
           "zero_variance": float(zero_var.float().mean())}
    drop = cfg.drop_zero_variance and cfg.beta == 0  # with β > 0 a zero-advantage group still has a KL gradient
    keep_groups = [g for g in range(len(batch)) if not (drop and bool(zero_var[g]))]
    row["kept_rows"] = len(keep_groups) * G
    if not keep_groups:
        return {**row, "loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
    device = r.ids.device
    rows = torch.tensor([g * G + j for g in keep_groups for j in range(G)], device=device)
    ids, mask = join([prompts[g] for g in keep_groups], Rollout(r.ids[rows], r.mask[rows], r.stopped[rows]), G,
                     tok.pad_id)
    # sorted by length, so that similar lengths share a micro-batch: little padding
    prompt_lengths = torch.tensor([len(prompts[g]) for g in keep_groups for _ in range(G)], device=device)
    order = (mask.sum(-1) + prompt_lengths).argsort()
    return {**row, **_update(policy, ref, opt, ids[order], mask[order], adv.to(device)[rows][order], cfg)}


def _update(policy: nn.Module, ref: nn.Module | None, opt: torch.optim.Optimizer, ids: torch.Tensor,
            mask: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig) -> dict:
    """μ = cfg.num_iterations optimizer steps on one batch: ids [R, S], mask [R, S − 1], adv [R], rows sorted by
    length. The old log-probs are stored before the first (μ = 1: the detached current ones, ρ = 1); gradients of
    the micro-batches add up to the whole batch's (``_weight``). Returns loss, kl, clip_fraction, grad_norm."""
    mbs = _length_batches(ids, mask, cfg.micro_batch_rows)
    old = [_logps_no_grad(policy, ids[mb, :w], cfg.temperature) for mb, w in mbs] if cfg.num_iterations > 1 \
        else None
    ref_logps = [_logps_no_grad(ref, ids[mb, :w], cfg.temperature) for mb, w in mbs] if cfg.beta > 0 else None
    stats = {"loss": 0.0, "kl": _monitor_kl(policy, ref, ids, mask, cfg) if cfg.beta == 0 else 0.0,
             "clip_fraction": 0.0, "grad_norm": 0.0}
    tokens = float(mask.sum().clamp(min=1))
    policy.train()  # whole sequences, no KV cache: the decoding path would write its caches into the graph
    for _ in range(cfg.num_iterations):
        opt.zero_grad(set_to_none=True)
        kl_num = clip_num = 0.0
        for i, (mb, w) in enumerate(mbs):
            logps, m = token_logps(policy, ids[mb, :w], cfg.temperature), mask[mb, : w - 1]
            old_mb = logps.detach() if old is None else old[i]
            ref_mb = ref_logps[i] if ref_logps is not None else None
            loss = policy_loss(logps, old_mb, ref_mb, adv[mb], m, beta=cfg.beta, epsilon_low=cfg.epsilon,
                               epsilon_high=cfg.eps_high, loss_type=cfg.loss_type,
                               max_completion_length=cfg.max_completion_length) * _weight(cfg.loss_type, m, mask)
            loss.backward()
            stats["loss"] += float(loss.detach()) / cfg.num_iterations
            clip_num += clip_fraction(logps.detach(), old_mb, adv[mb], m, cfg.epsilon, cfg.eps_high) * float(m.sum())
            if ref_mb is not None:
                kl_num += float((per_token_kl(logps.detach(), ref_mb) * m).sum())
        stats["grad_norm"] += float(nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)) / cfg.num_iterations
        opt.step()
        stats["clip_fraction"] += clip_num / tokens / cfg.num_iterations
        if cfg.beta > 0:
            stats["kl"] += kl_num / tokens / cfg.num_iterations
    return stats


def train_grpo(policy: nn.Module, train_tasks: Sequence[Task], cfg: GRPOConfig,
               eval_tasks: Sequence[Task] | None = None, score: Scorer | None = None,
               ref: nn.Module | None = None, desc: str = "GRPO") -> list[dict]:
    """Train ``policy`` with GRPO on prompts drawn from ``train_tasks``; returns the history (one row per step).

    The first row (step 0) holds the evaluation of the starting policy; row k holds step k's training metrics and,
    every ``cfg.eval_every`` steps and at the end, the greedy accuracy and format rate on ``eval_tasks``
    (``cfg.eval_tasks`` of them). ``ref`` is the frozen reference (a copy of the starting policy when None).
    ``score(completion, task)`` returns the reward components (default: ``dslab.rewards.reward_components``).
    The learning rate follows ``dslab.train.lr_at``. With ``cfg.metrics`` every row is appended to that file as it
    comes (``dslab.checkpoint.write_metrics``); with ``cfg.checkpoint`` the run saves itself every
    ``cfg.checkpoint_every`` steps and resumes from the file (CheckpointError when it was made with another config).
    """
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if len(train_tasks) < cfg.prompts_per_step:
        raise ValueError(f"train_tasks holds {len(train_tasks)} tasks, fewer than prompts_per_step "
                         f"{cfg.prompts_per_step}")
    if cache_rows(policy) < cfg.num_generations:
        raise ValueError(f"the policy's cache holds {cache_rows(policy)} rows < num_generations "
                         f"{cfg.num_generations}: build it with Transformer(args, max_batch_size=...)")
    score = score or default_scorer(cfg.target_notation)
    tok, eval_tasks = CharTokenizer(), list(eval_tasks or [])[: cfg.eval_tasks]
    ref = ref if ref is not None else copy.deepcopy(policy)
    ref.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    state = _load_or_start(policy, ref, opt, cfg)
    if state.step == 0:
        _log(cfg, state, {"step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0,
                          **(_eval_row(policy, eval_tasks, cfg) if eval_tasks else {})})
    cpu, wall = state.history[-1]["cpu_seconds"], state.history[-1]["wall_seconds"]
    for step in progress(range(state.step, cfg.steps), desc=desc, initial=state.step, total=cfg.steps):
        c0, w0 = time.process_time(), time.perf_counter()
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = state.rng.sample(list(train_tasks), cfg.prompts_per_step)
        row = grpo_step(policy, ref, opt, batch, cfg, score, state.gen, tok)
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        row = {"step": step + 1, "lr": lr, **row, "cpu_seconds": cpu, "wall_seconds": wall}
        if eval_tasks and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            row.update(_eval_row(policy, eval_tasks, cfg))
        state.step = step + 1
        _log(cfg, state, row)
        if cfg.checkpoint and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
            _save(cfg, policy, ref, opt, state)
    policy.eval()
    return state.history


__all__ = [  # this module's names, then those re-exported from their homes: sampling, evals, sft, checkpoint
    "EPS", "LOSS_TYPES", "SCALE_REWARDS", "GRPOConfig", "Scorer", "aggregate", "clip_fraction", "clipped_objective",
    "default_scorer", "grpo_step", "group_advantages", "join", "per_token_kl", "policy_loss", "token_logps",
    "train_grpo", "zero_variance_groups",
    "Rollout", "cache_rows", "generate", "rollout", "sample_next", "top_p_filter",
    "cons_at_k", "encode_prompts", "evaluate", "greedy_accuracy", "majority_vote", "pass_at_k", "sample_answers",
    "SFTConfig", "sft_batch", "sft_loss", "train_sft", "CheckpointError", "read_metrics",
]
