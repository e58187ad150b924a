"""Rule-based rewards for R1-Zero-style reinforcement learning (R1 §2.2.2, §2.3.2), for the toy arithmetic task.

R1-Zero is trained with two rule-based rewards and no neural reward model (one could be hacked): **accuracy** (the
final answer, in a fixed place, equals the truth) and **format** (the reasoning sits inside ``<think></think>``, the
result inside ``<answer></answer>``). DeepSeek-R1 adds a **language-consistency** reward, the proportion of
target-language words in the chain of thought. Here the working is written in one of two notations (``dslab.data``:
"digits" or "letters"), and the consistency reward is the share of the working's words written in the target one.

Every function takes the completion as text, exactly as the policy wrote it after the prompt, and never raises on
what a model might write: an empty, garbled or endless (unterminated) completion scores 0. Parsing uses anchored
regular expressions and ``int``; model output is never evaluated as code.

    >>> accuracy_reward("<think>5+8=13</think> <answer>13</answer>", 13)
    1.0
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dslab import validate
from dslab.data import ANSWER_CLOSE, ANSWER_OPEN, NOTATIONS, THINK_CLOSE, THINK_OPEN

TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ANSWER_BLOCK = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
INTEGER = re.compile(r"\s*(-?[0-9]{1,30})\s*")  # plain ASCII integer, <= 30 digits: no "1_000", "+5", "1e3", "٣"
FORMAT = re.compile(r"\s*" + re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE) + r"\s*"
                    + re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE) + r"\s*", re.DOTALL)
WORD_CLASSES = {"digits": re.compile(r"[0-9+\-=<:,]*[0-9][0-9+\-=<:,]*"),
                "letters": re.compile(r"[a-j+\-=<:,]*[a-j][a-j+\-=<:,]*")}
COMPONENTS = ("accuracy", "format", "consistency")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def parse_answer(completion: str) -> int | None:
    """The integer inside the **last** ``<answer>...</answer>`` block (surrounding spaces allowed), else None.

    Only a plain, optionally negative, decimal integer counts: "623", " -67 ". Anything else ("6 23", "623.0",
    "+623", "1_000", "x") gives None, as does a completion without a closed answer block.
    """
    blocks = ANSWER_BLOCK.findall(_text("completion", completion))
    if not blocks:
        return None
    m = INTEGER.fullmatch(blocks[-1])
    return int(m[1]) if m else None


def accuracy_reward(completion: str, answer: int) -> float:
    """1.0 when the parsed answer (``parse_answer``) equals ``answer``, else 0.0."""
    validate.integer("answer", answer)
    return 1.0 if parse_answer(completion) == answer else 0.0


def format_reward(completion: str) -> float:
    """1.0 when the completion is exactly ``<think>...</think> <answer>...</answer>`` (whitespace around the blocks
    allowed, each block present once, no tag nested inside another block, nothing after the answer), else 0.0."""
    m = FORMAT.fullmatch(_text("completion", completion))
    if m is None or any(tag in part for part in m.groups() for tag in TAGS):
        return 0.0
    return 1.0


def think_text(completion: str) -> str | None:
    """The text inside the first ``<think>...</think>`` block, or None when there is no closed think block."""
    text = _text("completion", completion)
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    return None if end < 0 else text[start + len(THINK_OPEN):end]


def notation_of(word: str) -> str | None:
    """"digits" for a step such as "34+27:4+7+1=12,23" (or "4+7+1=12"), "letters" for "de+ch:e+h+b=bc,cd", None for
    anything else."""
    for notation, pattern in WORD_CLASSES.items():
        if pattern.fullmatch(word):
            return notation
    return None


def notation_share(text: str, target: str = "digits") -> float:
    """Share of the whitespace-separated words of ``text`` written in ``target``; 0.0 for a text with no words."""
    validate.choice("target", target, NOTATIONS)
    words = _text("text", text).split()
    return sum(notation_of(w) == target for w in words) / len(words) if words else 0.0


def consistency_reward(completion: str, target: str = "digits") -> float:
    """R1's language-consistency reward, in notations: the share of the working (the think block's words) written
    in ``target``. No think block, or an empty one, scores 0.0: there is no target-language reasoning in it."""
    validate.choice("target", target, NOTATIONS)
    think = think_text(completion)
    return 0.0 if think is None else notation_share(think, target)


def reward_components(completion: str, answer: int, target: str = "digits") -> dict[str, float]:
    """Every rule-based reward of one completion: {"accuracy", "format", "consistency"}."""
    return {"accuracy": accuracy_reward(completion, answer), "format": format_reward(completion),
            "consistency": consistency_reward(completion, target)}


def weighted_reward(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ_k weights[k] · components[k]; every weighted component must be present, weights finite and >= 0."""
    total = 0.0
    for name, w in weights.items():
        validate.real(f"weights[{name!r}]", w, 0.0)
        if name not in components:
            raise ValueError(f"weights name a reward {name!r} that components lack; components: {sorted(components)}")
        total += w * float(components[name])
    return total


__all__ = ["COMPONENTS", "accuracy_reward", "consistency_reward", "format_reward", "notation_of", "notation_share",
           "parse_answer", "reward_components", "think_text", "weighted_reward"]
