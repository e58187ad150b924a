"""What FP8 training saves in memory (DeepSeek-V3 §3.3): parameters read by FP8 GEMMs, activations left for
backward, and the training-memory breakdown in FP32, BF16 mixed precision and V3's FP8 recipe."""

from __future__ import annotations

from dslab import accounting as acc
from dslab import validate
from dslab.fp8.formats import BLOCK

MEMORY_PRECISIONS = ("fp32", "bf16", "fp8")  # the columns of memory_breakdown


def gemm_params(args) -> int:
    """Parameters that FP8 GEMMs read under V3's recipe: attention projections, dense FFNs, shared and routed
    experts (``args`` a ModelArgs). The rest (embedding, head, router, norms) stays in higher precision."""
    parts = acc.param_breakdown(args)
    mla_norms = (args.q_lora_rank + args.kv_lora_rank) if args.attn == "mla" else 0
    return (parts["attention"] - args.n_layers * mla_norms + parts["dense_ffn"] + parts["shared_experts"]
            + parts["routed_experts"])


def activation_elements_per_token(args) -> dict[str, int]:
    """Elements one token leaves for backward, summed over layers: {"gemm_inputs": inputs of the GEMMs above
    (FP8 under the recipe), "other": inputs of the high-precision parts (norms, attention core q/k/v, router,
    SwiGLU, output head)}. An estimate of what autograd keeps; logits and recomputation are not counted."""
    d, gemm, other = args.dim, 0, 0
    for layer in range(args.n_layers):
        if args.attn == "mla":
            heads, qk = args.n_heads, args.qk_nope_head_dim + args.qk_rope_head_dim
            gemm += d + args.q_lora_rank + args.kv_lora_rank + heads * args.v_head_dim  # x, c^Q, c^KV, o
            other += d + args.q_lora_rank + args.kv_lora_rank + heads * (2 * qk + args.v_head_dim)  # norms, q k v
        else:
            gemm += d + args.n_heads * args.attn_head_dim
            other += d + (args.n_heads + 2 * args.kv_heads) * args.attn_head_dim
        if args.is_moe and layer >= args.n_dense_layers:
            k, inter, shared = args.n_activated_experts, args.moe_inter_dim, args.n_shared_experts
            gemm += (k + (1 if shared else 0)) * d + (shared + k) * inter  # each routed copy of x, hidden
            other += 2 * d + 2 * (shared + k) * inter + args.n_routed_experts  # norm, router, SwiGLU
        else:
            gemm += d + args.inter_dim
            other += d + 2 * args.inter_dim
    return {"gemm_inputs": gemm, "other": other + 2 * d}  # + final norm and head inputs


def memory_breakdown(args, precision: str = "fp8", tokens: int = 4096, block: int = BLOCK) -> dict[str, float]:
    """Training memory in bytes, by what it holds, for ``args`` (a ModelArgs) with ``tokens`` tokens in flight.

    precision "fp32": everything FP32. "bf16": mixed precision, BF16 copies of the weights and BF16 activations,
    FP32 master weights, gradients and AdamW moments. "fp8": V3 (§3.3): FP8 copies of the GEMM weights (one FP32
    scale per block×block block) and FP8 GEMM inputs (one scale per 1×block tile), BF16 for everything else, FP32
    master weights and gradients, AdamW moments in BF16 (§3.3.3). Whole model, not per device.
    """
    validate.choice("precision", precision, MEMORY_PRECISIONS)
    validate.integer("tokens", tokens, 0)
    validate.integer("block", block, 1)
    total, gemm = acc.total_params(args), gemm_params(args)
    act = activation_elements_per_token(args)
    copy = {"fp32": 0.0, "bf16": 2.0, "fp8": 1.0 + 4.0 / block**2}[precision]
    act_gemm = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0 + 4.0 / block}[precision]
    act_other = 4.0 if precision == "fp32" else 2.0
    return {
        "master weights": 4.0 * total,
        "GEMM weight copies": copy * gemm,
        "other weight copies": (0.0 if precision == "fp32" else 2.0) * (total - gemm),
        "gradients": 4.0 * total,
        "optimizer (AdamW m, v)": (4.0 if precision == "fp8" else 8.0) * total,
        "activations: GEMM inputs": act_gemm * act["gemm_inputs"] * tokens,
        "activations: other": act_other * act["other"] * tokens,
    }
