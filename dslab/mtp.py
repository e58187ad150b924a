"""Multi-Token Prediction (DeepSeek-V3 §2.2, eqs. 21-25) and speculative decoding with the MTP modules as drafter.

D sequential modules extend the main model. Module k (k = 1..D) keeps the causal chain: at position i it combines
the previous depth's representation h^{k-1}_i (h^0: the main model's last hidden state) with the embedding of the
token k positions ahead, t_{i+k}, and predicts the token k + 1 positions ahead, t_{i+k+1}:

    h'^k_i = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))]                  (21)
    h^k_{1:T-k} = TRM_k(h'^k_{1:T-k})                                         (22)
    P^k_{i+k+1} = OutHead(h^k_i)                                              (23)
    L^k_MTP = -(1/T) Σ_{i=2+k}^{T+1} log P^k_i[t_i]                           (24)
    L_MTP = (λ/D) Σ_k L^k_MTP                                                 (25)

Parameter names follow DeepSeek-V3's released weights (README_WEIGHTS.md, layer 61): ``enorm``, ``hnorm``,
``eh_proj`` (M_k), one transformer block, and the norm of ``shared_head``; the embedding and the output head are the
main model's own parameter objects, passed in, never copied. The concatenation puts the embedding first, as every
engine that loads the released weights does; eq. 21 writes [h; emb], which is the same model up to a permutation of
M_k's columns.

Token bookkeeping: a training window holds T + 1 tokens t_0..t_T (0-based). The main model reads t_0..t_{T-1} and
predicts t_1..t_T; module k runs on the T - k positions i = 0..T-k-1, embeds t_{i+k} and predicts t_{i+k+1}
(``mtp_shift``). Eq. 24 divides by T, not by the T - k positions module k sees.

Speculative decoding (V3 §5.4.3; acceptance rule of Leviathan et al. 2023): the modules draft the next tokens from the
main model's last hidden state, and one main-model forward over [last token, drafts] verifies them all, on the KV
caches of the main model and of every module. Greedy: keep the drafts that equal the main model's argmax, up to the
first that does not, then add the main model's own token. Sampled: keep draft x ~ q with probability
min(1, p(x)/q(x)); at the first rejection resample from norm(max(0, p - q)); after all accepted, sample one more
token from p. Either way the output is what plain decoding gives (greedy: the same tokens; sampled: the same
distribution), in fewer main-model forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.nn import RMSNorm

V3_LAMBDA = 0.3  # V3 §4.2: λ for the first 10T training tokens
V3_LAMBDA_FINAL = 0.1  # ... and for the remaining 4.8T
V3_LAMBDA_SWITCH = 10 / 14.8  # the fraction of training after which λ drops


# -------------------------------------------------------------------------------------------------- the module
class MTPModule(nn.Module):
    """One MTP depth (eqs. 21-22): ``enorm``, ``hnorm``, ``eh_proj`` M_k [2·dim → dim], ``block`` TRM_k and ``norm``
    (the norm of the shared head; the head itself is the main model's).

    block: a transformer block ``block(x [B, S, dim], start_pos) -> [B, S, dim]``; the model passes its own ``Block``
    (MLA and MoE included when the model has them). forward(h_prev [B, S, dim], emb [B, S, dim], start_pos) -> h^k
    [B, S, dim], before ``norm``: the next depth reads it through its own ``hnorm``.
    """

    def __init__(self, dim: int, block: nn.Module, eps: float = 1e-6):
        super().__init__()
        self.dim = validate.integer("dim", dim, 1)
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be an nn.Module, got {type(block).__name__}")
        self.enorm, self.hnorm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.eh_proj = nn.Linear(2 * dim, dim, bias=False)
        self.block = block
        self.norm = RMSNorm(dim, eps)

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        validate.tensor("h_prev", h_prev, 3, floating=True)
        validate.tensor("emb", emb, 3, floating=True)
        if h_prev.shape != emb.shape or h_prev.shape[-1] != self.dim:
            raise ValueError(f"h_prev and emb must both be [B, S, {self.dim}], got {tuple(h_prev.shape)} and "
                             f"{tuple(emb.shape)}")
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1))  # eq. 21 (embedding first)
        return self.block(x, start_pos)  # eq. 22


def mtp_hidden(modules: Sequence[MTPModule], h0: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
    """The chain of eqs. 21-22 over a whole sequence (training): [h^1 [B, S-1, dim], ..., h^D [B, S-D, dim]].

    h0 [B, S, dim]: the main model's last hidden state at positions 0..S-1; emb [B, S, dim]: the embeddings of the
    input tokens t_0..t_{S-1}. Depth k reads h^{k-1} at positions 0..S-k-1 and the embeddings of t_k..t_{S-1}.
    """
    validate.tensor("h0", h0, 3, floating=True)
    validate.tensor("emb", emb, 3, floating=True)
    if h0.shape != emb.shape:
        raise ValueError(f"h0 and emb must have the same shape, got {tuple(h0.shape)} and {tuple(emb.shape)}")
    depth = len(modules)
    if h0.shape[1] < depth + 1:
        raise ValueError(f"sequence length {h0.shape[1]} is too short for D = {depth} MTP modules: need at least "
                         f"D + 1 input tokens (D + 2 tokens with the last target)")
    hs, h = [], h0
    for k, module in enumerate(modules, start=1):
        h = module(h[:, :-1], emb[:, k:])  # position i: h^{k-1}_i with Emb(t_{i+k})
        hs.append(h)
    return hs


def mtp_logits(modules: Sequence[MTPModule], h0: torch.Tensor, emb: torch.Tensor,
               head: nn.Module) -> list[torch.Tensor]:
    """Eq. 23 for every depth: [head(norm_k(h^k)) [B, S-k, vocab] for k = 1..D], with the main model's ``head``."""
    return [head(m.norm(h)) for m, h in zip(modules, mtp_hidden(modules, h0, emb))]


# --------------------------------------------------------------------------------------------------- the loss
def _check_window(tokens: torch.Tensor, depth: int) -> int:
    """Validate a token window [B, T + 1] for ``depth`` shifts; return T."""
    validate.tensor("tokens", tokens, 2, floating=False)
    validate.integer("k", depth, 0)
    if tokens.shape[1] < depth + 2:
        raise ValueError(f"tokens must hold at least k + 2 = {depth + 2} tokens per row for depth {depth}, got "
                         f"shape {tuple(tokens.shape)}")
    return tokens.shape[1] - 1


def mtp_shift(tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What depth k embeds and predicts in a window tokens [B, T + 1] (t_0..t_T): (t_{i+k}, t_{i+k+1}) for the
    T - k positions i = 0..T-k-1, two LongTensors [B, T - k]. k = 0 is the main model (inputs, next tokens)."""
    _check_window(tokens, k)
    return tokens[:, k:-1], tokens[:, k + 1:]


def depth_losses(logits: Sequence[torch.Tensor], tokens: torch.Tensor) -> list[torch.Tensor]:
    """L^k_MTP of eq. 24 for k = 1..D: cross-entropy summed over depth k's T - k positions, divided by B·T.

    logits: D tensors, depth k's [B, T - k, vocab]; tokens [B, T + 1], the window the main model was trained on
    (inputs t_0..t_{T-1} and the last target t_T). Returns D fp32 scalars.
    """
    if not isinstance(logits, (list, tuple)) or not logits:
        raise ValueError("logits must be a non-empty list: one [B, T - k, vocab] tensor per MTP depth k = 1..D")
    _check_window(tokens, len(logits))
    batch, t = tokens.shape[0], tokens.shape[1] - 1
    losses = []
    for k, lg in enumerate(logits, start=1):
        validate.tensor(f"logits[{k - 1}]", lg, 3, floating=True)
        _, targets = mtp_shift(tokens, k)
        if lg.shape[:2] != targets.shape:
            raise ValueError(f"logits[{k - 1}] (depth {k}) must be [{batch}, {t - k}, vocab], got {tuple(lg.shape)}")
        ce = F.cross_entropy(lg.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        losses.append(ce / (batch * t))  # 1/T per sequence (eq. 24), then the mean over the batch
    return losses


def mtp_loss(logits: Sequence[torch.Tensor], tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """L_MTP = (λ/D) Σ_k L^k_MTP (eq. 25); see ``depth_losses`` for the shapes. λ >= 0; a scalar fp32 tensor."""
    validate.real("lam", lam, 0)
    losses = depth_losses(logits, tokens)
    return lam / len(losses) * torch.stack(losses).sum()


def mtp_lambda(step: int, total_steps: int, lam: float = V3_LAMBDA, lam_final: float | None = None,
               switch: float = V3_LAMBDA_SWITCH) -> float:
    """λ at ``step`` (0-based) of ``total_steps``: ``lam`` before ``switch``·total_steps, then ``lam_final``.

    lam_final None keeps λ constant. V3's schedule (§4.2) is lam 0.3, lam_final 0.1, switch 10/14.8 (0.3 for the
    first 10T of 14.8T tokens).
    """
    validate.integer("total_steps", total_steps, 1)
    validate.integer("step", step, 0)
    validate.real("lam", lam, 0)
    validate.real("switch", switch, 0, 1)
    if lam_final is None:
        return float(lam)
    validate.real("lam_final", lam_final, 0)
    return float(lam) if step < switch * total_steps else float(lam_final)


def supervised_predictions(batch: int, seqlen: int, depth: int) -> int:
    """Targets one training step scores: B·T for the main model plus B·(T - k) for each depth k = 1..D."""
    validate.integer("batch", batch, 1)
    validate.integer("depth", depth, 0)
    validate.integer("seqlen", seqlen, depth + 1)
    return batch * sum(seqlen - k for k in range(depth + 1))


# ------------------------------------------------------------------------------------------ acceptance rules
def greedy_verify(draft: Sequence[int], logits: torch.Tensor) -> list[int]:
    """The tokens a greedy verification step appends: the drafts up to the first one that differs from the main
    model's argmax, then the main model's own token there (or after the last draft, when all were accepted).

    draft: n drafted token ids; logits [n + 1, vocab]: the main model's logits at the last accepted position and at
    each draft (row i predicts the token after draft i - 1). Returns between 1 and n + 1 token ids.
    """
    draft = [int(t) for t in draft]
    validate.tensor("logits", logits, 2, floating=True)
    if logits.shape[0] != len(draft) + 1:
        raise ValueError(f"logits must have len(draft) + 1 = {len(draft) + 1} rows, got {tuple(logits.shape)}")
    best = logits.argmax(-1).tolist()
    out = []
    for d, target in zip(draft, best):
        if d != target:
            break
        out.append(d)
    out.append(best[len(out)])
    return out


def _check_dists(p: torch.Tensor, q: torch.Tensor) -> None:
    validate.tensor("p", p, 1, floating=True)
    validate.tensor("q", q, 1, floating=True)
    if p.shape != q.shape:
        raise ValueError(f"p and q must be distributions over the same vocabulary, got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}")


def accept_probability(p: torch.Tensor, q: torch.Tensor, token: int) -> float:
    """min(1, p(x)/q(x)) for the drafted token x ~ q (p: the main model's distribution, q: the drafter's, [V]).

    Keeping x with this probability, and otherwise resampling from ``residual(p, q)``, yields exactly p.
    """
    _check_dists(p, q)
    validate.integer("token", token, 0, p.shape[0] - 1)
    px, qx = float(p[token]), float(q[token])
    if qx <= 0:
        raise ValueError(f"q(token) must be > 0 for a token drafted from q, got q[{token}] = {qx}")
    return min(1.0, px / qx)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) [V]: what to sample from after a rejection. Where p <= q everywhere (p == q) no draft is
    ever rejected, and p itself is returned."""
    _check_dists(p, q)
    r = (p.double() - q.double()).clamp_min(0)
    total = r.sum()
    return (p.double() / p.double().sum() if total <= 0 else r / total).to(p.dtype)


def expected_speedup(alpha: float, n_draft: int = 1, verify_cost: float = 1.0,
                     draft_cost: float = 0.0) -> tuple[float, float]:
    """(tokens per main-model forward, tokens/s speedup over plain decoding) for drafts accepted with probability
    ``alpha`` each, independently (Leviathan et al. 2023): E = 1 + α + ... + α^n = (1 - α^{n+1}) / (1 - α).

    Costs are relative to a one-token main-model forward: verify_cost for the (n + 1)-token forward that checks n
    drafts, draft_cost for one MTP module step. Speedup = E / (verify_cost + n·draft_cost).
    """
    validate.real("alpha", alpha, 0, 1)
    validate.integer("n_draft", n_draft, 1)
    validate.real("verify_cost", verify_cost, 0, lo_open=True)
    validate.real("draft_cost", draft_cost, 0)
    tokens = float(sum(alpha**i for i in range(n_draft + 1)))
    return tokens, tokens / (verify_cost + n_draft * draft_cost)


# ------------------------------------------------------------------------------------- speculative decoding
@dataclass
class SpecResult:
    """What ``speculative_generate`` produced: the new tokens and how it got them.

    forwards counts main-model forwards including the prefill (plain decoding needs one per token); drafted[k] and
    accepted[k] count depth-(k+1) drafts that were verified and kept (a draft after a rejection is never verified).
    verified lists, per verified draft, (its position in prompt + tokens, its depth 1..n_draft, whether it was kept);
    after a rejection the token at that position is the main model's own.
    """

    tokens: list[int]
    forwards: int = 0
    mtp_forwards: int = 0
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    verified: list[tuple[int, int, bool]] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Share of first drafts (the second token, V3 §5.4.3) that the main model accepted; nan if none."""
        return self.accepted[0] / self.drafted[0] if self.drafted and self.drafted[0] else float("nan")

    @property
    def acceptance_by_depth(self) -> list[float]:
        return [a / d if d else float("nan") for a, d in zip(self.accepted, self.drafted)]

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / self.forwards if self.forwards else float("nan")


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """(token, distribution) from logits [V]: argmax (distribution None) or a sample of softmax(logits / T)."""
    if temperature == 0:
        return int(logits.argmax()), None
    probs = F.softmax(logits.float() / temperature, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator)), probs


class _Decoder:
    """One sequence's speculative decoding state: the tokens, each depth's hidden states and cache frontier.

    hidden[k][j] is h^k at position j; done[k] is how many leading positions of depth k (0: the main model) hold
    final values, computed from accepted tokens only. Cache entries past a frontier are overwritten before they are
    read again, so a rejected draft needs no rollback.
    """

    def __init__(self, model: nn.Module, drafter: nn.Module, n_draft: int, temperature: float,
                 generator: torch.Generator | None):
        self.model, self.drafter, self.n_draft = model, drafter, n_draft
        self.temperature, self.generator = temperature, generator
        p = model.embed.weight
        self.hidden = torch.zeros(n_draft + 1, model.args.max_seq_len, model.args.dim, dtype=p.dtype, device=p.device)
        self.done = [0] * (n_draft + 1)
        self.seq: list[int] = []

    def main(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Main-model forward over ``tokens`` at start_pos.. -> logits [len, V]; keeps h^0 at those positions."""
        h = self.model.hidden(torch.tensor([tokens], device=self.hidden.device), start_pos)[0]
        self.hidden[0, start_pos:start_pos + len(tokens)] = h
        return self.model.head(self.model.norm(h))

    def draft(self, n: int) -> tuple[list[int], list[torch.Tensor | None]]:
        """Drafts for the n tokens after seq[-1], one per depth, each with the distribution it was drawn from."""
        m, drafts, dists = len(self.seq) - 1, [], []
        device = self.hidden.device
        for k in range(1, n + 1):
            module, start = self.drafter.mtp[k - 1], self.done[k]
            ids = [self.seq[j + k] if j + k <= m else drafts[j + k - m - 1] for j in range(start, m)]
            emb = self.drafter.embed(torch.tensor([ids], device=device))
            h = module(self.hidden[k - 1, start:m].unsqueeze(0), emb, start)[0]
            self.hidden[k, start:m] = h
            self.done[k] = m - k + 1  # positions whose token t_{j+k} is accepted, not drafted
            token, dist = _pick(self.drafter.head(module.norm(h[-1])), self.temperature, self.generator)
            drafts.append(token)
            dists.append(dist)
        return drafts, dists

    def verify(self, drafts: list[int], dists: list, logits: torch.Tensor) -> list[int]:
        """The tokens this step appends, by the greedy or the sampled rule."""
        if self.temperature == 0:
            return greedy_verify(drafts, logits)
        out = []
        for i, (x, q) in enumerate(zip(drafts, dists)):
            p = F.softmax(logits[i].float() / self.temperature, dim=-1).cpu()
            u = float(torch.rand((), generator=self.generator, device="cpu"))  # p and q are on the CPU too
            if u < accept_probability(p, q, x):
                out.append(x)
                continue
            out.append(int(torch.multinomial(residual(p, q), 1, generator=self.generator)))
            return out
        return out + [_pick(logits[len(drafts)], self.temperature, self.generator)[0]]


def _check_spec_args(model: nn.Module, drafter: nn.Module, prompt: list[int], max_new_tokens: int,
                     temperature: float, n_draft: int) -> None:
    vocab, dim = model.args.vocab_size, model.args.dim
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError("prompt must be a non-empty list of token ids")
    if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
        raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
    validate.integer("max_new_tokens", max_new_tokens, 1)
    validate.real("temperature", temperature, 0)
    if len(prompt) + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens = {len(prompt) + max_new_tokens} exceeds max_seq_len "
                         f"{model.args.max_seq_len}")
    if drafter.args.vocab_size != vocab or drafter.args.dim != dim:
        raise ValueError(f"drafter must share the model's vocabulary and width: drafter vocab_size "
                         f"{drafter.args.vocab_size}, dim {drafter.args.dim}; model vocab_size {vocab}, dim {dim}")
    depth = len(getattr(drafter, "mtp", ()))
    if depth == 0:
        raise ValueError("the drafter has no MTP modules: build it with ModelArgs(n_mtp >= 1)")
    validate.integer("n_draft", n_draft, 1, depth)


@torch.no_grad()
def speculative_generate(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, *,
                         n_draft: int = 1, stop: int | None = None, generator: torch.Generator | None = None,
                         drafter: nn.Module | None = None) -> SpecResult:
    """Continue ``prompt`` like ``model.generate`` (batch 1, KV cache), drafting with the MTP modules.

    model: a ``dslab.model.Transformer``; drafter: the model whose MTP modules (with its embedding and head) draft,
    by default ``model`` itself. Each step drafts n_draft tokens (depth k drafts the token k positions after the last
    accepted one) and verifies them in one main-model forward of n_draft + 1 tokens. Greedy when temperature == 0,
    else sampled with the rejection rule; ``generator`` drives every random draw. Stops after ``stop`` or
    max_new_tokens tokens. Returns a ``SpecResult``.
    """
    drafter = model if drafter is None else drafter
    _check_spec_args(model, drafter, prompt, max_new_tokens, temperature, n_draft)
    modes = (model.training, drafter.training)
    model.eval(), drafter.eval()
    try:
        return _speculate(_Decoder(model, drafter, n_draft, temperature, generator), list(prompt), max_new_tokens,
                          stop)
    finally:
        model.train(modes[0]), drafter.train(modes[1])


def _speculate(dec: _Decoder, prompt: list[int], max_new_tokens: int, stop: int | None) -> SpecResult:
    res = SpecResult(tokens=[], forwards=1, drafted=[0] * dec.n_draft, accepted=[0] * dec.n_draft)
    dec.seq = list(prompt)
    new = [_pick(dec.main(prompt, 0)[-1], dec.temperature, dec.generator)[0]]  # the prefill gives the first token
    dec.done[0] = len(prompt)
    while True:
        for t in new:
            dec.seq.append(t)
            res.tokens.append(t)
            if t == stop or len(res.tokens) == max_new_tokens:
                return res
        m = len(dec.seq) - 1
        n = min(dec.n_draft, max_new_tokens - len(res.tokens) - 1)
        drafts, dists = dec.draft(n)
        res.mtp_forwards += n
        logits = dec.main([dec.seq[m], *drafts], m)
        res.forwards += 1
        new = dec.verify(drafts, dists, logits)
        dec.done[0] = m + len(new)
        for i in range(min(len(new), n)):  # the drafts that were verified: all up to the first rejection
            kept = i < len(new) - 1
            res.drafted[i] += 1
            res.accepted[i] += kept
            res.verified.append((m + 1 + i, i + 1, kept))
