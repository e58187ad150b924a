"""Exercises of lab 00 "DeepSeek by the numbers": count what the published configs imply.

Hidden cases are random but valid architectures, so an answer that hard-codes DeepSeek-V3's numbers fails them.
"""

from __future__ import annotations

import random

from dslab import accounting
from dslab.configs import ModelArgs, load
from dslab.course.exercises import Case, Exercise, compare_close


def _random_mla(rng: random.Random) -> ModelArgs:
    heads = rng.choice([2, 4, 8, 16, 32])
    return ModelArgs(name="hidden", dim=rng.choice([256, 512, 1024, 3072]), n_heads=heads,
                     q_lora_rank=rng.choice([0, 0, 96, 384, 768]), kv_lora_rank=rng.choice([32, 64, 128, 256]),
                     qk_nope_head_dim=rng.choice([16, 32, 64]), qk_rope_head_dim=rng.choice([8, 16, 32]),
                     v_head_dim=rng.choice([16, 32, 48, 64]), n_layers=rng.randint(2, 40))


def _random_classic(rng: random.Random, attn: str) -> ModelArgs:
    heads = rng.choice([8, 16, 32, 64])
    kv = {"mha": heads, "mqa": 1, "gqa": rng.choice([d for d in (2, 4, 8) if heads % d == 0])}[attn]
    return ModelArgs(name="hidden", attn=attn, dim=heads * 64, n_heads=heads, n_kv_heads=kv if attn == "gqa" else 0,
                     head_dim=rng.choice([0, 64, 128]), n_layers=rng.randint(2, 96), n_routed_experts=0,
                     n_shared_experts=0, n_activated_experts=0, n_dense_layers=0)


def _random_moe(rng: random.Random) -> ModelArgs:
    groups, per_group = rng.choice([1, 2, 4, 8]), rng.choice([2, 4, 8, 16])
    kept = rng.randint(1, groups)  # group-limited routing: top-k must fit in the kept groups
    return ModelArgs(name="hidden", dim=rng.choice([256, 768, 2048]), moe_inter_dim=rng.choice([64, 128, 704, 1408]),
                     n_routed_experts=groups * per_group, n_activated_experts=rng.randint(1, min(8, kept * per_group)),
                     n_shared_experts=rng.randint(0, 2), n_expert_groups=groups, n_limited_groups=kept,
                     score_func=rng.choice(["softmax", "sigmoid"]), gate_bias=rng.random() < 0.5)


def _named(*names: str) -> list[Case]:
    return [Case((load(n),), n) for n in names]


EXERCISES = [
    Exercise(
        id="00.mla_params", number="0.1", target="mla_params", points=2,
        task="return the number of parameters of one MLA attention block (projections and its two RMSNorms)",
        reference=accounting.mla_params,
        public_cases=lambda: _named("deepseek-v3-671b", "deepseek-v2-lite-16b", "tiny-mla"),
        hidden_cases=lambda rng: [Case((_random_mla(rng),), f"random MLA #{i}") for i in range(6)],
        hint="with q_lora_rank == 0 there is a single wq; q_norm and kv_norm each add one weight per channel",
    ),
    Exercise(
        id="00.kv_bytes", number="0.2", target="kv_bytes_per_token", points=2,
        task="return the KV-cache bytes per token (all layers) of an MHA/GQA/MQA/MLA model at `bits` per element",
        reference=accounting.kv_bytes_per_token,
        public_cases=lambda: [Case((load("deepseek-v3-671b"), 16), "deepseek-v3-671b, BF16"),
                              Case((load("deepseek-llm-67b"), 16), "deepseek-llm-67b (GQA-8), BF16"),
                              Case((load("deepseek-v2-236b"), 6), "deepseek-v2-236b, 6 bits")],
        hidden_cases=lambda rng: [
            Case((_random_mla(rng) if kind == "mla" else _random_classic(rng, kind), rng.choice([4, 6, 8, 16, 32])),
                 f"random {kind.upper()} #{i}") for i, kind in enumerate(("mha", "gqa", "mqa", "mla", "gqa", "mla"))],
        compare=lambda e, g: compare_close(e, g, rtol=1e-9, atol=1e-6),
        hint="classic attention caches a key and a value per KV head; MLA caches the latent plus one shared RoPE key",
    ),
    Exercise(
        id="00.moe_activated", number="0.3", target="moe_activated_params", points=2,
        task="return the parameters one token activates in a MoE layer's FFN: shared + top-k routed experts + gate",
        reference=accounting.moe_activated_params,
        public_cases=lambda: _named("deepseek-v3-671b", "deepseek-v2-236b", "deepseek-v2-lite-16b"),
        hidden_cases=lambda rng: [Case((_random_moe(rng),), f"random MoE #{i}") for i in range(6)],
        hint="every token runs all shared experts and n_activated_experts routed ones; the gate (and its bias) always",
    ),
]
