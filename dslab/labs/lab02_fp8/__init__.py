"""Lab 02 "FP8": the E4M3/E5M2 formats, fine-grained scaling (1×128 tiles, 128×128 blocks), limited-precision
accumulation and its fix by promotion, and FP8 training of a tiny DeepSeek-V3-style model (DeepSeek-V3 §3.3)."""

NOTEBOOK = "02_fp8"
TEACHES = "E4M3/E5M2 casts, tile and block scaling, a 14-bit accumulator and promotion, FP8 training of a linear layer"
REPRODUCES = "~2% accumulation error at K = 4096 without promotion, ~50x less with it; FP8 vs BF16 loss on a tiny model"
