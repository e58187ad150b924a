"""Helpers shared by the per-lab exercise tests."""

import random


def hidden_verdict(ex, answer, seed: int = 0) -> list:
    """The grader's comparison on hidden cases drawn with ``seed``: one message (None = passed) per case."""
    return [ex.compare(ex.reference(*c.args), answer(*c.args)) for c in ex.hidden_cases(random.Random(seed))]
