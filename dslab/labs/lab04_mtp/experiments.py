"""Lab 04's experiment harnesses: tiny models trained with and without MTP, prompts of two kinds of text, speculative
decoding runs summarized by acceptance and tokens per forward, and the sweep behind the explorer."""

from __future__ import annotations

import re

import torch

from dslab import configs
from dslab.configs import ModelArgs
from dslab.data import get_batch
from dslab.model import Transformer
from dslab.mtp import speculative_generate
from dslab.runtime import progress, seed_everything
from dslab.train import TrainConfig, train_lm

PRESET = "tiny-moe"  # MLA + DeepSeekMoE (16 routed experts, top-4 + 1 shared), width 128, 4 layers
BATCH, BLOCK = 8, 128  # training windows: 1,024 tokens per step, long enough for a 32-token prompt + 96 new ones
KINDS = ("words", "digits")
_ARITHMETIC = re.compile(r"^-?\d+[+\-*]\d+(?:[+\-*]\d+)?=-?\d+$")


def lab_args(depth: int, vocab_size: int) -> ModelArgs:
    """The lab's model: the tiny-moe preset with ``depth`` MTP modules."""
    return configs.load(PRESET).replace(vocab_size=vocab_size, n_mtp=depth)


def train_mtp(depth: int, lam: float, train_ids: torch.Tensor, val_ids: torch.Tensor, steps: int, eval_every: int,
              seed: int, vocab_size: int, device: torch.device | str = "cpu", batch_size: int = BATCH,
              block_size: int = BLOCK) -> tuple[Transformer, list[dict]]:
    """A fresh lab model with ``depth`` MTP modules trained ``steps`` steps (batch_size windows of block_size tokens,
    λ = ``lam``) -> (model, history). Every depth starts from the same main-model weights and sees the same batches.

    The windows are as long as prompt + generation later in the lab: RoPE positions the model never trained on are
    out of distribution, and text decoded there is garbage that neither the model nor its drafter predicts."""
    seed_everything(seed)
    model = Transformer(lab_args(depth, vocab_size), max_batch_size=1).to(device)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, block_size=block_size, eval_every=eval_every,
                      eval_batches=8, seed=seed, mtp_lambda=lam)
    return model, train_lm(model, train_ids, val_ids, cfg)


@torch.no_grad()
def depth_accuracy(model: Transformer, val_ids: torch.Tensor, batches: int = 4, seed: int = 1234,
                   itos: list[str] | None = None) -> dict:
    """On validation text, teacher-forced: top-1 accuracy of the main model and of each MTP depth, and how often
    depth 1's argmax at position i equals the main model's argmax at i + 1 (what greedy acceptance asks, on real
    text instead of the model's own continuation); with ``itos`` also that agreement by the class of the true token
    t_{i+2} ("agree, digit", "agree, letter", "agree, other")."""
    was_training = model.training
    model.train()  # the uncached path, any batch size; no_grad: nothing is updated
    g = torch.Generator().manual_seed(seed)
    device = model.embed.weight.device
    hits, count = torch.zeros(len(model.mtp) + 1), torch.zeros(len(model.mtp) + 1)
    agree, by_class = [], []
    for _ in range(batches):
        x, y = get_batch(val_ids, 16, 64, g)
        x, y = x.to(device), y.to(device)
        logits, mtp_logits = model.forward_mtp(x) if len(model.mtp) else (model(x), [])
        tokens = torch.cat([x, y[:, -1:]], 1)
        for k, lg in enumerate([logits, *mtp_logits]):
            hits[k] += (lg.argmax(-1) == tokens[:, k + 1:]).sum().item()
            count[k] += lg.shape[0] * lg.shape[1]
        if mtp_logits:
            agree.append((mtp_logits[0].argmax(-1) == logits[:, 1:].argmax(-1)).flatten().cpu())
            by_class += [char_class(itos[t]) for t in tokens[:, 2:].flatten().tolist()] if itos else []
    model.train(was_training)
    out = {"main": (hits[0] / count[0]).item()}
    out.update({f"depth {k}": (hits[k] / count[k]).item() for k in range(1, len(model.mtp) + 1)})
    if agree:
        agree = torch.cat(agree)
        out["depth 1 = main's next argmax"] = agree.float().mean().item()
        for c in ("digit", "letter", "other") if itos else ():
            mask = torch.tensor([b == c for b in by_class])
            out[f"agree, {c}"] = agree[mask].float().mean().item() if mask.any() else float("nan")
    return out


# ---------------------------------------------------------------------------------------------------- prompts
def prompts(text: str, kind: str, n: int, length: int = 32) -> list[str]:
    """``n`` prompts of ``length`` characters from ``text``, evenly spread over it, of one kind:

    "digits" ends where a new line of arithmetic starts ("...\\n37+45=82\\n") and holds only arithmetic lines;
    "words" ends after a space inside prose with no digit in the prompt.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ends = []
    for m in re.finditer(r"\n", text):
        end = m.end()
        if kind == "digits" and end >= length:
            line = text[text.rfind("\n", 0, end - 1) + 1:end - 1]
            nxt = text[end:text.find("\n", end) if text.find("\n", end) > 0 else len(text)]
            if _ARITHMETIC.match(line) and _ARITHMETIC.match(nxt) and re.fullmatch(r"[\d+\-*=\n]+",
                                                                                   text[end - length:end]):
                ends.append(end)
    if kind == "words":
        ends = [m.end() for m in re.finditer(r"[a-z]{3,} ", text)
                if m.end() >= length and re.fullmatch(r"[A-Za-z ,.;:'()\-]+", text[m.end() - length:m.end()])]
    if len(ends) < n:
        raise ValueError(f"only {len(ends)} {kind} prompts of {length} characters in this text, {n} asked")
    picked = [ends[round(i * (len(ends) - 1) / max(1, n - 1))] for i in range(n)]
    return [text[e - length:e] for e in picked]


def char_class(ch: str) -> str:
    """"digit", "letter" or "other" (space, punctuation, newline)."""
    return "digit" if ch.isdigit() else "letter" if ch.isalpha() else "other"


# --------------------------------------------------------------------------------------------- decoding runs
def decode(model: Transformer, prompt_ids: dict[str, list[list[int]]], new_tokens: int, temperature: float = 0.0,
           n_draft: int = 1, seed: int = 0, itos: list[str] | None = None) -> dict:
    """Speculative decoding of every prompt -> acceptance of the first draft (the second token), by depth, and
    tokens per main-model forward, per prompt kind and over all; with ``itos`` also the first draft's acceptance by
    the class of the token that ended up at its position (digit, letter, other)."""
    gen = torch.Generator().manual_seed(seed)
    out, by_class, total = {}, {}, {"drafted": [0] * n_draft, "accepted": [0] * n_draft, "tokens": 0, "forwards": 0}
    for kind, ids in prompt_ids.items():
        acc = {"drafted": [0] * n_draft, "accepted": [0] * n_draft, "tokens": 0, "forwards": 0}
        for p in ids:
            res = speculative_generate(model, p, new_tokens, temperature, n_draft=n_draft, generator=gen)
            for k in range(n_draft):
                acc["drafted"][k] += res.drafted[k]
                acc["accepted"][k] += res.accepted[k]
            acc["tokens"] += len(res.tokens)
            acc["forwards"] += res.forwards
            if itos is not None:
                seq = p + res.tokens
                for pos, _, kept in (v for v in res.verified if v[1] == 1):
                    c = by_class.setdefault(char_class(itos[seq[pos]]), [0, 0])
                    c[0], c[1] = c[0] + kept, c[1] + 1
        out[kind] = _summary(acc)
        for key in total:
            total[key] = [a + b for a, b in zip(total[key], acc[key])] if isinstance(acc[key], list) else \
                total[key] + acc[key]
    out["all"] = _summary(total)
    if itos is not None:
        out["by_class"] = {c: (kept / n, n) for c, (kept, n) in sorted(by_class.items())}
    return out


def _summary(acc: dict) -> dict:
    rates = [a / d if d else float("nan") for a, d in zip(acc["accepted"], acc["drafted"])]
    return {"acceptance": rates[0], "by_depth": rates, "tokens_per_forward": acc["tokens"] / acc["forwards"],
            "drafts": acc["drafted"][0]}


def sweep(models: dict[tuple[float, int], Transformer], prompt_ids: dict[str, list[list[int]]],
          temperatures: list[float], new_tokens: int, seed: int = 0) -> dict[tuple[float, int, float], dict]:
    """``decode`` for every trained (λ, D) model at every temperature, drafting D tokens -> {(λ, D, T): summary}."""
    table = {}
    items = [(key, t) for key in models for t in temperatures]
    for (lam, depth), t in progress(items, desc="decoding"):
        table[(lam, depth, t)] = decode(models[(lam, depth)], prompt_ids, new_tokens, t, n_draft=depth, seed=seed)
    return table
