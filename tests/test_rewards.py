"""Rule-based rewards: accuracy, format, notation consistency and their weighted sum, on edge cases and bad input."""

from __future__ import annotations

import random

import pytest

from dslab import data, rewards

GOOD = "<think>5+8=13 4+7+1=12 3+2+1=6</think> <answer>623</answer>"


# ------------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, expected", [
    (GOOD, 623),
    ("<answer> -67 </answer>", -67),
    ("<answer>\n42\n</answer>", 42),
    ("<answer>0623</answer>", 623),
    ("<answer>1</answer> then <answer>2</answer>", 2),  # the last block counts
    ("<answer>2</answer> <answer>oops</answer>", None),  # ... even when it is garbage
    ("<answer>6 23</answer>", None), ("<answer>623.0</answer>", None), ("<answer>+623</answer>", None),
    ("<answer>1_000</answer>", None), ("<answer>0x1F</answer>", None), ("<answer>1e3</answer>", None),
    ("<answer>--5</answer>", None), ("<answer></answer>", None), ("<answer>623", None), ("623", None),
    ("", None), ("</answer>623<answer>", None), ("<answer>" + "9" * 40 + "</answer>", None),
    ("<answer>__import__('os').system('echo pwned')</answer>", None),
])
def test_parse_answer(text, expected):
    assert rewards.parse_answer(text) == expected


@pytest.mark.parametrize("digits", ["٣", "٦٢٣", "۶۲۳", "६२३", "６２３", "-٣", "62٣"])
def test_only_ascii_digits_make_an_answer(digits):
    """``\\d`` also matches Arabic-Indic, Devanagari or full-width digits, and ``int`` reads them ("٣" is 3): an answer
    written with them is not the plain integer the format asks for."""
    assert int(digits) in (3, -3, 623)  # what a \d pattern + int() would accept
    assert rewards.parse_answer(f"<answer>{digits}</answer>") is None
    assert rewards.accuracy_reward(f"<think>x</think> <answer>{digits}</answer>", int(digits)) == 0.0


def test_accuracy_reward():
    assert rewards.accuracy_reward(GOOD, 623) == 1.0
    assert rewards.accuracy_reward(GOOD, 624) == 0.0
    assert rewards.accuracy_reward("<answer>-67</answer>", -67) == 1.0
    assert rewards.accuracy_reward("<answer>67</answer>", -67) == 0.0
    assert rewards.accuracy_reward("the answer is 623", 623) == 0.0  # no answer block: no reward
    assert rewards.accuracy_reward("<answer>6230</answer>", 623) == 0.0  # no substring matching


@pytest.mark.parametrize("text, expected", [
    (GOOD, 1.0),
    ("<think></think><answer>5</answer>", 1.0),  # empty working is still the format
    ("  <think>a\nb</think>\n<answer> 5 </answer>\n", 1.0),  # whitespace around blocks, newlines inside
    ("<think>5+8=13</think> 13", 0.0),  # no answer tags
    ("<answer>13</answer>", 0.0),  # no think block
    ("<think>5+8=13 <answer>13</answer>", 0.0),  # think never closed
    ("<think>x</think> <answer>13</answer> and more", 0.0),  # text after the answer
    ("hello <think>x</think> <answer>13</answer>", 0.0),  # text before
    ("<answer>13</answer> <think>x</think>", 0.0),  # wrong order
    ("<think>x</think> <answer>1</answer> <answer>2</answer>", 0.0),  # two answers
    ("<think><think>x</think> <answer>1</answer>", 0.0),  # nested tag
    ("<think>x</think> <answer>1</answer></answer>", 0.0),
    ("<think>x</think> <answer>1", 0.0),  # endless: cut off at the length limit
    ("", 0.0), ("</think></answer>", 0.0), ("<think>x</think> <answer></answer>", 1.0),
])
def test_format_reward(text, expected):
    assert rewards.format_reward(text) == expected


def test_format_does_not_judge_the_answer():
    assert rewards.format_reward("<think>x</think> <answer>wrong</answer>") == 1.0
    assert rewards.accuracy_reward("<think>x</think> <answer>wrong</answer>", 1) == 0.0


# ------------------------------------------------------------------------------------------------- consistency
def test_notation_of_each_step():
    assert [rewards.notation_of(w) for w in ["5+8=13", "14-7-1=6", "278<345", "f+i=bd", "be-f=j", "chi<deg"]] == \
        ["digits"] * 3 + ["letters"] * 3
    assert [rewards.notation_of(w) for w in ["f+8=13", "so", "+", "k+l=m", ""]] == [None] * 5


def test_consistency_reward():
    mixed = "<think>5+8=13 e+h+b=bc 3+2+1=6</think> <answer>623</answer>"
    assert rewards.consistency_reward(GOOD) == 1.0
    assert rewards.consistency_reward(GOOD, "letters") == 0.0
    assert rewards.consistency_reward(mixed) == pytest.approx(2 / 3)
    assert rewards.consistency_reward(mixed, "letters") == pytest.approx(1 / 3)
    assert rewards.consistency_reward("<think>5+8=13 so thirteen</think>") == pytest.approx(1 / 3)  # other words count
    assert rewards.consistency_reward("<think></think> <answer>1</answer>") == 0.0  # no working: no target words
    assert rewards.consistency_reward("<think>5+8=13 no end") == 0.0
    assert rewards.consistency_reward("") == 0.0


@pytest.mark.parametrize("notation", data.NOTATIONS)
def test_generated_working_is_fully_consistent(notation):
    for task in data.tasks(50, seed=4):
        text = data.completion(task, notation)
        assert rewards.consistency_reward(text, notation) == 1.0
        assert rewards.accuracy_reward(text, task.answer) == rewards.format_reward(text) == 1.0


def test_mixed_working_scores_its_share():
    rng = random.Random(0)
    for task in data.tasks(30, seed=5):
        per_step = [rng.choice(data.NOTATIONS) for _ in data.working_steps(task.question)]
        text = data.completion(task, per_step)
        assert rewards.consistency_reward(text) == pytest.approx(per_step.count("digits") / len(per_step))


def test_untagged_and_unworked_completions():
    task = data.Task("345+278", 623, 3)
    assert rewards.reward_components(data.completion(task, None), 623) == {"accuracy": 1.0, "format": 1.0,
                                                                           "consistency": 0.0}
    assert rewards.reward_components(data.completion(task, tagged=False), 623) == {"accuracy": 0.0, "format": 0.0,
                                                                                   "consistency": 1.0}


# ------------------------------------------------------------------------------------------------- weighted sum
def test_weighted_reward():
    comps = {"accuracy": 1.0, "format": 0.0, "consistency": 0.5}
    assert rewards.weighted_reward(comps, {"accuracy": 1.0, "format": 0.1}) == 1.0
    assert rewards.weighted_reward(comps, {"accuracy": 1.0, "consistency": 0.2}) == pytest.approx(1.1)
    assert rewards.weighted_reward(comps, {}) == 0.0
    with pytest.raises(ValueError, match="speed"):
        rewards.weighted_reward(comps, {"speed": 1.0})
    with pytest.raises(ValueError, match="weights\\['format'\\]"):
        rewards.weighted_reward(comps, {"format": -1.0})


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("garbage", ["", "\x00\x01", "<" * 10_000, "<answer>" * 5000, "9" * 100_000,
                                     "<think>" + "x" * 50_000, "</answer></think><answer><think>", "ü€😀"])
def test_garbage_scores_zero_without_exceptions(garbage):
    assert rewards.reward_components(garbage, 5) == {"accuracy": 0.0, "format": 0.0, "consistency": 0.0}


def test_wrong_types_raise():
    with pytest.raises(TypeError, match="completion"):
        rewards.accuracy_reward(None, 5)
    with pytest.raises(TypeError, match="answer"):
        rewards.accuracy_reward(GOOD, "623")
    with pytest.raises(ValueError, match="target"):
        rewards.consistency_reward(GOOD, "roman")
