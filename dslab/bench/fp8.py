"""FP8 training on the CPU: one linear layer forward + backward with DeepSeek-V3's recipe against the same layer in
float32, and the speed of the limited-precision accumulation emulation.

Headline: ``dslab.fp8.fp8_linear`` (E4M3, 1×128 activation tiles, 128×128 weight blocks, the activation cached as
FP8 and re-quantized as 128×1 tiles for the weight gradient, dY quantized twice) over ``F.linear`` in float32, both
forward + backward at 4096 tokens × 1024 → 1024, interleaved in the same process. The three GEMMs are the same
float32 GEMMs in both (the FP8 path multiplies dequantized values); what the ratio measures is the cost of the five
quantizations per step (amax per group, divide, round to the FP8 grid, multiply back) and of reading the FP8 cache
back. Rounding uses the FP32 adder (``_round_to_grid``) in cache-sized pieces: casting to ``float8_e4m3fn`` and back
costs ~45 ms per 4M elements on the CPU (the upcast is not vectorised), the adder trick ~20 ms.

Measured on 2 shared CPU cores (AMD EPYC, AVX-512) while other jobs kept the load average at 10–13, 2026-12-02:
with ``--threads 1``, **1.38x** (paired ratios 1.22–1.74; the GEMMs alone on quantized operands 864 ms against
892 ms for the whole float32 step, so ~0.25–0.3 s of quantization on top); accumulation emulation at 256×4096×256
0.20 s promoted every 128 and 0.21 s unpromoted (errors 0.035% and 1.97%). Bounds: the quantization is memory-bound
element-wise work (about five passes over each 4M-element operand per quantization, five quantizations and one FP8
read-back per step); the accumulation emulation is 1024 sequential element-wise steps over a 256×256 accumulator.
With the default two threads on that busy machine the same run gave 4.9x and 7.5 s for the accumulation: every one
of the many small element-wise ops waits for whichever of its two threads was descheduled, which the large GEMMs
hide. Use ``--threads 1`` on a shared machine; re-measure on a quiet one.
``torch._scaled_mm`` on the CPU (row-wise scales, bf16 out) is reported beside a float32 GEMM for reference: it
dequantizes and accumulates in FP32 (lab 02 measures that), so it is no faster than float32 here (353 vs 301 ms).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from dslab import fp8
from dslab.bench import Result, paired_ratios
from dslab.runtime import timeit


def _linear_steps(tokens: int, d_in: int, d_out: int, block: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=gen).requires_grad_()
    w = (torch.randn(d_out, d_in, generator=gen) * d_in**-0.5).requires_grad_()
    gy = torch.randn(tokens, d_out, generator=gen)
    recipe = fp8.Recipe(block=block)

    def step(fn):
        def run():
            fn(x, w).backward(gy)
            x.grad = w.grad = None
        return run

    return step(lambda a, b: fp8.fp8_linear(a, b, recipe)), step(F.linear), (x, w, gy, recipe)


def measure_linear(tokens: int = 4096, d_in: int = 1024, d_out: int = 1024, block: int = fp8.BLOCK,
                   rounds: int = 7) -> dict:
    """FP8-recipe linear vs float32 linear, forward + backward: the median paired ratio and its spread, ms of
    each, and the ms of the same three GEMMs on already-quantized operands (what the FP8 path cannot avoid)."""
    fp8_step, f32_step, (x, w, gy, recipe) = _linear_steps(tokens, d_in, d_out, block)
    ratios = paired_ratios(fp8_step, f32_step, rounds=rounds)
    xd, wd = recipe.fake(x.detach(), "tile"), recipe.fake(w.detach(), "block")
    gd, gt, xt = recipe.fake(gy, "tile"), recipe.fake(gy, "tile_t"), recipe.fake(xd, "tile_t")

    def gemms():
        return xd @ wd.t(), gd @ wd, gt.t() @ xt

    return {"ratio": statistics.median(ratios), "ratios": sorted(ratios),
            "fp8_ms": 1e3 * timeit(fp8_step, repeats=3), "fp32_ms": 1e3 * timeit(f32_step, repeats=3),
            "gemms_only_ms": 1e3 * timeit(gemms, repeats=3)}


def measure_accumulation(m: int = 256, k: int = 4096, n: int = 256) -> dict:
    """Seconds of ``accumulate_mm`` on FP8-valued N(0, 1) inputs, with and without promotion, and their errors."""
    gen = torch.Generator().manual_seed(0)
    a = fp8.round_to_format(torch.randn(m, k, generator=gen))
    b = fp8.round_to_format(torch.randn(n, k, generator=gen))
    ref = a.double() @ b.double().t()
    out = {}
    for label, every in (("promoted every 128", fp8.N_C), ("never promoted", None)):
        start = time.perf_counter()
        c = fp8.accumulate_mm(a, b, promote_every=every)
        out[label] = {"seconds": time.perf_counter() - start, "max_rel_error": fp8.max_relative_error(c, ref)}
    return out


def measure_scaled_mm(m: int = 4096, k: int = 1024, n: int = 1024) -> dict:
    """ms of torch._scaled_mm (E4M3, row-wise scales, bf16 out) and of a float32 mm of the same shape."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    qa, qb = fp8.quantize(a, "row"), fp8.quantize(b, "row")
    scaled = 1e3 * timeit(lambda: torch._scaled_mm(qa.values, qb.values.t(), scale_a=qa.scales,
                                                   scale_b=qb.scales.reshape(1, n), out_dtype=torch.bfloat16), 3)
    return {"scaled_mm_ms": scaled, "fp32_mm_ms": 1e3 * timeit(lambda: a @ b.t(), 3)}


def run(quick: bool = False) -> Result:
    tokens = 1024 if quick else 4096
    lin = measure_linear(tokens, rounds=3 if quick else 7)
    acc = measure_accumulation(k=1024 if quick else 4096)
    mm = measure_scaled_mm(tokens)
    details = {
        "setup": f"CPU float32, {tokens} tokens x 1024 -> 1024, E4M3, block 128, {torch.get_num_threads()} threads",
        "fp8_recipe_ms": round(lin["fp8_ms"], 1), "fp32_ms": round(lin["fp32_ms"], 1),
        "same_three_gemms_on_quantized_operands_ms": round(lin["gemms_only_ms"], 1),
        "paired_ratios": [round(r, 2) for r in lin["ratios"]],
        "accumulation_emulation": {k: f"{v['seconds']:.3f} s, max rel error {v['max_rel_error']:.3%}"
                                   for k, v in acc.items()},
        "accumulation_target": "<= 0.5 s at 256x4096x256",
        "torch._scaled_mm_row_wise_ms_vs_fp32_mm_ms": f"{mm['scaled_mm_ms']:.1f} vs {mm['fp32_mm_ms']:.1f}",
    }
    return Result(name="fp8", value=lin["ratio"], unit="x", op="<=", target=2.0, details=details)
