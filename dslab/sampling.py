"""Sampling from a causal LM on the KV cache: nucleus filtering, one token per row, and rollouts (the G completions of
each prompt that GRPO scores, DeepSeekMath §4.1; R1 §2.2.1).

``generate`` decodes the completions of same-length prompts as one KV-cached batch, each row stopping on its own at a
stop string; ``rollout`` takes prompts of any lengths and batches them by length, so nothing is ever padded on the
left. Evaluation (``dslab.evals``) and the GRPO trainer (``dslab.grpo``) both sample through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dslab import validate


# ----------------------------------------------------------------------------------------------------- sampling
def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep, per row, the most probable tokens whose cumulative probability first reaches top_p
    (the top token always stays); the rest get -inf. logits [B, V] -> [B, V]."""
    validate.real("top_p", top_p, 0.0, 1.0, lo_open=True)
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax when temperature == 0, else softmax(logits / T) after top-p."""
    validate.real("temperature", temperature, 0.0)
    if temperature == 0:
        return logits.argmax(-1)
    probs = top_p_filter(logits.float() / temperature, top_p).softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


# ------------------------------------------------------------------------------------------------------ rollouts
@dataclass
class Rollout:
    """Completions of one batch of prompts. ids [R, T] (pad after each row's end), mask [R, T] (1 on generated tokens,
    stop string included), stopped [R] (True when the row ended on the stop string, False when it hit the length)."""

    ids: torch.Tensor
    mask: torch.Tensor
    stopped: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def cache_rows(model: nn.Module) -> int:
    """How many rows the model's attention caches hold (``Transformer(args, max_batch_size=...)``)."""
    return min(block.attn.max_batch_size for block in model.layers)


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, num_generations: int, max_new_tokens: int,
             stop_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, pad_id: int = 0) -> Rollout:
    """Sample ``num_generations`` completions of each prompt in one batch from the KV cache.

    prompt_ids [P, L]: P prompts of the same length L (same length, so no padding). Rows are prompt-major: rows
    p·G .. p·G + G − 1 continue prompt p. Each row stops on its own once it has written ``stop_ids`` (a multi-token
    stop string) or after ``max_new_tokens``; later positions hold ``pad_id`` with mask 0. The model decodes in eval
    mode through ``model(tokens, start_pos)``, as ``Transformer.generate`` does for one row.
    """
    validate.tensor("prompt_ids", prompt_ids, 2, floating=False)
    validate.integer("num_generations", num_generations, 1)
    validate.integer("max_new_tokens", max_new_tokens, 1)
    rows, length = prompt_ids.shape[0] * num_generations, prompt_ids.shape[1]
    if length == 0 or rows == 0:
        raise ValueError(f"prompt_ids must be [P >= 1, L >= 1], got {tuple(prompt_ids.shape)}")
    if rows > cache_rows(model):
        raise ValueError(f"P × num_generations = {rows} rows exceed the model's cache of {cache_rows(model)} rows "
                         "(build it with Transformer(args, max_batch_size=...))")
    if length + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"prompt length + max_new_tokens = {length + max_new_tokens} exceeds max_seq_len "
                         f"{model.args.max_seq_len}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    logits = model(prompt_ids.to(device).repeat_interleave(num_generations, 0), 0)[:, -1]
    for t in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, generator)
        ids[:, t] = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        if len(stop) and t + 1 >= len(stop):
            hit = (ids[:, t + 1 - len(stop):t + 1] == stop).all(-1) & ~done
            stopped |= hit
            done |= hit
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = model(nxt.unsqueeze(1), length + t)[:, -1]
    steps = torch.arange(max_new_tokens, device=device)
    end = torch.where(stopped, _first_stop_end(ids, stop), torch.full_like(stopped, max_new_tokens, dtype=torch.long))
    mask = (steps < end.unsqueeze(1)).long()
    model.train(was_training)
    return Rollout(ids * mask + pad_id * (1 - mask), mask, stopped)


def _first_stop_end(ids: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Per row, the position just after the first occurrence of ``stop`` (rows without one: anything)."""
    n = len(stop)
    if n == 0 or ids.shape[1] < n:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    hits = (ids.unfold(1, n, 1) == stop).all(-1)  # [R, T - n + 1]
    return hits.float().argmax(-1) + n


def rollout(model: nn.Module, prompts: Sequence[Sequence[int]], num_generations: int, max_new_tokens: int,
            stop_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0,
            generator: torch.Generator | None = None, pad_id: int = 0, max_rows: int | None = None) -> Rollout:
    """``generate`` for prompts of any lengths: prompts of equal length share a batch (up to ``max_rows`` rows, at
    most the model's cache), so nothing is ever padded on the left. Rows come back in prompt order, G per prompt,
    each right-padded to the longest completion."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    limit = min(max_rows or cache_rows(model), cache_rows(model))
    per_batch = max(1, limit // num_generations)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    parts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for length in sorted(by_length):
        idx = by_length[length]
        for s in range(0, len(idx), per_batch):
            chunk = idx[s:s + per_batch]
            batch = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device="cpu")  # generate moves it
            r = generate(model, batch, num_generations, max_new_tokens, stop_ids, temperature, top_p, generator, pad_id)
            for j, i in enumerate(chunk):
                rows = slice(j * num_generations, (j + 1) * num_generations)
                parts[i] = (r.ids[rows], r.mask[rows], r.stopped[rows])
    width = max(int(p[1].sum(-1).max()) for p in parts.values()) or 1
    ids = torch.cat([parts[i][0][:, :width] for i in range(len(prompts))])
    mask = torch.cat([parts[i][1][:, :width] for i in range(len(prompts))])
    return Rollout(ids, mask, torch.cat([parts[i][2] for i in range(len(prompts))]))
