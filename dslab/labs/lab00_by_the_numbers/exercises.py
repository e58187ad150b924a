"""Exercises of lab 00 "DeepSeek by the numbers": count what the published configs imply, in the notebook's order.

0.1 parameters of one MLA block, 0.2 what one token activates in a MoE layer, 0.3 a total-parameter count to repair,
0.4 forward FLOPs per token, 0.5 the context at which attention costs as much as the weights (predicted, then
measured on a real model). Hidden cases are random but valid architectures, so an answer that hard-codes
DeepSeek-V3's numbers fails them; each common wrong answer is a ``Mistake`` whose hint feedback shows.
"""

from __future__ import annotations

import random

from dslab import accounting
from dslab.configs import ModelArgs, load
from dslab.course.exercises import Case, Exercise, Mistake, compare_close

ATTENTION_KINDS = ("mla", "gqa", "mha", "mqa")


# ---------------------------------------------------------------------------------------------- random configs
def random_mla(rng: random.Random) -> ModelArgs:
    """A dense model with MLA attention of random widths, with or without query compression."""
    nope = rng.choice([16, 32, 64])
    return ModelArgs(name="hidden", dim=rng.choice([256, 512, 1024, 3072]), n_heads=rng.choice([2, 4, 8, 16, 32]),
                     q_lora_rank=rng.choice([0, 0, 96, 384, 768]), kv_lora_rank=rng.choice([32, 64, 128, 256]),
                     qk_nope_head_dim=nope, qk_rope_head_dim=rng.choice([8, 16, 32]),
                     v_head_dim=rng.choice([v for v in (16, 32, 48, 64) if v != nope]), n_layers=rng.randint(2, 40),
                     n_routed_experts=0, n_shared_experts=0, n_activated_experts=0, n_dense_layers=0)


def random_classic(rng: random.Random, attn: str) -> ModelArgs:
    """A dense model with MHA, GQA or MQA attention."""
    heads = rng.choice([8, 16, 32, 64])
    kv = rng.choice([d for d in (2, 4, 8) if heads % d == 0 and d < heads]) if attn == "gqa" else 0
    return ModelArgs(name="hidden", attn=attn, dim=heads * 64, n_heads=heads, n_kv_heads=kv,
                     head_dim=rng.choice([0, 64, 128]), n_layers=rng.randint(2, 96), n_routed_experts=0,
                     n_shared_experts=0, n_activated_experts=0, n_dense_layers=0, inter_dim=rng.choice([512, 2816]))


def random_moe(rng: random.Random, attn: str = "mla") -> ModelArgs:
    """A MoE model (group-limited routing, softmax or sigmoid gate, with or without the gate bias): some dense
    layers first, then MoE layers; sometimes an MTP module and tied embeddings."""
    groups, per_group = rng.choice([1, 2, 4, 8]), rng.choice([2, 4, 8, 16])
    kept = rng.randint(1, groups)  # group-limited routing: top-k must fit in the kept groups
    n_layers = rng.randint(3, 30)
    attention = {} if attn == "mla" else dict(attn=attn, n_kv_heads=4 if attn == "gqa" else 0, head_dim=64)
    return ModelArgs(name="hidden", dim=rng.choice([256, 768, 2048]), n_heads=8, n_layers=n_layers,
                     n_dense_layers=rng.randint(1, 3), inter_dim=rng.choice([640, 2816]),
                     moe_inter_dim=rng.choice([64, 128, 704, 1408]), n_routed_experts=groups * per_group,
                     n_activated_experts=rng.randint(1, min(8, kept * per_group)), n_shared_experts=rng.randint(1, 2),
                     n_expert_groups=groups, n_limited_groups=kept, score_func=rng.choice(["softmax", "sigmoid"]),
                     gate_bias=rng.random() < 0.5, n_mtp=rng.choice([0, 1]), q_lora_rank=rng.choice([0, 96]),
                     vocab_size=rng.choice([1000, 32000]), **attention)


def _named(*names: str) -> list[Case]:
    return [Case((load(n),), n) for n in names]


# ------------------------------------------------------------------------------------------ 0.1 MLA parameters
def _mla_terms(args: ModelArgs, norms: bool = True, q_rope: bool = True, kv_rope: bool = True,
               v_width: int | None = None, q_lora: bool = True) -> int:
    """One MLA block's parameters with one piece switched off or changed: the wrong answers of 0.1."""
    H, d, v = args.n_heads, args.dim, args.v_head_dim if v_width is None else v_width
    q_out = H * (args.qk_nope_head_dim + (args.qk_rope_head_dim if q_rope else 0))
    if args.q_lora_rank and q_lora:
        query = d * args.q_lora_rank + (args.q_lora_rank if norms else 0) + args.q_lora_rank * q_out
    else:
        query = d * q_out
    kv = d * (args.kv_lora_rank + (args.qk_rope_head_dim if kv_rope else 0)) + (args.kv_lora_rank if norms else 0)
    return query + kv + args.kv_lora_rank * H * (args.qk_nope_head_dim + v) + H * v * d


MLA_MISTAKES = (
    Mistake("norms forgotten", lambda a: _mla_terms(a, norms=False),
            "q_norm (after wq_a) and kv_norm (on the latent) are RMSNorms with one weight per channel: count them"),
    Mistake("query without its RoPE part", lambda a: _mla_terms(a, q_rope=False),
            "each query head has d_h + d^R_h channels (qk_nope_head_dim + qk_rope_head_dim), not d_h"),
    Mistake("wkv_a without the RoPE key", lambda a: _mla_terms(a, kv_rope=False),
            "wkv_a projects to the latent and the shared RoPE key: kv_lora_rank + qk_rope_head_dim outputs"),
    Mistake("values as wide as the keys", lambda a: _mla_terms(a, v_width=a.qk_nope_head_dim),
            "values have v_head_dim channels per head, in wkv_b and in wo; it need not equal qk_nope_head_dim"),
    Mistake("query compression ignored", lambda a: _mla_terms(a, q_lora=False),
            "with q_lora_rank > 0 the query goes through wq_a, q_norm and wq_b, not one wq"),
)


# ------------------------------------------------------------------------------------ 0.2 activated per token
def _moe_terms(args: ModelArgs, shared: bool = True, gate: bool = True, bias: str = "if-on", mats: int = 3,
               routed: int | None = None) -> int:
    """What one token runs in one MoE FFN, with one piece switched off or changed: the wrong answers of 0.2."""
    expert = mats * args.dim * args.moe_inter_dim
    n_bias = {"if-on": args.n_routed_experts if args.gate_bias else 0, "always": args.n_routed_experts,
              "never": 0}[bias]
    experts = (args.n_shared_experts if shared else 0) + (args.n_activated_experts if routed is None else routed)
    return experts * expert + ((args.n_routed_experts * args.dim + n_bias) if gate else 0)


MOE_MISTAKES = (
    Mistake("all routed experts", lambda a: _moe_terms(a, routed=a.n_routed_experts),
            "that is the stored size; a token runs only n_activated_experts of the routed experts"),
    Mistake("shared experts forgotten", lambda a: _moe_terms(a, shared=False),
            "every token also runs all n_shared_experts shared experts (V3 eq. 12)"),
    Mistake("gate forgotten", lambda a: _moe_terms(a, gate=False),
            "the gate scores every routed expert for every token: n_routed_experts × dim centroids run per token"),
    Mistake("gate bias always counted", lambda a: _moe_terms(a, bias="always"),
            "the balancing bias exists only when args.gate_bias is True"),
    Mistake("gate bias never counted", lambda a: _moe_terms(a, bias="never"),
            "with args.gate_bias the gate also has one bias per routed expert (V3 eq. 16)"),
    Mistake("two-matrix experts", lambda a: _moe_terms(a, mats=2),
            "each expert is a SwiGLU: w1 and w3 (dim → moe_inter_dim) and w2 (back), three matrices"),
)


# ------------------------------------------------------------------------------------------- 0.3 total, debug
def total_params_draft(args: ModelArgs) -> int:
    """The notebook's first attempt at the stored parameters of the main model; it disagrees with the paper."""
    moe_layer = (accounting.attention_params(args) + accounting.norm_params(args)
                 + (args.n_shared_experts + args.n_routed_experts) * accounting.expert_params(args)
                 + accounting.gate_params(args))
    return args.n_layers * moe_layer + accounting.embedding_params(args) + args.dim


def _total_with(args: ModelArgs, all_moe: bool = False, head: bool = True, mtp: bool = False, final_norm: bool = True,
                tied: str = "respect") -> int:
    """Stored parameters with one piece of the count wrong: the wrong answers of 0.3 (the repaired draft is right)."""
    parts = accounting.param_breakdown(args, include_mtp=mtp)
    if all_moe and args.is_moe:
        per_moe = (parts["attention"] // args.n_layers + accounting.norm_params(args)
                   + accounting.moe_layer_params(args))
        return args.n_layers * per_moe + parts["embedding"] + parts["head"] + args.dim + parts.get("mtp", 0)
    if not head:
        parts["head"] = 0
    if tied == "ignore":
        parts["head"] = args.vocab_size * args.dim
    if not final_norm:
        parts["norms"] -= args.dim
    return sum(parts.values())


TOTAL_MISTAKES = (  # the draft last: it raises on a dense model, which would end the search for a matching hint
    Mistake("dense layers counted as MoE", lambda a: _total_with(a, all_moe=True),
            "the first n_dense_layers layers have a dense SwiGLU FFN of width inter_dim, not experts and a gate"),
    Mistake("output head missing", lambda a: _total_with(a, head=False),
            "the output head (dim × vocab_size) is a matrix of its own unless tie_embeddings shares the table"),
    Mistake("tied head counted twice", lambda a: _total_with(a, tied="ignore"),
            "with tie_embeddings the head reuses the embedding table: count that table once"),
    Mistake("MTP module included", lambda a: _total_with(a, mtp=True),
            "the Multi-Token Prediction module is not part of the main model's count (V3: 671B without it)"),
    Mistake("final norm forgotten", lambda a: _total_with(a, final_norm=False),
            "one more RMSNorm (dim weights) sits between the last layer and the head"),
    Mistake("the draft unchanged", total_params_draft,
            "the draft has two bugs: it treats the first n_dense_layers like MoE layers, and it leaves out a "
            "matrix every untied model has at the end"),
)


def _total_hidden(rng: random.Random) -> list[Case]:
    cases = [Case((random_moe(rng).replace(tie_embeddings=False, n_mtp=1),), "random MoE model #0 (untied, MTP)"),
             Case((random_moe(rng).replace(tie_embeddings=False),), "random MoE model #1 (untied)"),
             Case((random_moe(rng).replace(tie_embeddings=True),), "random MoE model #2 (tied embeddings)"),
             Case((random_moe(rng, "gqa"),), "random MoE model #3 with GQA attention")]
    cases.append(Case((random_classic(rng, "gqa").replace(n_dense_layers=1),), "random dense GQA model"))
    cases.append(Case((random_mla(rng).replace(tie_embeddings=rng.random() < 0.5),), "random dense MLA model"))
    return cases


# ------------------------------------------------------------------------------------------ 0.4 FLOPs per token
def _flops_with(args: ModelArgs, context_len: int, per_mac: int = 2, embedding: bool = False, kv_heads: bool = False,
                rope: bool = True, values: bool = True) -> int:
    """Forward FLOPs with one convention wrong: the wrong answers of 0.4."""
    weights = per_mac * accounting.activated_params(args, include_embedding=embedding)
    heads = args.kv_heads if kv_heads and args.attn != "mla" else args.n_heads
    if args.attn == "mla":
        qk, v = args.qk_nope_head_dim + (args.qk_rope_head_dim if rope else 0), args.v_head_dim
    else:
        qk = v = args.attn_head_dim
    return weights + per_mac * args.n_layers * heads * (qk + (v if values else 0)) * context_len


FLOPS_MISTAKES = (
    Mistake("one FLOP per multiply-add", lambda a, c: _flops_with(a, c, per_mac=1),
            "a multiply-add is 2 FLOPs (a multiply and an add), for the weights and for attention alike"),
    Mistake("embedding lookup counted", lambda a, c: _flops_with(a, c, embedding=True),
            "the input embedding is a table lookup, no arithmetic: leave it out of the weight FLOPs"),
    Mistake("attention per KV head", lambda a, c: _flops_with(a, c, kv_heads=True),
            "GQA/MQA share keys and values, but every query head still computes its own scores and weighted sum"),
    Mistake("MLA keys without RoPE", lambda a, c: _flops_with(a, c, rope=False),
            "an MLA query head is d_h + d^R_h wide (qk_nope_head_dim + qk_rope_head_dim) when it meets the keys"),
    Mistake("value product forgotten", lambda a, c: _flops_with(a, c, values=False),
            "attention has two matmuls per head: the scores q·k and the weighted sum of the values"),
)


def _flops_hidden(rng: random.Random) -> list[Case]:
    models = [("MLA MoE", random_moe(rng)), ("GQA MoE", random_moe(rng, "gqa")), ("dense MLA", random_mla(rng)),
              ("dense GQA", random_classic(rng, "gqa")), ("dense MQA", random_classic(rng, "mqa")),
              ("dense MHA", random_classic(rng, "mha"))]
    return [Case((args, rng.choice([0, rng.randint(1, 2048), rng.randint(2049, 200_000)])), f"random {name}")
            for name, args in models]


# --------------------------------------------------------------------------------------- 0.5 crossover, predict
def crossover_reference(args: ModelArgs) -> float:
    """Context length at which a token's attention FLOPs equal its weight FLOPs (``forward_flops_per_token``'s
    conventions: naive MLA widths, no embedding): 2N / (attention FLOPs per context token)."""
    return 2 * accounting.activated_params(args, include_embedding=False) / \
        accounting.attention_flops_per_token(args, 1)


def _crossover_with(args: ModelArgs, **wrong) -> float:
    weights = _flops_with(args, 0, **wrong)
    return weights / (_flops_with(args, 1, **wrong) - weights)


CROSSOVER_MISTAKES = (
    Mistake("embedding counted", lambda a: _crossover_with(a, embedding=True),
            "the weight FLOPs leave out the input embedding (a lookup), as in Exercise 0.4"),
    Mistake("attention per KV head", lambda a: _crossover_with(a, kv_heads=True),
            "every query head does its own attention arithmetic, also under GQA/MQA"),
    Mistake("MLA keys without RoPE", lambda a: _crossover_with(a, rope=False),
            "MLA's query-key products are d_h + d^R_h wide"),
    Mistake("causal average", lambda a: 2 * crossover_reference(a),
            "the context here is the number of keys the token sees (a decode step), not a training sequence "
            "whose tokens see half of it on average"),
)


def _crossover_hidden(rng: random.Random) -> list[Case]:
    return [Case((random_moe(rng),), "random MLA MoE"), Case((random_moe(rng, "gqa"),), "random GQA MoE"),
            Case((random_mla(rng),), "random dense MLA"), Case((random_classic(rng, "gqa"),), "random dense GQA"),
            Case((random_classic(rng, "mha"),), "random dense MHA")]


EXERCISES = [
    Exercise(
        id="00.mla_params", number="0.1", target="mla_params", points=2, kind="implement",
        task="return the number of parameters of one MLA attention block (projections and its two RMSNorms)",
        reference=accounting.mla_params,
        public_cases=lambda: _named("deepseek-v3-671b", "deepseek-v2-lite-16b", "tiny-v3") + [
            Case((load("tiny-mla").replace(v_head_dim=24),), "tiny-mla with values of 24 channels")],
        hidden_cases=lambda rng: [Case((random_mla(rng),), f"random MLA #{i}") for i in range(6)],
        hint="count every tensor of the block: the query path, wkv_a, kv_norm, wkv_b and wo",
        mistakes=MLA_MISTAKES,
        forbidden=("dslab.accounting.mla_params", "dslab.accounting.attention_params"),
        giveaways=("H·(d_h + d^R_h)", "d_c + d^R_h", "H·(d_h + d_v)",  # the stacked modules' widths, as prose
                   "args.kv_lora_rank + args.qk_rope_head_dim", "args.qk_nope_head_dim + args.v_head_dim"),
    ),
    Exercise(
        id="00.moe_activated", number="0.2", target="moe_activated_params", points=2, kind="implement",
        task="return the parameters one token runs through in the FFN of one MoE layer (V3 eq. 12), an int",
        reference=accounting.moe_activated_params,
        public_cases=lambda: _named("deepseek-v3-671b", "deepseek-v2-236b", "deepseek-v2-lite-16b", "tiny-v3"),
        hidden_cases=lambda rng: [Case((random_moe(rng),), f"random MoE #{i}") for i in range(6)],
        hint="every token runs all shared experts, its top-k routed experts and the gate",
        mistakes=MOE_MISTAKES,
        forbidden=("dslab.accounting.moe_activated_params", "dslab.accounting.moe_layer_params",
                   "dslab.accounting.expert_params", "dslab.accounting.gate_params", "dslab.accounting.layer_params",
                   "dslab.accounting.param_breakdown"),
        giveaways=("shared + top-k routed experts + gate", "(n_shared + top-k) experts + gate",
                   "args.n_shared_experts + args.n_activated_experts", "args.n_routed_experts * args.dim",
                   "3 * args.dim * args.moe_inter_dim"),
    ),
    Exercise(
        id="00.total_params", number="0.3", target="total_params", points=2, kind="debug",
        task="repair total_params_draft: the stored parameters of the main model (no MTP), dense or MoE",
        reference=accounting.total_params,
        public_cases=lambda: _named("deepseek-v3-671b", "deepseek-v2-lite-16b", "llama-3.1-405b") + [
            Case((load("tiny-v3").replace(tie_embeddings=True),), "tiny-v3 with tied embeddings")],
        hidden_cases=_total_hidden,
        hint="walk through the model from the embedding to the head, layer kind by layer kind",
        mistakes=TOTAL_MISTAKES,
        forbidden=("dslab.accounting.total_params", "dslab.accounting.param_breakdown",
                   "dslab.accounting.layer_params", "dslab.accounting.activated_params"),
        giveaways=("args.n_layers - args.n_dense_layers", "the first n_dense_layers", "acc.dense_ffn_params(args)",
                   "acc.head_params(args)"),
    ),
    Exercise(
        id="00.forward_flops", number="0.4", target="forward_flops", points=2, kind="implement",
        task="return the forward FLOPs of one token that attends to context_len keys: weights plus attention",
        reference=accounting.forward_flops_per_token,
        public_cases=lambda: [Case((load("deepseek-v3-671b"), 4096), "deepseek-v3-671b, 4096 keys"),
                              Case((load("llama-3.1-405b"), 4096), "llama-3.1-405b (GQA), 4096 keys"),
                              Case((load("deepseek-v3-671b"), 0), "deepseek-v3-671b, no context"),
                              Case((load("tiny-gqa"), 100), "tiny-gqa, 100 keys")],
        hidden_cases=_flops_hidden,
        hint="2 FLOPs per multiply-add; weights without the embedding lookup; attention: scores and values, "
             "for every query head, over context_len keys",
        mistakes=FLOPS_MISTAKES,
        forbidden=("dslab.accounting.forward_flops_per_token", "dslab.accounting.attention_flops_per_token",
                   "dslab.accounting.flops_ratio", "dslab.accounting.model_card"),
        giveaways=("2 * args.n_layers * args.n_heads", "d_h + d^R_h + d_v", "(192 + 128)",
                   "args.qk_nope_head_dim + args.qk_rope_head_dim + args.v_head_dim"),
    ),
    Exercise(
        id="00.crossover", number="0.5", target="attention_crossover", points=2, kind="predict",
        task="return the context length at which a token's attention FLOPs equal its weight FLOPs (a float)",
        reference=crossover_reference,
        public_cases=lambda: _named("deepseek-v3-671b", "llama-3.1-405b", "tiny-mha"),
        hidden_cases=_crossover_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=0.0),
        hint="weight FLOPs do not depend on the context, attention FLOPs grow linearly with it: solve for the "
             "context where the two are equal",
        mistakes=CROSSOVER_MISTAKES,
        forbidden=("dslab.accounting.forward_flops_per_token", "dslab.accounting.attention_flops_per_token",
                   "dslab.accounting.flops_ratio", "dslab.labs.lab00_by_the_numbers.exercises.crossover_reference"),
        giveaways=("2N / (attention FLOPs per context token)", "weights / (2 * args.n_layers * args.n_heads",
                   "849.1", "849 keys"),  # the rule, and the tiny-mha prediction the learner is asked for
    ),
]
