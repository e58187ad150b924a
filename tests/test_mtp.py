"""Multi-Token Prediction (dslab.mtp, Transformer's n_mtp, the trainer's L_MTP) and speculative decoding with it."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from dslab import accounting, mtp
from dslab.configs import ModelArgs, load
from dslab.model import Transformer
from dslab.train import TrainConfig, mtp_lm_losses, train_lm

VOCAB = 12


def small_args(depth: int = 1, attn: str = "mla", moe: bool = False, vocab: int = VOCAB, **changes) -> ModelArgs:
    """A model small enough to train in a few seconds: width 32, 2 layers (MLA or GQA, dense or MoE)."""
    base = load("tiny-v3" if moe else "tiny-mla").replace(
        vocab_size=vocab, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2, n_heads=2, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, q_lora_rank=0, max_seq_len=64, original_seq_len=64,
        n_mtp=depth, n_dense_layers=1 if moe else 2)
    if attn != "mla":
        base = base.replace(attn=attn, n_kv_heads=1 if attn == "gqa" else 0, head_dim=16)
    return base.replace(**changes)


def word_stream(n: int, seed: int = 0) -> torch.Tensor:
    """Token ids of random "words" (fixed strings over the vocabulary) back to back: within a word the next tokens are
    determined, at a word boundary they are not, so a briefly trained drafter is sometimes right and sometimes not."""
    words = [[3, 4, 5, 6], [7, 8, 9], [10, 4, 11], [5, 9, 3, 8, 6], [2]]
    rng, out = random.Random(seed), []
    while len(out) < n:
        out += rng.choice(words)
    return torch.tensor(out[:n])


@pytest.fixture(scope="module")
def trained():
    """A D = 2 MLA model trained 120 steps on the word stream (float32, CPU)."""
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2), max_batch_size=1)
    cfg = TrainConfig(steps=120, batch_size=16, block_size=24, lr=1e-2, warmup=10, eval_every=120, eval_batches=2)
    history = train_lm(model, word_stream(4000), word_stream(1000, seed=1), cfg)
    return model.eval(), history


# ---------------------------------------------------------------------------------------------- bookkeeping
def test_shift_reads_the_token_k_ahead_and_predicts_the_next():
    tokens = torch.arange(20).view(2, 10)  # t_0..t_9: T = 9
    for k in range(8):
        emb_ids, targets = mtp.mtp_shift(tokens, k)
        assert emb_ids.shape == targets.shape == (2, 9 - k)
        positions = torch.arange(9 - k)
        assert torch.equal(emb_ids[0], positions + k) and torch.equal(targets[0], positions + k + 1)
    x, y = mtp.mtp_shift(tokens, 0)
    assert torch.equal(x, tokens[:, :-1]) and torch.equal(y, tokens[:, 1:])  # depth 0 is the main model


@pytest.mark.parametrize("attn,moe", [("mla", False), ("gqa", False), ("mla", True)])
def test_depth_k_at_position_i_sees_exactly_the_tokens_up_to_i_plus_k(attn, moe):
    """Change one input token at position j: depth k's logits must stay put at positions i < j - k (they may not
    see it) and move at i = j - k (there it is the embedded token t_{i+k})."""
    torch.manual_seed(0)
    model = Transformer(small_args(depth=3, attn=attn, moe=moe, vocab=30)).train()
    x = torch.randint(0, 30, (1, 12))
    _, before = model.forward_mtp(x)
    for j in (5, 8, 11):
        x2 = x.clone()
        x2[0, j] = (x[0, j] + 1) % 30
        _, after = model.forward_mtp(x2)
        for k, (a, b) in enumerate(zip(before, after), start=1):
            assert a.shape == (1, 12 - k, 30)
            if j - k >= 0:
                assert torch.allclose(a[0, :j - k], b[0, :j - k], atol=1e-6), (k, j)
                assert not torch.allclose(a[0, j - k], b[0, j - k], atol=1e-4), (k, j)


def test_forward_mtp_main_logits_equal_forward():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2)).train()
    x = torch.randint(0, VOCAB, (3, 9))
    logits, _ = model.forward_mtp(x)
    assert torch.allclose(logits, model(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"\.train\(\)"):
        model.eval().forward_mtp(x)


# ------------------------------------------------------------------------------------------ shared parameters
def test_embedding_and_head_are_the_main_models_own_parameters():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2, moe=True))
    shared = {id(model.embed.weight), id(model.head.weight)}
    assert not shared & {id(p) for p in model.mtp.parameters()}  # no copies inside the modules
    assert not any(k.startswith("mtp.") and ("embed" in k or "head" in k) for k in model.state_dict())
    storage = {model.head.weight.untyped_storage().data_ptr()}
    calls = []
    model.head.register_forward_hook(lambda mod, inp, out: calls.append(mod.weight.untyped_storage().data_ptr()))
    model.train().forward_mtp(torch.randint(0, VOCAB, (2, 8)))
    assert len(calls) == 3 and set(calls) == storage  # main + 2 depths through the one head
    n_mtp_params = sum(p.numel() for p in model.mtp.parameters())
    gate_biases = len(model.mtp) * model.args.n_routed_experts  # accounting counts the gate bias; here it is a buffer
    assert n_mtp_params == accounting.mtp_params(model.args) - gate_biases


def test_gradients_reach_embedding_and_head_from_both_losses():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2)).train()
    x = torch.randint(0, VOCAB, (4, 10))
    y = torch.randint(0, VOCAB, (4, 10))
    grads = {}
    for name in ("main", "mtp"):
        model.zero_grad()
        main, ce = mtp_lm_losses(model, x, y)
        (main if name == "main" else mtp.V3_LAMBDA / 2 * torch.stack(ce).sum()).backward()
        grads[name] = {p: model.get_parameter(p).grad.clone() for p in ("embed.weight", "head.weight")}
        assert all(g.abs().sum() > 0 for g in grads[name].values()), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mtp.parameters())  # the modules learn
    model.zero_grad()
    main, ce = mtp_lm_losses(model, x, y)
    (main + mtp.V3_LAMBDA / 2 * torch.stack(ce).sum()).backward()
    for p in ("embed.weight", "head.weight"):
        assert torch.allclose(model.get_parameter(p).grad, grads["main"][p] + grads["mtp"][p], atol=1e-6)


def test_main_loss_alone_leaves_the_modules_without_gradient():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=1)).train()
    x = torch.randint(0, VOCAB, (2, 6))
    main, _ = mtp_lm_losses(model, x, x)
    main.backward()
    assert all(p.grad is None for p in model.mtp.parameters())


# ------------------------------------------------------------------------------------------------ the loss
def test_depth_losses_divide_by_T_not_by_the_positions_seen():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (3, 6), generator=gen)  # T = 5
    logits = [torch.randn(3, 5 - k, 7, generator=gen) for k in (1, 2, 3)]
    losses = mtp.depth_losses(logits, tokens)
    for k, (lg, loss) in enumerate(zip(logits, losses), start=1):
        manual = -sum(F.log_softmax(lg[b, i], -1)[tokens[b, i + k + 1]] for b in range(3) for i in range(5 - k))
        assert loss.item() == pytest.approx(manual.item() / (3 * 5), rel=1e-5)
        mean_ce = F.cross_entropy(lg.flatten(0, 1), tokens[:, k + 1:].flatten()).item()
        assert loss.item() == pytest.approx(mean_ce * (5 - k) / 5, rel=1e-5)
    for lam in (0.0, 0.1, 0.3, 2.0):
        assert mtp.mtp_loss(logits, tokens, lam).item() == pytest.approx(lam / 3 * sum(v.item() for v in losses))


def test_lambda_schedule_is_v3s():
    assert (mtp.V3_LAMBDA, mtp.V3_LAMBDA_FINAL) == (0.3, 0.1)
    lams = [mtp.mtp_lambda(s, 148, 0.3, 0.1) for s in range(148)]
    assert lams[:100] == [0.3] * 100 and lams[100:] == [0.1] * 48  # 10T of 14.8T tokens
    assert mtp.mtp_lambda(147, 148, 0.5) == 0.5  # lam_final None: constant


def test_trainer_adds_lambda_over_D_times_the_depth_losses():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2))
    cfg = TrainConfig(steps=6, batch_size=4, block_size=12, eval_every=6, eval_batches=1, mtp_lambda=0.3,
                      mtp_lambda_final=0.1, mtp_lambda_switch=0.5)
    history = train_lm(model, word_stream(500), word_stream(200, 1), cfg)
    assert [r["mtp_lambda"] for r in history] == [0.3] * 3 + [0.1] * 3
    for r in history:
        assert len(r["mtp_ce"]) == 2
        assert r["mtp_loss"] == pytest.approx(r["mtp_lambda"] / 2 * sum(r["mtp_ce"]), rel=1e-5)


def test_trainer_step_follows_the_gradient_of_main_plus_mtp(monkeypatch):
    """One SGD-like step (AdamW's first step moves every weight by -lr·sign(grad)) on L_main + L_MTP."""
    args = small_args(depth=1)
    torch.manual_seed(0)
    model = Transformer(args)
    reference = Transformer(args)
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(steps=1, batch_size=2, block_size=8, warmup=0, weight_decay=0.0, grad_clip=1e9,
                      eval_every=1, eval_batches=1, mtp_lambda=0.5)
    data = word_stream(300)
    g = torch.Generator().manual_seed(cfg.seed)
    from dslab.data import get_batch

    x, y = get_batch(data, cfg.batch_size, cfg.block_size, g)
    main, ce = mtp_lm_losses(reference.train(), x, y)
    (main + 0.5 * ce[0]).backward()
    train_lm(model, data, data, cfg)
    checked = set()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        mask = q.grad.abs() > 1e-4  # where Adam's first step is lr·sign(grad) to within 1e-6
        assert torch.allclose(p[mask], (q - cfg.lr * q.grad.sign())[mask], atol=1e-6), name
        checked |= {name.split(".")[0]} if mask.any() else set()
    assert {"embed", "head", "layers", "mtp"} <= checked


def test_mtp_training_resumes_exactly_and_old_checkpoints_still_load(tmp_path):
    args = small_args(depth=1)
    cfg = TrainConfig(steps=8, batch_size=4, block_size=12, eval_every=4, eval_batches=1,
                      checkpoint=str(tmp_path / "ck.pt"), checkpoint_every=4)
    data = word_stream(600)
    torch.manual_seed(0)
    straight = train_lm(Transformer(args), data, data, replace(cfg, checkpoint=None))

    def crash(model, step):
        if step == 5:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_lm(Transformer(args), data, data, cfg, after_step=crash)
    state = torch.load(cfg.checkpoint, weights_only=False)  # as written before TrainConfig had the MTP fields
    for key in ("mtp_lambda", "mtp_lambda_final", "mtp_lambda_switch"):
        del state["config"][key]
    torch.save(state, cfg.checkpoint)
    torch.manual_seed(1)
    resumed = train_lm(Transformer(args), data, data, cfg)
    assert resumed[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-5)
    assert resumed[-1]["mtp_ce"] == pytest.approx(straight[-1]["mtp_ce"], rel=1e-5)


def test_mtp_blocks_moe_layers_are_balanced_like_the_main_ones():
    torch.manual_seed(0)
    model = Transformer(small_args(depth=1, moe=True), moe_options={"balance_loss": "sequence"})
    assert len(model.moe_layers()) == 2  # layer 1 and the MTP block (layer 0 is dense)
    model.train().forward_mtp(torch.randint(0, VOCAB, (2, 8)))
    assert model.mtp[0].block.ffn.aux_loss is not None
    assert model.aux_loss().item() == pytest.approx(sum(m.aux_loss.item() for m in model.moe_layers()))
    bias = model.mtp[0].block.ffn.gate.bias.clone()
    model.update_bias(0.01)
    assert not torch.equal(bias, model.mtp[0].block.ffn.gate.bias)


# ------------------------------------------------------------------------------------------ D = 0 is the model
def test_depth_zero_is_exactly_the_plain_model():
    torch.manual_seed(0)
    plain = Transformer(small_args(depth=0, moe=True))
    torch.manual_seed(0)
    with_mtp = Transformer(small_args(depth=2, moe=True))
    assert len(plain.mtp) == 0 and not any(k.startswith("mtp.") for k in plain.state_dict())
    main_state = {k: v for k, v in with_mtp.state_dict().items() if not k.startswith("mtp.")}
    assert main_state.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in main_state.items())  # same init whatever D is
    x = torch.randint(0, VOCAB, (2, 7))
    assert torch.equal(plain.eval()(x), with_mtp.eval()(x))
    history = train_lm(plain, word_stream(300), word_stream(100), TrainConfig(steps=2, batch_size=2, block_size=8,
                                                                              eval_every=2, eval_batches=1))
    assert not any(k.startswith("mtp") for r in history for k in r)


# ------------------------------------------------------------------------------------------ acceptance rules
def test_greedy_verify_keeps_the_agreeing_prefix_then_the_models_token():
    logits = F.one_hot(torch.tensor([4, 2, 7, 1]), 9).float()  # the main model's argmax at 4 positions
    assert mtp.greedy_verify([4, 2, 7], logits) == [4, 2, 7, 1]  # all accepted + bonus
    assert mtp.greedy_verify([4, 5, 7], logits) == [4, 2]  # stops at the first disagreement
    assert mtp.greedy_verify([0, 2, 7], logits) == [4]
    assert mtp.greedy_verify([], logits[:1]) == [4]
    with pytest.raises(ValueError, match="logits"):
        mtp.greedy_verify([1, 2], logits)


def test_accept_then_resample_gives_exactly_p():
    gen = torch.Generator().manual_seed(0)
    for vocab in (2, 5, 50):
        for _ in range(5):
            p = torch.rand(vocab, generator=gen).pow(3).double()
            q = torch.rand(vocab, generator=gen).pow(3).double()
            p, q = p / p.sum(), q / q.sum()
            alpha = torch.tensor([mtp.accept_probability(p, q, x) for x in range(vocab)], dtype=torch.float64)
            rejected = (q * (1 - alpha)).sum()
            assert torch.allclose(q * alpha + rejected * mtp.residual(p, q), p, atol=1e-12)
    p = torch.tensor([0.5, 0.5])
    assert torch.equal(mtp.residual(p, p), p) and mtp.accept_probability(p, p, 0) == 1.0
    with pytest.raises(ValueError, match="q"):
        mtp.accept_probability(p, torch.tensor([1.0, 0.0]), 1)


# ------------------------------------------------------------------------------------- speculative decoding
def test_trained_drafter_is_mostly_right(trained):
    model, history = trained
    assert history[-1]["mtp_ce"][0] < 0.9  # random guessing: ln 12 = 2.5
    prompt = word_stream(12, seed=5).tolist()
    res = mtp.speculative_generate(model, prompt, 40)
    assert 0.5 < res.acceptance_rate < 1 or res.acceptance_rate == 1.0
    assert res.tokens_per_forward > 1.3


@pytest.mark.parametrize("n_draft", [1, 2])
def test_greedy_speculative_equals_greedy_plain_token_for_token(trained, n_draft):
    model, _ = trained
    rates = []
    for seed in range(5):
        prompt = word_stream(3 + seed, seed=10 + seed).tolist()
        for max_new in (1, 2, 3, 40):
            plain = model.generate(prompt, max_new)
            res = mtp.speculative_generate(model, prompt, max_new, n_draft=n_draft)
            assert res.tokens == plain, (seed, max_new)
            assert res.forwards <= len(plain) and sum(res.drafted) >= 0
        rates.append(res.acceptance_rate)
        stop = plain[len(plain) // 2]
        assert mtp.speculative_generate(model, prompt, 40, n_draft=n_draft, stop=stop).tokens == \
            model.generate(prompt, 40, stop=stop)
    assert 0 < min(rates) and max(rates) >= 0.5  # both the accept and the reject path ran


def test_greedy_speculative_on_an_untrained_moe_model_with_gqa_drafter():
    torch.manual_seed(3)
    for args in (small_args(depth=2, moe=True, vocab=40), small_args(depth=2, attn="gqa", vocab=40)):
        model = Transformer(args, max_batch_size=1)
        for seed in range(2):
            prompt = torch.randint(0, 40, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
            assert mtp.speculative_generate(model, prompt, 20, n_draft=2).tokens == model.generate(prompt, 20)


def test_counts_add_up(trained):
    model, _ = trained
    res = mtp.speculative_generate(model, word_stream(8, seed=3).tolist(), 50, n_draft=2)
    assert len(res.tokens) == 50
    assert 0 < res.drafted[1] <= res.accepted[0]  # a second draft is verified only after the first was accepted
    assert len(res.verified) == sum(res.drafted) and sum(k for _, _, k in res.verified) == sum(res.accepted)
    assert [sum(1 for _, d, _ in res.verified if d == depth) for depth in (1, 2)] == res.drafted
    # every forward after the prefill appends the accepted drafts and one token of its own
    assert len(res.tokens) == 1 + (res.forwards - 1) + sum(res.accepted)


def _exact_distribution(model: Transformer, prompt: list[int], n: int, temperature: float) -> torch.Tensor:
    """P(the n sampled tokens) under plain sampling, by enumeration with whole-sequence forwards -> [V]*n."""
    vocab = model.args.vocab_size
    probs = torch.ones([vocab] * n, dtype=torch.float64)
    model.train()
    with torch.no_grad():
        for seq in torch.cartesian_prod(*[torch.arange(vocab)] * n).view(-1, n):
            logits = model(torch.tensor([prompt + seq.tolist()]))[0, len(prompt) - 1:-1]
            p = F.softmax(logits.double() / temperature, -1).gather(1, seq[:, None]).prod()
            probs[tuple(seq)] = p
    model.eval()
    return probs


def _chi2_pvalue(counts: torch.Tensor, expected_p: torch.Tensor) -> float:
    """Pearson's goodness-of-fit test; cells expected below 5 are pooled into one."""
    n = counts.sum().item()
    expected = expected_p.flatten() * n
    counts = counts.flatten().double()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    stat = ((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum().item()
    df = len(obs) - 1
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                   torch.tensor(stat / 2, dtype=torch.float64)).item()


SAMPLES, NEW = 1000, 4  # the prefill gives the first token; the next step drafts two, then one bonus token


@pytest.fixture(scope="module")
def sampling_case():
    """An untrained D = 2 model over 4 tokens: its drafter's q is far from p, so rejections and residuals are common."""
    torch.manual_seed(0)
    model = Transformer(small_args(depth=2, vocab=4, dim=16, n_heads=1), max_batch_size=1, init_std=0.5).eval()
    prompt = [1, 3, 0]
    return model, prompt, _exact_distribution(model, prompt, NEW, temperature=0.8)


def _sample_counts(model, prompt, n_samples, n_draft, seed):
    counts, drafted = torch.zeros([4] * NEW), [0, 0]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_samples):
        res = mtp.speculative_generate(model, prompt, NEW, 0.8, n_draft=n_draft, generator=gen)
        counts[tuple(res.tokens)] += 1
        drafted = [a + b for a, b in zip(drafted, res.drafted + [0])]
    if n_draft == 2:
        assert drafted[1] > n_samples // 10  # the chain's second draft was verified often
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("n_draft", [1, 2])
def test_sampled_speculative_matches_the_plain_distribution(sampling_case, n_draft):
    """Fixed seed, 1,000 sequences of 4 tokens (256 outcomes): Pearson's χ² against the exact plain-sampling
    distribution must not reject at the 0.1% level. The same test rejects a sampler that skips the acceptance test
    (p-value < 1e-6, below), so it can fail."""
    model, prompt, exact = sampling_case
    counts = _sample_counts(model, prompt, SAMPLES, n_draft, seed=n_draft)
    assert _chi2_pvalue(counts, exact) > 1e-3
    gen = torch.Generator().manual_seed(0)
    plain = torch.zeros([4] * NEW)
    for _ in range(SAMPLES):
        plain[tuple(model.generate(prompt, NEW, 0.8, generator=gen))] += 1
    assert _chi2_pvalue(plain, exact) > 1e-3  # the reference sampler passes the same test


@pytest.mark.slow
def test_the_distribution_test_rejects_a_sampler_that_always_accepts(sampling_case, monkeypatch):
    model, prompt, exact = sampling_case
    monkeypatch.setattr(mtp, "accept_probability", lambda p, q, token: 1.0)
    counts = _sample_counts(model, prompt, SAMPLES, 1, seed=1)
    assert _chi2_pvalue(counts, exact) < 1e-6


def test_sampled_decoding_with_two_drafts_runs_to_the_end(trained):
    model, _ = trained
    gen = torch.Generator().manual_seed(0)
    prompt = word_stream(10, seed=2).tolist()
    res = mtp.speculative_generate(model, prompt, 40, 1.0, n_draft=2, generator=gen)
    assert len(res.tokens) == 40 and 0 <= res.acceptance_rate <= 1


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_input_names_the_parameter(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="n_mtp"):
        small_args(depth=-1)
    with pytest.raises(ValueError, match="lam"):
        mtp.mtp_loss([torch.zeros(1, 2, 3)], torch.zeros(1, 4, dtype=torch.long), -0.1)
    with pytest.raises(ValueError, match="mtp_lambda"):
        TrainConfig(mtp_lambda=-1.0)
    with pytest.raises(ValueError, match="mtp_lambda_final"):
        TrainConfig(mtp_lambda_final=-0.1)
    with pytest.raises(ValueError, match="tokens"):
        mtp.mtp_shift(torch.zeros(1, 3, dtype=torch.long), 2)  # depth 2 needs k + 2 = 4 tokens
    with pytest.raises(ValueError, match="k"):
        mtp.mtp_shift(torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="tokens"):
        mtp.depth_losses([torch.zeros(1, 1, 3), torch.zeros(1, 0, 3)], torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="too short"):
        Transformer(small_args(depth=2)).train().forward_mtp(torch.zeros(1, 2, dtype=torch.long))
    other = Transformer(small_args(depth=1, vocab=VOCAB + 1), max_batch_size=1)
    with pytest.raises(ValueError, match="drafter"):
        mtp.speculative_generate(model, [1, 2], 5, drafter=other)
    with pytest.raises(ValueError, match="n_draft"):
        mtp.speculative_generate(model, [1, 2], 5, n_draft=3)
    with pytest.raises(ValueError, match="n_mtp"):
        mtp.speculative_generate(Transformer(small_args(depth=0)), [1, 2], 5)
    with pytest.raises(ValueError, match="max_seq_len"):
        mtp.speculative_generate(model, [1, 2], 63)
    with pytest.raises(ValueError, match="temperature"):
        mtp.speculative_generate(model, [1, 2], 5, -1.0)
    with pytest.raises(ValueError, match="prompt"):
        mtp.speculative_generate(model, [], 5)


def test_a_drafter_from_another_checkpoint_of_the_same_shape_is_allowed(trained):
    model, _ = trained
    torch.manual_seed(9)
    other = Transformer(model.args, max_batch_size=1)
    prompt = word_stream(6, seed=4).tolist()
    res = mtp.speculative_generate(model, prompt, 20, drafter=other)
    assert res.tokens == model.generate(prompt, 20)
    assert math.isfinite(res.tokens_per_forward)


# ----------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_is_registered_and_keeps_rope_in_bfloat16():
    import copy

    from dslab.bench import BENCHMARKS
    from dslab.bench import mtp as bench

    assert "mtp" in BENCHMARKS
    torch.manual_seed(0)
    model = Transformer(small_args(depth=1, moe=True, vocab=30), max_batch_size=1).eval()
    half = bench.to_dtype(copy.deepcopy(model), torch.bfloat16)
    tables = [b for name, b in half.named_buffers() if name.endswith("freqs_cis")]
    assert tables and all(t.is_complex() for t in tables)
    assert half.embed.weight.dtype == torch.bfloat16 and half.layers[1].ffn.gate.bias.dtype == torch.float32
    x = torch.randint(0, 30, (1, 20))
    ref, got = model(x), half(x).float()
    assert (got - ref).norm() / ref.norm() < 0.05  # bf16 rounding only; a broken RoPE table is far off
    assert len(mtp.speculative_generate(half, [1, 2, 3], 10).tokens) == 10


def test_benchmark_helpers_time_and_compare(trained):
    from dslab.bench import mtp as bench

    model, _ = trained
    costs = bench.forward_costs(model, context=16, rounds=2)
    assert set(costs["ms"]) == {"main_1", "main_2", "main_3", "mtp_1", "mtp_2"}
    assert costs["relative"]["main_1"] == 1.0
    prompts = bench.prompts_from(word_stream(400, seed=7), 2, length=8)
    assert [len(p) for p in prompts] == [8, 8] and prompts[0] != prompts[1]
    found = bench.measure(model, prompts, torch.float32, rounds=1, new_tokens=12)
    assert found["same_tokens"] and found["speedup"] > 0 and 1 <= found["tokens_per_forward"] <= 2
    assert found["estimate"] == pytest.approx(mtp.expected_speedup(found["acceptance"], 1, found["c2"],
                                                                   found["c_mtp"])[1])
