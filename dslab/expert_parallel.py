"""Expert parallelism: the routed experts of a DeepSeekMoE layer split across processes, tokens moved by all-to-all.

DeepSeek-V3 trains with 64-way expert parallelism over 8 nodes (V3 §3.2, §4.2): each GPU holds a few routed experts,
and every MoE layer moves each token to the GPUs that hold its experts and back. One step of ``ExpertParallelMoE``
on rank r of W (E routed experts, E/W per rank, rank r holding experts [r·E/W, (r+1)·E/W)):

1. route r's own tokens with the full (replicated) gate, exactly as ``dslab.moe.Gate`` does (V3 eqs. 13-16);
2. sort the (token, expert) pairs by expert, so that the rows for rank 0 come first, then rank 1, ...;
3. exchange the split sizes first: an all-to-all of the [W, E/W] counts tells every rank how many rows it will get
   from each sender for each of its experts (the rows are uneven: routing decides them);
4. *dispatch*: ``all_to_all_single`` of the token rows with those uneven split sizes;
5. run the local experts on what arrived (``dslab.dispatch``'s grouped GEMMs);
6. *combine*: a second ``all_to_all_single`` with the split sizes swapped sends each result home, where it is
   weighted by its gate value and summed (eq. 12); the shared expert runs locally on r's own tokens.

The backward pass of an all-to-all is the all-to-all of the gradients with the split sizes swapped (``_AllToAll``,
our own small autograd function; ``torch.distributed.nn``'s wrappers are deprecated). With the same weights the
layer computes the same outputs and gradients as the single-process ``dslab.moe.MoE`` on all ranks' tokens together
(``check_against_moe``); the gradients of the replicated gate and shared expert are summed over ranks
(``sync_replicated_grads``), as data parallelism would. It runs with gloo on CPUs and NCCL on GPUs unchanged.

Node-limited routing (V3 §2.1.2) is group-limited routing (``dslab.moe.route``) with one group per node: each token
may use experts on at most M nodes, chosen by the sum of the K_r/M highest affinities on each node
(``node_limited_route``). ``token_traffic`` counts the copies of a token that cross InfiniBand (between nodes) and
NVLink (inside a node) when dispatched V3's way (§3.2.2: once per target node over IB, then forwarded by NVLink).

``launch`` starts W worker processes on this machine (``torch.multiprocessing``), each in its own process group with
a finite timeout, and returns what each worker returned; a worker that fails makes the others stop and ``launch``
raises its error (``WorkerError``). Under ``torchrun``, ``dslab.runtime.init_distributed`` joins the job instead:
``torchrun --nproc-per-node 2 -m dslab.expert_parallel`` runs the equality check.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from dslab import configs, validate
from dslab.configs import ModelArgs
from dslab.dispatch import DISPATCHES, dispatch
from dslab.moe import Experts, Gate, MoE, expert_load, route
from dslab.nn import MLP
from dslab.runtime import BACKENDS, init_distributed, loopback_interface


# ------------------------------------------------------------------------------------------------------ placement
def expert_placement(n_experts: int, world_size: int, ranks_per_node: int = 1) -> tuple[int, int]:
    """(experts per rank, nodes) for n_experts routed experts on world_size ranks, ranks_per_node to a node.

    Rank r holds experts [r·E/W, (r+1)·E/W); node n holds ranks [n·ranks_per_node, (n+1)·ranks_per_node).
    ValueError when the experts or the ranks do not divide evenly (V3: 256 experts on 64 GPUs, 8 per node).
    """
    validate.integer("n_experts", n_experts, 1)
    validate.integer("world_size", world_size, 1)
    validate.integer("ranks_per_node", ranks_per_node, 1)
    if n_experts % world_size:
        raise ValueError(f"n_routed_experts must be divisible by the world size {world_size} (each rank holds the "
                         f"same number of experts), got {n_experts}")
    if world_size % ranks_per_node:
        raise ValueError(f"ranks_per_node must divide the world size {world_size}, got {ranks_per_node}")
    return n_experts // world_size, world_size // ranks_per_node


def split_matrix(indices: torch.Tensor | list[torch.Tensor], n_experts: int) -> torch.Tensor:
    """Rows each rank sends to each rank in the dispatch all-to-all: [W, W], row = sender, column = receiver.

    indices: every rank's routing decisions, [W, T, k] or a list of W tensors [T_r, k] (the experts chosen by rank
    r's tokens). One row is sent per (token, expert) pair, to the rank holding that expert (contiguous blocks of
    E/W experts). Row r is rank r's input_split_sizes, column r its output_split_sizes.
    """
    per_rank = list(indices) if isinstance(indices, (list, tuple)) else list(validate.tensor("indices", indices, 3))
    world = len(per_rank)
    per_expert, _ = expert_placement(n_experts, max(world, 1))
    rows = []
    for r, idx in enumerate(per_rank):
        validate.tensor(f"indices[{r}]", idx, 2, floating=False)
        load = expert_load(idx, n_experts)  # checks the range too
        rows.append(load.view(world, per_expert).sum(1))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------- all-to-all
@dataclass
class CommStats:
    """What the all-to-alls of one layer did since ``reset``: calls, seconds spent inside them (waiting for the
    slowest peer included), rows and bytes sent to other ranks (rows a rank keeps for itself do not travel)."""

    calls: int = 0
    seconds: float = 0.0
    rows_sent: int = 0
    bytes_sent: int = 0

    def reset(self) -> None:
        self.calls, self.seconds, self.rows_sent, self.bytes_sent = 0, 0.0, 0, 0


def all_to_all_rows(x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int],
                    group=None, stats: CommStats | None = None) -> torch.Tensor:
    """``dist.all_to_all_single`` on the rows of x [N, ...]: input_split_sizes[j] rows go to rank j,
    output_split_sizes[j] rows arrive from rank j. Returns [sum(output_split_sizes), ...]. No autograd."""
    out = x.new_empty((sum(output_split_sizes), *x.shape[1:]))
    t0 = time.perf_counter()
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes, input_split_sizes, group=group)
    if stats is not None:
        remote = sum(input_split_sizes) - input_split_sizes[dist.get_rank(group)]  # rows kept at home do not travel
        stats.calls, stats.seconds = stats.calls + 1, stats.seconds + time.perf_counter() - t0
        stats.rows_sent += remote
        stats.bytes_sent += remote * x.element_size() * math.prod(x.shape[1:])
    return out


class _AllToAll(torch.autograd.Function):
    """Rows moved by an all-to-all; the backward pass moves their gradients back with the split sizes swapped."""

    @staticmethod
    def forward(ctx, x, output_split_sizes, input_split_sizes, group, stats):
        ctx.splits, ctx.group, ctx.stats = (output_split_sizes, input_split_sizes), group, stats
        return all_to_all_rows(x, output_split_sizes, input_split_sizes, group, stats)

    @staticmethod
    def backward(ctx, grad):
        output_split_sizes, input_split_sizes = ctx.splits
        grad_x = all_to_all_rows(grad, input_split_sizes, output_split_sizes, ctx.group, ctx.stats)
        return grad_x, None, None, None, None


def all_to_all(x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int], group=None,
               stats: CommStats | None = None) -> torch.Tensor:
    """Differentiable ``all_to_all_rows``: x [N, ...] -> [sum(output_split_sizes), ...]. Every rank of the group
    must call it (and, when gradients flow, run its backward) the same number of times, as for any collective."""
    return _AllToAll.apply(x, list(output_split_sizes), list(input_split_sizes), group, stats)


# ------------------------------------------------------------------------------------------------------ the layer
class ExpertParallelMoE(nn.Module):
    """DeepSeekMoE (V3 eq. 12) with its routed experts spread over the ranks of ``group`` (default: the world).

    Every rank holds the full gate (``dslab.moe.Gate``) and the shared experts, plus its own E/W routed experts
    (``experts``: an ``Experts`` of E/W, global ids ``expert_range``). forward(x [..., dim]) takes *this rank's*
    tokens (any number, zero included) and returns their outputs [..., dim]; all ranks must call it together.
    After a forward: ``last_indices`` [T, k] the experts this rank's tokens chose, ``last_load`` [E] tokens per
    expert from this rank's tokens, ``last_send`` / ``last_recv`` [W] rows sent to / received from each rank,
    ``last_expert_rows`` [E/W] rows each local expert processed; ``stats`` (``CommStats``) accumulates the
    all-to-alls' calls, seconds and bytes, backward included.
    ranks_per_node groups ranks into nodes (for reports; routing follows the gate's own n_expert_groups).
    """

    def __init__(self, args: ModelArgs, group=None, *, ranks_per_node: int = 1, dispatch: str = "grouped"):
        super().__init__()
        if not isinstance(args, ModelArgs) or not args.is_moe:
            raise ValueError("args must be a ModelArgs with routed experts (n_routed_experts > 0)")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoE needs an initialized process group: use dslab.expert_parallel."
                               "launch(...), torchrun with dslab.runtime.init_distributed, or init_process_group")
        validate.choice("dispatch", dispatch, DISPATCHES)
        self.group, self.dispatch = group, dispatch
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.experts_per_rank, self.n_nodes = expert_placement(args.n_routed_experts, self.world_size, ranks_per_node)
        self.ranks_per_node = ranks_per_node
        self.dim, self.n_routed_experts, self.topk = args.dim, args.n_routed_experts, args.n_activated_experts
        self.expert_range = range(self.rank * self.experts_per_rank, (self.rank + 1) * self.experts_per_rank)
        self.gate = Gate(args)
        self.experts = Experts(self.experts_per_rank, args.dim, args.moe_inter_dim)
        n_shared = args.n_shared_experts
        self.shared_experts = MLP(args.dim, n_shared * args.moe_inter_dim) if n_shared else None
        self.stats = CommStats()
        self.last_load = torch.zeros(args.n_routed_experts, dtype=torch.long)
        self.last_indices = torch.zeros(0, self.topk, dtype=torch.long)
        self.last_send = self.last_recv = torch.zeros(self.world_size, dtype=torch.long)
        self.last_expert_rows = torch.zeros(self.experts_per_rank, dtype=torch.long)

    @classmethod
    def from_moe(cls, moe: MoE, args: ModelArgs, group=None, *, ranks_per_node: int = 1) -> ExpertParallelMoE:
        """This rank's share of a single-process ``MoE`` built from ``args``: the same gate (weight and bias), the
        same shared experts and routed experts [r·E/W, (r+1)·E/W). Every rank must pass the same ``moe``."""
        if not isinstance(moe, MoE):
            raise TypeError(f"moe must be a dslab.moe.MoE, got {type(moe).__name__}")
        layer = cls(args, group, ranks_per_node=ranks_per_node, dispatch=moe.dispatch)
        if moe.gate.extra_repr() != layer.gate.extra_repr() or moe.experts.extra_repr() != (
                f"n_experts={moe.n_routed_experts}, dim={args.dim}, inter_dim={args.moe_inter_dim}"):
            raise ValueError(f"moe and args describe different layers: gate {moe.gate.extra_repr()} vs "
                             f"{layer.gate.extra_repr()}")
        layer.to(device=moe.gate.weight.device, dtype=moe.gate.weight.dtype)
        with torch.no_grad():
            layer.gate.weight.copy_(moe.gate.weight)
            if moe.gate.bias is not None:
                layer.gate.bias.copy_(moe.gate.bias)
            lo, hi = layer.expert_range.start, layer.expert_range.stop
            for name in ("w1", "w2", "w3"):
                getattr(layer.experts, name).copy_(getattr(moe.experts, name)[lo:hi])
            if layer.shared_experts is not None:
                layer.shared_experts.load_state_dict(moe.shared_experts.state_dict())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if validate.tensor("x", x, floating=True).dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [..., {self.dim}], got shape {tuple(x.shape)}")
        shape, x = x.shape, x.reshape(-1, self.dim)
        weights, indices = self.gate.select(self.gate.affinities(x))  # [T, k] each, as the single-process MoE
        self.last_load = expert_load(indices, self.n_routed_experts)
        self.last_indices = indices.detach()
        y = self._routed(x, weights.type_as(x), indices)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.view(shape)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Σ_k g_{t,k} FFN_{e(t,k)}(x_t) for this rank's tokens, the experts living wherever they live. [T, dim]."""
        world, per_rank, k = self.world_size, self.experts_per_rank, indices.shape[-1]
        flat = indices.flatten()
        order = flat.argsort(stable=True)  # pairs sorted by expert, hence by the rank that holds it
        send = torch.bincount(flat, minlength=self.n_routed_experts).view(world, per_rank)  # [W, E/W]
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # split sizes first: recv[j, e] rows from j for e
        send_splits, recv_splits = send.sum(1).tolist(), recv.sum(1).tolist()
        rows = all_to_all(x[order // k], recv_splits, send_splits, self.group, self.stats)  # dispatch
        local = torch.repeat_interleave(torch.arange(per_rank, device=x.device).repeat(world), recv.flatten())
        ones = rows.new_ones(rows.shape[0], 1)
        out = dispatch(self.dispatch)(rows, ones, local[:, None], self.experts.w1, self.experts.w2, self.experts.w3)
        back = all_to_all(out, send_splits, recv_splits, self.group, self.stats)  # combine: results return home
        y = x.new_zeros(x.shape).index_add(0, order // k, back * weights.flatten()[order, None])
        self.last_send, self.last_recv = send.sum(1).cpu(), recv.sum(1).cpu()
        self.last_expert_rows = recv.sum(0).cpu()
        return y

    def replicated_parameters(self) -> list[nn.Parameter]:
        """Parameters every rank holds a copy of (gate, shared experts): their gradients need summing over ranks."""
        shared = list(self.shared_experts.parameters()) if self.shared_experts is not None else []
        return [self.gate.weight, *shared]

    def sync_replicated_grads(self) -> None:
        """All-reduce (sum) the gradients of the replicated parameters, as data parallelism would after backward:
        each rank's copy then holds the gradient of the loss over every rank's tokens."""
        for p in self.replicated_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=self.group)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, world_size={self.world_size}, experts={self.expert_range.start}.."
                f"{self.expert_range.stop - 1} of {self.n_routed_experts}, nodes={self.n_nodes}")


# ------------------------------------------------------------------------------------------ node-limited routing
def node_limited_route(scores_or_logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_nodes: int,
                       max_nodes: int, score_func: str = "sigmoid", route_scale: float = 1.0, *,
                       from_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """V3 §2.1.2: each token's top_k experts come from at most ``max_nodes`` (M) of ``n_nodes`` nodes, the nodes
    with the highest sum of their K_r/M highest (biased) affinities. Experts are numbered node by node.

    scores_or_logits [..., E], bias [E] or None -> (weights, indices) [..., top_k], as ``dslab.moe.route`` with one
    expert group per node (it *is* that function). ValueError when max_nodes exceeds n_nodes or does not divide
    top_k (K_r/M must be a whole number of experts).
    """
    validate.integer("n_nodes", n_nodes, 1)
    validate.integer("max_nodes", max_nodes, 1)
    if max_nodes > n_nodes:
        raise ValueError(f"max_nodes (M) must be <= the number of nodes {n_nodes}, got {max_nodes}")
    validate.integer("top_k", top_k, 1)
    if top_k % max_nodes:
        raise ValueError(f"max_nodes (M) must divide top_k = {top_k} (each node is scored by its top K_r/M "
                         f"affinities), got {max_nodes}")
    return route(scores_or_logits, bias, top_k, n_nodes, max_nodes, score_func, route_scale,
                 from_logits=from_logits, group_topk=top_k // max_nodes)


def nodes_used(indices: torch.Tensor, n_experts: int, n_nodes: int) -> torch.Tensor:
    """Distinct nodes each token's experts live on: indices [..., k] -> [...] (int64)."""
    validate.tensor("indices", indices, floating=False)
    node = indices // expert_placement(n_experts, n_nodes)[0]  # experts are numbered node by node
    return torch.zeros(*indices.shape[:-1], n_nodes, dtype=torch.long).scatter_(-1, node, 1).sum(-1)


def token_traffic(indices: torch.Tensor, token_rank: torch.Tensor | int, n_experts: int, world_size: int,
                  ranks_per_node: int) -> dict[str, torch.Tensor]:
    """Copies of each token that leave its GPU when it is dispatched, counted two ways. indices [T, k] (experts of
    each token), token_rank [T] or an int (the GPU each token lives on). Returns int64 [T] tensors:

    - "ib", "nvlink": V3's dispatch (§3.2.2): one copy over InfiniBand to each *other node* that holds one of the
      token's experts (to the GPU with the sender's in-node index), then one NVLink copy to each GPU on that node
      (the sender's own node included) that holds its experts and is not where the copy landed;
    - "ib_per_expert", "nvlink_per_expert": one copy per (token, expert) pair, as ``ExpertParallelMoE`` sends rows
      (experts on other nodes count as IB, on other GPUs of the same node as NVLink).
    """
    per_rank, n_nodes = expert_placement(n_experts, world_size, ranks_per_node)
    validate.tensor("indices", indices, 2, floating=False)
    t = indices.shape[0]
    src = torch.as_tensor(token_rank, dtype=torch.long).expand(t) if not isinstance(token_rank, torch.Tensor) \
        else token_rank.long()
    rank = indices // per_rank
    node = rank // ranks_per_node
    src_node, src_slot = src // ranks_per_node, src % ranks_per_node
    node_hit = torch.zeros(t, n_nodes, dtype=torch.long).scatter_(1, node, 1)
    node_hit[torch.arange(t), src_node] = 0
    rank_hit = torch.zeros(t, world_size, dtype=torch.long).scatter_(1, rank, 1)
    landing = torch.arange(n_nodes)[None, :] * ranks_per_node + src_slot[:, None]  # [T, nodes]
    rank_hit.scatter_(1, landing, 0)  # a copy lands there by IB (or is already there, on the sender's node)
    remote_node = node != src_node[:, None]
    return {"ib": node_hit.sum(1), "nvlink": rank_hit.sum(1),
            "ib_per_expert": remote_node.sum(1), "nvlink_per_expert": (~remote_node & (rank != src[:, None])).sum(1)}


def token_bytes(dim: int, fmt: str) -> int:
    """Bytes of one token's hidden state on the wire: "fp8" (V3's dispatch, §3.3.3: E4M3 values plus one fp32
    scale per 1x128 tile), "bf16" (V3's combine) or "fp32". V3 (dim 7168): 7,392 / 14,336 / 28,672."""
    validate.integer("dim", dim, 1)
    validate.choice("fmt", fmt, ("fp8", "bf16", "fp32"))
    return {"fp8": dim + 4 * math.ceil(dim / 128), "bf16": 2 * dim, "fp32": 4 * dim}[fmt]


# ------------------------------------------------------------------------------------------------------ launching
class WorkerError(RuntimeError):
    """A worker process of ``launch`` failed; ``rank`` is the first to fail, the message carries its traceback."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


def _worker(rank: int, fn: Callable, world_size: int, backend: str, pg_timeout_s: float, threads: int, where: str,
            args: tuple) -> None:
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ and loopback_interface():
        os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()  # one machine: talk over loopback, never a NIC
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="file://" + os.path.join(where, "store"), rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=pg_timeout_s))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(where, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int, args: tuple = (), *, backend: str = "gloo", timeout_s: float = 120.0,
           pg_timeout_s: float = 30.0, threads: int = 1, start_method: str | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` in world_size new processes, each a rank of one process group; return
    the list of what each returned (torch.save-able values), in rank order.

    backend: "gloo" (CPU tensors, over loopback) or "nccl" (one GPU per rank). pg_timeout_s: how long a collective
    waits for a missing peer before it raises. timeout_s: wall-clock limit for the whole run. threads: torch threads
    per worker. start_method: "fork" (the default on Linux with threads=1: starts in a fraction of a second; fn may
    be any callable) or "spawn" (the default otherwise; fn must be importable, e.g. a module-level function).
    OpenMP does not survive a fork: a forked worker that raises torch's thread count after its parent ran parallel
    ops can hang, so fn must keep one thread under "fork"; use "spawn" for workers that need more.
    A worker that raises makes ``launch`` stop the others and raise ``WorkerError`` with its traceback; a worker
    stuck in a collective raises after pg_timeout_s; past timeout_s every worker is killed and TimeoutError raised.
    """
    validate.integer("world_size", world_size, 1, 64)
    validate.choice("backend", backend, BACKENDS)
    validate.real("timeout_s", timeout_s, 0, lo_open=True)
    validate.real("pg_timeout_s", pg_timeout_s, 0, lo_open=True)
    validate.integer("threads", threads, 1)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < world_size):
        raise ValueError(f"backend 'nccl' needs {world_size} CUDA devices, found "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    start_method = start_method or ("fork" if sys.platform.startswith("linux") and threads == 1 else "spawn")
    validate.choice("start_method", start_method, ("fork", "spawn", "forkserver"))
    where = tempfile.mkdtemp(prefix="dslab-ep-")
    try:
        ctx = mp.start_processes(_worker, args=(fn, world_size, backend, pg_timeout_s, threads, where, tuple(args)),
                                 nprocs=world_size, join=False, start_method=start_method)
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=0.1, grace_period=2.0):
                if time.monotonic() > deadline:
                    _kill(ctx.processes)
                    raise TimeoutError(f"the {world_size} workers did not finish within timeout_s={timeout_s:g} s; "
                                       "all of them were stopped")
        except ProcessException as e:
            _kill(ctx.processes)
            rank, trace = _root_cause(ctx.error_files, e.error_index, str(e))
            raise WorkerError(f"worker {rank} of {world_size} failed; the others were stopped.\n\n{trace}",
                              rank) from None
        return [torch.load(os.path.join(where, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    finally:
        shutil.rmtree(where, ignore_errors=True)


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _root_cause(error_files: list[str], first: int, message: str) -> tuple[int, str]:
    """(rank, traceback) to report: the lowest rank that failed on its own, not one that only saw a failed peer close
    its connection (whichever of the two the parent notices first depends on timing)."""
    traces = {}
    for rank, path in enumerate(error_files):
        try:
            with open(path, "rb") as fh:
                traces[rank] = str(pickle.load(fh))
        except (OSError, EOFError, pickle.UnpicklingError):
            continue
    own = [rank for rank, trace in sorted(traces.items()) if not any(s in trace for s in _PEER_GONE)]
    return (own[0], traces[own[0]]) if own else (first, message)


def _kill(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join()


# ---------------------------------------------------------------------------------------- the equality check
def check_against_moe(rank: int, world_size: int, args: ModelArgs, tokens: list[int], seed: int = 0,
                      dtype: torch.dtype = torch.float32, bias: torch.Tensor | None = None,
                      ranks_per_node: int = 1) -> dict:
    """Run on every rank: the same single-process ``MoE`` (seeded) on all ranks' tokens, and ``ExpertParallelMoE``
    on this rank's tokens[rank] of them; forward, a backward of sum(y · g) for a fixed random g, then compare.

    bias: the gate's aux-loss-free bias [E] (skews the load, e.g. so that a rank receives nothing). Returns a dict:
    max |difference| of the outputs, of the input gradients, of the local experts' weight gradients and of the
    (rank-summed) gate and shared-expert gradients, plus this rank's routing decisions ("indices" [T, k]), the split
    sizes it sent and received, the rows each local expert processed and its all-to-all statistics.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    moe = MoE(args).to(device=device, dtype=dtype)
    if bias is not None:
        moe.gate.bias.copy_(bias)
    ep = ExpertParallelMoE.from_moe(moe, args, ranks_per_node=ranks_per_node)
    x_all = torch.randn(sum(tokens), args.dim, generator=gen).to(device, dtype)
    g_all = torch.randn(sum(tokens), args.dim, generator=gen).to(device, dtype)
    lo = sum(tokens[:rank])
    mine = slice(lo, lo + tokens[rank])
    x_ref = x_all.clone().requires_grad_()
    y_ref = moe(x_ref)
    (y_ref * g_all).sum().backward()
    x = x_all[mine].clone().requires_grad_()
    y = ep(x)
    (y * g_all[mine]).sum().backward()
    ep.sync_replicated_grads()

    def diff(a, b):
        return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0

    e0, e1 = ep.expert_range.start, ep.expert_range.stop
    return {
        "output": diff(y, y_ref[mine]),
        "input_grad": diff(x.grad, x_ref.grad[mine]),
        "expert_grads": max(diff(getattr(ep.experts, w).grad, getattr(moe.experts, w).grad[e0:e1])
                            for w in ("w1", "w2", "w3")),
        "gate_grad": diff(ep.gate.weight.grad, moe.gate.weight.grad),
        "shared_grads": max((diff(p.grad, q.grad) for p, q in zip(ep.shared_experts.parameters(),
                                                                   moe.shared_experts.parameters())), default=0.0)
        if ep.shared_experts is not None else 0.0,
        "sent": ep.last_send.tolist(), "received": ep.last_recv.tolist(),
        "expert_rows": ep.last_expert_rows.tolist(), "load": ep.last_load.tolist(), "indices": ep.last_indices.cpu(),
        "a2a_calls": ep.stats.calls, "a2a_seconds": ep.stats.seconds, "bytes_sent": ep.stats.bytes_sent,
    }


def _report(rank: int, world_size: int, r: dict) -> None:
    # One write per line: ranks share stdout under torchrun, and print's separate write of "\n" lets lines interleave.
    sys.stdout.write(f"rank {rank}/{world_size}: sent {r['sent']} received {r['received']}; max |diff| output "
                     f"{r['output']:.2e}, input grad {r['input_grad']:.2e}, expert grads {r['expert_grads']:.2e}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """``python -m dslab.expert_parallel [--world-size W]`` launches W local processes; under ``torchrun`` it joins
    the job. Either way every rank checks the expert-parallel layer against the single-process MoE and prints."""
    p = argparse.ArgumentParser(prog="python -m dslab.expert_parallel", description=main.__doc__)
    p.add_argument("--world-size", type=int, default=2, help="processes to launch when not under torchrun")
    p.add_argument("--tokens", type=int, default=16, help="tokens per rank")
    a = p.parse_args(argv)
    args = configs.load("tiny-moe")
    rank, world_size = init_distributed()
    if world_size > 1:  # a torchrun job
        _report(rank, world_size, check_against_moe(rank, world_size, args, [a.tokens] * world_size))
        dist.destroy_process_group()
        return 0
    world_size = 1 if "RANK" in os.environ else a.world_size  # torchrun with one process: a one-rank group of our own
    for rank, r in enumerate(launch(check_against_moe, world_size, (args, [a.tokens] * world_size))):
        _report(rank, world_size, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
