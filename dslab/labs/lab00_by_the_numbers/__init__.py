"""Lab 00 "DeepSeek by the numbers": parameters, FLOPs, KV cache and cost of DeepSeek-V3 from its config alone."""

NOTEBOOK = "00_by_the_numbers"
