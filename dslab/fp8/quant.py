"""Scaling and casting to FP8 (DeepSeek-V3 §3.3.2): ``scale = max(amax, 1e-4) / format max`` per group of elements
(multiply to dequantize, as the official ``act_quant``): per tensor, per row, per 1×B tile (activations, V3: B = 128),
per B×1 tile (the transposed tile the weight-gradient GEMM needs) or per B×B block (weights); optionally rounded up to
a power of two (the official ``scale_fmt="ue8m0"``).

Sizes that are not a multiple of B are padded with zeros *for the scale computation only* (zeros never raise an
amax): the edge tile's scale comes from its real elements, and the quantized values keep the input's shape.
``quantize`` refuses NaN and inf (ValueError): one inf would make its group's scale inf and zero every other element
of the group. The underscored helpers at the end are the training path's hot loop (no argument checks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dslab import validate
from dslab.fp8.formats import AMAX_FLOOR, BLOCK, FP8_FORMATS, Format, get_format

GRANULARITIES = ("tensor", "row", "tile", "tile_t", "block")


class Quantized(NamedTuple):
    """FP8 values (a torch float8 tensor, the input's shape) and float32 scales, one per group (see ``group_shape``);
    the input is approximately ``values * scales`` broadcast over each group."""

    values: torch.Tensor
    scales: torch.Tensor


def group_shape(shape: tuple[int, int], granularity: str, block: int = BLOCK) -> tuple[int, int]:
    """(rows, cols) of one scaling group for a [M, K] tensor: tensor (M, K), row (1, K), tile (1, block),
    tile_t (block, 1), block (block, block). The scales form a grid of ceil(M/rows) × ceil(K/cols)."""
    validate.choice("granularity", granularity, GRANULARITIES)
    validate.integer("block", block, 1)
    m, k = shape
    return {"tensor": (m, k), "row": (1, k), "tile": (1, block), "tile_t": (block, 1),
            "block": (block, block)}[granularity]


def _grouped(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[..., M, K] zero-padded to multiples of (rows, cols) and viewed as [..., M'/rows, rows, K'/cols, cols]."""
    m, k = x.shape[-2:]
    pad_m, pad_k = -m % rows, -k % cols
    if pad_m or pad_k:
        x = F.pad(x, (0, pad_k, 0, pad_m))
    return x.unflatten(-1, (-1, cols)).unflatten(-3, (-1, rows))


def _scales_from_amax(amax: torch.Tensor, f: Format, pow2_scales: bool) -> torch.Tensor:
    """scale = max(amax, 1e-4) / format max, rounded up to a power of two when asked (UE8M0, the official
    ``scale_fmt="ue8m0"``: the quantized values then never exceed the max either)."""
    scale = amax.float().clamp(min=AMAX_FLOOR) / f.max
    return torch.exp2(torch.ceil(torch.log2(scale))) if pow2_scales else scale


def _quantize_grouped(x: torch.Tensor, rows: int, cols: int, f: Format, pow2_scales: bool) -> Quantized:
    """The work of ``quantize`` on [..., M, K] without argument checks (also used for stacked expert weights)."""
    m, k = x.shape[-2:]
    g = _grouped(x.float(), rows, cols)
    scales = _scales_from_amax(g.abs().amax(dim=(-3, -1)), f, pow2_scales)  # [..., M'/rows, K'/cols]
    q = (g / scales[..., :, None, :, None]).to(f.dtype)  # the official act_quant divides: y = x / s
    values = q.flatten(-4, -3).flatten(-2)[..., :m, :k]
    return Quantized(values if values.is_contiguous() else values.contiguous(), scales)


def _dequantize_grouped(values: torch.Tensor, scales: torch.Tensor, rows: int, cols: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    m, k = values.shape[-2:]
    g = _grouped(values.to(dtype), rows, cols) * scales.to(dtype)[..., :, None, :, None]
    out = g.flatten(-4, -3).flatten(-2)[..., :m, :k]
    return out if out.is_contiguous() else out.contiguous()


def _check_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    validate.tensor(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, cols], got shape {tuple(x.shape)}")
    return x


def quantize(x: torch.Tensor, granularity: str = "tile", block: int = BLOCK, fmt: str = "e4m3",
             pow2_scales: bool = False) -> Quantized:
    """Scale and cast x [M, K] to FP8: returns (values [M, K] in ``fmt``'s torch dtype, scales float32
    [ceil(M/rows), ceil(K/cols)]) with (rows, cols) = ``group_shape``.

    Per group: scale = max(amax, 1e-4) / fmt.max (optionally 2^ceil(log2 ·)), values = round(x / scale). Edge groups
    of sizes that are not a multiple of ``block`` are zero-padded for their amax only. ValueError for NaN/inf in x,
    an unknown granularity or format, a block < 1 or a tensor that is not 2-D.
    """
    f = get_format(fmt, FP8_FORMATS)
    validate.tensor("x", _check_2d("x", x), floating=True, finite=True)
    if not isinstance(pow2_scales, bool):
        raise TypeError(f"pow2_scales must be a bool, got {type(pow2_scales).__name__}")
    rows, cols = group_shape(tuple(x.shape), granularity, block)
    return _quantize_grouped(x, max(rows, 1), max(cols, 1), f, pow2_scales)


def dequantize(values: torch.Tensor, scales: torch.Tensor, granularity: str = "tile", block: int = BLOCK,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """values [M, K] (FP8 or float holding FP8 values) times their group's scale -> [M, K] in ``dtype``.

    scales must have the grid shape ``quantize`` returns for the same granularity and block (ValueError otherwise).
    """
    _check_2d("values", values)
    validate.tensor("scales", scales, 2, floating=True)
    rows, cols = group_shape(tuple(values.shape), granularity, block)
    rows, cols = max(rows, 1), max(cols, 1)
    grid = (-(-values.shape[0] // rows), -(-values.shape[1] // cols))
    if tuple(scales.shape) != grid:
        raise ValueError(f"scales must have shape {grid} for {granularity!r} groups of a {tuple(values.shape)} "
                         f"tensor with block {block}, got {tuple(scales.shape)}")
    return _dequantize_grouped(values, scales, rows, cols, dtype)


def fake_quantize(x: torch.Tensor, granularity: str = "tile", block: int = BLOCK, fmt: str = "e4m3",
                  pow2_scales: bool = False) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype: the values an FP8 GEMM actually multiplies, x [M, K] -> [M, K]."""
    q = quantize(x, granularity, block, fmt, pow2_scales)
    return dequantize(q.values, q.scales, granularity, block, x.dtype)


def flush_threshold(amax: float, fmt: str = "e4m3") -> float:
    """Magnitude below which an element of a group with this amax quantizes to 0: half the smallest subnormal,
    times the scale (exactly half rounds to 0, ties to even). E4M3, amax 448: 2^-10; amax 448,000: 2^-10·1000."""
    f = get_format(fmt, FP8_FORMATS)
    return max(validate.real("amax", amax, 0), AMAX_FLOOR) / f.max * f.min_subnormal / 2


# --------------------------------------------------------------------------------- the training path's hot loop
CHUNK_ELEMENTS = 2**19  # rows per piece such that temporaries (2 MiB) stay in cache and malloc recycles them


def _round_to_grid(v: torch.Tensor, f: Format) -> torch.Tensor:
    """v (float32, |v| <= f.max) rounded to f's values, ties to even, without a cast: adding and subtracting
    1.5·2^(e + 23 - M), e the binade of v (at least the smallest normal one), leaves exactly the step 2^(e - M) for
    the FP32 adder to round to. Equals ``round_to_format`` there (tested) and is ~2x faster than casting to FP8 and
    back on the CPU."""
    e = v.view(torch.int32) >> 23
    e &= 0xFF
    e.clamp_(min=127 + 1 - f.bias)
    e += 23 - f.mantissa_bits
    e <<= 23
    e |= 1 << 22
    magic = e.view(torch.float32)
    out = v.abs()
    out += magic
    out -= magic
    return torch.copysign(out, v, out=out)


def _crop(g: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """[..., M'/rows, rows, K'/cols, cols] back to [..., M, K] (contiguous)."""
    out = g.flatten(-4, -3).flatten(-2)[..., :m, :k]
    return out if out.is_contiguous() else out.contiguous()


def _fake_piece(x: torch.Tensor, rows: int, cols: int, f: Format, pow2_scales: bool,
                codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., M, K] -> (FP8 values times their scales, float32 [..., M, K]; the scale grid). ``codes``, if given,
    receives the FP8 values themselves (an exact cast: they are on the grid already)."""
    m, k = x.shape[-2:]
    g = _grouped(x.float(), rows, cols)
    scales = _scales_from_amax(g.abs().amax(dim=(-3, -1)), f, pow2_scales)
    s = scales[..., :, None, :, None]
    v = _round_to_grid(g / s, f)
    if codes is not None:
        codes.copy_(_crop(v, m, k))
    return _crop(v.mul_(s), m, k), scales


def _fake_2d(x: torch.Tensor, granularity: str, block: int, f: Format, pow2_scales: bool,
             codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``_fake_piece`` over x [M, K] a few whole groups of rows at a time: (dequantized float32 [M, K], scales)."""
    m, k = x.shape
    rows, cols = group_shape((m, k), granularity, block)
    rows, cols = max(rows, 1), max(cols, 1)
    step = rows * max(1, CHUNK_ELEMENTS // max(1, rows * k))
    if step >= m:
        return _fake_piece(x, rows, cols, f, pow2_scales, codes)
    out, scales = torch.empty(m, k, device=x.device), []
    for i in range(0, m, step):
        piece, sc = _fake_piece(x[i:i + step], rows, cols, f, pow2_scales, None if codes is None else codes[i:i + step])
        out[i:i + step] = piece
        scales.append(sc)
    return out, torch.cat(scales)


def _dequantize_2d(values: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """FP8 values [M, K] with 1×block tile scales -> float32 [M, K], a few thousand rows at a time."""
    m, k = values.shape
    step = max(1, CHUNK_ELEMENTS // max(1, k))
    out = torch.empty(m, k, device=values.device)
    for i in range(0, m, step):
        out[i:i + step] = _dequantize_grouped(values[i:i + step], scales[i:i + step], 1, block)
    return out
