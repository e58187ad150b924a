"""Device-correct by construction, proven on a CPU (issue 21, part 2): every tensor the capstone's path creates lives
on the model's device, or is made on the CPU on purpose (``device="cpu"``) and moved.

CI has no GPU, so the test makes the default device a trap: under ``torch.set_default_device("meta")`` a tensor built
without an explicit device is a meta tensor, and a meta tensor fed to the CPU model raises (checked first). Then the
notebook's whole path runs at a tiny size: pretraining (fp32, emulated FP8, real FP8 on the CPU's kernel), the first
batch and the ranks' expert loads, sampling and speculative decoding, SFT, GRPO (rollouts, ``join``, ``grpo_step``)
and evaluation, the FP8 building blocks, and the peak FLOP/s that MFU divides by.

Before the fix this failed where a function built a tensor on the default device, i.e. on the CPU while a GPU run's
model sits on the GPU: ``grpo.join`` (ids and mask from ``torch.full``/``torch.zeros``), ``grpo.grpo_step`` (the
advantages from ``torch.tensor(rewards)``, the row index and the length order), ``sft.sft_batch``/``train_sft`` (the
batch, never moved), ``sampling.rollout`` (the prompt batch), ``experiments.first_batch``/``rank_loads`` (CPU tokens fed
to the model), ``capstone.init_model``/``load_run`` (the model built on the default device), ``train.train_lm`` (the
batch drawn with ``data.get_batch`` on the default device), ``mtp``'s sampled verification (``torch.rand``) and
``runtime.measure_gemm_flops`` (its operands)."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from dslab import capstone, data, evals, fp8, grpo, runtime, sampling, sft, train
from dslab.labs.lab06_capstone import experiments

SMALL = {"model.dim": 32, "model.n_heads": 2, "model.q_lora_rank": 16, "model.kv_lora_rank": 16,
         "model.qk_nope_head_dim": 8, "model.qk_rope_head_dim": 8, "model.v_head_dim": 8, "model.inter_dim": 80,
         "model.moe_inter_dim": 16, "model.n_layers": 2, "model.n_routed_experts": 8, "model.n_expert_groups": 2,
         "model.n_limited_groups": 1, "model.max_seq_len": 96, "model.original_seq_len": 96, "batch_size": 4,
         "block_size": 32, "n_chars": 20_000, "eval_batches": 1, "steps": 2, "eval_every": 2, "checkpoint_every": 2,
         "warmup": 1, "load_every": 1, "device": "cpu"}
TASKS = data.rl_splits()["train"][:8]
PAIRS = [(t.prompt, f"<think>{t.answer}</think> <answer>{t.answer}</answer>") for t in TASKS]


@contextlib.contextmanager
def meta_default():
    """Anything created without an explicit device lands on "meta" (and cannot meet the CPU model)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def tiny_cfg(**changes) -> capstone.RunConfig:
    return capstone.preset_config("cpu", **{**SMALL, **changes})


def grpo_cfg(**changes) -> grpo.GRPOConfig:
    return dataclasses.replace(capstone.grpo_config(fast=True), max_rows=8, micro_batch_rows=4, eval_tasks=2,
                               max_completion_length=12, kl_rows=4, **changes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny pretrained run folder, made the ordinary way (the tests below each trap their own stage)."""
    with runtime.num_threads(1):
        return capstone.pretraining_run(tiny_cfg(), tmp_path_factory.mktemp("device") / "run", measure_peak=False)


def on_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def test_the_trap_springs_a_meta_tensor_fed_to_a_cpu_module_raises():
    layer = torch.nn.Linear(4, 4)
    with meta_default():
        x = torch.zeros(2, 4)
        assert x.device.type == "meta"
        with pytest.raises((RuntimeError, NotImplementedError)):
            layer(x)


@pytest.mark.parametrize("precision", ["fp32", "fp8-emulated", "fp8"])
def test_pretraining_builds_its_model_and_batches_explicitly(tmp_path, precision):
    with meta_default():
        result = capstone.pretraining_run(tiny_cfg(precision=precision), tmp_path / "run", measure_peak=False)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert on_cpu(*result.model.parameters(), *result.model.buffers())


def test_train_lm_and_its_mfu_under_the_trap(run):
    cfg = tiny_cfg()
    with runtime.num_threads(1):
        train_ids, val_ids = capstone.corpus_ids(cfg)
    model = capstone.init_model(cfg)
    tcfg = dataclasses.replace(cfg.train, checkpoint=None, metrics=None)
    with meta_default():
        peak = runtime.measure_gemm_flops("cpu", size=128, repeats=2)
        history = train.train_lm(model, train_ids, val_ids, tcfg, peak_flops=peak)
    assert all(0 < r["mfu"] <= 1 for r in history) and "val_loss" in history[-1]


def test_first_batch_and_rank_loads(run):
    cfg = tiny_cfg()
    train_ids, _ = capstone.corpus_ids(cfg)
    with meta_default():
        x, y = experiments.first_batch(cfg, train_ids)
        loads = experiments.rank_loads(run.model, x, ranks=2)
    assert on_cpu(x, y, loads) and loads.shape[:2] == (2, len(run.model.moe_layers()))
    assert int(loads.sum()) > 0


def test_sampling_and_speculative_decoding(run):
    model = run.model.eval()
    with meta_default():
        greedy = capstone.sample(model, "12+7=", 8, 0.0)
        sampled = capstone.sample(model, "12+7=", 8, 0.8, seed=1)
        spec = capstone.sample(model, "12+7=", 8, 0.0, speculative=True)
        spec_sampled = capstone.sample(model, "12+7=", 8, 0.8, seed=1, speculative=True)
        check = experiments.speculative_check(model, ["12+7="], 8)
    assert spec["text"] == greedy["text"] and check["same_as_greedy"]
    assert sampled["tokens"] == spec_sampled["tokens"] == 8


def test_join_builds_on_the_rollouts_device(run):
    """join's own fault, apart from the rollout's: its ids and mask came from torch.full/torch.zeros."""
    policy, _ = capstone.load_run(run.out, rows=8)
    tok = data.CharTokenizer()
    prompts = evals.encode_prompts(TASKS[:2], tok)
    r = sampling.rollout(policy, prompts, 2, 6, tok.encode(data.ANSWER_CLOSE), 1.0, 1.0,
                         torch.Generator().manual_seed(0), tok.pad_id)
    with meta_default():
        ids, mask = grpo.join(prompts, r, 2, tok.pad_id)
    assert on_cpu(ids, mask) and ids.shape[0] == mask.shape[0] == 4 and int(mask.sum()) == int(r.lengths.sum())


def test_rollout_join_and_grpo_step(run):
    policy, _ = capstone.load_run(run.out, rows=8)
    policy.train()
    tok, cfg = data.CharTokenizer(), grpo_cfg(num_generations=4)
    prompts = evals.encode_prompts(TASKS[:2], tok)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    with meta_default():
        r = sampling.rollout(policy, prompts, 2, 6, tok.encode(data.ANSWER_CLOSE), 1.0, 1.0,
                             torch.Generator().manual_seed(0), tok.pad_id)
        ids, mask = grpo.join(prompts, r, 2, tok.pad_id)
        row = grpo.grpo_step(policy, None, opt, TASKS[:2], dataclasses.replace(cfg, drop_zero_variance=False),
                             grpo.default_scorer(), torch.Generator().manual_seed(0), tok)
    assert on_cpu(r.ids, r.mask, r.stopped, ids, mask)
    assert math.isfinite(row["loss"]) and row["kept_rows"] == 8


def test_sft_grpo_and_evaluation(run):
    model, _ = capstone.load_run(run.out, rows=8)
    with meta_default():
        x, y, m = sft.sft_batch(PAIRS[:2], data.CharTokenizer())
        history = sft.train_sft(model, PAIRS, sft.SFTConfig(steps=2, batch_size=2, eval_tasks=2, eval_every=2,
                                                            max_completion_length=8), eval_tasks=TASKS)
        grpo.train_grpo(model.train(), TASKS, grpo_cfg(prompts_per_step=2, num_generations=2, beta=0.04,
                                                       num_iterations=2, drop_zero_variance=False), eval_tasks=TASKS)
        summary = capstone.grpo_run(run.out, grpo_cfg(), eval_tasks=2, k=2)
        res = evals.evaluate(model, TASKS[:2], k=2, max_new_tokens=8)
    assert on_cpu(x, y, m) and "val_accuracy" in history[-1]
    assert set(summary["after"]) >= {"greedy", "pass@1", "cons@2", "format"} and 0 <= res["greedy"] <= 1


def test_the_r1_recipe_from_exported_weights(tmp_path):
    """The capstone's tiny-R1 path: weights file -> cold start -> GRPO -> evaluation, every tensor on the model's
    device. It caught the cold-start set's index permutation being created on the default device."""
    cfg = tiny_cfg(**{"model.max_seq_len": 192, "model.original_seq_len": 192})  # worked examples fit
    capstone.export_weights(capstone.init_model(cfg), cfg, tmp_path / "base.pt")
    with meta_default():
        summary = capstone.grpo_run(tmp_path / "r1", grpo_cfg(), base=tmp_path / "base.pt", eval_tasks=2, k=2,
                                    cold_start=capstone.cold_start_config(fast=True, batch_size=2), sample_tasks=1)
    assert summary["cold_start"]["tasks"] == 2 and summary["after"]["sampled_tasks"] == 1


def test_fp8_building_blocks():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 256, generator=gen), torch.randn(16, 256, generator=gen)
    with meta_default():
        grid = fp8.representable_values("e4m3")
        qa, qb = fp8.quantize(a, "tile"), fp8.quantize(b, "block")
        emulated = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, acc_bits=14)
        real = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, impl="torch")
        limited = fp8.accumulate_mm(a, b)
        y = fp8.fp8_linear(a.requires_grad_(), b)
        y.sum().backward()
        back = fp8.fake_quantize(a.detach(), "row")
    assert on_cpu(grid, emulated, real, limited, y, a.grad, back) and len(grid) == 253
