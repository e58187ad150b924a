"""Lab 03 "Multi-head Latent Attention": the KV cache, decoupled RoPE, the latent cache and weight absorption."""

NOTEBOOK = "03_mla"
