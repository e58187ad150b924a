"""FP8 training the way DeepSeek-V3 does it (arXiv 2412.19437 §3.3, §3.5.2, App. B), emulated on any device.

Four pieces, one per section of this module:

- **Formats.** E4M3 (4 exponent bits, 3 mantissa bits, bias 7, no infinities: max 448) and E5M2 (5, 2, bias 15,
  IEEE infinities: max 57344), with every representable value and the spacing between neighbours.
  ``round_to_format`` rounds to nearest, ties to even, with float32 arithmetic only; it agrees bit for bit with
  torch's ``float8_e4m3fn`` / ``float8_e5m2`` casts, including their overflow rules: **E4M3 saturates** (anything
  beyond ±448, ±inf included, becomes ±448) and **E5M2 overflows to ±inf** (from 61440 = 57344 + half a step up).
  NaN stays NaN in both.
- **Scaling.** ``scale = max(amax, 1e-4) / format max`` per group of elements (multiply to dequantize, as the
  official ``act_quant``): per tensor, per row, per 1×B tile (activations, V3: B = 128), per B×1 tile (the
  transposed tile the weight-gradient GEMM needs) or per B×B block (weights); optionally rounded up to a power of
  two (the official ``scale_fmt="ue8m0"``). Sizes that are not a multiple of B are padded with zeros *for the scale
  computation only* (zeros never raise an amax): the edge tile's scale comes from its real elements, and the
  quantized values keep the input's shape. ``quantize`` refuses NaN and inf (ValueError): one inf would make its
  group's scale inf and zero every other element of the group.
- **Accumulation.** An FP8 tensor core does not accumulate in FP32: V3 measured "around 14 bits", a maximum
  relative error of nearly 2% at K = 4096, and fixed it by *promotion*: every N_C = 128 elements of K the partial
  sum is added into an FP32 register (§3.3.2). ``accumulate_mm`` emulates that accumulator (``truncate`` keeps the
  top ``acc_bits`` significant bits after every ``group`` products); ``scaled_mm`` runs a scaled FP8 GEMM either
  emulated or through ``torch._scaled_mm`` (per-tensor or row-wise scales in one call; 1×B / B×B scales one call
  per B-wide chunk of K, summed in FP32, which is promotion).
- **Training.** ``fp8_linear`` runs the three GEMMs of a linear layer (forward, input gradient, weight gradient) on
  FP8-quantized inputs as V3's recipe does: E4M3 everywhere, activations and their gradients in 1×B tiles along the
  contracted dimension, re-quantized as B×1 tiles for the weight gradient (which contracts over tokens), weights in
  B×B blocks; the activation is cached for backward as FP8. The GEMMs themselves are exact (FP32, the numbers an
  FP8 tensor core with promotion produces up to FP32 rounding): training does not emulate the 14-bit accumulator.
  ``enable_training`` switches a ``dslab.model.Transformer`` to it; ``memory_breakdown`` counts what that saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate

AMAX_FLOOR = 1e-4  # the official act_quant clamps amax at 1e-4 before dividing by the format's max
BLOCK = 128  # V3 §3.3.2: 1×128 activation tiles, 128×128 weight blocks
N_C = 128  # V3 §3.3.2: promotion interval along K ("4 WGMMAs")
ACC_BITS = 14  # V3 §3.3.2 / §3.5.2: "around 14 bits" of accumulation precision on H800
ACC_GROUP = 4  # products added exactly before each truncation (calibrates the emulation to V3's ~2%, see below)


# ====================================================================================================== formats
@dataclass(frozen=True)
class Format:
    """A binary floating-point format: sign, ``exponent_bits``, ``mantissa_bits``, exponent ``bias``.

    ``ieee_specials``: the all-ones exponent holds inf and NaN (E5M2, BF16, FP16). Without it (E4M3 "fn", finite
    only) that exponent holds numbers too and only the all-ones code is NaN, which buys one more binade: 448.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    ieee_specials: bool
    dtype: torch.dtype

    @property
    def max(self) -> float:
        """Largest finite value: E4M3 1.75·2^8 = 448, E5M2 1.75·2^15 = 57344."""
        top = 2**self.exponent_bits - 1 - (1 if self.ieee_specials else 0) - self.bias
        mantissa = 2**self.mantissa_bits - (1 if self.ieee_specials else 2)  # E4M3: 1.111 is NaN, 1.110 is max
        return (1 + mantissa / 2**self.mantissa_bits) * 2.0**top

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """Gap between 1 and the next value, 2^-mantissa_bits (E4M3 0.125: 8 steps per binade)."""
        return 2.0**-self.mantissa_bits


E4M3 = Format("e4m3", 4, 3, 7, False, torch.float8_e4m3fn)
E5M2 = Format("e5m2", 5, 2, 15, True, torch.float8_e5m2)
BF16 = Format("bf16", 8, 7, 127, True, torch.bfloat16)
FP16 = Format("fp16", 5, 10, 15, True, torch.float16)
FORMATS = {f.name: f for f in (E4M3, E5M2, BF16, FP16)}
FP8_FORMATS = ("e4m3", "e5m2")


def get_format(fmt: str | Format, allowed: tuple[str, ...] = tuple(FORMATS)) -> Format:
    """The Format called ``fmt`` ("e4m3", "e5m2", "bf16", "fp16"), or ``fmt`` itself; ValueError naming ``fmt``."""
    if isinstance(fmt, Format):
        fmt = fmt.name
    return FORMATS[validate.choice("fmt", fmt, allowed)]


def representable_values(fmt: str | Format = "e4m3") -> torch.Tensor:
    """Every finite value of the format, ascending, one zero: float64 [n]. E4M3 253 values, E5M2 247.

    Built from the bit fields (subnormals m·2^(1-bias-M), normals (1 + m/2^M)·2^(e-bias)), not from torch's dtype.
    """
    f = get_format(fmt)
    m = torch.arange(2**f.mantissa_bits, dtype=torch.float64)
    subnormal = m[1:] * f.min_subnormal
    top = 2**f.exponent_bits - (2 if f.ieee_specials else 1)  # the last exponent field that holds numbers
    e = torch.arange(1, top + 1, dtype=torch.float64)
    normal = ((1 + m / 2**f.mantissa_bits) * torch.exp2(e[:, None] - f.bias)).flatten()
    positive = torch.cat([subnormal, normal])
    positive = positive[positive <= f.max]  # E4M3: drops 1.111·2^8, the NaN code
    return torch.cat([-positive.flip(0), torch.zeros(1, dtype=torch.float64), positive])


def _binade(mag: torch.Tensor, f: Format) -> torch.Tensor:
    """floor(log2 |x|) computed exactly (frexp), clamped to the smallest normal binade: subnormals share its step."""
    _, exp = torch.frexp(mag)
    return torch.where(mag == 0, 1 - f.bias, exp - 1).clamp(min=1 - f.bias)  # frexp(0) has exponent 0


def spacing(x: torch.Tensor, fmt: str | Format = "e4m3") -> torch.Tensor:
    """Gap between neighbouring representable values at |x| (the format's ulp there): x [...] -> float32 [...].

    2^(e - M) for |x| in the binade [2^e, 2^(e+1)), and the subnormal step below the smallest normal. Beyond the
    format's max the step of the top binade is returned.
    """
    f = get_format(fmt)
    mag = validate.tensor("x", x, floating=True).float().abs().clamp(max=f.max)
    return torch.ldexp(torch.ones_like(mag), _binade(mag, f) - f.mantissa_bits)


def relative_precision(x: torch.Tensor, fmt: str | Format = "e4m3") -> torch.Tensor:
    """spacing(x) / |x|: between 2^-M and 2^-(M-1) for normal numbers, growing towards 1 in the subnormals."""
    return spacing(x, fmt) / validate.tensor("x", x, floating=True).float().abs()


def round_to_format(x: torch.Tensor, fmt: str | Format = "e4m3") -> torch.Tensor:
    """Round every element to the nearest value of ``fmt``, ties to even: x [...] -> float32 [...] holding them.

    Pure float32 arithmetic (no cast to the target dtype), bit-identical to ``x.float().to(dtype).float()`` for
    E4M3/E5M2 (and BF16/FP16): the step at |x| is 2^(e - M) (``spacing``), |x| / step is rounded half to even
    (exact: dividing by a power of two), then overflow follows torch: E4M3 saturates to ±448 (±inf too), formats with
    infinities overflow to ±inf. NaN stays NaN; the sign of zero is kept.
    """
    f = get_format(fmt)
    x = validate.tensor("x", x, floating=True).float()
    mag = x.abs()
    step = torch.ldexp(torch.ones_like(mag), _binade(mag.nan_to_num(0.0, 0.0), f) - f.mantissa_bits)
    rounded = torch.round(mag / step) * step  # torch.round: half to even
    overflow = float("inf") if f.ieee_specials else f.max
    rounded = torch.where(rounded > f.max, overflow, rounded)
    rounded = torch.where(mag.isnan(), mag, rounded)
    return torch.copysign(rounded, x)


# ====================================================================================================== scaling
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


# ================================================================================================= accumulation
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
    total = torch.zeros(a.shape[0], b.shape[0])
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
        out = torch.zeros(m, n)
        for c in chunks:
            sl = slice(None) if c is None else slice(c * block, (c + 1) * block)
            sa, sb = _per_chunk(a_scales, a_kind, m, c or 0, block), _per_chunk(b_scales, b_kind, n, c or 0, block)
            out += (a[:, sl].float() * sa) @ (b[:, sl].float() * sb).t()
        return out.to(out_dtype)
    if per_k and block % validate.integer("promote_every", promote_every, 1):
        raise ValueError(f"promote_every must divide block = {block} when scales change along K, got {promote_every}")
    out = torch.zeros(m, n)
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



# ===================================================================================================== training
@dataclass(frozen=True)
class Recipe:
    """How the GEMMs of a linear layer are quantized (defaults: DeepSeek-V3 §3.3).

    block: tile and block size B (1×B activation tiles, B×B weight blocks); fmt: format of activations and weights
    (forward); grad_fmt: format of the activation gradients (V3 uses E4M3 for both; the "hybrid" recipe of earlier
    work uses E5M2 here); pow2_scales: round every scale up to a power of two. fmt = grad_fmt = "bf16" rounds the
    same GEMM inputs to BF16 instead (no scales needed): the BF16 baseline, emulated the same way.
    """

    block: int = BLOCK
    fmt: str = "e4m3"
    grad_fmt: str = "e4m3"
    pow2_scales: bool = False

    def __post_init__(self):
        validate.integer("block", self.block, 1)
        get_format(self.fmt, FP8_FORMATS + ("bf16",))
        validate.choice("grad_fmt", self.grad_fmt, FP8_FORMATS + ("bf16",))
        if not isinstance(self.pow2_scales, bool):
            raise TypeError(f"pow2_scales must be a bool, got {type(self.pow2_scales).__name__}")

    def fake(self, x: torch.Tensor, granularity: str, grad: bool = False) -> torch.Tensor:
        """x [..., M, K] quantized to FP8 and back (float32), without argument checks: the training path's hot loop."""
        f = FORMATS[self.grad_fmt if grad else self.fmt]
        if f is BF16:
            return x.to(torch.bfloat16).float()
        if x.dim() == 2:
            return _fake_2d(x, granularity, self.block, f, self.pow2_scales)[0]
        rows, cols = group_shape(tuple(x.shape[-2:]), granularity, self.block)
        return _fake_piece(x, rows, cols, f, self.pow2_scales)[0]


class _FP8Linear(torch.autograd.Function):
    """y = x Wᵀ with the three GEMMs on FP8-quantized inputs (V3 Fig. 6): Fprop, Dgrad, Wgrad.

    forward(x [T, K], weight [N, K], recipe) -> y [T, N]. x is cached for backward as FP8 (1×B tiles) plus its
    scales; the weight is re-quantized from the master copy in backward (B×B blocks are the same both ways).
    """

    @staticmethod
    def forward(ctx, x, weight, recipe):
        f = FORMATS[recipe.fmt]
        if f is BF16:
            codes = x.to(torch.bfloat16)  # the BF16 copy backward keeps
            xd, scales = codes.float(), torch.ones(1, 1)
        else:
            codes = torch.empty(x.shape, dtype=f.dtype, device=x.device)  # the FP8 copy backward keeps
            xd, scales = _fake_2d(x, "tile", recipe.block, f, recipe.pow2_scales, codes)  # 1×B tiles along K
        y = xd @ recipe.fake(weight, "block").t()  # Fprop on B×B weight blocks, FP32 accumulation
        ctx.recipe, ctx.x_dtype = recipe, x.dtype
        ctx.save_for_backward(codes, scales, weight)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        codes, scales, weight = ctx.saved_tensors
        r = ctx.recipe
        gy = gy.float()
        gx = r.fake(gy, "tile", grad=True) @ r.fake(weight, "block")  # Dgrad: contracts over N, 1×B tiles of dY
        x = codes.float() if r.fmt == "bf16" else _dequantize_2d(codes, scales, r.block)  # the cached activation
        gw = r.fake(gy, "tile_t", grad=True).t() @ r.fake(x, "tile_t")  # Wgrad: contracts over tokens, B×1 tiles
        return gx.to(ctx.x_dtype), gw.to(weight.dtype), None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, recipe: Recipe = Recipe()) -> torch.Tensor:
    """x [..., K] @ weight [N, K]ᵀ -> [..., N] (x's dtype) with V3's FP8 recipe for all three GEMMs.

    The weight stays a high-precision master (it is quantized on every use, and its gradient is FP32); the GEMMs
    run on the dequantized FP8 values in FP32, as a tensor core with promotion would (up to FP32 rounding).
    """
    validate.tensor("x", x, floating=True)
    validate.tensor("weight", weight, 2, floating=True)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a dslab.fp8.Recipe, got {type(recipe).__name__}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must be [..., {weight.shape[1]}] for a weight of shape {tuple(weight.shape)}, got "
                         f"{tuple(x.shape)}")
    y = _FP8Linear.apply(x.reshape(-1, x.shape[-1]), weight, recipe)
    return y.view(*x.shape[:-1], weight.shape[0])


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` whose forward and backward GEMMs run through ``fp8_linear`` (state dict unchanged).

    Build it from an existing layer with ``FP8Linear.from_linear(linear, recipe)``: the new module shares the
    layer's Parameter objects, so an optimizer built before or after the swap trains the same tensors.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe: Recipe = Recipe(),
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a dslab.fp8.Recipe, got {type(recipe).__name__}")
        self.recipe = recipe

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe = Recipe()) -> FP8Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, recipe, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = fp8_linear(x, self.weight, self.recipe)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe}"


def fake_quantize_segments(x: torch.Tensor, ends: torch.Tensor, recipe: Recipe, grad: bool = False) -> torch.Tensor:
    """B×1 tiles along the rows of x [R, C] that restart at every segment: rows sorted by expert, ``ends`` [G] the
    cumulative row counts. A weight-gradient GEMM of expert g contracts over its own rows only, so no tile mixes two
    experts' tokens. Returns x quantized to FP8 and back, float32 [R, C]."""
    if (recipe.grad_fmt if grad else recipe.fmt) == "bf16":
        return x.to(torch.bfloat16).float()
    ends = ends.long()
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    starts = ends - counts
    tiles = -(-counts // recipe.block)  # tiles per segment
    seg = torch.repeat_interleave(torch.arange(len(counts)), counts)  # segment of each row
    first_tile = torch.cumsum(tiles, 0) - tiles
    row = torch.arange(x.shape[0])
    tile = first_tile[seg] + (row - starts[seg]) // recipe.block  # [R]
    xf = x.float()
    amax = xf.new_zeros(int(tiles.sum()), x.shape[1]).scatter_reduce_(0, tile[:, None].expand_as(xf), xf.abs(),
                                                                      "amax")
    f = FORMATS[recipe.grad_fmt if grad else recipe.fmt]
    scale = _scales_from_amax(amax, f, recipe.pow2_scales)[tile]  # [R, C]
    return _round_to_grid(xf / scale, f).mul_(scale)


class ExpertQuantizer:
    """FP8 quantization of the routed experts' grouped GEMMs (``dslab.dispatch.grouped_dispatch(quant=...)``).

    ``quant(role, t, ends=None)`` returns t quantized to FP8 and back (float32):
    "act" t [rows, K]: 1×B tiles along K (inputs of the forward and input-gradient GEMMs; ``grad`` for gradients);
    "rows" t [rows, C]: B×1 tiles along the rows of each expert (inputs of the weight-gradient GEMMs, ``ends`` the
    experts' cumulative row counts); "weight" t [E, out, in]: B×B blocks of each expert's matrix.
    Roles ending in "_grad" quantize with the recipe's ``grad_fmt``.
    """

    ROLES = ("act", "act_grad", "rows", "rows_grad", "weight")

    def __init__(self, recipe: Recipe = Recipe()):
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a dslab.fp8.Recipe, got {type(recipe).__name__}")
        self.recipe = recipe

    def __call__(self, role: str, t: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor:
        validate.choice("role", role, self.ROLES)
        grad = role.endswith("_grad")
        if role.startswith("rows"):
            if ends is None:
                raise ValueError("role 'rows' needs ends, the experts' cumulative row counts")
            return fake_quantize_segments(t, ends, self.recipe, grad)
        if role == "weight":
            return self.recipe.fake(t, "block")
        return self.recipe.fake(t, "tile", grad)

    def __repr__(self) -> str:
        return f"ExpertQuantizer({self.recipe})"


def _excluded_weights(model: nn.Module) -> set[int]:
    """Weights that stay high precision under V3's recipe although their module is a Linear: the output head (and
    an embedding tied to it)."""
    keep = set()
    for name in ("head", "embed"):
        module = getattr(model, name, None)
        if module is not None and getattr(module, "weight", None) is not None:
            keep.add(id(module.weight))
    return keep


def enable_training(model: nn.Module, block: int = BLOCK, fmt: str = "e4m3", grad_fmt: str = "e4m3",
                    pow2_scales: bool = False) -> list[str]:
    """Switch a ``dslab.model.Transformer`` (or any module) to FP8 training with V3's recipe; returns the names of
    the modules that now run FP8 GEMMs.

    Every ``nn.Linear`` becomes an ``FP8Linear`` sharing its parameters (dense FFN, shared experts, MLA's and MHA's
    projections), except the output head; every routed ``Experts`` gets an ``ExpertQuantizer`` for its grouped
    GEMMs. Embedding, head, router (``Gate``), norms and the attention core stay in high precision, as in V3
    (§3.3.1). Calling it again changes the recipe. MoE layers must use the grouped dispatch (ValueError otherwise;
    nothing is changed then). MLA's absorbed decoding path (eval mode, with a KV cache) reads ``wkv_b.weight``
    directly and so stays in high precision; training and ``dslab.train.evaluate`` run the FP8 path.
    fmt = grad_fmt = "bf16" rounds the same GEMM inputs to BF16 instead: a BF16 baseline emulated the same way.
    """
    from dslab.moe import Experts, MoE

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    recipe = Recipe(block, fmt, grad_fmt, pow2_scales)
    for name, module in model.named_modules():
        if isinstance(module, MoE) and module.dispatch != "grouped":
            raise ValueError(f"{name}: FP8 experts need dispatch='grouped', got {module.dispatch!r}")
    keep, converted = _excluded_weights(model), []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and id(child.weight) not in keep:
                new = child if isinstance(child, FP8Linear) else FP8Linear.from_linear(child, recipe)
                new.recipe = recipe
                setattr(module, child_name, new)
                converted.append(full)
        if isinstance(module, Experts):
            module.quant = ExpertQuantizer(recipe)
            converted.append(name)
    return converted


def disable_training(model: nn.Module) -> list[str]:
    """Undo ``enable_training``: FP8Linear modules become plain nn.Linear (same parameters), experts lose their
    quantizer. Returns the names of the modules changed."""
    changed = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FP8Linear):
                plain = nn.Linear(child.in_features, child.out_features, child.bias is not None, device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                plain.train(child.training)
                setattr(module, child_name, plain)
                changed.append(f"{name}.{child_name}" if name else child_name)
        if getattr(module, "quant", None) is not None and isinstance(module.quant, ExpertQuantizer):
            module.quant = None
            changed.append(name)
    return changed


def precision_map(model: nn.Module) -> dict[str, str]:
    """Parameter name -> "fp8" (read by an FP8 GEMM) or "high" (embedding, head, router, norms, biases...)."""
    fp8 = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, FP8Linear):
            fp8.add(prefix + "weight")
        if isinstance(getattr(module, "quant", None), ExpertQuantizer):
            fp8.update(prefix + w for w in ("w1", "w2", "w3"))
    return {name: "fp8" if name in fp8 else "high" for name, _ in model.named_parameters()}


# ======================================================================================================= memory
PRECISIONS = ("fp32", "bf16", "fp8")


def gemm_params(args) -> int:
    """Parameters that FP8 GEMMs read under V3's recipe: attention projections, dense FFNs, shared and routed
    experts (``args`` a ModelArgs). The rest (embedding, head, router, norms) stays in higher precision."""
    from dslab import accounting as acc

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
    from dslab import accounting as acc

    validate.choice("precision", precision, PRECISIONS)
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

__all__ = [
    "ACC_BITS", "ACC_GROUP", "AMAX_FLOOR", "BF16", "BLOCK", "E4M3", "E5M2", "FORMATS", "FP16", "FP8_FORMATS",
    "GRANULARITIES", "N_C", "Format", "Quantized", "accumulate_mm", "dequantize", "fake_quantize", "flush_threshold",
    "get_format", "group_shape", "max_relative_error", "quantize", "relative_precision", "representable_values",
    "round_to_format", "scaled_mm", "spacing", "truncate",
    "ExpertQuantizer", "FP8Linear", "Recipe", "disable_training", "enable_training", "fake_quantize_segments",
    "fp8_linear", "precision_map", "PRECISIONS", "activation_elements_per_token", "gemm_params",
    "memory_breakdown",
]
