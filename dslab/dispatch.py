"""Dispatch engines for the routed experts: given each token's top-k experts and gating weights, compute the routed
sum of DeepSeek-V3 eq. 12, Σ_k g_{t,k} · FFN_{e(t,k)}(u_t), without dropping any token (V3 drops none).

Two implementations compute the same numbers (tested equal, outputs and gradients):

- ``loop_dispatch``: one masked gather per expert, the readable reference (what the official inference code does);
- ``grouped_dispatch``: the (token, expert) pairs sorted by expert once, ragged GEMMs over all experts (w1 and w3 as
  one), one scatter-add back, and a hand-written backward that saves only what autograd would.

Experts are stored stacked: w1, w3 [E, inter, dim] and w2 [E, dim, inter]; expert e is ``w2[e](silu(w1[e] x) *
w3[e] x)``. This module knows nothing of routing; ``dslab.moe`` decides who goes where.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dslab import validate

# On the CPU the grouped path works through blocks of experts whose gathered rows stay under this many bytes, so each
# block's temporaries stay in the last-level cache and are recycled by malloc (glibc mmaps, and page-faults afresh,
# every block over 32 MiB). At the benchmark's size one block of all rows is ~1.25x slower.
CPU_BLOCK_BYTES = 16 * 2**20
DISPATCHES = ("grouped", "loop")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The experts' matmul dtype: autocast's when it is on (it does not reach into custom Functions), else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """One expert ``w2(silu(w1 x) * w3 x)``: x [n, dim], w1/w3 [inter, dim], w2 [dim, inter] -> [n, dim]."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def check_dispatch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                   w3: torch.Tensor) -> None:
    """ValueError/TypeError naming the argument unless x [T, dim], weights and indices [T, k] (indices in [0, E)),
    w1, w3 [E, inter, dim] and w2 [E, dim, inter] fit together."""
    validate.tensor("x", x, 2, floating=True)
    validate.tensor("weights", weights, 2, floating=True)
    validate.tensor("indices", indices, 2, floating=False)
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        validate.tensor(name, w, 3, floating=True)
    n_experts, inter, dim = w1.shape
    if w3.shape != w1.shape or w2.shape != (n_experts, dim, inter):
        raise ValueError(f"w1, w3 must be [E, inter, dim] and w2 [E, dim, inter], got {tuple(w1.shape)}, "
                         f"{tuple(w3.shape)}, {tuple(w2.shape)}")
    if x.shape[-1] != dim or weights.shape != indices.shape or indices.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [T, {dim}] and weights, indices [T, k], got {tuple(x.shape)}, "
                         f"{tuple(weights.shape)}, {tuple(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts}), got [{int(indices.min())}, {int(indices.max())}]")


def loop_dispatch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w1: torch.Tensor,
                  w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """Routed part of eq. 12 one expert at a time (the reference): Σ_k weights[t,k] · FFN_{indices[t,k]}(x_t).

    x [T, dim]; weights, indices [T, k]; w1, w3 [E, inter, dim]; w2 [E, dim, inter]. Returns [T, dim].
    """
    check_dispatch(x, weights, indices, w1, w2, w3)
    dtype = _compute_dtype(x)
    y = torch.zeros(x.shape, dtype=dtype, device=x.device)  # index_add_ needs the experts' output dtype
    weights = weights.to(dtype)
    for e in range(w1.shape[0]):
        token, slot = torch.where(indices == e)
        if token.numel():
            y.index_add_(0, token, _swiglu(x[token], w1[e], w2[e], w3[e]) * weights[token, slot, None])
    return y


def uses_torch_grouped_mm(*tensors: torch.Tensor) -> bool:
    """Whether ``grouped_mm`` hands these operands to ``torch._grouped_mm``: CPU, fp32/bf16, 16-byte-aligned strides
    and pointers (otherwise it loops over the groups)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.bfloat16) or t.data_ptr() % 16:
            return False
        if any(stride * t.element_size() % 16 for stride, n in zip(t.stride(), t.shape) if stride != 1 and n > 1):
            return False
    return True


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """One ragged GEMM over G groups; ``offs`` [G] int32 holds each group's end along the ragged dim M.

    a [M, K] rows sorted by group, b [G, K, N] -> [M, N] (rows of group g times b[g]), or, for weight gradients,
    a [K, M], b [M, N] -> [G, K, N] (group g sums over its own M slice). Uses ``torch._grouped_mm`` where it takes
    the operands (checked on the CPU only; GPU support depends on the architecture), else a loop over the
    contiguous slices; both give the same numbers.
    """
    out_n = b.shape[-1]
    if out_n * b.element_size() % 16 == 0 and uses_torch_grouped_mm(a, b):
        return torch._grouped_mm(a, b, offs=offs)
    ends = offs.tolist()
    starts = [0] + ends[:-1]
    if b.dim() == 3:
        return torch.cat([a[s:e] @ b[g] for g, (s, e) in enumerate(zip(starts, ends))])
    return torch.stack([a[:, s:e] @ b[s:e] for s, e in zip(starts, ends)])


def _expert_blocks(counts: list[int], max_rows: int | None) -> list[tuple[int, int, int, int]]:
    """Split experts into consecutive ranges of at most ``max_rows`` sorted rows (None: one block).

    Returns (first expert, end expert, first row, end row) per block; an expert bigger than max_rows gets its own.
    """
    blocks, e0, r0, rows = [], 0, 0, 0
    for e, c in enumerate(counts):
        if max_rows is not None and rows and rows + c > max_rows:
            blocks.append((e0, e, r0, r0 + rows))
            e0, r0, rows = e, r0 + rows, 0
        rows += c
    blocks.append((e0, len(counts), r0, r0 + rows))
    return blocks


def _exact(role: str, t: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor:
    """The default operand "quantizer" of the grouped GEMMs: none (the tensor itself)."""
    return t


def _same_dtype(quant: Callable | None) -> Callable:
    """``quant`` with each result cast back to its operand's dtype (None: exact). The FP8 emulation returns float32;
    under bf16 autocast the other operands are bf16, and one GEMM or index_add_ cannot mix the two."""
    if quant is None:
        return _exact
    return lambda role, t, ends=None: quant(role, t, ends).to(t.dtype)


def _halves(q: Callable, role: str, first: torch.Tensor, second: torch.Tensor, dim: int) -> torch.Tensor:
    """``q`` applied to each half on its own, joined along ``dim``: the fused w1|w3 operands are quantized as the
    two separate operands they stand for (an FP8 tile or block must not straddle w1 and w3)."""
    return torch.cat([q(role, first), q(role, second)], dim)


class _GroupedSwiGLU(torch.autograd.Function):
    """Sorted-row SwiGLU experts with a hand-written backward, worked block by block (no temporary exceeds a block).

    forward(x [T, dim], weight [R], token [R], counts [E], w1 [E, inter, dim], w2 [E, dim, inter], w3, max_rows,
    quant) -> y [T, dim] with y[token[r]] += weight[r] · FFN_e(x[token[r]]) for the R = T·k rows sorted by expert e.
    w1 and w3 run as one GEMM of width 2·inter (w13 = [w1; w3]): at the course's expert width of 64 the two narrow
    GEMMs, their two gradient GEMMs and two input-gradient GEMMs cost ~20% more than the fused three.
    Saves per block what autograd would (the gathered rows xs [rows, dim], ab = w13 xs [rows, 2·inter]); silu is
    recomputed in backward. ``quant(role, t, ends)`` (None: exact) is applied to every GEMM operand; roles:
    "act"/"act_grad" (rows × contracted columns), "rows"/"rows_grad" (contracted over the rows of each expert,
    ``ends`` their cumulative counts), "weight" (stacked [E, out, in]); xs is saved as quantized for the forward.
    """

    @staticmethod
    def forward(ctx, x, weight, token, counts, w1, w2, w3, max_rows, quant):
        q = _same_dtype(quant)
        blocks = _expert_blocks(counts.tolist(), max_rows)
        offs = counts.cumsum(0).to(torch.int32)
        y, saved, inter = torch.zeros_like(x), [], w1.shape[1]
        for e0, e1, r0, r1 in blocks:
            o, rows = offs[e0:e1] - r0, token[r0:r1]
            xs = q("act", x.index_select(0, rows))  # the one gather of this block's tokens
            w13 = _halves(q, "weight", w1[e0:e1], w3[e0:e1], 1)  # [experts, 2·inter, dim]
            ab = grouped_mm(xs, w13.transpose(1, 2), o)  # [rows, 2·inter]: w1 xs | w3 xs
            a, b = ab.split(inter, 1)
            h = F.silu(a).mul_(b).mul_(weight[r0:r1, None])  # gate weight on the narrow hidden, not on [R, dim]
            y.index_add_(0, rows, grouped_mm(q("act", h), q("weight", w2[e0:e1]).transpose(1, 2), o))
            saved += [xs, ab, w13]
        ctx.blocks, ctx.quant = blocks, quant
        ctx.save_for_backward(weight, token, offs, w2, *saved)
        return y

    @staticmethod
    def backward(ctx, gy):
        weight, token, offs, w2, *saved = ctx.saved_tensors
        q = _same_dtype(ctx.quant)
        gx, gweight = gy.new_zeros(gy.shape), torch.empty_like(weight)
        inter = w2.shape[-1]
        n_experts, dim = w2.shape[0], gy.shape[-1]
        gw2, gw13 = torch.empty_like(w2), w2.new_empty(n_experts, 2 * inter, dim)
        for i, (e0, e1, r0, r1) in enumerate(ctx.blocks):
            o, rows, (xs, ab, w13) = offs[e0:e1] - r0, token[r0:r1], saved[3 * i:3 * i + 3]
            gys, wt = gy.index_select(0, rows), weight[r0:r1, None]
            a, b = ab.split(inter, 1)
            s = F.silu(a)
            act = s * b
            h = act * wt if ctx.quant is None else q("rows", q("act", act * wt), o)
            gw2[e0:e1] = grouped_mm(q("rows_grad", gys, o).t(), h, o)  # dW2_e = Σ_rows gy ⊗ h
            gh = grouped_mm(q("act_grad", gys), q("weight", w2[e0:e1]), o)  # [rows, inter]
            gweight[r0:r1] = torch.einsum("ri,ri->r", gh, act)  # d(gy · weight·w2 act)/d weight
            gact = gh.mul_(wt)
            gab = torch.empty_like(ab)  # [rows, 2·inter]: d/da | d/db
            ga, gb = gab.split(inter, 1)
            torch.mul(gact, s, out=gb)
            ga.copy_(torch.ops.aten.silu_backward(gact.mul_(b), a))
            gab_act = gab if ctx.quant is None else _halves(q, "act_grad", ga, gb, 1)
            gw13[e0:e1] = grouped_mm(q("rows_grad", gab, o).t(), q("rows", xs, o), o)  # rows tiles: per column
            gx.index_add_(0, rows, grouped_mm(gab_act, w13, o))
        gw1, gw3 = gw13.split(inter, 1)
        return gx, gweight, None, None, gw1, gw2, gw3, None, None


def grouped_dispatch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w1: torch.Tensor,
                     w2: torch.Tensor, w3: torch.Tensor, *, max_rows: int | None = None, quant=None) -> torch.Tensor:
    """Routed part of eq. 12 by sorting the T·k (token, expert) pairs by expert: one gather, grouped GEMMs, one add.

    x [T, dim]; weights, indices [T, k]; w1, w3 [E, inter, dim]; w2 [E, dim, inter]. Returns [T, dim], equal to
    ``loop_dispatch``. max_rows: rows per block of experts (None: ``CPU_BLOCK_BYTES`` on the CPU, one block elsewhere).
    quant: None (exact GEMMs) or a callable ``quant(role, t, ends) -> t`` applied to every GEMM operand in forward
    and backward, e.g. ``dslab.fp8.ExpertQuantizer`` (roles in ``_GroupedSwiGLU``).
    """
    check_dispatch(x, weights, indices, w1, w2, w3)
    n_experts, top_k = w1.shape[0], indices.shape[-1]
    order = indices.flatten().argsort(stable=True)  # stable: each expert sees its tokens in order, as the loop does
    counts = torch.bincount(indices.flatten(), minlength=n_experts)
    if max_rows is None and x.device.type == "cpu":
        max_rows = max(1, CPU_BLOCK_BYTES // (x.shape[-1] * x.element_size()))
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return _GroupedSwiGLU.apply(x.to(dtype), weights.flatten()[order].to(dtype), order // top_k, counts,
                                    w1.to(dtype), w2.to(dtype), w3.to(dtype), max_rows, quant)


def dispatch(name: str):
    """The dispatch function called ``name`` ("grouped" or "loop")."""
    if name not in DISPATCHES:
        raise ValueError(f"dispatch must be one of {DISPATCHES}, got {name!r}")
    return grouped_dispatch if name == "grouped" else loop_dispatch


__all__ = ["CPU_BLOCK_BYTES", "DISPATCHES", "check_dispatch", "dispatch", "grouped_dispatch", "grouped_mm",
           "loop_dispatch", "uses_torch_grouped_mm"]
