"""GRPO rollouts: KV-cached generation of a group against recomputing the whole prefix for every new token, and
GRPO steps per second, on the CPU with lab 05's policy (a 0.17M-parameter dense transformer, character vocabulary).

The headline is the time to generate 64 new tokens for a batch of 64 rows (4 prompts × G = 16) without a cache
(the full training-mode forward over prompt + everything generated so far, once per token) divided by the time with
the KV cache (``dslab.sampling.generate``: one prefill, then one token per row per step). Both decode greedily, so
they write the same tokens; the agreement is reported. Without a cache each token costs a forward over the whole
prefix, so the ratio grows with the prefix (here a 53-character prompt plus up to 64 tokens) and with the batch, until
the cached path's per-step overhead stops mattering.

Measured on the 0.17M-parameter shipped base, quiet 2-core CPU, one torch thread: 17.8x at batch 64 (2.9 ms against
69.4 ms per token step; 16.6x and 12.4x in two other runs), 7.7x at batch 16, 21.6x at batch 256, identical tokens;
4.0 CPU s per default GRPO step (0.25 steps/s). GRPO steps per second are reported for the lab's default step
(32 prompts × 16 completions, up to 64 new tokens, one update), from the shipped base checkpoint when it exists.

Like every benchmark it is built from components only (``dslab.model``, ``dslab.configs``, ``dslab.data``,
``dslab.sampling``, ``dslab.grpo``) and ``dslab.runtime``: labs call benchmarks, never the other way round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import dslab
from dslab import configs, data, grpo, sampling
from dslab.bench import Result, paired_ratio
from dslab.model import Transformer
from dslab.runtime import timeit

NEW_TOKENS = 64
BASE = Path(dslab.__file__).resolve().parents[1] / "datasets" / "grpo" / "base.pt"  # lab 05's shipped base + card
# Lab 05's "base" architecture (a dense transformer with MHA, prompt + completion <= 192 characters), for a fresh
# model when no checkpoint is shipped.
POLICY = dict(dim=64, n_heads=4, n_kv_heads=4, head_dim=16, inter_dim=192, n_layers=3, n_dense_layers=3,
              max_seq_len=192, original_seq_len=192)


def _policy(rows: int) -> tuple[Transformer, str]:
    """Lab 05's base policy with caches of ``rows`` rows: the shipped checkpoint (the architecture its card names,
    float16 weights back to float32), else a seeded fresh model of the same shape."""
    if BASE.exists():
        card = json.loads(BASE.with_suffix(".json").read_text(encoding="utf-8"))
        model = Transformer(configs.ModelArgs.from_dict(card["args"]), max_batch_size=rows)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in torch.load(BASE, weights_only=True, map_location="cpu").items()})
        return model.eval(), "shipped base checkpoint"
    torch.manual_seed(0)
    args = configs.load("tiny-mha").replace(name="lab05-base", vocab_size=data.CharTokenizer().vocab_size, **POLICY)
    return Transformer(args, max_batch_size=rows).eval(), "random initialisation (no shipped checkpoint)"


@torch.no_grad()
def recompute_generate(model, prompt_ids: torch.Tensor, num_generations: int, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation without a KV cache: the whole prefix goes through the model for every token. [P, L] ->
    [P·G, max_new_tokens]."""
    was = model.training
    model.train()  # the full-sequence path: nothing is cached, every position is recomputed
    seq = prompt_ids.repeat_interleave(num_generations, 0)
    for _ in range(max_new_tokens):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train(was)
    return seq[:, prompt_ids.shape[1]:]


def measure(prompts: int = 4, G: int = 16, new_tokens: int = NEW_TOKENS, rounds: int = 3) -> dict:
    """Cached vs recomputed greedy rollout of ``prompts`` × G rows: ms per generated token step, the speedup and the
    share of identical tokens."""
    model, source = _policy(max(prompts * G, 16))
    tok = data.CharTokenizer()
    three_digit = [t for t in data.tasks(200, seed=3) if len(t.question) == 7][:prompts]  # prompts of equal length
    ids = torch.tensor([tok.encode(t.prompt) for t in three_digit])
    cached = lambda: sampling.generate(model, ids, G, new_tokens, (), temperature=0.0)  # noqa: E731
    recompute = lambda: recompute_generate(model, ids, G, new_tokens)  # noqa: E731
    same = float((cached().ids == recompute()).float().mean())
    ms = {"cached": 1e3 * timeit(cached, repeats=rounds) / new_tokens,
          "recompute": 1e3 * timeit(recompute, repeats=rounds) / new_tokens}
    return {"speedup": 1 / paired_ratio(cached, recompute, rounds=rounds), "ms_per_token_step": ms,
            "same_tokens": same, "rows": prompts * G, "prompt_chars": ids.shape[1], "policy": source}


def grpo_steps_per_second(prompts: int = 32, G: int = 16, steps: int = 2) -> dict:
    """Seconds per GRPO step (rollout + rewards + one update) at the lab's defaults, CPU and wall."""
    model, source = _policy(256)
    # lab 05's R1-Zero step (accuracy + 0.1·format, no KL, ε = 0.2, lr 3e-4), every group kept: steps cost alike
    cfg = grpo.GRPOConfig(steps=steps, prompts_per_step=prompts, num_generations=G, lr=3e-4, eval_tasks=0,
                          reward_weights={"accuracy": 1.0, "format": 0.1}, drop_zero_variance=False)
    task_list = data.tasks(max(prompts, 64), seed=5)
    c, w = time.process_time(), time.perf_counter()
    history = grpo.train_grpo(model, task_list, cfg, desc="bench")
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    length = sum(r["completion_length"] for r in history[1:]) / steps
    return {"steps_per_second": steps / wall, "cpu_seconds_per_step": cpu / steps,
            "wall_seconds_per_step": wall / steps, "rows_per_step": prompts * G, "mean_completion_length": length,
            "policy": source}


def run(quick: bool = False) -> Result:
    main = measure(4, 16, NEW_TOKENS, rounds=2 if quick else 3)
    details = {
        "setup": f"CPU float32, {torch.get_num_threads()} threads, {main['policy']}, greedy, {NEW_TOKENS} new tokens, "
                 f"prompt of {main['prompt_chars']} characters",
        "ms_per_token_step_batch_64": {k: round(v, 2) for k, v in main["ms_per_token_step"].items()},
        "kv_cache_speedup_batch_64": f"{main['speedup']:.1f}x",
        "identical_tokens_cached_vs_recomputed": f"{main['same_tokens']:.3f}",
    }
    if not quick:
        for prompts in (1, 16):
            m = measure(prompts, 16, NEW_TOKENS, rounds=2)
            details[f"kv_cache_speedup_batch_{m['rows']}"] = f"{m['speedup']:.1f}x"
    s = grpo_steps_per_second(4 if quick else 32, 16, 1 if quick else 2)
    details["grpo_step"] = (f"{s['rows_per_step']} completions/step: {s['steps_per_second']:.3f} steps/s, "
                            f"{s['cpu_seconds_per_step']:.1f} CPU s/step (mean completion "
                            f"{s['mean_completion_length']:.0f} tokens, {s['policy']})")
    return Result(name="grpo", value=main["speedup"], unit="x", op=">=", target=10.0, details=details)
