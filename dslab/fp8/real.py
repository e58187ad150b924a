"""Real FP8 GEMMs through ``torch._scaled_mm``: E4M3 operands, row-wise scales, FP32 accumulation inside the kernel.
The capstone's "fp8" precision, on an NVIDIA GPU of compute capability 8.9 or newer or on the CPU's reference kernel.

Row-wise (per token / per channel) scales are coarser than V3's 1×128 tiles and 128×128 blocks (§3.3.2), which
would need one kernel call per 128-wide slice of K in PyTorch (``dslab.fp8.scaled_mm(impl="torch")`` does that);
lab 02 measures what the finer tiles buy. Where the kernel is missing or refuses to run, ``enable_real_fp8`` falls
back to the emulation (``dslab.fp8.enable_training``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from dslab.fp8.formats import AMAX_FLOOR, E4M3
from dslab.fp8.training import _excluded_weights, enable_training


def _rowwise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [R, C] -> (E4M3 values [R, C], FP32 scales [R, 1]) with scale = max(amax of the row, 1e-4) / 448."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=AMAX_FLOOR) / E4M3.max
    return (t.float() / scale).to(E4M3.dtype), scale


def _kernel_dtype(device: torch.device, out_dtype: torch.dtype) -> torch.dtype:
    """The output dtype to ask ``torch._scaled_mm`` for. CUDA: BF16, because the row-wise CUTLASS kernel (sm89,
    Blackwell, CUDA < 12.9) refuses FP32 output; the CPU kernel writes ``out_dtype`` directly."""
    return out_dtype if device.type == "cpu" else torch.bfloat16


def _rowwise_mm(qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor,
                out_dtype: torch.dtype) -> torch.Tensor:
    """(qa · sa) @ (qb · sb)ᵀ in one ``torch._scaled_mm`` call: qa [M, K], qb [N, K] E4M3, sa [M, 1], sb [N, 1]
    FP32 -> [M, N] in ``out_dtype``."""
    out = torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=_kernel_dtype(qa.device, out_dtype))
    return out.to(out_dtype)


def _fp8_mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] @ b [N, K]ᵀ with both operands quantized row-wise to E4M3, one ``torch._scaled_mm`` call."""
    qa, sa = _rowwise_fp8(a)
    qb, sb = _rowwise_fp8(b)
    return _rowwise_mm(qa, sa, qb, sb, out_dtype)


class _RealFP8Linear(torch.autograd.Function):
    """y = x Wᵀ with its three GEMMs as real FP8 GEMMs (E4M3, FP32 accumulation inside the kernel): Fprop contracts
    over K (rows of x and W scaled per row), Dgrad over N (dY per token, W per input channel), Wgrad over the tokens
    (dYᵀ per output channel, xᵀ per input channel, re-quantized from the cached activation as V3 converts 1×128 tiles
    to 128×1). forward(x [T, K], weight [N, K]) -> y [T, N] in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight):
        qx, sx = _rowwise_fp8(x)
        qw, sw = _rowwise_fp8(weight)
        ctx.save_for_backward(qx, sx, weight)
        ctx.x_dtype = x.dtype
        return _rowwise_mm(qx, sx, qw, sw, x.dtype)

    @staticmethod
    def backward(ctx, gy):
        qx, sx, weight = ctx.saved_tensors
        gx = _fp8_mm(gy, weight.t().contiguous(), ctx.x_dtype)
        x = qx.float() * sx  # the cached FP8 activation
        gw = _fp8_mm(gy.t().contiguous(), x.t().contiguous(), torch.float32)
        return gx, gw.to(weight.dtype)


class RealFP8Linear(nn.Linear):
    """An nn.Linear whose GEMMs run in real FP8 (``torch._scaled_mm``) with row-wise scales; same parameters and
    state dict as the layer it replaces. x [..., in_features] -> [..., out_features]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _RealFP8Linear.apply(x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def real_fp8_supported(device: torch.device | str) -> bool:
    """Whether ``torch._scaled_mm`` runs FP8 GEMMs on ``device``: the CPU (a reference kernel, slow) or an NVIDIA
    GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


def _kernel_problem(device: torch.device) -> str | None:
    """Why real FP8 GEMMs cannot run on ``device``, or None: unsupported, or a 16×16 trial GEMM (the smallest
    shape the CUDA kernels take) raises, as a capability check alone cannot tell (torch builds and drivers vary)."""
    if not real_fp8_supported(device):
        return f"torch._scaled_mm has no FP8 GEMM on {device}"
    probe = torch.ones(16, 16, device=device)
    try:
        _fp8_mm(probe, probe, torch.float32)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"torch._scaled_mm failed on {device} ({type(e).__name__}: {first})"
    return None


def enable_real_fp8(model: nn.Module) -> list[str]:
    """Swap every nn.Linear of ``model`` except the output head for a ``RealFP8Linear`` sharing its parameters;
    returns the names swapped. The routed experts' grouped GEMMs, the router, the embedding, the head, the norms and
    the attention core stay in higher precision (PyTorch has no grouped FP8 GEMM; lab 02's emulation covers
    experts too: precision "fp8-emulated").

    Where real FP8 cannot run on the model's device (``real_fp8_supported`` is False, or a trial ``_scaled_mm``
    raises) it warns in one line and calls ``enable_training(model)`` instead, returning that function's names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    problem = _kernel_problem(torch.device("cpu") if param is None else param.device)
    if problem is not None:
        warnings.warn(f"{problem}; using the FP8 emulation (dslab.fp8.enable_training) instead", RuntimeWarning,
                      stacklevel=2)
        return enable_training(model)
    keep, swapped = _excluded_weights(model), []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and id(child.weight) not in keep:  # exact type: FP8Linear etc. stay as they are
                new = RealFP8Linear(child.in_features, child.out_features, child.bias is not None, device="meta")
                new.weight, new.bias = child.weight, child.bias
                new.train(child.training)
                setattr(module, child_name, new)
                swapped.append(f"{name}.{child_name}" if name else child_name)
    return swapped
