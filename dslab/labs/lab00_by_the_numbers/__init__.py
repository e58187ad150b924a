"""Lab 00 "DeepSeek by the numbers": parameters, FLOPs, KV cache and cost of DeepSeek-V3 from its config alone."""

NOTEBOOK = "00_by_the_numbers"
TEACHES = "parameter, FLOP, KV-cache and cost accounting from the published configs"
REPRODUCES = "V3 671B total / ~37B active; ~11× less compute than Llama 3.1 405B; KV −93.3% (V2 vs 67B); $5.576M"
