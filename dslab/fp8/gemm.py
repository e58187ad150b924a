"""FP8 GEMMs and their accumulator (DeepSeek-V3 §3.3.2). An FP8 tensor core does not accumulate in FP32: V3
measured "around 14 bits", a maximum relative error of nearly 2% at K = 4096, and fixed it by *promotion*: every
N_C = 128 elements of K the partial sum is added into an FP32 register.

``accumulate_mm`` emulates that accumulator (``truncate`` keeps the top ``acc_bits`` significant bits after every
``group`` products); ``scaled_mm`` runs a scaled FP8 GEMM either emulated or through ``torch._scaled_mm``
(per-tensor or row-wise scales in one call; 1×B / B×B scales one call per B-wide chunk of K, summed in FP32, which
is promotion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dslab import validate
from dslab.fp8.formats import ACC_BITS, ACC_GROUP, BLOCK, N_C
from dslab.fp8.quant import _check_2d


def truncate(x: torch.Tensor, bits: int = ACC_BITS) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each float32 significand and drop the rest (round toward zero):
    a register with ``bits`` bits of precision. x float32 [...] -> float32 [...]; bits in [1, 24] (24: unchanged)."""
    validate.integer("bits", bits, 1, 24)
    if validate.tensor("x", x).dtype != torch.float32:
        raise TypeError(f"x must be float32 (truncate works on its bit pattern), got {x.dtype}")
    mask = -(1 << (24 - bits))  # sign, exponent and the top bits - 1 stored mantissa bits
    return (x.contiguous().view(torch.int32) & mask).view(torch.float32)


def _check_mm(a: torch.Tensor, b: torch.Tensor) -> None:
    _check_2d("a", a)
    _check_2d("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a [M, K] and b [N, K] must share K, got {tuple(a.shape)} and {tuple(b.shape)}")


def _limited_chunk(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor, acc_bits: int, group: int) -> torch.Tensor:
    """Continue accumulator ``acc`` [M, N] over a [M, k] · b [N, k]ᵀ, ``group`` exact products at a time."""
    m, k = a.shape
    pad = -k % group
    if pad:
        a, b = F.pad(a, (0, pad)), F.pad(b, (0, pad))
    steps = a.shape[1] // group
    parts = torch.bmm(a.reshape(m, steps, group).transpose(0, 1),
                      b.reshape(b.shape[0], steps, group).permute(1, 2, 0))  # [steps, M, N]: each group's sum
    for part in parts:
        acc = truncate(acc + part, acc_bits)
    return acc


def accumulate_mm(a: torch.Tensor, b: torch.Tensor, acc_bits: int = ACC_BITS, promote_every: int | None = N_C,
                  group: int = ACC_GROUP) -> torch.Tensor:
    """C = a @ bᵀ with a limited-precision accumulator: a [M, K], b [N, K] (nn.Linear layout) -> float32 [M, N].

    Within each chunk of ``promote_every`` elements of K an accumulator starts at 0, adds the exact sum of ``group``
    products at a time and is truncated to ``acc_bits`` significant bits after each addition; at the end of a chunk
    it is added to an FP32 sum (promotion, V3 §3.3.2). ``promote_every=None``: one accumulator over all of K.
    Calibration: truncating after every 4 products reproduces V3's "nearly 2%" at K = 4096 (inputs that are FP8
    values, so that every product is exact in FP32); fewer truncations (a larger group) give less error.
    """
    _check_mm(a, b)
    validate.integer("acc_bits", acc_bits, 1, 24)
    validate.integer("group", group, 1)
    k = a.shape[1]
    if promote_every is not None and validate.integer("promote_every", promote_every, 1) % group:
        raise ValueError(f"promote_every must be a multiple of group = {group}, got {promote_every}")
    a, b = a.float(), b.float()
    step = 32 * group  # products handled per bmm: bounds the temporaries at [32, M, N]
    total = torch.zeros(a.shape[0], b.shape[0], device=a.device)
    interval = k if promote_every is None else promote_every
    for start in range(0, k, interval):
        acc = torch.zeros_like(total)
        for c in range(start, min(start + interval, k), step):
            end = min(c + step, start + interval, k)
            acc = _limited_chunk(a[:, c:end], b[:, c:end], acc, acc_bits, group)
        total += acc  # promotion: the partial sum joins the FP32 register
    return total


def max_relative_error(c: torch.Tensor, c_ref: torch.Tensor) -> float:
    """max |C − C_ref| / max |C_ref|: the error measure of V3's accumulation claim (element-wise relative error
    explodes on outputs near zero)."""
    if validate.tensor("c", c).shape != validate.tensor("c_ref", c_ref).shape:
        raise ValueError(f"c and c_ref must have the same shape, got {tuple(c.shape)} and {tuple(c_ref.shape)}")
    return float((c.double() - c_ref.double()).abs().max() / c_ref.double().abs().max())


def _scale_kind(scales: torch.Tensor, rows: int, k: int, block: int, name: str, fine: str) -> str:
    """Which granularity a scale grid describes for an operand of ``rows`` rows: tensor, row or ``fine``."""
    n_k, grid = -(-k // block), tuple(scales.shape)
    fine_grid = (rows, n_k) if fine == "tile" else (-(-rows // block), n_k)
    if scales.numel() == 1:
        return "tensor"
    if grid == (rows, 1):
        return "row"
    if grid == fine_grid:
        return fine
    raise ValueError(f"{name} must be one scale (1, 1), per row ({rows}, 1) or per {fine} {fine_grid}, got {grid}")


def _per_chunk(scales: torch.Tensor, kind: str, rows: int, chunk: int, block: int) -> torch.Tensor:
    """The scale of every row for K-chunk ``chunk`` as a [rows, 1] column."""
    if kind == "tensor":
        return scales.reshape(1, 1).expand(rows, 1)
    if kind == "row":
        return scales.reshape(rows, 1)
    if kind == "tile":
        return scales[:, chunk:chunk + 1]
    return scales[:, chunk].repeat_interleave(block)[:rows, None]  # block: rows of one 128-row block share it


def scaled_mm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
              block: int = BLOCK, impl: str = "emulated", acc_bits: int | None = None,
              promote_every: int = N_C, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C = (a · a_scales) @ (b · b_scales)ᵀ from FP8 operands, as DeepSeek-V3's ``fp8_gemm``.

    a [M, K] and b [N, K] hold FP8 values (a float8 dtype, or floats holding such values). a_scales: (1, 1), per row
    (M, 1) or per 1×block tile (M, ceil(K/block)); b_scales: (1, 1), per row (N, 1) or per block×block block
    (ceil(N/block), ceil(K/block)). Returns [M, N] in ``out_dtype``.

    impl "emulated": with ``acc_bits`` None, dequantize and multiply in FP32; with ``acc_bits``, raw FP8 products go
    through ``accumulate_mm``'s limited accumulator, promoted (and scaled) every ``promote_every`` elements, which
    must divide ``block`` when a scale changes along K. impl "torch": ``torch._scaled_mm``, once for tensor/row
    scales; with tile/block scales once per ``block``-wide chunk of K (row-wise scales), chunks summed in FP32.
    """
    validate.choice("impl", impl, ("emulated", "torch"))
    _check_mm(a, b)
    validate.integer("block", block, 1)
    (m, k), n = a.shape, b.shape[0]
    a_kind = _scale_kind(validate.tensor("a_scales", a_scales, floating=True), m, k, block, "a_scales", "tile")
    b_kind = _scale_kind(validate.tensor("b_scales", b_scales, floating=True), n, k, block, "b_scales", "block")
    per_k = a_kind == "tile" or b_kind == "block"
    if impl == "torch":
        return _torch_scaled_mm(a, a_scales, a_kind, b, b_scales, b_kind, block, per_k, out_dtype)
    if acc_bits is None:
        chunks = range(-(-k // block)) if per_k else [None]
        out = torch.zeros(m, n, device=a.device)
        for c in chunks:
            sl = slice(None) if c is None else slice(c * block, (c + 1) * block)
            sa, sb = _per_chunk(a_scales, a_kind, m, c or 0, block), _per_chunk(b_scales, b_kind, n, c or 0, block)
            out += (a[:, sl].float() * sa) @ (b[:, sl].float() * sb).t()
        return out.to(out_dtype)
    if per_k and block % validate.integer("promote_every", promote_every, 1):
        raise ValueError(f"promote_every must divide block = {block} when scales change along K, got {promote_every}")
    out = torch.zeros(m, n, device=a.device)
    for start in range(0, k, promote_every):
        c = start // block
        part = accumulate_mm(a[:, start:start + promote_every].float(), b[:, start:start + promote_every].float(),
                             acc_bits, None)
        out += part * _per_chunk(a_scales, a_kind, m, c, block) * _per_chunk(b_scales, b_kind, n, c, block).t()
    return out.to(out_dtype)


def _torch_scaled_mm(a, a_scales, a_kind, b, b_scales, b_kind, block, per_k, out_dtype) -> torch.Tensor:
    """``torch._scaled_mm`` accepts per-tensor or row-wise scales only: fine-grained scales go chunk by chunk."""
    if a.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) or b.dtype not in (torch.float8_e4m3fn,
                                                                                  torch.float8_e5m2):
        raise TypeError(f"impl='torch' needs float8 operands, got {a.dtype} and {b.dtype}")
    (m, k), n = a.shape, b.shape[0]
    if not per_k:
        if a_kind == b_kind == "tensor":
            sa, sb = a_scales.reshape(()).float(), b_scales.reshape(()).float()
        else:
            sa = _per_chunk(a_scales, a_kind, m, 0, block).float().contiguous()
            sb = _per_chunk(b_scales, b_kind, n, 0, block).float().reshape(1, n).contiguous()
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    out = torch.zeros(m, n, device=a.device)
    for c in range(-(-k // block)):
        sl = slice(c * block, (c + 1) * block)
        sa = _per_chunk(a_scales, a_kind, m, c, block).float().contiguous()
        sb = _per_chunk(b_scales, b_kind, n, c, block).float().reshape(1, n).contiguous()
        out += torch._scaled_mm(a[:, sl].contiguous(), b[:, sl].contiguous().t(), scale_a=sa, scale_b=sb,
                                out_dtype=torch.float32)  # promotion: each chunk joins an FP32 sum
    return out.to(out_dtype)
