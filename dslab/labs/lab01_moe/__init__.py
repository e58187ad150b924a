"""Lab 01 "DeepSeekMoE": V3 routing, the MoE forward, auxiliary-loss-free balancing and the balance loss."""

NOTEBOOK = "01_moe"
TEACHES = "DeepSeekMoE routing, the MoE layer, auxiliary-loss-free balancing, grouped dispatch"
REPRODUCES = "aux-loss-free balancing: low MaxVio without an auxiliary loss"
