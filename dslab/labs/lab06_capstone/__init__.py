"""Lab 06 "Capstone": the course's components assembled into one tiny DeepSeek-V3 (MLA, DeepSeekMoE with
auxiliary-loss-free balancing, MTP, optional FP8), read with lab 00's accounting, pretrained with the course trainer
(on a GPU when there is one, else the cpu preset), compared with shipped reference runs, then turned into a tiny R1
with lab 05's GRPO and decoded speculatively with its own MTP head."""

NOTEBOOK = "06_capstone"
TEACHES = "a tiny DeepSeek-V3 from all components, pretrained on a GPU or CPU preset, then turned into a tiny R1"
REPRODUCES = ("the model card from lab 00's functions (parameters, KV cache, FLOPs per token); R1's recipe "
              "(cold start, then GRPO) on a longer-trained base: greedy accuracy on lab 05's 500 held-out questions")
