"""Lab 04 "Multi-Token Prediction": V3's sequential MTP modules, their loss, and speculative decoding with them as the
drafter (greedy and sampled acceptance), with the CPU cost structure that decides the speedup."""

NOTEBOOK = "04_mtp"
