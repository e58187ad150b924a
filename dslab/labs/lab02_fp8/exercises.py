"""Exercises of lab 02 "FP8": E4M3 rounding, 1×B tile quantization, the flush-to-zero threshold, block
dequantization and promoted accumulation.

Hidden cases are drawn from the grader's rng: magnitudes over many binades (subnormals and overflow included),
exact ties, ragged tile and block edges, all-zero tiles, and accumulations whose promotion interval does not divide
K. Every known wrong answer below has its own hint and its own test (tests/test_lab02.py).
"""

from __future__ import annotations

import random

import torch

from dslab import fp8
from dslab.course.exercises import Case, Exercise, Mistake, compare_close

E4M3_MAX = 448.0


# -------------------------------------------------------------------------------------------------- comparisons
def _tensor_problem(expected: torch.Tensor, got) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if not got.is_floating_point():
        return f"expected a floating-point tensor, got {got.dtype}"
    return None


def compare_values(expected: torch.Tensor, got) -> str | None:
    """Exactly the expected values (NaN where NaN is expected; the sign of zero is not checked)."""
    if (problem := _tensor_problem(expected, got)) is not None:
        return problem
    got = got.float()
    bad = ~((got == expected) | (got.isnan() & expected.isnan()))
    if not bool(bad.any()):
        return None
    i = tuple(int(v) for v in torch.unravel_index(bad.flatten().nonzero()[0, 0], expected.shape))
    return (f"at {list(i)} (input value not shown) expected {expected[i].item():.8g}, got {got[i].item():.8g} "
            f"({int(bad.sum())} of {bad.numel()} values differ)")


def compare_quantized(expected, got) -> str | None:
    """(values, scales): scales within 1e-6; values exact except for at most 0.1% of them one FP8 step away
    (dividing by the scale or multiplying by its inverse can differ in the last bit of a tie)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (values, scales), got {type(got).__name__}"
    (ev, es), (gv, gs) = expected, got
    if (problem := _tensor_problem(es, gs)) is not None:
        return f"scales: {problem}"
    gs = gs.float()
    if not torch.equal(es.isnan(), gs.isnan()):
        return f"scales: {compare_values(es, gs)}"
    if (msg := compare_close(es.nan_to_num(0.0), gs.nan_to_num(0.0), rtol=1e-6, atol=1e-30)) is not None:
        return f"scales: {msg}"
    if (problem := _tensor_problem(ev, gv)) is not None:
        return f"values: {problem}"
    gv = gv.float()
    off = (gv != ev) & ~(gv.isnan() & ev.isnan())
    near = (gv - ev).abs() <= fp8.spacing(ev) * 1.0001
    if bool((off & ~near).any()) or int(off.sum()) > max(1, ev.numel() // 1000):
        return f"values: {compare_values(ev, gv)}"
    return None


def compare_number(expected, got) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = float(got)
    return compare_close(expected, got, rtol=1e-9, atol=0.0)


def compare_accumulation(expected: torch.Tensor, got) -> str | None:
    """Within 1e-6 of the largest output: a truncated accumulator is deterministic once its inputs are FP8 values."""
    if (problem := _tensor_problem(expected, got)) is not None:
        return problem
    return compare_close(expected, got.float(), rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


# --------------------------------------------------------------------------------------------- 2.1 E4M3 rounding
def round_e4m3_reference(x: torch.Tensor) -> torch.Tensor:
    return fp8.round_to_format(x, "e4m3")


def _midpoints(lo: float, hi: float) -> torch.Tensor:
    """Midpoints between neighbouring positive E4M3 values in [lo, hi] and the floats just above and below each."""
    v = fp8.representable_values("e4m3")
    v = v[(v >= lo) & (v <= hi)]
    mid = ((v[1:] + v[:-1]) / 2).float()
    inf = torch.tensor(float("inf"))
    return torch.cat([mid, torch.nextafter(mid, inf), torch.nextafter(mid, -inf)])


def _round_public() -> list[Case]:
    inf, nan = float("inf"), float("nan")
    return [
        Case((torch.tensor([0.3, 1.0, 1.0625, 1.1875, 3.3, -7.1, 100.0, 250.0]),),
             "ordinary values, two of them exact ties (1.0625, 1.1875)"),
        Case((torch.tensor([2**-10, 3 * 2**-10, 0.005, 0.0138, -0.001, 0.0, 2**-7 + 2**-11]),),
             "tiny values: below 2^-6 the step is 2^-9 (subnormals)"),
        Case((torch.tensor([447.0, 460.0, 500.0, 1e6, inf, -inf, nan, -0.0]),), "overflow, infinities and NaN"),
        Case((torch.cat([_midpoints(0, 448), -_midpoints(0, 448)]),), "every midpoint between neighbours, +/-"),
    ]


def _round_hidden(rng: random.Random) -> list[Case]:
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    rows, cols = rng.randint(1, 6), rng.randint(20, 80)
    spread = (torch.exp2(torch.empty(rows, cols).uniform_(-13, 10, generator=gen))
              * torch.randn(rows, cols, generator=gen).sign())
    lo = 2.0 ** rng.randint(-9, 4)
    ties = _midpoints(lo, lo * 2 ** rng.randint(1, 4))
    ties = ties * (1 - 2 * (torch.rand(ties.shape, generator=gen) < 0.5).float())
    edge = torch.tensor([rng.uniform(448, 464), rng.uniform(464, 1e5), rng.uniform(2**-11, 2**-9), float("inf"),
                         -rng.uniform(448, 2e4), float("nan"), rng.uniform(0.9, 1.1) * 2**-6])
    return [Case((spread,), "hidden #0: values from 2^-13 to 2^10"),
            Case((ties,), "hidden #1: ties and their neighbours in a few binades"),
            Case((edge,), "hidden #2: overflow, subnormals, specials"),
            Case((torch.randn(rng.randint(3, 40), generator=gen) * rng.choice([0.01, 1.0, 30.0]),),
                 "hidden #3: normal values at one scale")]


def _step(x: torch.Tensor, clamp_subnormal: bool = True) -> torch.Tensor:
    mag = x.abs().nan_to_num(0.0, posinf=448.0)
    _, e = torch.frexp(mag)
    e = e - 1
    if clamp_subnormal:
        e = e.clamp(min=-6)
    return torch.ldexp(torch.ones_like(mag), e - 3)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Ties rounded away from zero (floor(|x|/step + 0.5)), the school rule, not ties to even."""
    step = _step(x)
    r = torch.floor(x.abs() / step + 0.5) * step
    r = torch.where(x.isnan(), x, r.clamp(max=E4M3_MAX))
    return torch.copysign(r, x)


def _round_truncating(x: torch.Tensor) -> torch.Tensor:
    """Extra mantissa bits dropped (round toward zero)."""
    step = _step(x)
    r = torch.floor(x.abs() / step) * step
    return torch.copysign(torch.where(x.isnan(), x, r.clamp(max=E4M3_MAX)), x)


def _round_no_subnormal_step(x: torch.Tensor) -> torch.Tensor:
    """Below 2^-6 the step kept shrinking with the exponent, as if E4M3 had more exponent range."""
    step = _step(x, clamp_subnormal=False).clamp(min=2.0**-40)
    r = torch.round(x.abs() / step) * step
    return torch.copysign(torch.where(x.isnan(), x, r.clamp(max=E4M3_MAX)), x)


def _round_flush_subnormals(x: torch.Tensor) -> torch.Tensor:
    """Everything below the smallest normal 2^-6 flushed to zero."""
    r = round_e4m3_reference(x)
    return torch.where(x.abs() < 2.0**-6, torch.zeros_like(r), r)


def _round_overflow_inf(x: torch.Tensor) -> torch.Tensor:
    """Overflow to inf as in IEEE formats; torch's float8_e4m3fn saturates to ±448 (E4M3 has no infinity)."""
    r = round_e4m3_reference(x)
    return torch.where(x.abs() > 464, torch.copysign(torch.full_like(r, float("inf")), x), r)


ROUND_MISTAKES = (
    Mistake("half away from zero", _round_half_away, "a tie (exactly between two values) goes to the one with an "
            "even last mantissa bit, not away from zero: torch.round rounds half to even"),
    Mistake("truncation", _round_truncating, "round to the *nearest* value; dropping the extra bits always rounds "
            "toward zero"),
    Mistake("no subnormal step", _round_no_subnormal_step, "below the smallest normal 2^-6 the exponent cannot go "
            "lower: the step stays 2^-6 · 2^-3 = 2^-9 (subnormals)"),
    Mistake("flushed subnormals", _round_flush_subnormals, "values below 2^-6 are not zero: E4M3 has subnormals "
            "m · 2^-9 for m = 1..7"),
    Mistake("overflow to inf", _round_overflow_inf, "E4M3 (float8_e4m3fn) has no infinity: torch saturates "
            "everything beyond ±448, ±inf included, to ±448"),
)


# ---------------------------------------------------------------------------------------- 2.2 tile quantization
def quantize_tiles_reference(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    q = fp8.quantize(x, "tile", block)
    return q.values.float(), q.scales


def _tiles_case(gen: torch.Generator, m: int, k: int, block: int, scale: float, zero_tile: bool,
                outlier: float) -> tuple:
    x = torch.randn(m, k, generator=gen) * scale
    if zero_tile:
        x[0, : min(block, k)] = 0.0
    if outlier:
        x[-1, int(torch.randint(k, (1,), generator=gen))] = outlier * scale
    return x, block


def _tiles_public() -> list[Case]:
    gen = torch.Generator().manual_seed(21)
    return [Case(_tiles_case(gen, 2, 256, 128, 1.0, False, 0.0), "2 rows of 256: two full tiles each"),
            Case(_tiles_case(gen, 3, 200, 128, 1.0, False, 0.0), "K = 200: the second tile holds 72 elements"),
            Case(_tiles_case(gen, 2, 64, 32, 1.0, True, 0.0), "an all-zero tile (the amax floor keeps its scale)"),
            Case(_tiles_case(gen, 4, 96, 32, 0.5, False, -300.0), "block 32, a negative outlier in one tile")]


def _tiles_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        block = rng.choice([16, 32, 64, 128])
        k = rng.randint(1, 3) * block + (rng.randint(1, block - 1) if i % 2 == 0 else 0)
        cases.append(Case(_tiles_case(gen, rng.randint(1, 6), k, block, 10 ** rng.uniform(-3, 3), i == 1,
                                      rng.choice([0.0, -80.0, 500.0])), f"hidden #{i}: random sizes, block, scale"))
    return cases


def _tiles_per_row(x, block=128):
    q = fp8.quantize(x, "row")
    return q.values.float(), q.scales


def _tiles_no_floor(x, block=128):
    tiles = torch.nn.functional.pad(x, (0, -x.shape[1] % block)).unflatten(-1, (-1, block))
    s = tiles.abs().amax(-1) / E4M3_MAX
    q = (tiles / s[..., None]).to(torch.float8_e4m3fn).float().flatten(-2)[:, : x.shape[1]]
    return q, s


def _tiles_multiplied_back(x, block=128):
    values, scales = quantize_tiles_reference(x, block)
    return fp8.dequantize(values, scales, "tile", block), scales


def _tiles_inverted(x, block=128):
    values, scales = quantize_tiles_reference(x, block)
    return values, 1.0 / scales


def _tiles_signed_max(x, block=128):
    tiles = torch.nn.functional.pad(x, (0, -x.shape[1] % block)).unflatten(-1, (-1, block))
    s = tiles.amax(-1).clamp(min=1e-4) / E4M3_MAX
    q = (tiles / s[..., None]).to(torch.float8_e4m3fn).float().flatten(-2)[:, : x.shape[1]]
    return q, s


def _tiles_dropped_tail(x, block=128):
    full = x.shape[1] // block * block
    if full == 0:
        return quantize_tiles_reference(x, block)[0], torch.zeros(x.shape[0], 0)
    values, scales = quantize_tiles_reference(x[:, :full], block)
    return torch.cat([values, torch.zeros(x.shape[0], x.shape[1] - full)], 1), scales


TILE_MISTAKES = (
    Mistake("per row", _tiles_per_row, "one scale per 1×block tile: scales has ceil(K/block) columns, each from "
            "the amax of its own block of columns"),
    Mistake("no amax floor", _tiles_no_floor, "clamp amax at 1e-4 before dividing (an all-zero tile gives 0/0)"),
    Mistake("multiplied back", _tiles_multiplied_back, "return the FP8 values x/scale rounded to E4M3, not those "
            "values times the scale"),
    Mistake("inverted scale", _tiles_inverted, "scale = amax / 448, so that values * scale restores x (the "
            "official act_quant divides by it)"),
    Mistake("signed max", _tiles_signed_max, "amax is the largest *magnitude* |x| in the tile: a large negative "
            "value must fit too"),
    Mistake("ragged tail dropped", _tiles_dropped_tail, "when K is not a multiple of block the last tile is "
            "narrower, not dropped: ceil(K/block) scales per row"),
)


# ------------------------------------------------------------------------------------ 2.3 flush-to-zero threshold
def _flush_public() -> list[Case]:
    return [Case((448.0, "e4m3"), "E4M3, amax 448 (scale 1)"), Case((1.0, "e4m3"), "E4M3, amax 1"),
            Case((57344.0, "e5m2"), "E5M2, amax 57344 (scale 1)"), Case((0.0, "e4m3"), "an all-zero tile")]


def _flush_hidden(rng: random.Random) -> list[Case]:
    return [Case((10 ** rng.uniform(-3, 5), "e4m3"), "hidden #0: E4M3, random amax"),
            Case((10 ** rng.uniform(-3, 5), "e5m2"), "hidden #1: E5M2, random amax"),
            Case((10 ** rng.uniform(-8, -4.5), rng.choice(["e4m3", "e5m2"])), "hidden #2: a tiny amax"),
            Case((rng.choice([1.0, 2.0, 0.5]) * 10 ** rng.randint(0, 3), "e4m3"), "hidden #3: E4M3, round amax")]


def _flush_full_step(amax, fmt="e4m3"):
    return 2 * fp8.flush_threshold(amax, fmt)


def _flush_min_normal(amax, fmt="e4m3"):
    f = fp8.get_format(fmt)
    return max(amax, 1e-4) / f.max * f.min_normal / 2


def _flush_no_floor(amax, fmt="e4m3"):
    f = fp8.get_format(fmt)
    return amax / f.max * f.min_subnormal / 2


def _flush_e4m3_always(amax, fmt="e4m3"):
    return fp8.flush_threshold(amax, "e4m3")


FLUSH_MISTAKES = (
    Mistake("full step", _flush_full_step, "a value rounds to 0 up to *half* the smallest subnormal step (exactly "
            "half is a tie, and 0 is the even neighbour)"),
    Mistake("smallest normal", _flush_min_normal, "below the smallest normal there are still subnormals: the "
            "smallest positive value is 2^(1 - bias - mantissa bits)"),
    Mistake("no floor", _flush_no_floor, "the scale uses max(amax, 1e-4)"),
    Mistake("E4M3 constants", _flush_e4m3_always, "E5M2 has another max (57344) and smallest subnormal (2^-16)"),
)


# --------------------------------------------------------------------------------------- 2.4 block dequantization
def dequantize_blocks_reference(q: torch.Tensor, scales: torch.Tensor, block: int = 128) -> torch.Tensor:
    return fp8.dequantize(q, scales, "block", block)


def _blocks_case(gen: torch.Generator, m: int, n: int, block: int) -> tuple:
    w = torch.randn(m, n, generator=gen) * torch.exp2(torch.randint(-4, 4, (m, 1), generator=gen).float())
    q = fp8.quantize(w, "block", block)
    return q.values.float(), q.scales, block


def _blocks_public() -> list[Case]:
    gen = torch.Generator().manual_seed(24)
    return [Case(_blocks_case(gen, 256, 256, 128), "256 × 256: four 128 × 128 blocks"),
            Case(_blocks_case(gen, 200, 300, 128), "200 × 300: ragged edge blocks"),
            Case(_blocks_case(gen, 64, 96, 32), "64 × 96, block 32")]


def _blocks_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(4):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        block = rng.choice([16, 32, 64])
        n_blocks = rng.randint(2, 4)
        m = n_blocks * block - (rng.randint(1, block - 1) if i % 2 else 0)
        n = (n_blocks if i < 2 else rng.randint(1, 5)) * block - (rng.randint(1, block - 1) if i == 3 else 0)
        cases.append(Case(_blocks_case(gen, m, n, block), f"hidden #{i}: random sizes and block"))
    return cases


def _blocks_divided(q, scales, block=128):
    return q / (dequantize_blocks_reference(torch.ones_like(q), scales, block))


def _blocks_transposed(q, scales, block=128):
    if scales.shape[0] != scales.shape[1]:
        return dequantize_blocks_reference(q, scales, block)
    return dequantize_blocks_reference(q, scales.t().contiguous(), block)


def _blocks_uncropped(q, scales, block=128):
    padded = torch.nn.functional.pad(q, (0, -q.shape[1] % block, 0, -q.shape[0] % block))
    return padded * scales.repeat_interleave(block, 0).repeat_interleave(block, 1)


BLOCK_MISTAKES = (
    Mistake("divides", _blocks_divided, "the scales multiply: weight ≈ q · scale (the checkpoint's name "
            "weight_scale_inv is misleading; README_WEIGHTS multiplies)"),
    Mistake("transposed grid", _blocks_transposed, "scales[i, j] belongs to rows i·block.. and columns j·block.. "
            "of q"),
    Mistake("not cropped", _blocks_uncropped, "edge blocks are partial: crop the expanded scales to q's shape "
            "instead of padding q"),
)


# --------------------------------------------------------------------------------------- 2.5 promoted accumulation
def promoted_matmul_reference(a: torch.Tensor, b: torch.Tensor, promote_every: int, acc_bits: int = 14,
                              group: int = 4) -> torch.Tensor:
    return fp8.accumulate_mm(a, b, acc_bits, promote_every, group)


def _acc_case(gen: torch.Generator, m: int, n: int, k: int, promote_every: int, acc_bits: int, group: int) -> tuple:
    a = fp8.round_to_format(torch.randn(m, k, generator=gen))
    b = fp8.round_to_format(torch.randn(n, k, generator=gen))
    return a, b, promote_every, acc_bits, group


def _acc_public() -> list[Case]:
    gen = torch.Generator().manual_seed(25)
    return [Case(_acc_case(gen, 4, 4, 256, 128, 14, 4), "4 × 256 × 4, promoted every 128"),
            Case(_acc_case(gen, 3, 5, 200, 64, 14, 4), "K = 200: the last chunk holds 8 elements"),
            Case(_acc_case(gen, 2, 3, 512, 512, 14, 4), "promote_every = K: never promoted"),
            Case(_acc_case(gen, 3, 3, 96, 32, 8, 2), "an 8-bit accumulator, 2 products per step")]


def _acc_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        group = rng.choice([1, 2, 4, 8])
        every = group * rng.choice([4, 8, 16, 32])
        k = rng.randint(2, 8) * every + (rng.randint(1, every - 1) if i % 2 else 0)
        cases.append(Case(_acc_case(gen, rng.randint(1, 5), rng.randint(1, 5), k, every, rng.randint(10, 16), group),
                          f"hidden #{i}: random sizes, interval, precision"))
    return cases


def _round_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(m * 2**bits) / 2**bits, e)


def _acc_generic(a, b, promote_every, acc_bits, group, *, rounding=False, reset=True, truncate_total=False):
    a, b = a.float(), b.float()
    k = a.shape[1]
    total, acc = torch.zeros(a.shape[0], b.shape[0]), None
    for start in range(0, k, promote_every):
        if reset or acc is None:
            acc = torch.zeros_like(total)
        for g in range(start, min(start + promote_every, k), group):
            end = min(g + group, start + promote_every, k)
            acc = acc + a[:, g:end] @ b[:, g:end].t()
            acc = _round_bits(acc, acc_bits) if rounding else fp8.truncate(acc, acc_bits)
        total = fp8.truncate(total + acc, acc_bits) if truncate_total else total + acc
    return total


ACC_MISTAKES = (
    Mistake("never promoted", lambda a, b, p, bits=14, g=4: fp8.accumulate_mm(a, b, bits, None, g),
            "start a fresh accumulator every promote_every elements of K and add it to the FP32 total"),
    Mistake("rounded", lambda a, b, p, bits=14, g=4: _acc_generic(a, b, p, bits, g, rounding=True),
            "the tensor core truncates: keep the top acc_bits bits and drop the rest (fp8.truncate)"),
    Mistake("not reset", lambda a, b, p, bits=14, g=4: _acc_generic(a, b, p, bits, g, reset=False),
            "after promoting a chunk, the limited accumulator starts again from 0"),
    Mistake("every product", lambda a, b, p, bits=14, g=4: fp8.accumulate_mm(a, b, bits, p, 1),
            "add the exact sum of `group` products, then truncate once, not after every product"),
    Mistake("truncated total", lambda a, b, p, bits=14, g=4: _acc_generic(a, b, p, bits, g, truncate_total=True),
            "the promoted total lives in FP32: add each chunk to it without truncating"),
)


EXERCISES = [
    Exercise(
        id="02.round_e4m3", number="2.1", target="round_e4m3", points=2,
        task="round every element of x to the nearest E4M3 value (ties to even, subnormals, saturation at ±448) "
             "and return them as float32",
        reference=round_e4m3_reference, public_cases=_round_public, hidden_cases=_round_hidden,
        compare=compare_values, mistakes=ROUND_MISTAKES, forbidden=("dslab.fp8.round_to_format",),
        hint="step at |x| = 2^(e-3) with e = floor(log2|x|) but at least -6; round |x|/step half to even; cap at 448",
        giveaways=("step = torch.exp2((binade - 3).float())", "torch.clamp(e - 1, min=-6)",
                   "torch.round(mag / step) * step", "step = 2^(floor(log2|x|) - 3)"),
    ),
    Exercise(
        id="02.quantize_tiles", number="2.2", target="quantize_tiles", points=2,
        task="quantize x [M, K] in 1×block tiles: return (E4M3 values of x/scale as float32 [M, K], scales "
             "[M, ceil(K/block)]) with scale = max(amax, 1e-4) / 448",
        reference=quantize_tiles_reference, public_cases=_tiles_public, hidden_cases=_tiles_hidden,
        compare=compare_quantized, mistakes=TILE_MISTAKES,
        forbidden=("dslab.fp8.quantize", "dslab.fp8.fake_quantize", "dslab.fp8.Recipe.fake"),
        hint="per row, per block of columns: amax = max |x| (at least 1e-4), scale = amax/448, values = E4M3(x/scale)",
        giveaways=("pad(x.float(), (0, n_tiles * block - k))", ".view(m, n_tiles, block)",
                   "tiles.abs().amax(dim=-1)", "values.view(m, -1)[:, :k]"),
    ),
    Exercise(
        id="02.flush_threshold", number="2.3", target="flush_threshold", points=1, kind="predict",
        task="return the largest |x| that still quantizes to 0 in a group with this amax, for E4M3 or E5M2",
        reference=fp8.flush_threshold, public_cases=_flush_public, hidden_cases=_flush_hidden,
        compare=compare_number, mistakes=FLUSH_MISTAKES, forbidden=("dslab.fp8.flush_threshold",),
        hint="x/scale rounds to 0 when it is at most half the smallest subnormal; scale = max(amax, 1e-4)/max",
        giveaways=("scale * smallest_subnormal / 2", "min_subnormal / 2", "half the smallest subnormal", "2^-10"),
    ),
    Exercise(
        id="02.dequantize_blocks", number="2.4", target="dequantize_blocks", points=2, kind="debug",
        task="find and fix the bugs in dequantize_blocks: return the weight [M, N] that fp8.quantize(w, 'block', "
             "block) turned into q and scales, for a weight of any shape",
        reference=dequantize_blocks_reference, public_cases=_blocks_public, hidden_cases=_blocks_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-30), mistakes=BLOCK_MISTAKES,
        forbidden=("dslab.fp8.dequantize", "dslab.fp8.fake_quantize"),
        hint="scales[i // block, j // block] multiplies q[i, j]; sizes need not be multiples of block",
        giveaways=("return q * s", "[:m, :n]", "* weight_scale_inv", "times the scale", "multiples of 128"),
    ),
    Exercise(
        id="02.promoted_matmul", number="2.5", target="promoted_matmul", points=2,
        task="return a @ b.T accumulated in an acc_bits register (truncated after every `group` products) that is "
             "promoted into an FP32 sum every promote_every elements of K",
        reference=promoted_matmul_reference, public_cases=_acc_public, hidden_cases=_acc_hidden,
        compare=compare_accumulation, mistakes=ACC_MISTAKES,
        forbidden=("dslab.fp8.accumulate_mm", "dslab.fp8.scaled_mm"),
        hint="for each chunk of promote_every columns: acc = 0; for each group: acc = truncate(acc + exact group "
             "sum); then total += acc (FP32)",
        giveaways=("for start in range(0, k, promote_every)", "acc = torch.zeros_like(total)",
                   "fp8.truncate(acc + a[:, g:stop] @ b[:, g:stop].T, acc_bits)", "total += acc"),
    ),
]
