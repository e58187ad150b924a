"""GRPO and its neighbours: rollouts (``sampling``), advantages, the clipped objective with KL, the aggregations, the
trainer (a rising reward, resume, zero-variance groups), SFT on completion tokens only (``sft``), evaluation (pass@k,
cons@k ties; ``evals``), bad input, and ``grpo`` still naming everything that moved out of it."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch

from dslab import configs, data, evals, grpo, sampling, sft, train
from dslab.checkpoint import CheckpointError, read_metrics
from dslab.model import Transformer

TOK = data.CharTokenizer()
STOP = TOK.encode(data.ANSWER_CLOSE)


def tiny_model(seed: int = 0, rows: int = 64, max_seq_len: int = 128) -> Transformer:
    args = configs.load("tiny-mha").replace(vocab_size=TOK.vocab_size, dim=32, n_heads=2, n_kv_heads=2, head_dim=16,
                                            inter_dim=64, n_layers=2, n_dense_layers=2,
                                            max_seq_len=max_seq_len)
    torch.manual_seed(seed)
    return Transformer(args, max_batch_size=rows)


# ------------------------------------------------------------------------------------------------------ rollouts
class Scripted(torch.nn.Module):
    """A fake policy that writes a fixed text per row (row r: texts[r % len(texts)]), through the decoding API."""

    def __init__(self, texts: list[str], rows: int = 16):
        super().__init__()
        self.args = configs.load("tiny-mha").replace(vocab_size=TOK.vocab_size, max_seq_len=256)
        self.texts = [TOK.encode(t) for t in texts]
        self.layers = [type("B", (), {"attn": type("A", (), {"max_batch_size": rows})()})()]
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.pos = 0

    def forward(self, tokens, start_pos=0):
        b, s = tokens.shape
        out = torch.full((b, s, TOK.vocab_size), -1e4)
        step = 0 if s > 1 else start_pos - self.prompt_len + 1
        if s > 1:
            self.prompt_len = s
        for r in range(b):
            text = self.texts[r % len(self.texts)]
            out[r, -1, text[step] if step < len(text) else TOK.encode(" ")[0]] = 0.0
        return out


def test_each_row_stops_on_its_own_at_the_stop_string():
    texts = ["<think>1</think> <answer>1</answer>", "<answer>22</answer> and more", "endless " * 10]
    model = Scripted(texts, rows=6)
    prompt = torch.tensor([TOK.encode("Q: 1+1\n")] * 2)
    r = sampling.generate(model, prompt, 3, 40, STOP, temperature=1.0)
    assert r.ids.shape == r.mask.shape == (6, 40)
    got = [TOK.decode(row[row_mask.bool()]) for row, row_mask in zip(r.ids, r.mask)]
    assert got[:3] == ["<think>1</think> <answer>1</answer>", "<answer>22</answer>", ("endless " * 10)[:40]]
    assert got[3:] == got[:3]  # rows 3-5 continue prompt 1 the same way
    assert r.stopped.tolist() == [True, True, False] * 2
    assert r.lengths.tolist() == [len(texts[0]), len("<answer>22</answer>"), 40] * 2
    assert bool((r.ids[~r.mask.bool()] == TOK.pad_id).all())  # padding after each row's end
    for row, n in zip(r.mask, r.lengths):  # the mask is a prefix of ones
        assert row[:n].all() and not row[n:].any()


def test_cached_greedy_rollout_equals_recomputing_the_prefix():
    model = tiny_model().eval()
    prompts = [TOK.encode(t.prompt) for t in data.tasks(3, seed=1)]
    r = sampling.rollout(model, prompts, 2, 12, STOP, temperature=0.0)
    for i, p in enumerate(prompts):
        seq = list(p)
        for _ in range(12):  # no cache: the whole prefix through the model at every token
            model.train()
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        for j in range(2):
            assert r.ids[2 * i + j, : r.lengths[2 * i + j]].tolist() == seq[len(p):len(p) + int(r.lengths[2 * i + j])]


def test_rollout_batches_by_prompt_length_and_keeps_the_order():
    model = tiny_model().eval()
    task_list = data.tasks(7, seed=2) + [data.Task("1+1", 2, 1), data.Task("999-999", 0, 3)]
    prompts = evals.encode_prompts(task_list, TOK)
    assert len({len(p) for p in prompts}) > 1
    together = sampling.rollout(model, prompts, 3, 10, STOP, temperature=0.0, max_rows=6)
    for i, p in enumerate(prompts):
        alone = sampling.generate(model, torch.tensor([p]), 3, 10, STOP, temperature=0.0)
        w = together.ids.shape[1]
        assert torch.equal(together.ids[3 * i: 3 * i + 3], alone.ids[:, :w])


def test_sampling_is_seeded_and_temperature_spreads_the_group():
    model = tiny_model()
    prompt = torch.tensor([TOK.encode("User: 12+34=? ")])
    a = sampling.generate(model, prompt, 8, 10, STOP, 1.0, generator=torch.Generator().manual_seed(3))
    b = sampling.generate(model, prompt, 8, 10, STOP, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.ids, b.ids) and len({tuple(r.tolist()) for r in a.ids}) > 1
    greedy = sampling.generate(model, prompt, 8, 10, STOP, 0.0)
    assert len({tuple(r.tolist()) for r in greedy.ids}) == 1


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda p: torch.isfinite(sampling.top_p_filter(logits, p)).tolist()[0]  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1.0) == [True] * 4
    g = torch.Generator().manual_seed(0)
    draws = [int(sampling.sample_next(logits, 1.0, 0.6, g)) for _ in range(200)]
    assert set(draws) == {0, 1}


def test_generate_rejects_bad_input():
    model = tiny_model(rows=4, max_seq_len=32)
    with pytest.raises(ValueError, match="cache"):
        sampling.generate(model, torch.tensor([[1, 2]]), 5, 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        sampling.generate(model, torch.tensor([[1, 2]]), 2, 31)
    with pytest.raises(TypeError, match="prompt_ids"):
        sampling.generate(model, torch.tensor([[1.0, 2.0]]), 2, 4)
    with pytest.raises(ValueError, match="prompt_ids"):
        sampling.generate(model, torch.zeros(1, 0, dtype=torch.long), 2, 4)
    with pytest.raises(ValueError, match="prompts"):
        sampling.rollout(model, [[1, 2], []], 2, 4)


def test_join_marks_only_generated_targets():
    r = sampling.Rollout(torch.tensor([[7, 8, 0], [9, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]),
                     torch.tensor([True, True]))
    ids, mask = grpo.join([[1, 2, 3]], r, 2)
    assert ids.tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]  # targets ids[:, 1:]: 7, 8 and 9


def test_token_logps_divide_by_the_temperature():
    model = tiny_model().train()
    ids = torch.tensor([TOK.encode("User: 1+2=?")])
    with torch.no_grad():
        logits = model(ids)[:, :-1] / 0.7
        expected = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        assert torch.allclose(grpo.token_logps(model, ids, 0.7), expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------- advantages
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    adv = grpo.group_advantages(r, 4)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # Bessel: n - 1
    assert torch.allclose(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert adv[4:].tolist() == [0.0] * 4  # zero variance: exactly zero
    assert grpo.zero_variance_groups(r, 4).tolist() == [False, True]
    none = grpo.group_advantages(r, 4, "none")
    assert torch.allclose(none, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    batch = grpo.group_advantages(r, 4, "batch")
    assert torch.allclose(batch, none / (r.std() + 1e-4))


def test_lone_success_advantage_grows_with_the_group():
    for G in (2, 4, 16, 64):
        r = torch.zeros(G)
        r[0] = 1.0
        adv = grpo.group_advantages(r, G)
        p = 1 / G
        assert float(adv[0]) == pytest.approx((1 - p) / (math.sqrt(G / (G - 1) * p * (1 - p)) + 1e-4), rel=1e-5)
    assert float(grpo.group_advantages(torch.tensor([1.0, 0.0]), 2)[0]) == pytest.approx(0.5 / (0.5**0.5 + 1e-4))


def test_group_of_one_warns_and_gives_zero():
    with pytest.warns(UserWarning, match="size 1"):
        assert grpo.group_advantages(torch.tensor([1.0, 0.0, 3.0]), 1).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"rewards": torch.zeros(5), "num_generations": 2}, "rewards"),
    ({"rewards": torch.zeros(4), "num_generations": 0}, "num_generations"),
    ({"rewards": torch.zeros(4), "num_generations": 2, "scale_rewards": "std"}, "scale_rewards"),
    ({"rewards": torch.tensor([1.0, float("nan")]), "num_generations": 2}, "rewards"),
])
def test_group_advantages_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(**kwargs)


# ------------------------------------------------------------------------------------------------------- loss
def _batch(seed=0, B=3, T=5):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g) * 2
    old = logps + 0.3 * torch.randn(B, T, generator=g)
    ref = logps + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)[:B, :T]
    return logps, old, ref, adv, mask


def _per_token_by_hand(logps, old, ref, adv, beta, lo=0.2, hi=0.2):
    out = torch.empty_like(logps)
    for i in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            rho = math.exp(logps[i, t] - old[i, t])
            a = float(adv[i])
            term = min(rho * a, min(max(rho, 1 - lo), 1 + hi) * a)
            d = float(ref[i, t] - logps[i, t])
            out[i, t] = -term + beta * (math.exp(d) - d - 1)
    return out


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_each_aggregation_against_a_hand_computation(loss_type):
    logps, old, ref, adv, mask = _batch()
    per = _per_token_by_hand(logps, old, ref, adv, beta=0.04)
    rows = [[float(per[i, t]) for t in range(5) if mask[i, t]] for i in range(3)]
    expected = {"grpo": sum(sum(r) / len(r) for r in rows) / 3,
                "bnpo": sum(map(sum, rows)) / sum(map(len, rows)),
                "dapo": sum(map(sum, rows)) / sum(map(len, rows)),
                "dr_grpo": sum(map(sum, rows)) / (3 * 8)}[loss_type]
    got = grpo.policy_loss(logps, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=8)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_asymmetric_clip_by_hand():
    logps, old, ref, adv, mask = _batch(seed=3)
    per = _per_token_by_hand(logps, old, ref, adv, beta=0.0, lo=0.1, hi=0.28)
    got = grpo.policy_loss(logps, old, None, adv, mask, epsilon_low=0.1, epsilon_high=0.28, loss_type="bnpo")
    assert float(got) == pytest.approx(float((per * mask).sum() / mask.sum()), rel=1e-5)


def test_empty_sequence_counts_as_zero_in_grpo():
    logps, old, ref, adv, mask = _batch()
    mask[2] = 0
    full = grpo.policy_loss(logps, old, ref, adv, mask)
    two = grpo.policy_loss(logps[:2], old[:2], ref[:2], adv[:2], mask[:2])
    assert float(full) == pytest.approx(float(two) * 2 / 3, rel=1e-6)


def test_kl_is_non_negative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(64, 32, generator=g) * 5
    ref = -torch.rand(64, 32, generator=g) * 5
    kl = grpo.per_token_kl(logps, ref)
    assert bool((kl >= 0).all()) and float(kl.max()) > 0
    assert torch.equal(grpo.per_token_kl(logps, logps), torch.zeros_like(logps))
    d = ref - logps  # the k3 direction: exp(ref - logp), not exp(logp - ref)
    assert torch.allclose(kl, torch.exp(d) - d - 1)
    _, old, _, adv, mask = _batch()
    same = _batch()[0]
    with_kl = grpo.policy_loss(same, old, same.clone(), adv, mask, beta=1.0)
    assert float(with_kl) == float(grpo.policy_loss(same, old, None, adv, mask))


def test_gradient_is_zero_exactly_where_the_clip_is_active():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 40
    old = -torch.rand(B, T, generator=g) * 3
    logps = (old + torch.randn(B, T, generator=g) * 0.4).requires_grad_(True)
    adv = torch.tensor([1.5, -0.7, 0.0, 2.0, -1.2, 0.3])
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    lo, hi = 0.2, 0.28
    loss = grpo.policy_loss(logps, old, None, adv, mask, beta=0.0, epsilon_low=lo, epsilon_high=hi)
    loss.backward()
    ratio = torch.exp(logps.detach() - old)
    a = adv[:, None].expand(B, T)
    clipped = ((ratio > 1 + hi) & (a > 0)) | ((ratio < 1 - lo) & (a < 0))
    assert int(clipped.sum()) > 10 and int((~clipped & (mask > 0) & (a != 0)).sum()) > 10
    grad = logps.grad
    assert bool((grad[clipped] == 0).all())
    assert bool((grad[~clipped & (mask > 0) & (a != 0)] != 0).all())
    assert bool((grad[mask == 0] == 0).all()) and bool((grad[a == 0] == 0).all())
    assert grpo.clip_fraction(logps.detach(), old, adv, mask, lo, hi) == pytest.approx(
        float((clipped.float() * mask).sum() / mask.sum()))


def test_on_policy_ratio_is_one_and_the_loss_is_minus_the_mean_advantage():
    logps, _, _, adv, mask = _batch()
    loss = grpo.policy_loss(logps, logps.detach(), None, adv, mask, loss_type="grpo")
    assert float(loss) == pytest.approx(-float(adv.mean()), rel=1e-6)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_micro_batches_add_up_to_the_whole_batch(loss_type):
    logps, old, ref, adv, mask = _batch(B=3)
    kw = dict(beta=0.1, loss_type=loss_type, max_completion_length=7)
    whole = grpo.policy_loss(logps, old, ref, adv, mask, **kw)
    parts = sum(grpo.policy_loss(logps[s], old[s], ref[s], adv[s], mask[s], **kw) * grpo._weight(
        loss_type, mask[s], mask) for s in (slice(0, 1), slice(1, 3)))
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_type": "ppo"}, "loss_type"), ({"beta": -0.1}, "beta"), ({"epsilon_low": -0.2}, "epsilon_low"),
    ({"epsilon_high": -1.0}, "epsilon_high"), ({"loss_type": "dr_grpo"}, "max_completion_length"),
    ({"beta": 0.1, "ref": None}, "ref_logps"),
])
def test_policy_loss_bad_arguments(kwargs, match):
    logps, old, ref, adv, mask = _batch()
    ref = kwargs.pop("ref", ref)
    with pytest.raises(ValueError, match=match):
        grpo.policy_loss(logps, old, ref, adv, mask, **kwargs)


@pytest.mark.parametrize("which, match", [("old", "old_logps"), ("mask", "mask"), ("adv", "advantages"),
                                          ("ref", "ref_logps")])
def test_policy_loss_mismatched_shapes(which, match):
    logps, old, ref, adv, mask = _batch()
    bad = {"old": old[:, :4], "mask": mask[:2], "adv": adv[:2], "ref": ref[:, :3]}
    args = {"old": old, "mask": mask, "adv": adv, "ref": ref, which: bad[which]}
    with pytest.raises(ValueError, match=match):
        grpo.policy_loss(logps, args["old"], args["ref"], args["adv"], args["mask"], beta=0.1)


# ---------------------------------------------------------------------------------------------------------- SFT
def test_sft_loss_ignores_prompt_tokens():
    x, y, m = sft.sft_batch([("User: 1+1=?", "<answer>2</answer>"), ("Q", "<answer>10</answer>")], TOK)
    assert x.shape == y.shape == m.shape
    assert int(m[0].sum()) == len("<answer>2</answer>") and int(m[1].sum()) == len("<answer>10</answer>")
    assert TOK.decode(y[0][m[0].bool()]) == "<answer>2</answer>"
    logits = torch.randn(*x.shape, TOK.vocab_size, requires_grad=True)
    loss = sft.sft_loss(logits, y, m)
    loss.backward()
    assert bool((logits.grad[m == 0] == 0).all()) and bool((logits.grad[m == 1] != 0).any())
    changed = logits.detach().clone()
    changed[m == 0] = torch.randn_like(changed[m == 0]) * 100  # scramble what the model says about the prompt
    assert float(sft.sft_loss(changed, y, m)) == pytest.approx(float(loss.detach()), rel=1e-6)
    manual = torch.nn.functional.cross_entropy(logits.detach()[m == 1], y[m == 1])
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-6)


def test_sft_learns_the_completion(tmp_path):
    model = tiny_model()
    pairs = data.cold_start_pairs(data.tasks(40, max_digits=1, seed=3))
    with torch.no_grad():
        before = float(sft.sft_loss(model.train()(sft.sft_batch(pairs, TOK)[0]), *sft.sft_batch(pairs, TOK)[1:]))
    metrics = tmp_path / "sft.jsonl"
    metrics.write_text('{"step": 99}\n', encoding="utf-8")  # an older run's file is started over
    cfg = sft.SFTConfig(steps=60, batch_size=16, lr=3e-3, warmup=2, metrics=str(metrics))
    history = sft.train_sft(model, pairs, cfg)
    assert history[-1]["loss"] < 0.6 * before and history[-1]["cpu_seconds"] > 0
    assert read_metrics(metrics) == json.loads(json.dumps(history)) and history[0]["step"] == 0
    assert [r["lr"] for r in history[1:]] == [train.lr_at(s, cfg) for s in range(cfg.steps)]
    with pytest.raises(ValueError, match="pairs"):
        sft.train_sft(model, [], sft.SFTConfig(steps=1))
    with pytest.raises(ValueError, match="non-empty"):
        sft.sft_batch([("", "x")], TOK)


# --------------------------------------------------------------------------------------------------- evaluation
def test_pass_at_k():
    assert evals.pass_at_k(16, 0, 1) == 0.0 and evals.pass_at_k(16, 16, 4) == 1.0
    assert evals.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert evals.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    assert evals.pass_at_k(5, 4, 2) == 1.0  # fewer than k wrong samples: some pair always holds a right one
    with pytest.raises(ValueError, match="k"):
        evals.pass_at_k(4, 1, 5)


def test_majority_vote_and_its_tie_rule():
    assert evals.majority_vote([3, 5, 5, None, 3, 5]) == 5
    assert evals.majority_vote([3, 5, 5, 3]) == 3  # tie: the first seen wins
    assert evals.majority_vote([5, 3, 3, 5]) == 5
    assert evals.majority_vote([None, None, 7]) == 7  # unparseable samples do not vote
    assert evals.majority_vote([None, None]) is None and evals.majority_vote([]) is None
    assert evals.cons_at_k([3, 5, 5, 3], 3) == 1.0 and evals.cons_at_k([5, 3, 3, 5], 3) == 0.0
    assert evals.cons_at_k([None, None, None], 0) == 0.0


def test_evaluate_reports_consistent_numbers():
    model = tiny_model(rows=32)
    task_list = data.tasks(6, max_digits=1, seed=0)
    out = evals.evaluate(model, task_list, k=4, max_new_tokens=12)
    assert set(out) >= {"greedy", "pass@1", "pass@4", "cons@4", "format", "per_task", "samples"}
    assert 0 <= out["pass@1"] <= out["pass@4"] <= 1 and len(out["samples"]) == 6
    assert all(len(s) == 4 for s in out["samples"])


# ------------------------------------------------------------------------------------------------------ trainer
def _scorer(completion: str, task: data.Task) -> dict:
    """A reward the tiny model can learn in a few steps: the share of '7's in the first eight characters."""
    return {"accuracy": completion[:8].count("7") / 8, "format": 0.0, "consistency": 0.0}


def _cfg(**kw):
    base = dict(steps=14, prompts_per_step=4, num_generations=8, max_completion_length=8, lr=1e-2, eval_every=100,
                eval_tasks=0, micro_batch_rows=16, max_rows=32, min_lr_ratio=1.0, drop_zero_variance=True)
    return grpo.GRPOConfig(**{**base, **kw})


def test_a_short_seeded_run_raises_the_reward(tmp_path):
    task_list = data.tasks(20, seed=0)
    history = grpo.train_grpo(tiny_model(), task_list, _cfg(metrics=str(tmp_path / "m.jsonl")), score=_scorer)
    rewards = [r["reward"] for r in history[1:]]
    assert sum(rewards[-3:]) / 3 > 3 * max(0.02, sum(rewards[:3]) / 3)
    rows = read_metrics(tmp_path / "m.jsonl")
    assert rows == json.loads(json.dumps(history))
    for key in ("reward", "accuracy", "format", "consistency", "completion_length", "kl", "clip_fraction",
                "zero_variance", "cpu_seconds", "lr", "loss"):
        assert key in rows[1]
    again = grpo.train_grpo(tiny_model().eval(), task_list, _cfg(), score=_scorer)  # a policy left in eval mode
    assert [r["reward"] for r in again[1:]] == rewards  # seeded: the same run twice


def test_mu_iterations_clip_and_beta_log_kl():
    task_list = data.tasks(20, seed=0)
    history = grpo.train_grpo(tiny_model(), task_list, _cfg(steps=4, num_iterations=3, beta=0.1, epsilon=0.05),
                              score=_scorer)
    assert any(r["clip_fraction"] > 0 for r in history[1:])
    assert all(r["kl"] >= 0 for r in history[1:]) and history[-1]["kl"] > 0


def test_resume_continues_the_same_run(tmp_path):
    task_list = data.tasks(20, seed=0)
    straight_model = tiny_model()
    straight = grpo.train_grpo(straight_model, task_list, _cfg(steps=6), score=_scorer)
    cfg = _cfg(steps=6, checkpoint=str(tmp_path / "run.pt"), checkpoint_every=2, metrics=str(tmp_path / "m.jsonl"))
    calls = {"n": 0}

    def interrupted(completion, task):  # the kernel dies during step 5, after the checkpoint of step 4
        calls["n"] += 1
        if calls["n"] > 4 * cfg.prompts_per_step * cfg.num_generations:
            raise KeyboardInterrupt
        return _scorer(completion, task)

    with pytest.raises(KeyboardInterrupt):
        grpo.train_grpo(tiny_model(), task_list, cfg, score=interrupted)
    assert len(read_metrics(tmp_path / "m.jsonl")) == 5  # step 0 (evaluation) + 4 steps
    resumed_model = tiny_model(seed=123)  # other weights: everything must come from the checkpoint
    resumed = grpo.train_grpo(resumed_model, task_list, cfg, score=_scorer)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(straight)
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(),
                                                  straight_model.state_dict().values()))
    assert strip(read_metrics(tmp_path / "m.jsonl")) == strip(straight)
    assert torch.load(cfg.checkpoint, weights_only=False)["format"] == grpo.KIND
    with pytest.raises(CheckpointError, match=r"run\.pt was written with another GRPOConfig \(lr: 0\.01 -> 0\.02; "
                                              r"steps: 6 -> 7\)"):
        grpo.train_grpo(tiny_model(), task_list, _cfg(steps=7, lr=2e-2, checkpoint=cfg.checkpoint), score=_scorer)


def test_zero_variance_groups_are_dropped_or_kept():
    constant = lambda completion, task: {"accuracy": 1.0, "format": 1.0, "consistency": 1.0}  # noqa: E731
    task_list = data.tasks(20, seed=0)
    dropped = grpo.train_grpo(tiny_model(), task_list, _cfg(steps=2), score=constant)
    assert dropped[1]["zero_variance"] == 1.0 and dropped[1]["kept_rows"] == 0 and dropped[1]["grad_norm"] == 0.0
    kept = grpo.train_grpo(tiny_model(), task_list, _cfg(steps=2, drop_zero_variance=False), score=constant)
    assert kept[1]["kept_rows"] == 32 and kept[1]["loss"] == 0.0


def test_with_a_kl_penalty_zero_variance_groups_stay_and_feel_the_reference():
    """β > 0: groups without signal are kept (advantage 0), so the KL term still pulls them towards π_ref."""
    constant = lambda completion, task: {"accuracy": 1.0, "format": 1.0, "consistency": 1.0}  # noqa: E731
    task_list = data.tasks(20, seed=0)
    cfg = _cfg(steps=2, beta=0.1, warmup=1, min_lr_ratio=0.1)
    history = grpo.train_grpo(tiny_model(), task_list, cfg, score=constant, ref=tiny_model(seed=7))
    assert all(r["zero_variance"] == 1.0 and r["kept_rows"] == 32 for r in history[1:])
    assert history[1]["kl"] > 0 and history[1]["grad_norm"] > 0 and history[1]["loss"] > 0  # the loss is β·KL alone
    assert [r["lr"] for r in history[1:]] == [train.lr_at(s, cfg) for s in range(cfg.steps)]
    no_kl = grpo.train_grpo(tiny_model(), task_list, replace(cfg, beta=0.0), score=constant, ref=tiny_model(seed=7))
    assert no_kl[1]["kept_rows"] == 0 and no_kl[1]["grad_norm"] == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_type": "ppo"}, "loss_type"), ({"beta": -1.0}, "beta"), ({"epsilon": -0.1}, "epsilon"),
    ({"num_generations": 0}, "num_generations"), ({"scale_rewards": True}, "scale_rewards"),
    ({"reward_weights": {"accuracy": -1.0}}, "reward_weights"), ({"top_p": 0.0}, "top_p"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo.GRPOConfig(**kwargs)


def test_trainer_rejects_a_cache_smaller_than_the_group():
    with pytest.raises(ValueError, match="cache"):
        grpo.train_grpo(tiny_model(rows=4), data.tasks(8), _cfg(num_generations=8))
    with pytest.raises(ValueError, match="train_tasks"):
        grpo.train_grpo(tiny_model(), data.tasks(2), _cfg())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.lr_at(0, grpo.GRPOConfig(steps=10, lr=1e-3))


def test_grpo_still_names_what_moved_to_its_neighbours():
    from dslab import checkpoint

    homes = {sampling: ("top_p_filter", "sample_next", "Rollout", "cache_rows", "generate", "rollout"),
             evals: ("pass_at_k", "majority_vote", "cons_at_k", "encode_prompts", "sample_answers", "evaluate",
                     "greedy_accuracy"),
             sft: ("sft_loss", "sft_batch", "SFTConfig", "train_sft"), checkpoint: ("read_metrics", "CheckpointError")}
    for module, names in homes.items():
        for name in names:
            assert getattr(grpo, name) is getattr(module, name) and name in grpo.__all__, name
    assert all(hasattr(grpo, name) for name in grpo.__all__)
    assert not hasattr(grpo, "cosine_lr")  # one schedule: dslab.train.lr_at
