"""Lab 03's experiment harnesses: attention variants of one shape, tiny models trained the same way, and the
low-rank structure of a trained model's keys and values."""

from __future__ import annotations

import torch

from dslab import configs
from dslab.configs import ModelArgs
from dslab.model import Transformer
from dslab.runtime import seed_everything
from dslab.train import TrainConfig, train_lm

HEAD_DIM, ROPE_DIM = 128, 64  # V2/V3's d_h and d^R_h


def architectures(n_heads: int, n_kv_heads: int, kv_lora_rank: int, n_layers: int) -> dict[str, ModelArgs]:
    """The four attention kinds with the same heads, width and depth (d_h = 128; MLA: d_R = 64, no MoE).

    GQA's KV heads are clamped to n_heads (both are powers of two in the widget, so they divide).
    """
    base = dict(dim=n_heads * HEAD_DIM, n_heads=n_heads, n_layers=n_layers, n_routed_experts=0, n_shared_experts=0,
                n_activated_experts=0, n_dense_layers=0)
    kv = min(n_kv_heads, n_heads)
    return {
        "MHA": ModelArgs(name="MHA", attn="mha", head_dim=HEAD_DIM, **base),
        f"GQA-{kv}": ModelArgs(name=f"GQA-{kv}", attn="gqa", head_dim=HEAD_DIM, n_kv_heads=kv, **base),
        "MQA": ModelArgs(name="MQA", attn="mqa", head_dim=HEAD_DIM, **base),
        "MLA": ModelArgs(name="MLA", attn="mla", kv_lora_rank=kv_lora_rank, qk_nope_head_dim=HEAD_DIM,
                         qk_rope_head_dim=ROPE_DIM, v_head_dim=HEAD_DIM, q_lora_rank=0, **base),
    }


def train_tiny(preset: str, train_ids: torch.Tensor, val_ids: torch.Tensor, steps: int, eval_every: int, seed: int,
               vocab_size: int, device: torch.device | str = "cpu") -> tuple[Transformer, list[dict]]:
    """A fresh model of course preset ``preset`` trained ``steps`` steps (batch 16 x 64) -> (model, history)."""
    seed_everything(seed)
    model = Transformer(configs.load(preset).replace(vocab_size=vocab_size)).to(device)
    cfg = TrainConfig(steps=steps, eval_every=eval_every, eval_batches=8, seed=seed)
    return model, train_lm(model, train_ids, val_ids, cfg)


@torch.no_grad()
def keys_and_values(model: Transformer, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (K, V) [tokens, n_kv_heads * head_dim] from the ``wk``/``wv`` projections (before RoPE) of a
    classic-attention model run on tokens [B, S]."""
    found, hooks = {}, []
    for i, block in enumerate(model.layers):
        for name in ("wk", "wv"):
            def keep(module, inputs, out, key=(i, name)):
                found[key] = out.flatten(0, 1).float().cpu()
            hooks.append(getattr(block.attn, name).register_forward_hook(keep))
    was_training = model.training
    model.train()  # the uncached path takes any batch size; nothing is updated
    try:
        model(tokens.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [(found[(i, "wk")], found[(i, "wv")]) for i in range(len(model.layers))]


def lowrank_error(x: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error of the best rank-r approximation of the centred x [N, D], for r = 0..min(N, D).

    Eckart-Young: the best rank-r approximation keeps the r largest singular values, so the error is the energy in
    the others. A constant offset (the mean over rows) is removed first: it costs one stored vector, not a rank.
    """
    energy = torch.linalg.svdvals(x - x.mean(0)).pow(2)
    tail = energy.flip(0).cumsum(0).flip(0)  # energy left out when keeping the first r singular values
    return torch.cat([tail / energy.sum(), torch.zeros(1)]).sqrt()
