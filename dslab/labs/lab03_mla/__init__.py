"""Lab 03 "Multi-head Latent Attention": the KV cache, decoupled RoPE, the latent cache and weight absorption."""

NOTEBOOK = "03_mla"
TEACHES = "Multi-head Latent Attention, decoupled RoPE, weight absorption, the KV cache"
REPRODUCES = "KV −93.3% (V2 vs 67B); absorbed == naive; cache bytes = (d_c + d_R)·L·bytes"
