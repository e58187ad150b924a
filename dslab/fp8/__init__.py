"""FP8 training the way DeepSeek-V3 does it (arXiv 2412.19437 §3.3, §3.5.2, App. B), emulated on any device, and
real FP8 GEMMs where the device has them. One module per idea:

- ``formats``: E4M3 (max 448, saturates) and E5M2 (max 57344, overflows to inf), every representable value, the
  spacing between neighbours, ``round_to_format`` bit for bit equal to torch's float8 casts; V3's constants.
- ``quant``: ``scale = max(amax, 1e-4) / format max`` per tensor, row, 1×B tile, B×1 tile or B×B block;
  ``quantize`` / ``dequantize`` / ``fake_quantize``, and the training path's hot loop.
- ``gemm``: the ~14-bit FP8 tensor-core accumulator and its fix by promotion every N_C = 128 elements of K
  (``accumulate_mm``, §3.3.2); ``scaled_mm`` emulated or through ``torch._scaled_mm``.
- ``training``: the three GEMMs of a linear layer on FP8 inputs (``fp8_linear``, ``FP8Linear``), the routed
  experts' grouped GEMMs (``ExpertQuantizer``), and ``enable_training`` to switch a ``dslab.model.Transformer``.
- ``memory``: what the recipe saves (``memory_breakdown`` over ``MEMORY_PRECISIONS``).
- ``real``: real FP8 GEMMs (``torch._scaled_mm``, row-wise scales) for the capstone's "fp8" precision
  (``RealFP8Linear``, ``enable_real_fp8``, which falls back to the emulation where the kernel cannot run).

Every name is re-exported here: ``from dslab.fp8 import quantize`` and ``fp8.quantize`` both work.
"""

from dslab.fp8.formats import (
    ACC_BITS,
    ACC_GROUP,
    AMAX_FLOOR,
    BF16,
    BLOCK,
    E4M3,
    E5M2,
    FORMATS,
    FP8_FORMATS,
    FP16,
    N_C,
    Format,
    get_format,
    relative_precision,
    representable_values,
    round_to_format,
    spacing,
)
from dslab.fp8.gemm import accumulate_mm, max_relative_error, scaled_mm, truncate
from dslab.fp8.memory import MEMORY_PRECISIONS, activation_elements_per_token, gemm_params, memory_breakdown
from dslab.fp8.quant import (
    CHUNK_ELEMENTS,
    GRANULARITIES,
    Quantized,
    dequantize,
    fake_quantize,
    flush_threshold,
    group_shape,
    quantize,
)
from dslab.fp8.real import RealFP8Linear, enable_real_fp8, real_fp8_supported
from dslab.fp8.training import (
    ExpertQuantizer,
    FP8Linear,
    Recipe,
    disable_training,
    enable_training,
    fake_quantize_segments,
    fp8_linear,
    precision_map,
)

__all__ = [
    "ACC_BITS", "ACC_GROUP", "AMAX_FLOOR", "BF16", "BLOCK", "CHUNK_ELEMENTS", "E4M3", "E5M2", "FORMATS", "FP16",
    "FP8_FORMATS", "GRANULARITIES", "N_C", "Format", "Quantized", "accumulate_mm", "dequantize", "fake_quantize",
    "flush_threshold", "get_format", "group_shape", "max_relative_error", "quantize", "relative_precision",
    "representable_values", "round_to_format", "scaled_mm", "spacing", "truncate",
    "ExpertQuantizer", "FP8Linear", "Recipe", "disable_training", "enable_training", "fake_quantize_segments",
    "fp8_linear", "precision_map",
    "MEMORY_PRECISIONS", "activation_elements_per_token", "gemm_params", "memory_breakdown",
    "RealFP8Linear", "enable_real_fp8", "real_fp8_supported",
]
