"""Harnesses of lab 07: the real all-to-all across processes, node-limited traffic at V3's scale, the schedules side
by side, the overlap model fed by the traffic counts, throughput and MFU on this device, and V3's implied MFU."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dslab import accounting, configs, plots, runtime, systems, validate
from dslab import expert_parallel as ep
from dslab.configs import ModelArgs
from dslab.model import Transformer

DEMO_CONFIG = "tiny-moe"  # 16 routed experts in 4 groups (2 kept), top-4, 1 shared, sigmoid gate with a bias
V3_GPUS, V3_GPUS_PER_NODE = 64, 8  # V3 §3.2: 64-way expert parallelism spanning 8 nodes
H800_BF16_DENSE = runtime.GPU_PEAK_TFLOPS["H800"]["bfloat16"] * 1e12  # NVIDIA H800 SXM datasheet, dense
H800_FP8_DENSE = 1978.9e12  # the same datasheet's dense FP8 peak (V3 ran its GEMMs in FP8)
# Zhao et al., "Insights into DeepSeek-V3" (ISCA 2025, arXiv 2505.09343): training cost per token at a sequence
# length of 4,096 (§2.2.1, Table 2), and the MFU of V3 trained on 2,048 GPUs, against the BF16 peak (§5.1.2, Table 4,
# the multi-plane network's column), keyed like ``v3_implied_mfu``'s rows.
ISCA_FLOPS_PER_TOKEN = 250e9
ISCA_MFU = {"attention, causal 4K": 0.3894, "attention, non-causal 4K": 0.4373}


# --------------------------------------------------------------------------------------------- the all-to-all
def _demo_worker(rank: int, world: int, args: ModelArgs, tokens: list[int], seed: int) -> dict:
    """One rank of the demo: the layer checked against the single-process MoE, balanced and with a skewed gate."""
    skew = torch.zeros(args.n_routed_experts)
    skew[: args.n_routed_experts // world] = 0.5  # rank 0's experts favoured: it gets far more rows
    return {"balanced": ep.check_against_moe(rank, world, args, tokens, seed),
            "skewed": ep.check_against_moe(rank, world, args, tokens, seed, bias=skew)}


@dataclass
class Exchange:
    """What each rank saw in one all-to-all demo run (``ranks[r]`` is ``check_against_moe``'s dict)."""

    ranks: list[dict]

    @property
    def splits(self) -> torch.Tensor:
        """[W, W] rows rank i sent to rank j, as the real exchange reported them."""
        return torch.tensor([r["sent"] for r in self.ranks])

    @property
    def indices(self) -> list[torch.Tensor]:
        """Every rank's routing decisions [T_r, k]."""
        return [r["indices"] for r in self.ranks]

    @property
    def max_difference(self) -> float:
        """Largest |EP − single process| over outputs and all gradients, all ranks."""
        keys = ("output", "input_grad", "expert_grads", "gate_grad", "shared_grads")
        return max(r[k] for r in self.ranks for k in keys)


def all_to_all_demo(world_size: int = 2, tokens_per_rank: int = 32, seed: int = 0,
                    config: str = DEMO_CONFIG) -> dict[str, Exchange]:
    """Launch world_size processes (gloo over loopback) that run ``ExpertParallelMoE`` on tokens_per_rank tokens each,
    once with the gate as initialised ("balanced") and once with a bias that favours rank 0's experts ("skewed")."""
    args = configs.load(config)
    runs = ep.launch(_demo_worker, world_size, (args, [tokens_per_rank] * world_size, seed), timeout_s=300,
                     pg_timeout_s=120)
    return {name: Exchange([r[name] for r in runs]) for name in ("balanced", "skewed")}


def load_figure(exchanges: dict[str, Exchange], experts_per_rank: int):
    """Rows each rank's experts processed, per run: bars grouped by rank, one colour per local expert."""
    fig, axes = plots.figure(len(exchanges), width=4.2, height=3.0)
    for ax, (name, ex) in zip(axes, exchanges.items()):
        rows = torch.tensor([r["expert_rows"] for r in ex.ranks])  # [W, E/W]
        bottom = torch.zeros(rows.shape[0])
        for e in range(rows.shape[1]):
            ax.bar(range(rows.shape[0]), rows[:, e], bottom=bottom, label=f"local expert {e}")
            bottom += rows[:, e]
        ax.set_xticks(range(rows.shape[0]), [f"rank {r}\n(experts {r * experts_per_rank}-"
                                             f"{(r + 1) * experts_per_rank - 1})" for r in range(rows.shape[0])],
                      fontsize=8)
        ax.set_ylabel("rows received")
        ax.set_title(f"{name}: rows per rank, max/mean {float(bottom.max() / bottom.mean()):.2f}", fontsize=9)
    axes[-1].legend(fontsize=7, loc="upper right")
    return fig


# -------------------------------------------------------------------------------------------- node traffic
@dataclass
class Traffic:
    """Average per token at V3's scale for one node limit M: nodes used, copies and bytes leaving the GPU."""

    max_nodes: int
    nodes: float
    max_nodes_used: int
    ib: float
    nvlink: float
    ib_per_expert: float
    nvlink_per_expert: float
    ib_bytes: float
    nvlink_bytes: float


def v3_routing_scores(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid affinities [tokens, 256] and a small bias [256] standing in for a trained V3 router (random, seeded):
    the node limit's effect on traffic depends on how spread the affinities are, not on what they mean."""
    gen = torch.Generator().manual_seed(seed)
    v3 = configs.load("deepseek-v3-671b")
    scores = torch.sigmoid(torch.randn(tokens, v3.n_routed_experts, generator=gen))
    bias = 0.01 * torch.randn(v3.n_routed_experts, generator=gen)
    return scores, bias


def v3_traffic(route_fn: Callable, scores: torch.Tensor, bias: torch.Tensor, limits=(1, 2, 4, 8),
               copies_fn: Callable | None = None) -> list[Traffic]:
    """Route V3-shaped affinities with ``route_fn(scores, bias, top_k, n_nodes, max_nodes) -> indices`` for each node
    limit M (M = 8 of 8 nodes is no limit) and count the dispatch traffic of tokens living on GPU 0. copies_fn:
    ``(indices, token_gpu, n_experts, n_gpus, gpus_per_node) -> (ib, nvlink)`` counts V3's dispatch copies (exercise
    7.3's; by default ``expert_parallel.token_traffic``'s)."""
    v3 = configs.load("deepseek-v3-671b")
    n_nodes = V3_GPUS // V3_GPUS_PER_NODE
    fp8, bf16 = ep.token_bytes(v3.dim, "fp8"), ep.token_bytes(v3.dim, "bf16")
    out = []
    for m in limits:
        idx = route_fn(scores, bias, v3.n_activated_experts, n_nodes, m)
        used = ep.nodes_used(idx, v3.n_routed_experts, n_nodes)
        counts = ep.token_traffic(idx, 0, v3.n_routed_experts, V3_GPUS, V3_GPUS_PER_NODE)
        if copies_fn is not None:
            counts["ib"], counts["nvlink"] = copies_fn(idx, 0, v3.n_routed_experts, V3_GPUS, V3_GPUS_PER_NODE)
        t = {k: torch.as_tensor(v).double().mean().item() for k, v in counts.items()}
        out.append(Traffic(m, used.double().mean().item(), int(used.max()), t["ib"], t["nvlink"], t["ib_per_expert"],
                           t["nvlink_per_expert"], t["ib"] * (fp8 + bf16), t["nvlink"] * (fp8 + bf16)))
    return out


# ------------------------------------------------------------------------------------------ schedules, overlap
def schedule_table(pp: int, microbatches: int, durations: systems.Durations) -> list[dict]:
    """Each schedule simulated and its Table 2 values: bubble (max over devices), closed form, per-device spread,
    fraction of the step, peak activations, parameter copies."""
    rows = []
    for s in systems.SCHEDULES:
        tl = systems.simulate(s, pp, microbatches, durations)
        rows.append({"schedule": systems.LABELS[s], "bubble": tl.max_bubble,
                     "table 2": systems.closed_form_bubble(s, pp, durations), "min device bubble": min(tl.bubble),
                     "fraction": tl.bubble_fraction, "step": tl.makespan, "activations": max(tl.peak_activations),
                     "table 2 activations": systems.closed_form_activations(s, pp),
                     "parameters": len(tl.stages[0]), "timeline": tl})
    return rows


def v3_layer_flops_per_token(seq_len: int = 4096) -> float:
    """Forward FLOPs per token of one V3 MoE layer: MLA, the gate, 1 shared + 8 routed experts, and attention over the
    causal average of (seq_len + 1)/2 keys."""
    v3 = configs.load("deepseek-v3-671b")
    weights = accounting.attention_params(v3) + accounting.moe_activated_params(v3)
    return 2 * weights + accounting.attention_flops_per_token(v3, 1) / v3.n_layers * (seq_len + 1) / 2


def v3_average_flop_rate(seq_len: int = 4096) -> float:
    """V3's average model FLOP/s per GPU over pre-training: training FLOPs per token (causal attention at seq_len)
    times the tokens per GPU-second of V3's Table 1 (14.8T tokens in 2,664K H800 GPU-hours). Everything the run spent
    its time on is in it: FP8 GEMMs, BF16 attention, bubbles, exposed communication, the optimizer."""
    v3 = configs.load("deepseek-v3-671b")
    tokens_per_gpu_s = accounting.V3_PRETRAIN_TOKENS / (accounting.V3_PRETRAIN_GPU_HOURS * 3600)
    return accounting.training_flops_per_token(v3, seq_len) * tokens_per_gpu_s


def overlap_rows(traffic: list[Traffic], achieved_flops: float, tokens: int = 4096) -> list[dict]:
    """The overlap model for one V3 MoE layer's forward chunk of ``tokens`` tokens on one GPU, per node limit."""
    v3 = configs.load("deepseek-v3-671b")
    fp8, bf16 = ep.token_bytes(v3.dim, "fp8"), ep.token_bytes(v3.dim, "bf16")
    flops = v3_layer_flops_per_token()
    return [{"M": t.max_nodes, **systems.overlap_model(tokens, t.ib, t.nvlink, flops, achieved_flops, fp8, bf16)}
            for t in traffic]


# ------------------------------------------------------------------------------------------------------ MFU
def measure_training(args: ModelArgs, batch_size: int, seq_len: int, steps: int, seed: int = 0) -> dict:
    """Train ``args`` (``dslab.model.Transformer``, AdamW) on random tokens for ``steps`` timed steps after one
    warm-up step on the CPU; returns tokens/s, seconds per step and the tokens of one step."""
    torch.manual_seed(seed)
    model = Transformer(args)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, args.vocab_size, (batch_size, seq_len + 1), generator=gen)

    def step():
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return {"tokens_per_s": batch_size * seq_len / seconds, "seconds_per_step": seconds,
            "tokens_per_step": batch_size * seq_len}


def measure_gemm_chain(dim: int, rows: int, steps: int) -> dict:
    """A model that is nothing but one big matmul per step, forward and backward, to show what MFU a GEMM reaches:
    tokens/s (the mean over ``steps`` steps after a warm-up) and its training FLOPs per token (6·dim²)."""
    for name, value in (("dim", dim), ("rows", rows), ("steps", steps)):
        validate.integer(name, value, 1)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(dim, dim, generator=gen, device="cpu", requires_grad=True)
    x = torch.randn(rows, dim, generator=gen, device="cpu", requires_grad=True)

    def step():
        (x @ w).sum().backward()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return {"tokens_per_s": rows / seconds, "flops_per_token": 6 * dim * dim}


def _checked(flops_per_token: float, measure: Callable[[], dict]) -> dict:
    """measure() -> {"tokens_per_s", ...}, with "mfu" from ``accounting.measured_mfu`` (the last measurement kept);
    a value that stays above 100% is a timing error: mfu None and the error's message, never the number."""
    runs: list[dict] = []
    try:
        value, _ = accounting.measured_mfu(flops_per_token, lambda: runs.append(measure()) or runs[-1]["tokens_per_s"])
        return {**runs[-1], "mfu": value}
    except accounting.MeasurementError as e:
        return {**runs[-1], "mfu": None, "error": str(e)}


def mfu_rows(args: ModelArgs, batch_size: int, seq_len: int, steps: int, chain_dim: int, chain_rows: int,
             seed: int = 0) -> dict:
    """MFU on this CPU, at torch's current thread count and against one peak (``runtime.peak_flops``, float32), of
    training ``args`` (``measure_training``, whose step runs the main model only: lab 00's FLOPs without MTP) and of
    the GEMM chain (``measure_gemm_chain``). An MFU above 100% is a timing error: the peak and the throughput are
    measured again (``accounting.measured_mfu``), and a row that stays above holds mfu None and the error. Returns
    {"tiny": measure_training's dict + mfu, "chain": measure_gemm_chain's + mfu, "peak": FLOP/s, "source": str}."""
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("steps", steps), ("chain_dim", chain_dim),
                        ("chain_rows", chain_rows)):
        validate.integer(name, value, 1)
    # the chain first: a peak it measures again then serves both rows
    chain = _checked(6 * chain_dim**2, lambda: measure_gemm_chain(chain_dim, chain_rows, steps))
    flops = accounting.training_flops_per_token(args, seq_len)
    tiny = _checked(flops, lambda: measure_training(args, batch_size, seq_len, steps, seed))
    value, source = peak("cpu")
    return {"tiny": tiny, "chain": chain, "peak": value, "source": source}


def peak(device) -> tuple[float, str]:
    """``runtime.peak_flops`` and where it came from, for this device in float32."""
    return runtime.peak_flops(device, torch.float32), runtime.peak_flops_source(device, torch.float32)


def v3_implied_mfu() -> list[tuple[str, float, float]]:
    """V3's pre-training MFU implied by its own report (Table 1: 2,664K H800 GPU-hours for 14.8T tokens), three ways of
    counting FLOPs per token: (label, MFU vs BF16 dense peak, MFU vs FP8 dense peak)."""
    v3 = configs.load("deepseek-v3-671b")
    tokens_per_gpu_s = accounting.V3_PRETRAIN_TOKENS / (accounting.V3_PRETRAIN_GPU_HOURS * 3600)
    six_n = 6 * accounting.activated_params(v3, include_embedding=False)
    rows = [("6N, no attention", six_n * tokens_per_gpu_s / H800_BF16_DENSE, six_n * tokens_per_gpu_s / H800_FP8_DENSE)]
    causal = accounting.mfu(accounting.training_flops_per_token(v3, 4096), tokens_per_gpu_s, H800_BF16_DENSE)
    rows.append(("attention, causal 4K", causal, causal * H800_BF16_DENSE / H800_FP8_DENSE))
    full = accounting.mfu(accounting.training_flops_per_token(v3, 4096, causal=False), tokens_per_gpu_s,
                          H800_BF16_DENSE)
    rows.append(("attention, non-causal 4K", full, full * H800_BF16_DENSE / H800_FP8_DENSE))
    return rows
