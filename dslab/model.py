"""TinyDeepSeek: a decoder-only transformer assembled from the course's components, configured by ``ModelArgs``.

Each ``Block`` is pre-norm, ``x + attn(attn_norm(x))`` then ``x + ffn(ffn_norm(x))``, as in DeepSeek-V3's
``inference/model.py``. Attention is MLA (``dslab.mla``) or MHA/GQA/MQA (``dslab.attention``) by ``args.attn``; the
first ``n_dense_layers`` use a dense SwiGLU FFN and the rest DeepSeekMoE (``dslab.moe``) when the config has routed
experts. In training mode attention runs over the whole sequence; in eval mode it decodes incrementally from its
preallocated cache (``start_pos``). With ``args.n_mtp = D > 0`` the model also holds D Multi-Token Prediction
modules (``dslab.mtp``, V3 §2.2) that share its embedding and output head; ``forward`` and ``generate`` never run them,
``forward_mtp`` (training) and ``dslab.mtp.speculative_generate`` (drafting) do. D = 0 is the plain model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.attention import Attention
from dslab.configs import ModelArgs
from dslab.mla import MLA
from dslab.moe import MoE
from dslab.mtp import MTPModule, mtp_logits
from dslab.nn import MLP, RMSNorm


class Block(nn.Module):
    """One transformer layer: attention then FFN (dense for layer_id < n_dense_layers, else MoE), both pre-norm.

    moe_options go to every ``MoE`` layer (dispatch, balance_loss, alpha; see ``dslab.moe.MoE``).
    """

    def __init__(self, layer_id: int, args: ModelArgs, max_batch_size: int = 8, moe_options: dict | None = None):
        super().__init__()
        self.attn = MLA(args, max_batch_size) if args.attn == "mla" else Attention(args, max_batch_size)
        if args.is_moe and layer_id >= args.n_dense_layers:
            self.ffn = MoE(args, **(moe_options or {}))
        else:
            self.ffn = MLP(args.dim, args.inter_dim)
        self.attn_norm, self.ffn_norm = RMSNorm(args.dim), RMSNorm(args.dim)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x [B, S, dim] -> [B, S, dim]."""
        x = x + self.attn(self.attn_norm(x), start_pos)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Embedding, ``n_layers`` Blocks, final RMSNorm and output head. tokens [B, S] -> logits [B, S, vocab_size].

    max_batch_size: rows the attention caches hold when decoding (eval mode). moe_options: keyword arguments for every
    MoE layer, e.g. ``{"balance_loss": "sequence", "alpha": 0.01}`` or ``{"dispatch": "loop"}``.
    """

    def __init__(self, args: ModelArgs, max_batch_size: int = 8, init_std: float = 0.02, *,
                 moe_options: dict | None = None):
        super().__init__()
        if not isinstance(args, ModelArgs):
            raise TypeError(f"args must be a dslab.configs.ModelArgs, got {type(args).__name__}")
        validate.real("init_std", init_std, 0, lo_open=True)
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args, max_batch_size, moe_options) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.head.weight = self.embed.weight
        for p in self.parameters():  # matrices only: norms keep their ones, the gate bias is a buffer
            if p.dim() >= 2:
                nn.init.normal_(p, std=init_std)
        # MTP modules (V3 §2.2) are built after the main model is initialized, so that the main model starts from the
        # same weights whatever n_mtp is; block k has layer id n_layers + k (V3: layers 0..60, its MTP module is 61).
        self.mtp = nn.ModuleList(MTPModule(args.dim, Block(args.n_layers + k, args, max_batch_size, moe_options))
                                 for k in range(args.n_mtp))
        for p in self.mtp.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=init_std)

    def hidden(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """tokens [B, S] -> the last layer's output [B, S, dim] before the final norm (h^0 of V3 eq. 21)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a [batch, seqlen] long tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.args.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.args.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, start_pos)
        return h

    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        return self.head(self.norm(self.hidden(tokens, start_pos)))

    def forward_mtp(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training forward with the MTP modules: (logits [B, S, vocab], [depth k's logits [B, S-k, vocab] for k =
        1..n_mtp]). Depth k at position i reads Emb(tokens[:, i + k]) and predicts the token after it (V3 eqs. 21-23).
        """
        if not self.training:
            raise ValueError("forward_mtp runs whole sequences: call .train() first (decoding: dslab.mtp)")
        h = self.hidden(tokens)
        return self.head(self.norm(h)), mtp_logits(self.mtp, h, self.embed(tokens), self.head)

    def moe_layers(self) -> list[MoE]:
        """The MoE FFNs, in layer order, then those of the MTP modules' blocks (empty for a dense model)."""
        blocks = [*self.layers, *(m.block for m in self.mtp)]
        return [b.ffn for b in blocks if isinstance(b.ffn, MoE)]

    def aux_loss(self) -> torch.Tensor | None:
        """Sum over MoE layers of the balance loss their last forward stored; None when no layer computes one."""
        losses = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def update_bias(self, gamma: float) -> None:
        """The aux-loss-free step of every MoE layer (``MoE.update_bias``): call it after each optimizer step."""
        for m in self.moe_layers():
            m.update_bias(gamma)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, stop: int | None = None,
                 generator: torch.Generator | None = None) -> list[int]:
        """Continue ``prompt`` by up to ``max_new_tokens`` tokens from the KV cache (greedy when temperature == 0)."""
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        if len(prompt) + max_new_tokens > self.args.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens = {len(prompt) + max_new_tokens} exceeds max_seq_len "
                             f"{self.args.max_seq_len}")
        was_training, out = self.training, []
        self.eval()
        device = self.embed.weight.device
        logits = self(torch.tensor([prompt], device=device))[:, -1]
        for i in range(max_new_tokens):
            if temperature > 0:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            else:
                nxt = int(logits.argmax(-1))
            out.append(nxt)
            if nxt == stop or i == max_new_tokens - 1:
                break
            logits = self(torch.tensor([[nxt]], device=device), start_pos=len(prompt) + i)[:, -1]
        self.train(was_training)
        return out
