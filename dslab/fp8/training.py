"""FP8 training with DeepSeek-V3's recipe (§3.3, Fig. 6), emulated on any device.

``fp8_linear`` runs the three GEMMs of a linear layer (forward, input gradient, weight gradient) on FP8-quantized
inputs: E4M3 everywhere, activations and their gradients in 1×B tiles along the contracted dimension, re-quantized as
B×1 tiles for the weight gradient (which contracts over tokens), weights in B×B blocks; the activation is cached for
backward as FP8. The GEMMs themselves are exact (FP32, the numbers an FP8 tensor core with promotion produces up to
FP32 rounding): training does not emulate the 14-bit accumulator. ``enable_training`` switches a
``dslab.model.Transformer`` to it (dense layers through ``FP8Linear``, routed experts through ``ExpertQuantizer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dslab import validate
from dslab.fp8.formats import BF16, BLOCK, FORMATS, FP8_FORMATS, get_format
from dslab.fp8.quant import _dequantize_2d, _fake_2d, _fake_piece, _round_to_grid, _scales_from_amax, group_shape
from dslab.moe import Experts, MoE


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
            xd, scales = codes.float(), torch.ones(1, 1, device=x.device)
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
    ends = ends.to(x.device, torch.long)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    starts = ends - counts
    tiles = -(-counts // recipe.block)  # tiles per segment
    seg = torch.repeat_interleave(torch.arange(len(counts), device=x.device), counts)  # segment of each row
    first_tile = torch.cumsum(tiles, 0) - tiles
    row = torch.arange(x.shape[0], device=x.device)
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
    directly and so stays in high precision; training and ``dslab.train.estimate_loss`` run the FP8 path.
    fmt = grad_fmt = "bf16" rounds the same GEMM inputs to BF16 instead: a BF16 baseline emulated the same way.
    """
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
