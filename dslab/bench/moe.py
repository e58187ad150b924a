"""MoE layer vs a dense SwiGLU FFN with the same activated FLOPs: forward + backward time ratio on the CPU.

64 routed experts (top-6) plus 1 shared, expert hidden 128, d = 512, T = 8192 tokens (quick: 1024). The dense FFN's
hidden is (top_k + n_shared) · 128 = 896, so both do the same matmul FLOPs per token (the gate's 64 columns aside):
the ratio is what routing, gathering, scattering and ragged GEMMs cost on top. Target ≤ 1.25×.

The details split each step into GEMM time and everything else (from one profiled step of each), because the two
parts have different causes: 128-wide expert GEMMs run slower per FLOP than the dense layer's 896-wide ones in the
same BLAS, while routing, sorting, gathers, scatters and elementwise work are memory traffic the dense layer has not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from dslab.bench import Result, paired_ratios
from dslab.configs import ModelArgs
from dslab.dispatch import CPU_BLOCK_BYTES, uses_torch_grouped_mm
from dslab.moe import MoE, max_vio
from dslab.nn import MLP
from dslab.runtime import timeit

DIM, EXPERT_HIDDEN, N_ROUTED, TOP_K, N_SHARED = 512, 128, 64, 6, 1
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_grouped_mm")  # self time: nested calls not counted twice


def _args() -> ModelArgs:
    return ModelArgs(name="bench-moe", dim=DIM, moe_inter_dim=EXPERT_HIDDEN, n_routed_experts=N_ROUTED,
                     n_activated_experts=TOP_K, n_shared_experts=N_SHARED, score_func="sigmoid", gate_bias=True)


def _step(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    """One forward + backward; grads are dropped afterwards as ``zero_grad(set_to_none=True)`` would."""
    module(x).backward(grad)
    module.zero_grad(set_to_none=True)
    x.grad = None


def gemm_ms(step: Callable[[], None]) -> float:
    """Milliseconds one call of ``step`` spends in matmul ops (their self CPU time in one profiled call)."""
    step()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e3


def run(quick: bool = False) -> Result:
    tokens, rounds = (1024, 3) if quick else (8192, 9)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        moe, dense = MoE(_args()), MLP(DIM, (TOP_K + N_SHARED) * EXPERT_HIDDEN)
        x = torch.randn(tokens, DIM, requires_grad=True)
        grad = torch.randn(tokens, DIM)
    step_moe, step_dense = (lambda: _step(moe, x, grad)), (lambda: _step(dense, x, grad))
    ratios = paired_ratios(step_moe, step_dense, rounds=rounds)
    ms = {name: 1e3 * timeit(fn, repeats=3) for name, fn in (("moe", step_moe), ("dense", step_dense))}
    g_moe, g_dense = gemm_ms(step_moe), gemm_ms(step_dense)
    details = {
        "tokens": tokens,
        "shape": f"d={DIM}, {N_ROUTED} routed top-{TOP_K} + {N_SHARED} shared, expert hidden {EXPERT_HIDDEN}; "
                 f"dense hidden {(TOP_K + N_SHARED) * EXPERT_HIDDEN}",
        "implementation": f"grouped dispatch: sort by expert, blocks of <= {CPU_BLOCK_BYTES >> 20} MiB of rows, "
                          f"torch._grouped_mm={uses_torch_grouped_mm(x, moe.experts.w1)}, hand-written backward",
        "ratio_rounds": f"median of {rounds}, range {min(ratios):.2f}-{max(ratios):.2f}",
        "moe_ms": round(ms["moe"], 1),
        "dense_ms": round(ms["dense"], 1),
        "separate_ratio": f"{ms['moe'] / ms['dense']:.2f} (each timed on its own, not interleaved)",
        "gemm_ms": f"moe {g_moe:.0f}, dense {g_dense:.0f} (GEMMs alone: {g_moe / g_dense:.2f}x for "
                   f"{_moe_gemm_flops(tokens) / _dense_gemm_flops(tokens):.3f}x the FLOPs)",
        "non_gemm_ms": f"moe {ms['moe'] - g_moe:.0f}, dense {ms['dense'] - g_dense:.0f} "
                       f"(adds {(ms['moe'] - g_moe - ms['dense'] + g_dense) / ms['dense']:.2f}x of the dense step)",
        "batch_max_vio": round(max_vio(moe.last_load), 3),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
    }
    if not quick:  # the readable per-expert loop, for scale (about 3 s)
        moe.dispatch = "loop"
        details["loop_ms"] = round(1e3 * timeit(step_moe, repeats=1), 1)
        details["loop_ratio"] = round(details["loop_ms"] / ms["dense"], 2)
    return Result(name="moe", value=statistics.median(ratios), unit="x", op="<=", target=1.25, details=details)


def _dense_gemm_flops(tokens: int) -> int:
    """Forward + backward matmul FLOPs of the dense FFN: 3 GEMMs forward, 6 backward, 2·T·d·hidden each."""
    return 9 * 2 * tokens * DIM * (TOP_K + N_SHARED) * EXPERT_HIDDEN


def _moe_gemm_flops(tokens: int) -> int:
    """The same for the MoE layer: the experts (equal to the dense FFN's) plus the gate's T·d·E GEMM and its two
    backward GEMMs."""
    return _dense_gemm_flops(tokens) + 3 * 2 * tokens * DIM * N_ROUTED
