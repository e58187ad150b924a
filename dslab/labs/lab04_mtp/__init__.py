"""Lab 04 "Multi-Token Prediction": V3's sequential MTP modules, their loss, and speculative decoding with them as the
drafter (greedy and sampled acceptance), with the CPU cost structure that decides the speedup."""

NOTEBOOK = "04_mtp"
TEACHES = "V3's sequential MTP modules and loss, speculative decoding with the MTP drafter (greedy and sampled, exact)"
REPRODUCES = "MTP shift and 1/T loss (eqs. 21-25); tokens/forward 1 + α = 1.85-1.90 at V3's 85-90% acceptance"
