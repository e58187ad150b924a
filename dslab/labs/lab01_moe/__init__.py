"""Lab 01 "DeepSeekMoE": V3 routing, the MoE forward, auxiliary-loss-free balancing and the balance loss."""

NOTEBOOK = "01_moe"
