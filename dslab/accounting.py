"""Parameter, FLOP, KV-cache and cost accounting: DeepSeek-V3's headline numbers from its config alone.

A Mixture-of-Experts model stores every expert but runs only a few per token, so it has two sizes: *total*
parameters (memory) and *activated* parameters (compute per token). DeepSeek-V3 stores 671B and activates ~37B
(V3 §1, §4.2). Multi-head Latent Attention (MLA) caches one small latent per token and layer instead of per-head keys
and values (V2 §2.1, Table 1), which is where the "93.3% smaller KV cache" of V2 vs DeepSeek 67B comes from once the
cache is also quantized to 6 bits (V2 §3.2.3). The training bill is GPU-hours times a rental price (V3 Table 1).

Every count follows DeepSeek-V3's ``inference/model.py`` module by module: Linear layers have no biases, RMSNorms
have one weight per channel, the gate has a bias only when ``gate_bias``. Functions take a ``ModelArgs``
(``dslab.configs.load(name)``) and return exact integers; they raise TypeError for a wrong type and ValueError for a
value out of range, naming the parameter.

    >>> from dslab import accounting, configs
    >>> v3 = configs.load("deepseek-v3-671b")
    >>> accounting.total_params(v3), accounting.activated_params(v3)
    (671026419200, 37552297472)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import torch

from dslab import runtime
from dslab.configs import ModelArgs

# DeepSeek-V3 training cost, V3 paper Table 1 and §1 (H800 GPU-hours; the $2/GPU-hour rental price is the paper's).
V3_PRETRAIN_GPU_HOURS = 2_664_000
V3_CONTEXT_EXTENSION_GPU_HOURS = 119_000
V3_POSTTRAIN_GPU_HOURS = 5_000
V3_GPU_HOURS = V3_PRETRAIN_GPU_HOURS + V3_CONTEXT_EXTENSION_GPU_HOURS + V3_POSTTRAIN_GPU_HOURS  # 2,788K
V3_PRICE_PER_GPU_HOUR = 2.0  # USD
V3_PRETRAIN_TOKENS = 14.8e12  # V3 §4.1
V3_COST_SOURCE = "DeepSeek-V3 technical report, arXiv 2412.19437, Table 1 and §1; tokens §4.1"
# Llama 3.1 405B pre-training, for the "~11x less compute" comparison: H100-80GB GPU-hours from Meta's model card
# (meta-llama/llama-models models/llama3_1/MODEL_CARD.md), read here through a quotation [secondary].
LLAMA31_405B_GPU_HOURS = 30_840_000


# ---------------------------------------------------------------------------------------------------- validation
def _model(args: object, name: str = "args") -> ModelArgs:
    if not isinstance(args, ModelArgs):
        raise TypeError(f"{name} must be a dslab.configs.ModelArgs (e.g. configs.load(...)), got {type(args).__name__}")
    return args


def _int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):  # Integral also admits NumPy integers
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _real(name: str, value: object, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not (value > lo if lo_open else value >= lo) or not value <= hi:
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ValueError(f"{name} must be {bound}" + (f" and <= {hi:g}" if hi < math.inf else "") + f", got {value:g}")
    return value


def _moe(args: object) -> ModelArgs:
    args = _model(args)
    if not args.is_moe:
        raise ValueError(f"args describes a dense model (n_routed_experts == 0): {args.name!r} has no experts")
    return args


# ------------------------------------------------------------------------------------------- parameters per module
def embedding_params(args: ModelArgs) -> int:
    """Input embedding table, vocab_size × dim (``ParallelEmbedding``). V3: 926,679,040."""
    args = _model(args)
    return args.vocab_size * args.dim


def head_params(args: ModelArgs) -> int:
    """Output head, dim × vocab_size (``ColumnParallelLinear``); 0 when ``tie_embeddings`` (it reuses the table)."""
    args = _model(args)
    return 0 if args.tie_embeddings else args.vocab_size * args.dim


def mla_params(args: ModelArgs) -> int:
    """Multi-head Latent Attention of one layer (V3 eqs. 1-11, module ``MLA``), its two RMSNorms included.

    Query: ``wq`` [dim → H·(d_h+d^R_h)], or with compression (q_lora_rank > 0) ``wq_a`` [dim → d'_c], ``q_norm``
    [d'_c], ``wq_b`` [d'_c → H·(d_h+d^R_h)]. Key/value: ``wkv_a`` [dim → d_c+d^R_h], ``kv_norm`` [d_c],
    ``wkv_b`` [d_c → H·(d_h+d_v)]; output ``wo`` [H·d_v → dim]. V3: 187,107,328.
    """
    args = _model(args)
    if args.attn != "mla":
        raise ValueError(f"args.attn must be 'mla' for mla_params, got {args.attn!r}")
    heads, qk_head_dim = args.n_heads, args.qk_nope_head_dim + args.qk_rope_head_dim
    if args.q_lora_rank:
        query = args.dim * args.q_lora_rank + args.q_lora_rank + args.q_lora_rank * heads * qk_head_dim
    else:
        query = args.dim * heads * qk_head_dim
    key_value = (args.dim * (args.kv_lora_rank + args.qk_rope_head_dim) + args.kv_lora_rank
                 + args.kv_lora_rank * heads * (args.qk_nope_head_dim + args.v_head_dim))
    return query + key_value + heads * args.v_head_dim * args.dim


def attention_params(args: ModelArgs) -> int:
    """Attention of one layer: ``mla_params`` for MLA; for MHA/GQA/MQA ``wq``, ``wk``, ``wv``, ``wo`` (no biases).

    Classic: wq [dim → H·d_h], wk and wv [dim → H_kv·d_h], wo [H·d_h → dim]. Llama 3.1 405B: 570,425,344.
    """
    args = _model(args)
    if args.attn == "mla":
        return mla_params(args)
    q_width, kv_width = args.n_heads * args.attn_head_dim, args.kv_heads * args.attn_head_dim
    return 2 * args.dim * q_width + 2 * args.dim * kv_width


def dense_ffn_params(args: ModelArgs) -> int:
    """Dense SwiGLU FFN ``MLP(dim, inter_dim)``: w1, w3 [dim → inter_dim], w2 [inter_dim → dim]. V3: 396,361,728."""
    args = _model(args)
    return 3 * args.dim * args.inter_dim


def expert_params(args: ModelArgs) -> int:
    """One routed or shared expert, a SwiGLU FFN of width moe_inter_dim: 3·dim·moe_inter_dim. V3: 44,040,192."""
    args = _moe(args)
    return 3 * args.dim * args.moe_inter_dim


def gate_params(args: ModelArgs) -> int:
    """Router: centroids [n_routed × dim] (V3 eq. 15's e_i) plus the aux-loss-free bias b_i (eq. 16). V3: 1,835,264."""
    args = _moe(args)
    return args.n_routed_experts * args.dim + (args.n_routed_experts if args.gate_bias else 0)


def norm_params(args: ModelArgs) -> int:
    """RMSNorms of one layer outside attention: ``attn_norm`` and ``ffn_norm``, dim each. V3: 14,336."""
    args = _model(args)
    return 2 * args.dim


def _experts_counted(args: ModelArgs, activated: bool) -> tuple[int, int]:
    """(shared, routed) experts counted in one MoE layer: all of them, or the ones one token runs (V3 eq. 12)."""
    return args.n_shared_experts, args.n_activated_experts if activated else args.n_routed_experts


def _moe_ffn(args: ModelArgs, activated: bool) -> int:
    args = _moe(args)
    return sum(_experts_counted(args, activated)) * expert_params(args) + gate_params(args)


def moe_layer_params(args: ModelArgs) -> int:
    """MoE FFN of one layer, stored: (n_shared + n_routed) experts + gate. V3: 257·44,040,192 + 1,835,264."""
    return _moe_ffn(args, activated=False)


def moe_activated_params(args: ModelArgs) -> int:
    """MoE FFN of one layer, run per token: (n_shared + top-k) experts + gate. V3: 9·44,040,192 + 1,835,264."""
    return _moe_ffn(args, activated=True)


def layer_params(args: ModelArgs, layer_id: int, activated: bool = False) -> int:
    """One transformer ``Block``: attention + two norms + FFN (dense when layer_id < n_dense_layers or no experts).

    layer_id may equal n_layers: that is the MTP module's block (layer 61 in V3's released weights).
    V3: layer 0 → 583,483,392; layer 3 → 11,507,286,272 (activated 585,318,656).
    """
    args = _model(args)
    _int("layer_id", layer_id, 0, args.n_layers)
    if not isinstance(activated, bool):
        raise TypeError(f"activated must be a bool, got {type(activated).__name__}")
    dense = layer_id < args.n_dense_layers or not args.is_moe
    ffn = dense_ffn_params(args) if dense else _moe_ffn(args, activated)
    return attention_params(args) + norm_params(args) + ffn


def mtp_params(args: ModelArgs, activated: bool = False) -> int:
    """All n_mtp Multi-Token Prediction modules (V3 §2.2 eqs. 21-23), unique parameters; 0 when n_mtp == 0.

    Each module: ``enorm`` and ``hnorm`` [dim], ``eh_proj`` M_k [2·dim → dim], one block with the next layer id (an
    MoE block in V3), and the ``shared_head`` norm [dim]. The embedding and output head are shared with the main
    model and not counted. V3: 11,610,068,224 (README_WEIGHTS: "11.5B"); activated 688,100,608 per token.
    """
    args = _model(args)
    per_module = 2 * args.dim + 2 * args.dim * args.dim + layer_params(args, args.n_layers, activated) + args.dim
    return args.n_mtp * per_module


# ------------------------------------------------------------------------------------------------ whole model
def param_breakdown(args: ModelArgs, activated: bool = False, include_mtp: bool = False) -> dict[str, int]:
    """Where the parameters live: component → parameter count, summed over all layers (the "671B" pie chart).

    Keys: embedding, attention (norms inside MLA included), dense_ffn, shared_experts, routed_experts, gate, norms
    (per-layer norms and the final norm), head, and mtp when include_mtp. With activated=True the routed experts
    are the top-k a token runs (V3 eq. 12). V3: routed experts 653,908,770,816 of 671,026,419,200 (97.4%).
    """
    args = _model(args)
    for name, flag in (("activated", activated), ("include_mtp", include_mtp)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    n_moe = args.n_layers - args.n_dense_layers if args.is_moe else 0
    shared, routed = _experts_counted(args, activated) if n_moe else (0, 0)
    expert = expert_params(args) if n_moe else 0
    parts = {
        "embedding": embedding_params(args),
        "attention": args.n_layers * attention_params(args),
        "dense_ffn": (args.n_layers - n_moe) * dense_ffn_params(args),
        "shared_experts": n_moe * shared * expert,
        "routed_experts": n_moe * routed * expert,
        "gate": n_moe * gate_params(args) if n_moe else 0,
        "norms": args.n_layers * norm_params(args) + args.dim,  # + the final ``norm`` before the head
        "head": head_params(args),
    }
    if include_mtp:
        parts["mtp"] = mtp_params(args, activated)
    return parts


def total_params(args: ModelArgs, include_mtp: bool = False) -> int:
    """Stored parameters, input embedding and output head included (each counted once; a tied head adds nothing).

    The MTP module is not part of V3's "671B" (README_WEIGHTS: 671B main + 14B MTP = the 685B checkpoint), hence
    include_mtp=False by default. V3: 671,026,419,200; with MTP 682,636,487,424.
    """
    return sum(param_breakdown(args, include_mtp=include_mtp).values())


def activated_params(args: ModelArgs, include_embedding: bool = True) -> int:
    """Parameters one token runs through in the main model (no MTP): shared + top-k experts instead of all.

    Convention: the output head always counts (it is a matmul); include_embedding=True also counts the input
    embedding table, as README_WEIGHTS does ("including 0.9B for Embedding and 0.9B for the output Head"), although
    a lookup reads one row and does no arithmetic. V3: 37,552,297,472 with it, 36,625,618,432 without. The paper
    says "37B"; README_WEIGHTS says 36.7B, which neither convention reproduces exactly (37.55B counts both tables,
    36.63B drops the embedding). With tied embeddings the shared table stays counted once, as the head.
    """
    if not isinstance(include_embedding, bool):
        raise TypeError(f"include_embedding must be a bool, got {type(include_embedding).__name__}")
    parts = param_breakdown(args, activated=True)
    if not include_embedding and not args.tie_embeddings:
        parts["embedding"] = 0
    return sum(parts.values())


# ------------------------------------------------------------------------------------------------------- FLOPs
# How MLA attends at a decode step (the modes of ``dslab.mla.MLA``): "naive" caches expanded per-head keys and values
# (the official naive mode), "recompute" caches the latent and up-projects all of it at every step (no absorption),
# "absorb" caches the latent and attends in the latent space (the official default). Classic attention has one way.
ATTN_IMPLS = ("naive", "absorb", "recompute")


def attention_flops_per_token(args: ModelArgs, context_len: int, attn_impl: str = "naive") -> int:
    """FLOPs of the score (q·k) and value (p·v) matmuls for one token attending to context_len keys, all layers.

    2 FLOPs per multiply-add. Classic attention: 2·H·d_h·ctx for the scores plus as much for the values (GQA shares
    K/V, but every query head still does the work). MLA by ``attn_impl``: "naive", the per-head widths of V3 eq. 10
    (keys of d_h + d^R_h, values of d_v): 2·H·(d_h + d^R_h + d_v)·ctx per layer; "absorb", scores against the d_c
    latent plus the d^R_h RoPE key and a softmax-weighted sum of latents: 2·H·(2·d_c + d^R_h)·ctx (more arithmetic,
    far less memory read); "recompute", "naive" plus re-expanding every cached latent, 2·H·(d_h + d_v)·d_c·ctx.
    Convention: context_len is the number of keys this token sees (a decode step with a cache of context_len
    tokens). For the average token of a causal training sequence of length T pass about T/2; passing T gives the
    non-causal bound.
    """
    args = _model(args)
    _int("context_len", context_len, 0)
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    if args.attn != "mla":
        per_head = 2 * args.attn_head_dim
    elif attn_impl == "absorb":
        per_head = 2 * args.kv_lora_rank + args.qk_rope_head_dim
    else:
        per_head = args.qk_nope_head_dim + args.qk_rope_head_dim + args.v_head_dim
        if attn_impl == "recompute":
            per_head += (args.qk_nope_head_dim + args.v_head_dim) * args.kv_lora_rank
    return 2 * args.n_layers * args.n_heads * per_head * context_len


def forward_flops_per_token(args: ModelArgs, context_len: int, attn_impl: str = "naive") -> int:
    """Forward FLOPs for one token: 2 · activated weights (head matmul in, embedding lookup out) + attention.

    The weight term is the usual 2N of Kaplan et al. (2020) with N = activated_params(args, include_embedding=False);
    the attention term is ``attention_flops_per_token`` (see its context_len and attn_impl conventions). A training
    step costs about 3× this (backward ≈ 2× forward). V3 at context_len 4096: 93,719,440,384 ("naive").
    """
    return 2 * activated_params(args, include_embedding=False) + attention_flops_per_token(args, context_len, attn_impl)


def flops_ratio(a: ModelArgs, b: ModelArgs, context_len: int, attn_impl: str = "naive") -> float:
    """How many times more forward FLOPs per token ``a`` needs than ``b`` at the same context length.

    Llama 3.1 405B vs V3: 11.02× at context_len=0, the weights alone (2N each, N without the input embedding) — the
    "~11× less compute per token". Attention narrows the gap as the context grows: at 4096 cached tokens 8.98× with
    MLA's attention counted at its expanded per-head widths (attn_impl="naive", as V3 eq. 10 writes it and as
    training computes it), 5.89× for absorbed decoding (attn_impl="absorb", 2·d_c + d^R_h per head and cached
    token). The ratio of the two pre-training runs' GPU-hours, LLAMA31_405B_GPU_HOURS / V3_GPU_HOURS = 11.06, is a
    different quantity (whole runs on different GPUs and precisions) that happens to come out alike.
    """
    _model(a, "a")
    _model(b, "b")
    return forward_flops_per_token(a, context_len, attn_impl) / forward_flops_per_token(b, context_len, attn_impl)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def training_flops_per_token(args: ModelArgs, seq_len: int, causal: bool = True, include_mtp: bool = False) -> float:
    """FLOPs one training token costs: 3 × ``forward_flops_per_token`` (the backward pass ≈ 2× the forward).

    Attention is included at the average number of keys a token of a seq_len-token sequence sees: (seq_len + 1)/2
    with a causal mask (causal=True), seq_len without (the "non-causal" convention some reports use). Counted are the
    model's own FLOPs, no activation recomputation; the MTP modules with include_mtp (``mtp_flops_per_token``): what
    a training step runs, the figure MFU divides. V3 at seq_len 4096, main model: 2.50e11 causal, 2.81e11 non-causal;
    6·N alone (no attention) would be 2.20e11.
    """
    seq_len = _int("seq_len", seq_len, 1)
    _bool("causal", causal)
    keys = (seq_len + 1) / 2 if causal else seq_len
    weights = 2 * activated_params(args, include_embedding=False)
    main = 3 * (weights + attention_flops_per_token(args, 1) * keys)  # attention FLOPs are linear in the keys
    return main + (mtp_flops_per_token(args, seq_len, causal) if _bool("include_mtp", include_mtp) else 0.0)


def mtp_flops_per_token(args: ModelArgs, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs (3 × forward) the n_mtp Multi-Token Prediction modules add per training token (V3 §2.2).

    Depth k runs on the seq_len − k positions that have a target k + 1 ahead: ``mtp_params`` (activated: its
    projection M_k, its block with the experts a token runs, its norms) plus the output head it shares with the main
    model, which runs once more per depth (the embedding it shares is a lookup); and one layer's attention over
    (seq_len − k + 1)/2 keys (causal) or seq_len − k. Counted per main-model token, i.e. times (seq_len − k)/seq_len.
    0 when n_mtp == 0. The capstone's cpu preset at seq_len 128: +30% over the main model (+31% of its weight FLOPs);
    V3 at 4096: +4%.
    """
    args = _model(args)
    seq_len, causal = _int("seq_len", seq_len, 1), _bool("causal", causal)
    per_module = mtp_params(args, activated=True) // max(args.n_mtp, 1) + args.vocab_size * args.dim
    per_key = attention_flops_per_token(args, 1) / args.n_layers  # one layer's
    total = 0.0
    for k in range(1, args.n_mtp + 1):
        positions = max(seq_len - k, 0)
        keys = (positions + 1) / 2 if causal else positions
        total += positions / seq_len * (2 * per_module + per_key * keys)
    return 3 * total


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilization: the FLOP rate the model needs, flops_per_token × tokens_per_second, over the peak.

    flops_per_token: what the step runs, ``training_flops_per_token(args, seq_len, include_mtp=True)`` for a
    model with MTP modules (the main model alone beside it: include_mtp=False), ``forward_flops_per_token`` for
    inference; tokens_per_second: measured throughput of the whole job; peak_flops: FLOP/s of all the devices it ran
    on (``dslab.runtime.peak_flops``: the datasheet's dense peak on a GPU, the best measured GEMM on a CPU). Returns
    a fraction (0.4 = 40%); the arithmetic only: ``measured_mfu`` treats a measured value above 1 as the timing error
    it is. Unlike "hardware FLOPs utilization", recomputed activations and padding do not count.
    """
    flops_per_token = _real("flops_per_token", flops_per_token, 0, lo_open=True)
    tokens_per_second = _real("tokens_per_second", tokens_per_second, 0)
    return flops_per_token * tokens_per_second / _real("peak_flops", peak_flops, 0, lo_open=True)


class MeasurementError(RuntimeError):
    """A measured MFU stayed above 100% after the peak was measured again: the peak or the throughput was timed
    wrongly (a busy machine, a clock that was not synchronized), or the FLOPs were over-counted. Not a result."""


def measured_mfu(flops_per_token: float, tokens_per_second: float | Callable[[], float],
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 tries: int = 3) -> tuple[float, float]:
    """(MFU, the peak FLOP/s it divides by) of a measured throughput against ``runtime.peak_flops(device, dtype)``.

    An MFU above 1 is a measurement error, never a result: the peak was measured while the machine was busier than
    when the work ran. The peak is then measured again (``refresh``: the best of every measurement is kept) and, when
    tokens_per_second is a function, the throughput too, up to ``tries`` times in all; MeasurementError if it stays
    above 1. tokens_per_second: a number, or a function that measures it (called once per try).
    """
    _real("flops_per_token", flops_per_token, 0, lo_open=True)
    _int("tries", tries, 1)
    measure = tokens_per_second if callable(tokens_per_second) else (lambda: tokens_per_second)
    for attempt in range(tries):
        peak = runtime.peak_flops(device, dtype, refresh=attempt > 0)
        value = mfu(flops_per_token, measure(), peak)
        if value <= 1.0:
            return value, peak
    raise MeasurementError(f"MFU {value:.0%} > 100% after {tries} measurements of the peak ({peak / 1e9:,.1f} "
                           f"GFLOP/s, {runtime.peak_flops_source(device, dtype)}): a timing error, not a result")


# ---------------------------------------------------------------------------------------------------- KV cache
def kv_elements_per_token(args: ModelArgs) -> int:
    """Cached numbers per token, all layers (V2 Table 1).

    MHA/GQA/MQA: keys and values of every KV head, 2·H_kv·d_h·l. MLA: the latent c^KV and the shared RoPE key k^R,
    (d_c + d^R_h)·l (the ``absorb`` cache of ``inference/model.py``). V2: 576·60 = 34,560; DeepSeek 67B: 194,560.
    """
    args = _model(args)
    if args.attn == "mla":
        return (args.kv_lora_rank + args.qk_rope_head_dim) * args.n_layers
    return 2 * args.kv_heads * args.attn_head_dim * args.n_layers


def kv_bytes_per_token(args: ModelArgs, bits: float = 16) -> float:
    """KV-cache bytes per token at ``bits`` per element (16 = BF16, 8 = FP8, 6 = V2's deployed average, §3.2.3).

    bits must be in 1..64 (a real number: V2 quantizes to "6 bits on average"). V3 in BF16: 70,272.
    """
    bits = _real("bits", bits, 1, 64)
    return kv_elements_per_token(args) * bits / 8


def kv_cache_bytes(args: ModelArgs, n_tokens: int, bits: float = 16) -> float:
    """KV-cache bytes for n_tokens cached tokens (sum over sequences in a batch): n_tokens · kv_bytes_per_token."""
    _int("n_tokens", n_tokens, 0)
    return n_tokens * kv_bytes_per_token(args, bits)


def kv_reduction(a: ModelArgs, b: ModelArgs, bits_a: float = 16, bits_b: float = 16) -> float:
    """Fraction by which a's KV cache per token is smaller than b's: 1 - bytes(a)/bytes(b) (negative if larger).

    V2 vs DeepSeek 67B: 0.822 at equal precision; 0.9334 with V2 at 6 bits and 67B in BF16 — the "93.3%" of the
    V2 abstract needs both MLA and the 6-bit quantization (§3.2.3).
    """
    _model(a, "a")
    _model(b, "b")
    return 1 - kv_bytes_per_token(a, bits_a) / kv_bytes_per_token(b, bits_b)


# -------------------------------------------------------------------------------------------------------- cost
def training_cost(gpu_hours: float, price_per_gpu_hour: float) -> float:
    """Rental cost in the price's currency: gpu_hours · price. V3: 2,788K H800-hours · $2 = $5,576,000 (Table 1).

    Like the paper, this excludes research, ablations, data and staff; it prices the final run only.
    """
    return _real("gpu_hours", gpu_hours, 0) * _real("price_per_gpu_hour", price_per_gpu_hour, 0)


def gpu_hours_per_trillion_tokens(gpu_hours: float, tokens: float) -> float:
    """GPU-hours per 10^12 training tokens. V3 pre-training: 2,664K / 14.8T = 180K (§1: 3.7 days on 2048 H800)."""
    return _real("gpu_hours", gpu_hours, 0) / (_real("tokens", tokens, 0, lo_open=True) / 1e12)


def wall_clock_days(gpu_hours: float, n_gpus: int) -> float:
    """Days of wall-clock time for gpu_hours spread over n_gpus GPUs. V3: 180K GPU-hours on 2048 GPUs = 3.66 days."""
    return _real("gpu_hours", gpu_hours, 0) / _int("n_gpus", n_gpus, 1) / 24


# -------------------------------------------------------------------------------------------------- model card
def model_card(args: ModelArgs, context_len: int = 4096) -> dict:
    """The numbers later labs print for a config: sizes, KV cache (BF16) and forward FLOPs per token.

    Keys: name, attn, total_params, activated_params (embedding included), mtp_params, kv_bytes_per_token_bf16,
    context_len, forward_flops_per_token (at context_len).
    """
    args = _model(args)
    return {
        "name": args.name,
        "attn": args.attn,
        "total_params": total_params(args),
        "activated_params": activated_params(args),
        "mtp_params": mtp_params(args),
        "kv_bytes_per_token_bf16": kv_bytes_per_token(args, 16),
        "context_len": context_len,
        "forward_flops_per_token": forward_flops_per_token(args, context_len),
    }
