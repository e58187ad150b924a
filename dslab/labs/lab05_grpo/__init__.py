"""Lab 05 "GRPO": DeepSeek-R1 in miniature. Rule-based rewards, group-relative advantages, the clipped objective with
a KL penalty and its aggregations, then R1-Zero (GRPO from a base model) on toy arithmetic, R1's cold start and
language-consistency reward, distillation against RL on a smaller model, and evaluation (greedy, pass@1, pass@k,
cons@k) on held-out and harder problems.

``artifacts`` is the script that made what the lab loads from ``datasets/grpo/`` (the base checkpoints and the
metrics of the long comparison runs): ``python -m dslab.labs.lab05_grpo.artifacts --help``; ``shipped`` reads and
writes those files, ``experiments`` holds the harnesses that make them and that the notebook runs.
"""

NOTEBOOK = "05_grpo"
TEACHES = "rule-based rewards, GRPO, R1-Zero vs cold start, evaluation, distillation"
REPRODUCES = "reward and accuracy rise without supervised fine-tuning; cons@k vs pass@1"
