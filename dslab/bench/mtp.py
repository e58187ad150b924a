"""Speculative decoding with the MTP module as drafter against plain decoding: tokens/s, same model, same dtype, same
process, CPU, batch 1, greedy.

The model is the ``tiny-v3`` preset (MLA, DeepSeekMoE, one MTP module), trained with MTP (λ = 0.3) on the course
corpus for ``STEPS`` steps; the trained weights are kept in ``$DSLAB_CHECKPOINTS`` (default ``checkpoints/``, ignored by
git), so only the first run trains. Each prompt is 32 characters of validation text, continued by 128 tokens; plain
decoding (``Transformer.generate``) and ``dslab.mtp.speculative_generate`` alternate, round by round, and the
headline is the ratio of their tokens/s in the dtype in which plain decoding is fastest (float32 or bfloat16, both
reported). The run also checks that both produce the same tokens.

What bounds the figure: per verification step speculative decoding pays one 2-token main-model forward (c2, in units
of a 1-token forward) plus one MTP step on the 1-2 newly accepted positions (c_mtp) and gets 1 + α tokens, so the
ceiling is (1 + α) / (c2 + c_mtp) (``dslab.mtp.expected_speedup``), less the Python bookkeeping of the loop. A model
this small is dominated by per-operator overhead, not arithmetic, so c2 is close to 1 and c_mtp is about the share
of one block (plus the head) in the whole forward. The estimate printed beside each speedup is that ceiling from
isolated forwards; the measured ratio falls below it by the loop's bookkeeping.

Measured on the shared 2-core CPU of this project (torch 2.13 with oneDNN, AVX-512 BF16, one thread, other jobs
running; figures move with machine load):
- ``--quick`` (40 training steps, val loss 2.84): 1.51x float32 (71 -> 107 tok/s), 1.37x bfloat16 (55 -> 75 tok/s),
  2-token forward 1.06x / 1.07x, MTP step 0.28x / 0.34x, estimate 1.49x / 1.42x. A smoke figure only: a model this
  undertrained repeats one character, so acceptance is 100% and says nothing about the drafter.
- Lab 04's tiny-moe model (200 steps, prompts of 32 + 64 tokens, same harness ``measure``): 1.39x float32 at 97%
  greedy acceptance (estimate 1.78x), 1.17x bfloat16 (estimate 1.39x); plain decoding faster in float32. Its greedy
  continuations loop too, which inflates acceptance; sampled acceptance is 74-81%.
- The full run (``STEPS`` = 600, val loss 1.526), 2026-12-02, one thread, a notebook running on the other core:
  **1.16x** float32 (197 -> 242 tok/s) at 82.6% acceptance, 1.80 tokens per forward; 2-token forward 1.04x and MTP step
  0.33x a 1-token forward, so the estimate is 1.34x and the loop's Python bookkeeping takes the rest; bfloat16 1.19x
  (157 -> 200 tok/s); same tokens as plain decoding in both. Target (>= 1.25x) not met.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from dslab import configs
from dslab.bench import Result
from dslab.data import corpus_tensors
from dslab.model import Transformer
from dslab.mtp import expected_speedup, speculative_generate
from dslab.runtime import num_threads, seed_everything
from dslab.train import TrainConfig, train_lm

STEPS, QUICK_STEPS, BATCH = 600, 40, 8  # 8 windows of 160 tokens per step
LAMBDA = 0.3  # V3's λ for its first 10T tokens
PROMPT_CHARS, NEW_TOKENS = 32, 128
TARGET = 1.25


def to_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with its floating-point parameters and buffers in ``dtype``, complex buffers (RoPE tables) untouched.

    ``nn.Module.to(dtype)`` would cast the complex ``freqs_cis`` tables to a real dtype and drop their imaginary
    part, which silently breaks RoPE; the MoE gate keeps its fp32 bias either way. Returns ``model``.
    """
    saved = {name: buf for name, buf in model.named_buffers() if buf.is_complex()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Casting complex values to real")
        model.to(dtype)
    for name, buf in saved.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, buf, persistent=False)
    return model


def checkpoint_path(steps: int, seed: int = 0, lam: float = LAMBDA) -> Path:
    name = f"bench-mtp-tiny-v3-{steps}x{BATCH}x{PROMPT_CHARS + NEW_TOKENS}-lambda{lam:g}-seed{seed}.pt"
    return Path(os.environ.get("DSLAB_CHECKPOINTS", "checkpoints")) / name


def trained_model(steps: int = STEPS, seed: int = 0, lam: float = LAMBDA) -> tuple[Transformer, list[dict],
                                                                                   torch.Tensor]:
    """The benchmark's tiny-v3 with one MTP module, trained ``steps`` steps with MTP weight ``lam`` (or loaded when
    already trained) -> (model in eval mode, training history, validation token ids)."""
    tok, train_ids, val_ids = corpus_tensors(200_000, seed=seed)
    args = configs.load("tiny-v3")
    if tok.vocab_size > args.vocab_size:
        raise ValueError(f"the tokenizer's {tok.vocab_size} ids do not fit tiny-v3's vocab_size {args.vocab_size}")
    seed_everything(seed)
    model = Transformer(args, max_batch_size=1)
    path = checkpoint_path(steps, seed, lam)
    path.parent.mkdir(parents=True, exist_ok=True)
    # windows as long as prompt + generation: positions past the trained length are out of distribution for RoPE,
    # and a model decoding beyond them writes garbage that neither it nor its drafter predicts
    cfg = TrainConfig(steps=steps, batch_size=BATCH, block_size=PROMPT_CHARS + NEW_TOKENS, eval_every=steps,
                      eval_batches=8, seed=seed, mtp_lambda=lam, checkpoint=str(path), checkpoint_every=steps)
    history = train_lm(model, train_ids, val_ids, cfg)
    return model.eval(), history, val_ids


def prompts_from(val_ids: torch.Tensor, n: int, length: int = PROMPT_CHARS) -> list[list[int]]:
    """``n`` windows of ``length`` tokens, evenly spaced over the validation ids."""
    step = (len(val_ids) - length) // n
    return [val_ids[i * step:i * step + length].tolist() for i in range(n)]


@torch.no_grad()
def forward_costs(model: Transformer, context: int = 64, rounds: int = 15) -> dict:
    """Milliseconds of one decode step at position ``context`` (at most max_seq_len - 3): the main model over 1, 2
    and 3 new tokens (hidden state, final norm and head, as ``speculative_generate`` runs it) and the first MTP module
    over 1 and 2 positions (with its norm and the shared head on the last) -> {"ms": medians, "relative": each as a
    multiple of the 1-token forward, the median of per-round ratios}."""
    model.eval()
    context = min(context, model.args.max_seq_len - 3)  # room for the 3-token forward
    gen = torch.Generator().manual_seed(0)
    vocab, dtype = model.args.vocab_size, model.embed.weight.dtype
    model.hidden(torch.randint(0, vocab, (1, context), generator=gen), 0)  # fill the caches
    module = model.mtp[0]
    h = torch.randn(1, 2, model.args.dim, generator=gen).to(dtype)

    def main(n):
        tokens = torch.randint(0, vocab, (1, n), generator=gen)
        return lambda: model.head(model.norm(model.hidden(tokens, context)))

    def mtp(n):
        emb = model.embed(torch.randint(0, vocab, (1, n), generator=gen))
        return lambda: model.head(module.norm(module(h[:, :n], emb, context - n)[:, -1]))

    steps = {"main_1": main(1), "main_2": main(2), "main_3": main(3), "mtp_1": mtp(1), "mtp_2": mtp(2)}
    for fn in steps.values():
        fn()
    times = {k: [] for k in steps}
    for _ in range(rounds):  # interleaved, so load changes hit every kind alike
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    # each kind against the 1-token forward of the same round: the median of those ratios cancels slow periods
    rel = {k: statistics.median(a / b for a, b in zip(v, times["main_1"])) for k, v in times.items()}
    return {"ms": ms, "relative": rel}


def time_generation(model: Transformer, prompts: list[list[int]], new_tokens: int = NEW_TOKENS, rounds: int = 5,
                    n_draft: int = 1) -> dict:
    """Plain greedy decoding against speculative decoding on the same prompts, alternating round by round.

    Returns tokens/s of each (median round), the median of the per-round ratios (``speedup``), the acceptance rate
    and tokens per main-model forward of the speculative runs, and whether both produced the same tokens.
    """
    model.eval()
    total = new_tokens * len(prompts)

    def plain():
        return [model.generate(p, new_tokens) for p in prompts]

    def spec():
        return [speculative_generate(model, p, new_tokens, n_draft=n_draft) for p in prompts]

    outs_plain, outs_spec = plain(), spec()  # warm-up, and the outputs to compare
    t_plain, t_spec = [], []
    for _ in range(rounds):
        for fn, acc in ((plain, t_plain), (spec, t_spec)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    drafted = sum(r.drafted[0] for r in outs_spec)
    return {
        "plain_tok_s": total / statistics.median(t_plain),
        "spec_tok_s": total / statistics.median(t_spec),
        "speedup": statistics.median(a / b for a, b in zip(t_plain, t_spec)),
        "acceptance": sum(r.accepted[0] for r in outs_spec) / max(1, drafted),
        "tokens_per_forward": total / sum(r.forwards for r in outs_spec),
        "same_tokens": all(r.tokens == p for r, p in zip(outs_spec, outs_plain)),
    }


def measure(model: Transformer, prompts: list[list[int]], dtype: torch.dtype, rounds: int = 5,
            new_tokens: int = NEW_TOKENS) -> dict:
    """``time_generation`` and ``forward_costs`` for a copy of ``model`` in ``dtype``, with the speedup that the costs
    and the acceptance predict (``estimate``): (1 + α) / (c2 + c_mtp), c_mtp the mean of the 1- and 2-position MTP
    steps. The estimate leaves out what isolated forwards do not see: the Python bookkeeping of either loop."""
    m = to_dtype(copy.deepcopy(model), dtype).eval()
    gen = time_generation(m, prompts, new_tokens, rounds)
    costs = forward_costs(m, rounds=max(40, 3 * rounds))  # a few ms each: many rounds are cheap and steadier
    rel = costs["relative"]
    c_mtp = (rel["mtp_1"] + rel["mtp_2"]) / 2
    gen.update(costs=costs, c2=rel["main_2"], c_mtp=c_mtp,
               estimate=expected_speedup(gen["acceptance"], 1, rel["main_2"], c_mtp)[1])
    return gen


def run(quick: bool = False) -> Result:
    steps = QUICK_STEPS if quick else STEPS
    model, history, val_ids = trained_model(steps)
    prompts = prompts_from(val_ids, 2 if quick else 6)
    rounds, new_tokens = (2, 32) if quick else (5, NEW_TOKENS)
    with num_threads(None):
        found = {str(d).removeprefix("torch."): measure(model, prompts, d, rounds, new_tokens)
                 for d in (torch.float32, torch.bfloat16)}
    fastest = max(found, key=lambda d: found[d]["plain_tok_s"])
    details = {"model": f"tiny-v3 + 1 MTP module, {model.num_params():,} parameters, trained {steps} steps "
                        f"(val loss {history[-1]['val_loss']:.3f})",
               "threads": torch.get_num_threads()}
    for name, m in found.items():
        details[name] = (f"plain {m['plain_tok_s']:.0f} tok/s, speculative {m['spec_tok_s']:.0f} tok/s, "
                         f"speedup {m['speedup']:.2f}x; acceptance {m['acceptance']:.1%}, "
                         f"{m['tokens_per_forward']:.2f} tokens/forward; 2-token forward {m['c2']:.2f}x, MTP step "
                         f"{m['c_mtp']:.2f}x a 1-token forward ({m['costs']['ms']['main_1']:.2f} ms); estimate from "
                         f"those costs {m['estimate']:.2f}x; same tokens as plain: {m['same_tokens']}")
    details["headline dtype (plain decoding fastest)"] = fastest
    return Result("mtp", found[fastest]["speedup"], "x", ">=", TARGET, details)
