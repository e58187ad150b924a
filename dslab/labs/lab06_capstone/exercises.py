"""Exercises of lab 06 "Capstone", in the notebook's order: 6.1 assemble one transformer block from the components,
6.2 predict what the built model's parameter count will be from lab 00's accounting, 6.3 one training step of the
capstone objective with the aux-loss-free bias update, 6.4 repair the data-parallel bias update, 6.5 MFU.

Hidden cases are drawn from the grader's rng: small random architectures (dense and MoE layers, MLA with and without
query compression, 1 or 2 MTP modules, tied and untied embeddings, V3's own config where only arithmetic is asked),
random weights, tokens, loads and throughputs. Every common wrong answer is a ``Mistake`` with its own hint.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from dslab import accounting as acc
from dslab.configs import ModelArgs, load
from dslab.course.exercises import Case, Exercise, Mistake, compare_close, compare_exact
from dslab.labs.lab06_capstone import experiments as ex
from dslab.model import Block
from dslab.moe import bias_update
from dslab.mtp import depth_losses


def _seeded(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def small_args(dim: int = 32, n_layers: int = 3, n_dense: int = 1, q_lora: int = 16, mtp: int = 1,
               experts: int = 8, top_k: int = 2, groups: int = 2, tie: bool = False, bias: bool = True,
               vocab: int = 40) -> ModelArgs:
    """A capstone-shaped architecture small enough to build in milliseconds."""
    return load("capstone-cpu").replace(
        name="small", vocab_size=vocab, dim=dim, inter_dim=3 * dim, moe_inter_dim=dim // 2, n_layers=n_layers,
        n_dense_layers=n_dense, n_heads=2, q_lora_rank=q_lora, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=experts, n_activated_experts=top_k, n_expert_groups=groups,
        n_limited_groups=1 if groups > 1 else 1, gate_bias=bias, n_mtp=mtp, tie_embeddings=tie, max_seq_len=32,
        original_seq_len=32)


# ------------------------------------------------------------------------------------------- 6.1 one block
def _block_case(gen: torch.Generator, args: ModelArgs, layer_id: int, batch: int, seq: int) -> tuple:
    with torch.random.fork_rng():  # the learner's global RNG is left as it was
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        block = Block(layer_id, args, max_batch_size=batch)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("norm.weight"):  # norms away from 1, so that which norm is applied where shows
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    state = {k: v.detach().clone() for k, v in block.state_dict().items()}
    return args, layer_id, state, torch.randn(batch, seq, args.dim, generator=gen)


def _block_public() -> list[Case]:
    gen = torch.Generator().manual_seed(61)
    args = small_args()
    return [Case(_block_case(gen, args, 0, 2, 8), "layer 0 of 3 (dense FFN)"),
            Case(_block_case(gen, args, 1, 2, 8), "layer 1 (DeepSeekMoE: 8 routed experts, top-2 + 1 shared)"),
            Case(_block_case(gen, args, 3, 1, 5), "the MTP module's block (layer id n_layers = 3)")]


def _block_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        n_layers = rng.randint(2, 4)
        n_dense = rng.randint(0, n_layers - 1)
        args = small_args(dim=rng.choice([16, 32, 48]), n_layers=n_layers, n_dense=n_dense,
                          q_lora=rng.choice([0, 16]), experts=rng.choice([4, 8]), top_k=rng.choice([1, 2]),
                          groups=1)
        layer = [max(0, n_dense - 1), n_dense, n_layers, rng.randrange(n_layers + 1), n_dense][i]
        cases.append(Case(_block_case(_seeded(rng), args, layer, rng.randint(1, 3), rng.randint(2, 10)),
                          f"hidden #{i}: a random architecture and layer"))
    return cases


def _parts(args, layer_id, state, x):
    block = Block(layer_id, args, max_batch_size=max(1, x.shape[0]))
    block.load_state_dict(state)
    return block.train()


@torch.no_grad()
def _block_post_norm(args, layer_id, state, x):
    """Post-norm (the original Transformer's order): norm(x + sublayer(x))."""
    b = _parts(args, layer_id, state, x)
    h = b.attn_norm(x + b.attn(x))
    return b.ffn_norm(h + b.ffn(h))


@torch.no_grad()
def _block_parallel(args, layer_id, state, x):
    """Attention and FFN in parallel from the same input (GPT-J style) instead of one after the other."""
    b = _parts(args, layer_id, state, x)
    return x + b.attn(b.attn_norm(x)) + b.ffn(b.ffn_norm(x))


@torch.no_grad()
def _block_one_norm(args, layer_id, state, x):
    """attn_norm used before the FFN too (ffn_norm never applied)."""
    b = _parts(args, layer_id, state, x)
    h = x + b.attn(b.attn_norm(x))
    return h + b.ffn(b.attn_norm(h))


@torch.no_grad()
def _block_no_ffn_residual(args, layer_id, state, x):
    """The FFN's output replaces the stream instead of being added to it."""
    b = _parts(args, layer_id, state, x)
    h = x + b.attn(b.attn_norm(x))
    return b.ffn(b.ffn_norm(h))


BLOCK_MISTAKES = (
    Mistake("post-norm", _block_post_norm, "DeepSeek's blocks are pre-norm: normalise the *input* of each sublayer, "
            "x + attn(attn_norm(x)), and leave the residual stream itself unnormalised"),
    Mistake("parallel", _block_parallel, "the FFN reads the stream *after* attention has been added: "
            "h = x + attn(attn_norm(x)), then h + ffn(ffn_norm(h))"),
    Mistake("one norm", _block_one_norm, "each sublayer has its own RMSNorm: attn_norm before attention, ffn_norm "
            "before the FFN (their weights differ)"),
    Mistake("no FFN residual", _block_no_ffn_residual, "add the FFN's output to the stream: h + ffn(ffn_norm(h))"),
)


# ---------------------------------------------------------------------------------------- 6.2 the count
def _count_public() -> list[Case]:
    return [Case((load("capstone-cpu"),), "the cpu preset (16 experts, 1 MTP module)"),
            Case((load("deepseek-v3-671b"),), "DeepSeek-V3 with its MTP module"),
            Case((load("tiny-mla").replace(n_mtp=1, tie_embeddings=True),),
                 "a dense model with one MTP module and the head tied to the embedding")]


def _count_hidden(rng: random.Random) -> list[Case]:
    # (experts, n_mtp, tie_embeddings, gate_bias) per case: MoE and dense, 0-2 MTP modules, tied or not, bias or not
    shapes = [(8, 1, False, True), (16, 2, False, True), (8, 0, False, False), (8, 1, True, True), (0, 1, False,
                                                                                                    False)]
    cases = [Case((load("deepseek-v3-671b").replace(n_mtp=rng.choice([0, 2])),), "hidden #0: DeepSeek-V3")]
    for i, (experts, mtp, tie, bias) in enumerate(shapes, start=1):
        args = small_args(dim=rng.choice([32, 64, 96]), n_layers=rng.randint(2, 6), n_dense=rng.randint(0, 2),
                          q_lora=rng.choice([0, 16]), mtp=mtp, experts=experts or 8, top_k=2, groups=1, tie=tie,
                          bias=bias, vocab=rng.choice([100, 256]))
        if not experts:
            args = args.replace(n_routed_experts=0, n_activated_experts=0, n_shared_experts=0, gate_bias=False)
        cases.append(Case((args,), f"hidden #{i}: a random architecture"))
    return cases


def _count_no_mtp(args):
    """The MTP modules left out (lab 00's total, as for the "671B")."""
    n_moe = (args.n_layers - args.n_dense_layers) if args.is_moe and args.gate_bias else 0
    return acc.total_params(args) - n_moe * args.n_routed_experts


def _count_with_bias(args):
    """The gate biases counted as parameters."""
    return acc.total_params(args, include_mtp=True)


def _count_tied_twice(args):
    """With tied embeddings, the shared table counted twice."""
    return ex.built_params_reference(args) + (args.vocab_size * args.dim if args.tie_embeddings else 0)


COUNT_MISTAKES = (
    Mistake("no MTP", _count_no_mtp, "the built model holds its MTP modules (eh_proj, norms and a whole block) as "
            "parameters too: add accounting.mtp_params"),
    Mistake("bias counted", _count_with_bias, "the gate bias b_i is a buffer, not a parameter (gradients never "
            "touch it): parameters() does not list it"),
    Mistake("tied twice", _count_tied_twice, "with tie_embeddings the head *is* the embedding: parameters() lists a "
            "shared Parameter once"),
)


# ------------------------------------------------------------------------------------ 6.3 the training step
def _step_case(gen: torch.Generator, args: ModelArgs, batch: int, seq: int, lr: float, lam: float,
               gamma: float) -> tuple:
    with torch.random.fork_rng():
        model = ex.fresh_model(args, int(torch.randint(0, 2**31, (1,), generator=gen)))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, args.vocab_size, (batch, seq), generator=gen)
    y = torch.randint(0, args.vocab_size, (batch, seq), generator=gen)
    return args, state, x, y, lr, lam, gamma


def _step_public() -> list[Case]:
    # The first optimizer built in a process imports torch._dynamo (about 1.5 s of CPU): pay it here, where no
    # check is timed, rather than inside the learner's first timed call.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    gen = torch.Generator().manual_seed(63)
    return [Case(_step_case(gen, small_args(dim=16, n_layers=2), 2, 8, 1e-2, 0.3, 0.01),
                 "one MTP module, λ = 0.3, γ = 0.01"),
            Case(_step_case(gen, small_args(dim=16, mtp=2, n_layers=2), 2, 8, 1e-2, 0.5, 0.05),
                 "two MTP modules, λ = 0.5")]


def _step_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(3):
        args = small_args(dim=rng.choice([16, 32]), n_layers=rng.randint(2, 3), mtp=[2, 1, 2][i],
                          experts=rng.choice([4, 8]), groups=1)
        cases.append(Case(_step_case(_seeded(rng), args, rng.randint(1, 3), rng.randint(6, 14),
                                     rng.choice([1e-2, 3e-3]), rng.choice([0.1, 0.3, 1.0]), rng.choice([0.01, 0.1])),
                          f"hidden #{i}: a random architecture, batch and λ"))
    return cases


def compare_step(expected: dict, got) -> str | None:
    """Losses within 1e-5 relative, gate biases and the three weights within 1e-5."""
    if not isinstance(got, dict) or set(got) != set(expected):
        return f"expected a dict with keys {sorted(expected)} (experiments.step_report), got " + \
            (f"keys {sorted(got)}" if isinstance(got, dict) else type(got).__name__)
    for key in ("loss", "mtp_loss"):
        if (msg := compare_close(expected[key], got[key], rtol=1e-5, atol=1e-6)) is not None:
            return f"{key}: {msg}"
    for key in ("bias", "embed", "head", "eh_proj"):
        if (msg := compare_close(expected[key], got[key], rtol=0, atol=1e-5)) is not None:
            return f"{key} after the step: {msg}"
    return None


def _step_with(args, state, x, y, lr, lam, gamma, total_fn, bias_first=False, sign=1.0, report_total=False):
    """A training step with one thing done wrong (see STEP_MISTAKES)."""
    model, opt = ex.restore(args, state, lr)
    if bias_first:
        model.update_bias(gamma)
    logits, mtp_logits = model.forward_mtp(x)
    main = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    ce = depth_losses(mtp_logits, torch.cat([x, y[:, -1:]], 1))
    total = total_fn(main, ce, lam)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if not bias_first:
        with torch.no_grad():
            for m in model.moe_layers():
                load = m.step_load.float()
                m.gate.bias.copy_(m.gate.bias + sign * gamma * torch.sign(load.mean() - load))
                m.step_load.zero_()
    mtp = lam / len(ce) * torch.stack(ce).sum()
    return ex.step_report(model, total if report_total else main, mtp)


STEP_MISTAKES = (
    Mistake("λ not over D", lambda *a: _step_with(*a, lambda m, ce, lam: m + lam * torch.stack(ce).sum()),
            "eq. 25 averages the depths: L_MTP = (λ/D) Σ_k L^k_MTP, not λ Σ_k"),
    Mistake("no MTP loss", lambda *a: _step_with(*a, lambda m, ce, lam: m),
            "the step minimises L_main + L_MTP: without it the MTP modules never learn (and the shared embedding "
            "and head miss its gradient)"),
    Mistake("bias before the forward",
            lambda *a: _step_with(*a, lambda m, ce, lam: m + lam / len(ce) * torch.stack(ce).sum(), bias_first=True),
            "update the bias *after* the step's forward: it needs the load this batch produced (update_bias with "
            "nothing counted leaves it unchanged)"),
    Mistake("inverted bias", lambda *a: _step_with(*a, lambda m, ce, lam: m + lam / len(ce) * torch.stack(ce).sum(),
                                                   sign=-1.0),
            "overloaded experts must become less attractive: b_i += γ·sign(mean load − load_i)"),
    Mistake("total as loss", lambda *a: _step_with(*a, lambda m, ce, lam: m + lam / len(ce) * torch.stack(ce).sum(),
                                                   report_total=True),
            "report the main next-token loss as \"loss\" and (λ/D) Σ_k L^k as \"mtp_loss\", separately"),
)


# --------------------------------------------------------------------------------- 6.4 data-parallel bias
def _loads_case(gen: torch.Generator, ranks: int, experts: int, ties: bool, gamma: float) -> tuple:
    loads = torch.randint(0, 30, (ranks, experts), generator=gen)
    if ties:  # a few experts exactly at the mean of the summed load
        total = loads.sum(0)
        target = int(total.float().mean().round())
        loads[0, : experts // 4] += target - total[: experts // 4]
        loads = loads.clamp(min=0)
    bias = 0.01 * torch.randn(experts, generator=gen)
    return bias, loads, gamma


def _global_public() -> list[Case]:
    return [Case((torch.zeros(4), torch.tensor([[8, 0, 4, 4], [0, 8, 4, 4]]), 0.01),
                 "2 ranks: experts 0 and 1 overloaded on one rank each, balanced overall"),
            Case((torch.tensor([0.1, 0.0, -0.1]), torch.tensor([[5, 1, 0], [5, 1, 0], [5, 1, 0]]), 0.001),
                 "3 ranks with the same load"),
            Case((torch.zeros(4), torch.tensor([[1, 2, 3, 10], [9, 2, 3, 0]]), 0.1),
                 "2 ranks that disagree about expert 0 and expert 3")]


def _global_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(6):
        cases.append(Case(_loads_case(_seeded(rng), rng.choice([2, 4, 8]), rng.choice([4, 8, 16]), i % 2 == 0,
                                      rng.choice([0.001, 0.01, 0.1])), f"hidden #{i}: random loads on several ranks"))
    return cases


def global_bias_update_draft(bias, rank_loads, gamma):
    """The lab's buggy version: every rank steps its bias from its own load, then the results are averaged."""
    updates = [bias + gamma * torch.sign(load.float().mean() - load.float()) for load in rank_loads]
    return torch.stack(updates).mean(0)


GLOBAL_MISTAKES = (
    Mistake("average of local updates", global_bias_update_draft,
            "sign() is not linear: averaging each rank's own step is not the step of the whole batch. Sum the "
            "ranks' loads first (an all-reduce), then take one sign"),
    Mistake("rank 0 only", lambda bias, loads, gamma: bias_update(bias, loads[0], gamma),
            "rank 0's slice is not the batch: V3 monitors the load of the whole step, so sum over all ranks"),
    Mistake("inverted", lambda bias, loads, gamma: bias.float() - gamma * torch.sign(
        loads.sum(0).float().mean() - loads.sum(0).float()),
        "an expert above the mean load must get a lower bias: + γ·sign(mean − load_i)"),
)


# -------------------------------------------------------------------------------------------------- 6.5 MFU
def _mfu_public() -> list[Case]:
    return [Case((load("capstone-cpu"), 128, 20_000.0, 50e9), "the cpu preset at 20k tokens/s on a 50 GFLOP/s CPU"),
            Case((load("deepseek-v3-671b"), 4096, 3.0e3, 989.4e12), "DeepSeek-V3 on one H800-class GPU"),
            Case((load("tiny-gqa"), 64, 5_000.0, 20e9), "a dense GQA model")]


def _mfu_hidden(rng: random.Random) -> list[Case]:
    names = ["capstone-cpu", "capstone-gpu-small", "deepseek-v3-671b", "deepseek-v2-lite-16b", "tiny-mha",
             "llama-3.1-405b"]
    return [Case((load(n), rng.choice([64, 128, 512, 4096]), rng.uniform(1e3, 1e6), rng.choice([20e9, 312e12,
                                                                                                  989.4e12])),
                 f"hidden #{i}: a shipped config") for i, n in enumerate(names)]


def _mfu_total(args, seq_len, tps, peak):
    """All stored parameters instead of the activated ones."""
    flops = 6 * (acc.total_params(args) - acc.embedding_params(args)) + \
        3 * acc.attention_flops_per_token(args, 1) * (seq_len + 1) / 2
    return flops * tps / peak


def _mfu_forward_only(args, seq_len, tps, peak):
    """Forward FLOPs only (the backward pass costs about twice the forward)."""
    return acc.mfu(acc.training_flops_per_token(args, seq_len) / 3, tps, peak)


def _mfu_no_attention(args, seq_len, tps, peak):
    """6N alone, attention left out."""
    return 6 * acc.activated_params(args, include_embedding=False) * tps / peak


def _mfu_non_causal(args, seq_len, tps, peak):
    """Every token attends to all seq_len keys (no causal mask)."""
    return acc.mfu(acc.training_flops_per_token(args, seq_len, causal=False), tps, peak)


def _mfu_embedding(args, seq_len, tps, peak):
    """The input embedding counted as a matmul."""
    return acc.mfu(acc.training_flops_per_token(args, seq_len) + 6 * acc.embedding_params(args)
                   * (not args.tie_embeddings), tps, peak)


MFU_MISTAKES = (
    Mistake("total params", _mfu_total, "a token runs only the activated parameters: accounting.activated_params, "
            "not the total (an MoE stores far more than it uses)"),
    Mistake("forward only", _mfu_forward_only, "a training token costs forward + backward ≈ 3 × the forward FLOPs"),
    Mistake("no attention", _mfu_no_attention, "include the attention FLOPs (score and value matmuls), "
            "accounting.attention_flops_per_token, at the average number of keys a token sees"),
    Mistake("non-causal", _mfu_non_causal, "with a causal mask the t-th token sees t keys: on average "
            "(seq_len + 1) / 2, not seq_len"),
    Mistake("embedding counted", _mfu_embedding, "the input embedding is a lookup, not a matmul: use "
            "activated_params(args, include_embedding=False)"),
)


EXERCISES = [
    Exercise(
        id="06.block", number="6.1", target="block_forward", points=2,
        task="build the block's attention, FFN (dense or MoE) and two norms from dslab's components, load state "
             "into them, and return the pre-norm block's output for x",
        reference=ex.block_forward_reference, public_cases=_block_public, hidden_cases=_block_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=1e-5),
        hint="x + attn(attn_norm(x)) then + ffn(ffn_norm(.)); the FFN is dense for layer_id < n_dense_layers "
             "(or a dense model), DeepSeekMoE otherwise",
        mistakes=BLOCK_MISTAKES,
        forbidden=("dslab.model.Block.forward", "dslab.labs.lab06_capstone.experiments.block_forward_reference"),
        giveaways=("x + attn(attn_norm(x))", "h + ffn(ffn_norm(h))",
                   r"h = x + \mathrm{MLA}(\mathrm{RMSNorm}_{\text{attn}}(x))",
                   r"y = h + \mathrm{FFN}(\mathrm{RMSNorm}_{\text{ffn}}(h))"),
    ),
    Exercise(
        id="06.built_params", number="6.2", target="built_params", points=2, kind="predict",
        task="return what Transformer(args).num_params() prints, computed from lab 00's accounting alone",
        reference=ex.built_params_reference, public_cases=_count_public, hidden_cases=_count_hidden,
        compare=compare_exact,
        hint="accounting.total_params counts the main model; the built model also holds its MTP modules, and keeps "
             "one thing accounting counts as a buffer",
        mistakes=COUNT_MISTAKES,
        forbidden=("dslab.labs.lab06_capstone.experiments.built_params_reference", "dslab.model.Transformer.__init__"),
        giveaways=("acc.mtp_params(args)", "include_mtp=True", "buffers, not parameters",
                   "n_moe * args.n_routed_experts"),
    ),
    Exercise(
        id="06.training_step", number="6.3", target="training_step", points=3,
        task="one optimizer step of L_main + (lam/D) sum_k L^k_MTP with clipping at 1.0, then the aux-loss-free bias "
             "update with gamma; return experiments.step_report(model, main loss, MTP loss)",
        reference=ex.training_step_reference, public_cases=_step_public, hidden_cases=_step_hidden,
        compare=compare_step,
        hint="forward_mtp gives both logits; dslab.mtp.depth_losses gives the L^k; backward, clip, step, then "
             "model.update_bias(gamma)",
        mistakes=STEP_MISTAKES,
        forbidden=("dslab.labs.lab06_capstone.experiments.training_step_reference", "dslab.train.objective",
                   "dslab.train.train_lm", "dslab.train.mtp_lm_losses"),
        giveaways=("lam / len(mtp_logits)", "(main + mtp).backward()", "opt.step()\nmodel.update_bias(gamma)",
                   "y[:, -1:]"),
    ),
    Exercise(
        id="06.global_bias", number="6.4", target="global_bias_update", points=2, kind="debug",
        task="repair global_bias_update (rank_loads [R, E] holds what each of the R ranks counted)",
        reference=ex.global_bias_update_reference, public_cases=_global_public, hidden_cases=_global_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-7),
        hint="one all-reduce (a sum over ranks) of the loads, then one sign step: b + γ·sign(mean − load)",
        mistakes=GLOBAL_MISTAKES,
        forbidden=("dslab.labs.lab06_capstone.experiments.global_bias_update_reference",),
        giveaways=("rank_loads.sum(0)", "summed over ranks before the sign", "sign is not linear"),
    ),
    Exercise(
        id="06.mfu", number="6.5", target="mfu", points=2,
        task="return the model FLOPs utilisation of training args on seq_len-token sequences at tokens_per_second "
             "on a device of peak_flops FLOP/s, the FLOPs counted with lab 00's functions",
        reference=ex.mfu_reference, public_cases=_mfu_public, hidden_cases=_mfu_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-12),
        hint="3 x (2 x activated parameters without the embedding + attention FLOPs at (seq_len + 1)/2 keys)",
        mistakes=MFU_MISTAKES,
        forbidden=("dslab.accounting.mfu", "dslab.accounting.training_flops_per_token",
                   "dslab.labs.lab06_capstone.experiments.mfu_reference"),
        giveaways=("(seq_len + 1) / 2", "(S+1)/2", "include_embedding=False", "three times the forward"),
    ),
]
