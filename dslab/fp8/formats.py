"""FP8 number formats (DeepSeek-V3 §3.3, App. B): E4M3 (4 exponent bits, 3 mantissa bits, bias 7, no infinities:
max 448) and E5M2 (5, 2, bias 15, IEEE infinities: max 57344), BF16 and FP16 for comparison, every representable
value and the spacing between neighbours, and the constants of V3's recipe shared by the rest of ``dslab.fp8``.

``round_to_format`` rounds to nearest, ties to even, with float32 arithmetic only; it agrees bit for bit with torch's
``float8_e4m3fn`` / ``float8_e5m2`` casts, including their overflow rules: **E4M3 saturates** (anything beyond ±448,
±inf included, becomes ±448) and **E5M2 overflows to ±inf** (from 61440 = 57344 + half a step up). NaN stays NaN in
both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dslab import validate

AMAX_FLOOR = 1e-4  # the official act_quant clamps amax at 1e-4 before dividing by the format's max
BLOCK = 128  # V3 §3.3.2: 1×128 activation tiles, 128×128 weight blocks
N_C = 128  # V3 §3.3.2: promotion interval along K ("4 WGMMAs")
ACC_BITS = 14  # V3 §3.3.2 / §3.5.2: "around 14 bits" of accumulation precision on H800
ACC_GROUP = 4  # products added exactly before each truncation (calibrates the emulation to V3's ~2%: accumulate_mm)


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
    m = torch.arange(2**f.mantissa_bits, dtype=torch.float64, device="cpu")  # a table, CPU by design
    subnormal = m[1:] * f.min_subnormal
    top = 2**f.exponent_bits - (2 if f.ieee_specials else 1)  # the last exponent field that holds numbers
    e = torch.arange(1, top + 1, dtype=torch.float64, device="cpu")
    normal = ((1 + m / 2**f.mantissa_bits) * torch.exp2(e[:, None] - f.bias)).flatten()
    positive = torch.cat([subnormal, normal])
    positive = positive[positive <= f.max]  # E4M3: drops 1.111·2^8, the NaN code
    return torch.cat([-positive.flip(0), positive.new_zeros(1), positive])


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
