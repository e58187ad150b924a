"""FP8 (DeepSeek-V3 §3.3): formats and casts bit for bit against torch's float8 dtypes, scaling granularities,
limited-precision accumulation and promotion, emulation against torch._scaled_mm, the FP8 training path (one linear,
the grouped experts, MLA's projections, a whole tiny Transformer), the memory table, and the real FP8 path
(``torch._scaled_mm`` with row-wise scales, its fallback to the emulation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dslab import accounting, configs, fp8
from dslab.dispatch import grouped_dispatch, loop_dispatch
from dslab.fp8 import real as fp8_real
from dslab.mla import expand_latent, latent_cache_step
from dslab.model import Transformer
from dslab.nn import rotary_freqs

DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


# ------------------------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("name", ["e4m3", "e5m2", "bf16", "fp16"])
def test_format_constants_match_torch(name):
    f = fp8.get_format(name)
    info = torch.finfo(f.dtype)
    assert (f.max, f.min_normal, f.epsilon) == (info.max, info.smallest_normal, info.eps)
    assert f.min_subnormal == info.smallest_normal * info.eps


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_every_representable_value_matches_the_dtype(name):
    codes = torch.arange(256, dtype=torch.uint8).view(DTYPES[name]).double()
    finite = codes[torch.isfinite(codes)].unique()  # +0 and -0 collapse into one zero
    values = fp8.representable_values(name)
    assert torch.equal(values, finite)
    assert len(values) == {"e4m3": 253, "e5m2": 247}[name]
    assert values.max() == {"e4m3": 448, "e5m2": 57344}[name]


def test_spacing_and_relative_precision():
    assert fp8.spacing(torch.tensor([1.0, 1.9, 2.0, 448.0, 2**-6, 2**-8, 0.0])).tolist() == [
        0.125, 0.125, 0.25, 32.0, 2**-9, 2**-9, 2**-9]
    x = torch.exp2(torch.linspace(-6, 8.8, 500))
    rel = fp8.relative_precision(x)
    assert bool(((rel <= 0.125 + 1e-7) & (rel > 0.0625 - 1e-7)).all())  # normals: 2^-M .. 2^-(M-1)
    assert float(fp8.relative_precision(torch.tensor([2**-9]))) == 1.0  # the smallest subnormal


# ---------------------------------------------------------------------------------------------- casts, bitwise
def _probe_values(name: str) -> torch.Tensor:
    f = fp8.get_format(name)
    v = fp8.representable_values(name)
    mid = ((v[1:] + v[:-1]) / 2).float()  # every rounding midpoint, both signs
    inf = torch.tensor(float("inf"))
    gen = torch.Generator().manual_seed(0)
    spread = torch.exp2(torch.empty(20_000).uniform_(-30, 20, generator=gen)) * torch.randn(20_000, generator=gen)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), f.max * 1.01, f.max * 1.2,
                             f.max * 2, 1e30, -1e30, f.min_subnormal / 2, -f.min_subnormal / 2,
                             f.min_subnormal * 0.50001, 61439.996, 61440.0, 464.0, 465.0])
    return torch.cat([v.float(), mid, torch.nextafter(mid, inf), torch.nextafter(mid, -inf), spread, specials])


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_round_to_format_is_bit_identical_to_torch(name):
    x = _probe_values(name)
    ours = fp8.round_to_format(x, name)
    theirs = x.to(DTYPES[name]).float()
    assert bool(_same_bits(ours, theirs).all())


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_round_to_format_also_matches_bf16_and_fp16(name, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.exp2(torch.empty(20_000).uniform_(-60, 60, generator=gen)) * torch.randn(20_000, generator=gen)
    x = torch.cat([x, torch.tensor([65504.0, 65519.0, 65520.0, 3.4e38, float("inf"), float("nan")])])
    assert bool(_same_bits(fp8.round_to_format(x, name), x.to(dtype).float()).all())


def test_overflow_semantics_follow_torch():
    big = torch.tensor([449.0, 500.0, 1e6, float("inf"), float("-inf"), float("nan")])
    assert fp8.round_to_format(big, "e4m3")[:5].tolist() == [448.0, 448.0, 448.0, 448.0, -448.0]  # saturates
    assert big.to(torch.float8_e4m3fn).float()[:5].tolist() == [448.0, 448.0, 448.0, 448.0, -448.0]
    e5 = fp8.round_to_format(torch.tensor([61439.0, 61440.0, 1e6, float("inf")]), "e5m2")
    assert e5.tolist() == [57344.0, float("inf"), float("inf"), float("inf")]  # overflows to inf
    assert fp8.round_to_format(big, "e4m3")[5].isnan() and fp8.round_to_format(big, "e5m2")[5].isnan()


def test_hot_path_rounding_equals_the_cast():
    """The training path rounds with the FP32 adder; it must give torch's values, in both formats and both scale
    modes, for every granularity."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 200, generator=gen) * torch.logspace(-6, 3, 200)
    for name in ("e4m3", "e5m2"):
        for pow2 in (False, True):
            recipe = fp8.Recipe(64, name, name, pow2)
            for gran in fp8.GRANULARITIES:
                assert torch.equal(recipe.fake(x, gran), fp8.fake_quantize(x, gran, 64, name, pow2)), (name, gran)


# ------------------------------------------------------------------------------------------------------ scaling
@pytest.mark.parametrize("gran,grid", [("tensor", (1, 1)), ("row", (200, 1)), ("tile", (200, 3)),
                                       ("tile_t", (2, 300)), ("block", (2, 3))])
def test_scale_grids_and_dtypes(gran, grid):
    x = torch.randn(200, 300)
    q = fp8.quantize(x, gran, 128)
    assert q.values.dtype == torch.float8_e4m3fn and q.values.shape == x.shape
    assert tuple(q.scales.shape) == grid and q.scales.dtype == torch.float32
    assert fp8.dequantize(q.values, q.scales, gran, 128).shape == x.shape


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_round_trip_error_is_at_most_half_a_step(name):
    f = fp8.get_format(name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 512, generator=gen) * torch.exp2(torch.randint(-8, 8, (64, 1), generator=gen).float())
    q = fp8.quantize(x, "tile", 128, name)
    xd = fp8.dequantize(q.values, q.scales, "tile", 128)
    scale = q.scales.repeat_interleave(128, 1)
    v = x / scale  # where each element sits on the FP8 grid
    assert bool(((xd - x).abs() <= fp8.spacing(v, name) * scale / 2 * (1 + 1e-6)).all())
    normal = v.abs() >= f.min_normal
    assert float(((xd - x).abs() / x.abs())[normal].max()) <= 2.0 ** -(f.mantissa_bits + 1) * (1 + 1e-6)
    assert bool((q.values.float().abs().amax(1) == f.max).all())  # every tile's amax lands on the max exactly


def test_ragged_edges_zero_tiles_and_power_of_two_scales():
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    x[1, 128:] = 0.0  # an all-zero (ragged) tile
    q = fp8.quantize(x, "tile", 128)
    assert torch.allclose(q.scales[:, 1], x[:, 128:].abs().amax(1).clamp(min=1e-4) / 448)  # own elements only
    assert q.scales[1, 1] == 1e-4 / 448 and bool((q.values[1, 128:].float() == 0).all())
    assert torch.equal(q.values[:, 128:].float(), fp8.quantize(x[:, 128:], "tile", 128).values.float())
    p = fp8.quantize(x, "block", 128, pow2_scales=True)
    log2 = torch.log2(p.scales)
    block_amax = torch.stack([x[:, :128].abs().amax(), x[:, 128:].abs().amax()])  # each block its own elements
    assert torch.equal(log2, log2.round()) and bool((p.scales[0] >= block_amax / 448 - 1e-12).all())
    assert fp8.flush_threshold(448.0) == 2.0**-10 and fp8.flush_threshold(0.0) == 1e-4 / 448 * 2.0**-10


def test_flush_threshold_is_where_values_become_zero():
    t = fp8.flush_threshold(1000.0)
    x = torch.tensor([[1000.0, t, t * 1.001, -t, -t * 1.001]])
    q = fp8.quantize(x, "row").values.float()[0]
    assert q[1:].tolist()[::2] == [0.0, -0.0] and bool((q[2::2] != 0).all())


def test_bad_input_names_the_parameter():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="fmt"):
        fp8.quantize(x, fmt="e3m4")
    with pytest.raises(ValueError, match="granularity"):
        fp8.quantize(x, "column")
    with pytest.raises(ValueError, match="block"):
        fp8.quantize(x, "tile", 0)
    with pytest.raises(TypeError, match="block"):
        fp8.quantize(x, "tile", 1.5)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 0] = bad
        with pytest.raises(ValueError, match="x must be finite"):
            fp8.quantize(y)
    with pytest.raises(ValueError, match="2-D"):
        fp8.quantize(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fp8.quantize([[1.0]])
    with pytest.raises(ValueError, match="scales must have shape"):
        fp8.dequantize(fp8.quantize(x).values, torch.ones(4, 2), "tile", 128)
    with pytest.raises(ValueError, match="promote_every must divide block"):
        q = fp8.quantize(torch.randn(2, 256))
        fp8.scaled_mm(q.values, q.scales, q.values, torch.ones(1, 2), acc_bits=14, promote_every=96)
    with pytest.raises(ValueError, match="multiple of group"):
        fp8.accumulate_mm(x, x, promote_every=6, group=4)
    with pytest.raises(ValueError, match="share K"):
        fp8.accumulate_mm(x, torch.randn(4, 9))
    with pytest.raises(ValueError, match="bits"):
        fp8.truncate(x, 25)
    with pytest.raises(ValueError, match="fmt"):
        fp8.Recipe(fmt="int8")
    with pytest.raises(TypeError, match="float8"):
        fp8.scaled_mm(x, torch.ones(1, 1), x, torch.ones(1, 1), impl="torch")


# ------------------------------------------------------------------------------------------------- accumulation
def test_truncate_keeps_the_top_bits_toward_zero():
    x = torch.tensor([1 + 2**-13 + 2**-20, -(1 + 2**-13 + 2**-20), 3.0, 2**-130])
    assert fp8.truncate(x, 14).tolist() == [1 + 2**-13, -(1 + 2**-13), 3.0, 2**-130]
    assert torch.equal(fp8.truncate(x, 24), x)


def _loop_accumulate(a, b, promote_every, bits, group):
    """An independent restatement: one output at a time, in plain Python over floats."""
    out = torch.zeros(a.shape[0], b.shape[0])
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            total = 0.0
            for start in range(0, a.shape[1], promote_every):
                acc = torch.zeros((), dtype=torch.float32)
                for g in range(start, min(start + promote_every, a.shape[1]), group):
                    end = min(g + group, start + promote_every, a.shape[1])
                    part = float((a[i, g:end].double() * b[j, g:end].double()).sum())
                    acc = fp8.truncate((acc + part).reshape(1), bits)[0]
                total = float(torch.tensor(total, dtype=torch.float32) + acc)
            out[i, j] = total
    return out


def test_accumulate_mm_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(4)
    a = fp8.round_to_format(torch.randn(3, 200, generator=gen))
    b = fp8.round_to_format(torch.randn(2, 200, generator=gen))
    for every, bits, group in ((64, 14, 4), (200, 10, 2), (32, 12, 8)):
        assert torch.equal(fp8.accumulate_mm(a, b, bits, every, group), _loop_accumulate(a, b, every, bits, group))


def test_promotion_cuts_the_error_tenfold_at_k4096():
    """V3 §3.3.2: "nearly 2%" at K = 4096 without promotion; N_C = 128 fixes it. Measured on 256×4096×256."""
    gen = torch.Generator().manual_seed(0)
    a = fp8.round_to_format(torch.randn(256, 4096, generator=gen))
    b = fp8.round_to_format(torch.randn(256, 4096, generator=gen))
    exact = a.double() @ b.double().t()
    never = fp8.max_relative_error(fp8.accumulate_mm(a, b, promote_every=None), exact)
    promoted = fp8.max_relative_error(fp8.accumulate_mm(a, b, promote_every=128), exact)
    assert 0.005 < never < 0.05  # the order of magnitude of the paper's ~2%
    assert promoted < 1e-3 and never / promoted >= 10
    assert fp8.max_relative_error(fp8.accumulate_mm(a[:8], b[:8], 24, None, 4), exact[:8, :8]) < 1e-6


# ----------------------------------------------------------------------------------- emulation vs torch._scaled_mm
@pytest.mark.parametrize("ga,gb", [("tensor", "tensor"), ("row", "row"), ("tile", "block"), ("tile", "tensor"),
                                   ("row", "block")])
def test_emulation_matches_torch_scaled_mm(ga, gb):
    gen = torch.Generator().manual_seed(5)
    a, w = torch.randn(48, 384, generator=gen), torch.randn(80, 384, generator=gen)
    qa, qb = fp8.quantize(a, ga), fp8.quantize(w, gb)
    kernel = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, impl="torch")
    emulated = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales)
    reference = fp8.dequantize(qa.values, qa.scales, ga) @ fp8.dequantize(qb.values, qb.scales, gb).t()
    assert fp8.max_relative_error(kernel, emulated) < 1e-6 and fp8.max_relative_error(emulated, reference) < 1e-6
    limited = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, acc_bits=14)
    assert 0 < fp8.max_relative_error(limited, kernel) < 2e-3  # the 14-bit accumulator, promoted every 128


def test_torch_scaled_mm_refuses_fine_grained_scales():
    """Why dslab calls it per 128-wide chunk of K: torch 2.13 takes per-tensor or row-wise scales only."""
    q = fp8.quantize(torch.randn(32, 256), "tile")
    with pytest.raises((RuntimeError, ValueError), match="scal"):
        torch._scaled_mm(q.values, q.values.t(), scale_a=q.scales, scale_b=q.scales.t(), out_dtype=torch.float32)


# --------------------------------------------------------------------------------------------- FP8 linear layer
def test_fp8_linear_is_the_recipe_composed_by_hand():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(300, 200, generator=gen, requires_grad=True)
    w = torch.randn(150, 200, generator=gen, requires_grad=True)
    gy = torch.randn(300, 150, generator=gen)
    y = fp8.fp8_linear(x, w, fp8.Recipe(32))
    node = y.grad_fn.next_functions[0][0] if not hasattr(y.grad_fn, "saved_tensors") else y.grad_fn
    saved = node.saved_tensors
    assert saved[0].dtype == torch.float8_e4m3fn and saved[0].shape == x.shape  # x is cached as FP8
    y.backward(gy)
    xd, wd = fp8.fake_quantize(x.detach(), "tile", 32), fp8.fake_quantize(w.detach(), "block", 32)
    assert torch.equal(y, xd @ wd.t())  # forward: 1×32 tiles of x, 32×32 blocks of W
    assert torch.equal(x.grad, fp8.fake_quantize(gy, "tile", 32) @ wd)  # dgrad: tiles of dY along N
    wgrad = fp8.fake_quantize(gy, "tile_t", 32).t() @ fp8.fake_quantize(xd, "tile_t", 32)
    assert torch.equal(w.grad, wgrad)  # wgrad: 32×1 tiles along tokens, x re-quantized from its FP8 copy


def test_fp8_linear_gradients_are_close_to_full_precision():
    """Stated tolerance: E4M3 keeps 4 significant bits, so each operand carries ~2-3% rms error; the outputs and
    both gradients stay within 6% (relative Frobenius norm) of float32; BF16 GEMM inputs within 0.5%."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(512, 384, generator=gen, requires_grad=True)
    w = (torch.randn(256, 384, generator=gen) * 0.05).requires_grad_()
    gy = torch.randn(512, 256, generator=gen)
    F.linear(x, w).backward(gy)
    ref = (x @ w.t()).detach(), x.grad.clone(), w.grad.clone()
    for recipe, tol in ((fp8.Recipe(), 0.06), (fp8.Recipe(fmt="bf16", grad_fmt="bf16"), 0.005)):
        x.grad = w.grad = None
        y = fp8.fp8_linear(x, w, recipe)
        y.backward(gy)
        for got, want in zip((y.detach(), x.grad, w.grad), ref):
            assert float((got - want).norm() / want.norm()) < tol


def test_fp8_linear_keeps_dtypes_and_shapes():
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    y = fp8.fp8_linear(x, w)
    y.float().sum().backward()
    assert y.shape == (2, 5, 32) and y.dtype == torch.bfloat16
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="x must be"):
        fp8.fp8_linear(torch.randn(3, 63), w)


# --------------------------------------------------------------------------------------------- grouped experts
def test_segment_tiles_restart_at_every_expert():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(100, 24, generator=gen) * torch.exp2(torch.randint(-5, 5, (100, 1), generator=gen).float())
    counts = [30, 0, 45, 25]
    ends = torch.tensor(counts).cumsum(0)
    recipe = fp8.Recipe(16)
    got = fp8.fake_quantize_segments(x, ends, recipe)
    pieces = [fp8.fake_quantize(seg, "tile_t", 16) for seg in x.split(counts) if len(seg)]
    assert torch.equal(got, torch.cat(pieces))


def test_grouped_experts_forward_with_the_quantizer():
    gen = torch.Generator().manual_seed(9)
    t, dim, inter, n_exp, k = 40, 32, 24, 4, 2
    x = torch.randn(t, dim, generator=gen)
    w1, w3 = torch.randn(n_exp, inter, dim, generator=gen) * 0.2, torch.randn(n_exp, inter, dim, generator=gen) * 0.2
    w2 = torch.randn(n_exp, dim, inter, generator=gen) * 0.2
    idx = torch.stack([torch.randperm(n_exp, generator=gen)[:k] for _ in range(t)])
    wts = torch.rand(t, k, generator=gen)
    quant = fp8.ExpertQuantizer(fp8.Recipe(8))
    got = grouped_dispatch(x, wts, idx, w1, w2, w3, quant=quant)
    ref = torch.zeros_like(x)
    for e in range(n_exp):
        tok, slot = torch.where(idx == e)
        xs = fp8.fake_quantize(x[tok], "tile", 8)
        h = F.silu(xs @ fp8.fake_quantize(w1[e], "block", 8).t()) * (xs @ fp8.fake_quantize(w3[e], "block", 8).t())
        h = fp8.fake_quantize(h * wts[tok, slot, None], "tile", 8)
        ref.index_add_(0, tok, h @ fp8.fake_quantize(w2[e], "block", 8).t())
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    exact = loop_dispatch(x, wts, idx, w1, w2, w3)
    assert 0 < float((got - exact).norm() / exact.norm()) < 0.08


def test_grouped_experts_gradients_close_to_exact_and_default_untouched():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(64, 32, generator=gen, requires_grad=True)
    ws = [torch.randn(4, 16, 32, generator=gen) * 0.2, torch.randn(4, 32, 16, generator=gen) * 0.2,
          torch.randn(4, 16, 32, generator=gen) * 0.2]
    ws = [w.requires_grad_() for w in ws]
    idx = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(64)])
    wts = torch.rand(64, 2, generator=gen, requires_grad=True)
    gy = torch.randn(64, 32, generator=gen)

    def grads(quant):
        for t in (x, wts, *ws):
            t.grad = None
        grouped_dispatch(x, wts, idx, ws[0], ws[1], ws[2], quant=quant).backward(gy)
        return [t.grad.clone() for t in (x, wts, *ws)]

    exact, default, quantized = grads(None), grads(None), grads(fp8.ExpertQuantizer(fp8.Recipe(16)))
    assert all(torch.equal(a, b) for a, b in zip(exact, default))
    for q, e in zip(quantized, exact):
        assert 0 < float((q - e).norm() / e.norm()) < 0.1


def test_grouped_experts_quantizer_under_bf16_autocast():
    """The emulation's float32 operands are cast back to the autocast dtype (the gpu presets train under bf16
    autocast, and precision "fp8-emulated", or "fp8" falling back, used to fail in index_add_ on mixed dtypes)."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(32, 16, generator=gen, requires_grad=True)
    ws = [(torch.randn(4, 8, 16, generator=gen) * 0.2).requires_grad_(),
          (torch.randn(4, 16, 8, generator=gen) * 0.2).requires_grad_(),
          (torch.randn(4, 8, 16, generator=gen) * 0.2).requires_grad_()]
    idx = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(32)])
    wts = torch.rand(32, 2, generator=gen)
    quant = fp8.ExpertQuantizer(fp8.Recipe(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = grouped_dispatch(x, wts, idx, *ws, quant=quant)
    y.float().sum().backward()
    ref = grouped_dispatch(x.detach(), wts, idx, *(w.detach() for w in ws), quant=quant)
    assert y.dtype == torch.bfloat16 and x.grad is not None and all(w.grad is not None for w in ws)
    assert float((y.detach().float() - ref).norm() / ref.norm()) < 0.06  # bf16 inputs: other E4M3 codes at times


# ---------------------------------------------------------------------------------------- MLA hook, whole model
def test_mla_functional_paths_accept_the_projection_module():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, 32, generator=gen)
    lin = nn.Linear(32, 24 + 8, bias=False)
    freqs = rotary_freqs(8, 5)
    a = latent_cache_step(x, lin.weight, torch.ones(24), freqs)
    b = latent_cache_step(x, lin, torch.ones(24), freqs)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    up = nn.Linear(24, 4 * (6 + 5), bias=False)
    k1, v1 = expand_latent(a[0], up.weight, 4, 6, 5)
    k2, v2 = expand_latent(a[0], up, 4, 6, 5)
    assert torch.allclose(k1, k2, atol=1e-6) and torch.allclose(v1, v2, atol=1e-6)


def _tiny_args():
    return configs.load("tiny-v3").replace(vocab_size=40, dim=64, n_layers=2, n_heads=2, q_lora_rank=32,
                                           kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                           v_head_dim=16, inter_dim=96, moe_inter_dim=32, n_routed_experts=8,
                                           n_expert_groups=2, n_limited_groups=1, n_activated_experts=2,
                                           max_seq_len=32, original_seq_len=32, n_mtp=0)


def test_enable_training_switches_the_gemms_and_keeps_the_rest():
    torch.manual_seed(0)
    model = Transformer(_tiny_args())
    before = {n: p for n, p in model.named_parameters()}
    tokens = torch.randint(40, (2, 16), generator=torch.Generator().manual_seed(1))
    model.train()
    exact = model(tokens).detach()
    converted = fp8.enable_training(model, block=16)
    assert {"layers.0.attn.wq_a", "layers.0.attn.wq_b", "layers.0.attn.wkv_a", "layers.0.attn.wkv_b",
            "layers.0.attn.wo", "layers.0.ffn.w1", "layers.1.ffn.experts",
            "layers.1.ffn.shared_experts.w2"} <= set(converted)
    assert dict(model.named_parameters()) == before  # the same Parameter objects: optimizers keep working
    kinds = fp8.precision_map(model)
    assert kinds["head.weight"] == kinds["embed.weight"] == kinds["layers.1.ffn.gate.weight"] == "high"
    assert kinds["layers.0.attn.kv_norm.weight"] == "high" and kinds["layers.1.ffn.experts.w1"] == "fp8"
    assert kinds["layers.0.attn.wkv_b.weight"] == "fp8"
    calls = []
    model.layers[0].attn.wkv_b.register_forward_hook(lambda *a: calls.append(1))
    model.layers[0].attn.wkv_a.register_forward_hook(lambda *a: calls.append(2))
    out = model(tokens)
    assert sorted(calls) == [1, 2]  # MLA calls its FP8 projections in the training path
    assert 0 < float((out.detach() - exact).norm() / exact.norm()) < 0.1
    out.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    fp8.disable_training(model)
    assert torch.equal(model(tokens), exact) and not any(isinstance(m, fp8.FP8Linear) for m in model.modules())


def test_enable_training_refuses_loop_dispatch_and_changes_nothing():
    model = Transformer(_tiny_args(), moe_options={"dispatch": "loop"})
    with pytest.raises(ValueError, match="dispatch"):
        fp8.enable_training(model)
    assert not any(isinstance(m, fp8.FP8Linear) for m in model.modules())


def test_small_fp8_training_run_tracks_bf16():
    """Stated tolerance for a tiny run: over the last 10 of 40 steps the mean training loss of FP8 (E4M3, 16-wide
    tiles) stays within 2% of the same run with BF16 GEMM inputs (V3 reports < 0.25% at 16B-230B parameters)."""
    from dslab.train import TrainConfig, train_lm

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (20_000,), generator=gen) % torch.randint(5, 40, (20_000,), generator=gen)
    cfg = TrainConfig(steps=40, batch_size=4, block_size=32, lr=3e-3, warmup=4, eval_every=40, eval_batches=1)
    losses = {}
    for fmt in ("bf16", "e4m3"):
        torch.manual_seed(0)
        model = Transformer(_tiny_args())
        fp8.enable_training(model, block=16, fmt=fmt, grad_fmt=fmt)
        history = train_lm(model, ids, ids, cfg)
        losses[fmt] = sum(r["loss"] for r in history[-10:]) / 10
    assert losses["e4m3"] < history[0]["loss"] - 0.3  # it learns
    assert abs(losses["e4m3"] - losses["bf16"]) / losses["bf16"] < 0.02


# ------------------------------------------------------------------------------------------------------- memory
def test_memory_breakdown():
    v3 = configs.load("deepseek-v3-671b")
    total = accounting.total_params(v3)
    gemm = fp8.gemm_params(v3)
    other = (accounting.embedding_params(v3) + accounting.head_params(v3)
             + (v3.n_layers - v3.n_dense_layers) * accounting.gate_params(v3)
             + v3.n_layers * (accounting.norm_params(v3) + v3.q_lora_rank + v3.kv_lora_rank) + v3.dim)
    assert gemm + other == total
    rows = {p: fp8.memory_breakdown(v3, p, 4096) for p in fp8.MEMORY_PRECISIONS}
    assert rows["fp8"]["master weights"] == rows["bf16"]["master weights"] == 4 * total
    assert rows["fp8"]["gradients"] == rows["bf16"]["gradients"] == 4 * total
    assert rows["fp8"]["GEMM weight copies"] / rows["bf16"]["GEMM weight copies"] == pytest.approx(0.5, rel=1e-3)
    ratio = rows["fp8"]["activations: GEMM inputs"] / rows["bf16"]["activations: GEMM inputs"]
    assert ratio == pytest.approx((1 + 4 / 128) / 2)
    assert rows["fp8"]["optimizer (AdamW m, v)"] == 4 * total and rows["bf16"]["optimizer (AdamW m, v)"] == 8 * total
    assert rows["fp32"]["GEMM weight copies"] == 0
    with pytest.raises(ValueError, match="precision"):
        fp8.memory_breakdown(v3, "int4")


# ---------------------------------------------------------------------------------------------- real FP8 path
def _old_rowwise(t):
    """The real FP8 path as dslab.train had it (448 and 1e-4 typed out, FP32 kernel output): the reference."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-4) / 448.0
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def _old_mm(a, b, out_dtype):
    qa, sa = _old_rowwise(a)
    qb, sb = _old_rowwise(b)
    return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=out_dtype)


def _linear_operands(seed):
    """x [32, 64], W [48, 64], dY [32, 48]: every dimension a multiple of 16, as the CUDA kernels need."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 64, generator=gen), torch.randn(48, 64, generator=gen), torch.randn(32, 48, generator=gen)


def _real_fp8_step(x, w, gy):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fp8_real._RealFP8Linear.apply(x, w)
    y.backward(gy)
    return y.detach(), x.grad, w.grad


def test_real_fp8_linear_matches_a_float_matmul_to_fp8_precision():
    x, w, gy = _linear_operands(0)
    y, gx, gw = _real_fp8_step(x, w, gy)
    for got, want in ((y, x @ w.t()), (gx, gy @ w), (gw, gy.t() @ x)):
        assert float((got - want).norm() / want.norm()) < 0.05
    assert fp8.real_fp8_supported("cpu") and not fp8.real_fp8_supported("meta")


def test_real_fp8_uses_the_format_constants_and_matches_the_old_path(monkeypatch):
    """Same numbers as the copy that lived in dslab.train; with the BF16 kernel output that CUDA gets (row-wise
    scaling refuses FP32 output there) within BF16 rounding of them."""
    assert fp8.E4M3.max == 448.0
    t = torch.tensor([[1.0, -3.0], [0.0, 0.0]])
    q, s = fp8_real._rowwise_fp8(t)
    assert torch.equal(s.flatten(), torch.tensor([3.0, fp8.AMAX_FLOOR]) / 448) and q.dtype == torch.float8_e4m3fn
    x, w, gy = _linear_operands(1)
    qx, sx = _old_rowwise(x)
    old = (_old_mm(x, w, torch.float32), _old_mm(gy, w.t().contiguous(), torch.float32),
           _old_mm(gy.t().contiguous(), (qx.float() * sx).t().contiguous(), torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(_real_fp8_step(x, w, gy), old))  # the CPU asks for FP32 directly
    assert fp8_real._kernel_dtype(torch.device("cpu"), torch.float32) == torch.float32
    assert fp8_real._kernel_dtype(torch.device("cuda"), torch.float32) == torch.bfloat16
    monkeypatch.setattr(fp8_real, "_kernel_dtype", lambda device, out_dtype: torch.bfloat16)
    for got, want in zip(_real_fp8_step(x, w, gy), old):
        assert got.dtype == torch.float32 and float((got - want).norm() / want.norm()) < 1e-2


def test_enable_real_fp8_swaps_the_linears_but_not_the_head():
    torch.manual_seed(0)
    model = Transformer(_tiny_args())
    before = dict(model.named_parameters())
    model.eval()
    swapped = fp8.enable_real_fp8(model)
    assert {"layers.0.attn.wq_a", "layers.0.attn.wo", "layers.0.ffn.w1", "layers.1.ffn.shared_experts.w2"} <= set(
        swapped)
    assert type(model.head) is nn.Linear and "head" not in swapped
    assert dict(model.named_parameters()) == before  # the same Parameter objects
    assert isinstance(model.layers[0].ffn.w1, fp8.RealFP8Linear) and not model.layers[0].ffn.w1.training
    model.train()
    tokens = torch.randint(40, (2, 16), generator=torch.Generator().manual_seed(1))
    model(tokens).float().logsumexp(-1).mean().backward()
    assert model.layers[0].ffn.w1.weight.grad is not None


@pytest.mark.parametrize("failure", ["unsupported", "kernel raises"])
def test_enable_real_fp8_falls_back_to_the_emulation(failure, monkeypatch):
    if failure == "unsupported":
        monkeypatch.setattr(fp8_real, "real_fp8_supported", lambda device: False)
    else:
        def refuse(*args, **kwargs):
            raise RuntimeError("Only bf16 high precision output types are supported for row-wise scaling.")

        monkeypatch.setattr(torch, "_scaled_mm", refuse)
    torch.manual_seed(0)
    model = Transformer(_tiny_args())
    with pytest.warns(RuntimeWarning, match="emulation"):
        names = fp8.enable_real_fp8(model)
    assert names == fp8.enable_training(Transformer(_tiny_args()))  # what the emulation reports
    assert isinstance(model.layers[0].ffn.w1, fp8.FP8Linear) and not any(
        isinstance(m, fp8.RealFP8Linear) for m in model.modules())


@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.real_fp8_supported("cuda")), reason="needs an FP8 GPU")
def test_real_fp8_linear_on_the_gpu_keeps_dtypes_and_device():
    x, w, gy = _linear_operands(2)
    cpu = _real_fp8_step(x, w, gy)
    gpu = _real_fp8_step(x.cuda(), w.cuda(), gy.cuda())
    for g, c in zip(gpu, cpu):
        assert g.device.type == "cuda" and g.dtype == torch.float32
        assert float((g.cpu() - c).norm() / c.norm()) < 1e-2  # BF16 kernel output on CUDA, FP32 on the CPU
