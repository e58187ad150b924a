"""Expert parallelism: the layer over real gloo process groups equals the single-process MoE (outputs and every
gradient), with uneven loads, a rank that receives nothing and a rank with no tokens; node-limited routing never
uses more than M nodes; traffic counts; bad input; and a failing or stuck worker ends the run instead of hanging.

The multi-process tests start their workers with fork (a fraction of a second each) and bundle several scenarios
into one launch, so the whole file stays within a few tens of seconds on a loaded 2-core machine.
"""

import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dslab import configs, moe
from dslab import expert_parallel as ep

TINY = configs.load("tiny-moe")  # 16 routed experts in 4 groups (2 kept), top-4, 1 shared, sigmoid gate with bias


def _no_children_left():
    for p in multiprocessing.active_children():
        p.join(timeout=5)
    return not multiprocessing.active_children()


# ------------------------------------------------------------------------------------- equality with one process
def _scenarios(rank, world, args):
    """Every scenario on the same two ranks: (name, result of check_against_moe)."""
    e = args.n_routed_experts
    skew = torch.zeros(e)
    skew[: e // 2] = 0.3  # rank 0's experts are favoured: uneven loads
    starve = torch.zeros(e)
    starve[e // 2:] = -5.0  # rank 1's experts are never picked: rank 1 receives no rows at all
    runs = {
        "random": ep.check_against_moe(rank, world, args, [7, 5], seed=1),
        "float64": ep.check_against_moe(rank, world, args, [6, 9], seed=2, dtype=torch.float64),
        "uneven": ep.check_against_moe(rank, world, args, [11, 3], seed=3, bias=skew),
        "rank 1 receives nothing": ep.check_against_moe(rank, world, args, [8, 8], seed=4, bias=starve),
        "rank 1 has no tokens": ep.check_against_moe(rank, world, args, [9, 0], seed=5),
        "node-limited, 2 nodes, M=1": ep.check_against_moe(
            rank, world, args.replace(n_expert_groups=2, n_limited_groups=1), [10, 10], seed=6),
    }
    return runs


@pytest.fixture(scope="module")
def two_ranks():
    t0 = time.monotonic()
    results = ep.launch(_scenarios, 2, (TINY,), timeout_s=300, pg_timeout_s=120)
    return results, time.monotonic() - t0


# float64 everywhere but the gate, which computes its affinities in fp32 by design (V3 §3.3.1), so its gradient (and
# the part of the input gradient that flows through it) agree to fp32 rounding only
TOL = {"float64": {"gate_grad": 1e-5, "input_grad": 1e-6, "default": 1e-10}}


@pytest.mark.parametrize("scenario", ["random", "float64", "uneven", "rank 1 receives nothing", "rank 1 has no tokens",
                                      "node-limited, 2 nodes, M=1"])
def test_two_gloo_ranks_equal_the_single_process_moe(two_ranks, scenario):
    results, _ = two_ranks
    tol = TOL.get(scenario, {"default": 2e-5})
    for rank, runs in enumerate(results):
        r = runs[scenario]
        for key in ("output", "input_grad", "expert_grads", "gate_grad", "shared_grads"):
            assert r[key] <= tol.get(key, tol["default"]), (scenario, rank, key, r[key])
        assert r["a2a_calls"] == 4  # dispatch and combine, forward and backward
    sent = torch.tensor([runs[scenario]["sent"] for runs in results])
    received = torch.tensor([runs[scenario]["received"] for runs in results])
    assert torch.equal(sent.T, received)  # what j sends to i is what i receives from j


def test_the_corner_cases_happened(two_ranks):
    results, seconds = two_ranks
    r0, r1 = results
    starved = r1["rank 1 receives nothing"]
    assert starved["received"] == [0, 0] and sum(starved["expert_rows"]) == 0
    assert r1["rank 1 has no tokens"]["sent"] == [0, 0] and sum(r1["rank 1 has no tokens"]["received"]) > 0
    uneven = [sum(r["uneven"]["expert_rows"]) for r in results]
    assert uneven[0] > 2 * uneven[1]
    assert seconds < 200


def test_four_ranks():
    results = ep.launch(ep.check_against_moe, 4, (TINY, [5, 0, 9, 4], 7), timeout_s=240, pg_timeout_s=60)
    for r in results:
        assert max(r["output"], r["input_grad"], r["expert_grads"], r["gate_grad"], r["shared_grads"]) < 2e-5
    assert sum(sum(r["expert_rows"]) for r in results) == 18 * TINY.n_activated_experts


# -------------------------------------------------------------------------------------------- failing workers
def _one_rank_fails(rank, world):
    if rank == 1:
        ep.ExpertParallelMoE(TINY.replace(n_routed_experts=15, n_expert_groups=1, n_limited_groups=1))
    dist.barrier()  # rank 0 waits here for a peer that is gone


def test_a_failing_worker_stops_the_others_with_its_error():
    t0 = time.monotonic()
    with pytest.raises(ep.WorkerError, match="n_routed_experts must be divisible by the world size") as info:
        ep.launch(_one_rank_fails, 2, timeout_s=120, pg_timeout_s=60)
    assert info.value.rank == 1
    assert time.monotonic() - t0 < 60
    assert _no_children_left()


def _one_rank_hangs(rank, world):
    if rank == 1:
        time.sleep(600)
    t = torch.ones(1)
    dist.all_reduce(t)


def test_a_stuck_peer_times_out_instead_of_hanging():
    t0 = time.monotonic()
    with pytest.raises(ep.WorkerError) as info:
        ep.launch(_one_rank_hangs, 2, timeout_s=120, pg_timeout_s=3)
    assert info.value.rank == 0  # the rank left waiting in the collective raised
    assert time.monotonic() - t0 < 60
    assert _no_children_left()


def _sleep(rank, world):
    time.sleep(600)


def test_launch_has_a_wall_clock_limit():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout_s"):
        ep.launch(_sleep, 2, timeout_s=2, pg_timeout_s=60)
    assert time.monotonic() - t0 < 30
    assert _no_children_left()


def _threads(rank, world):
    return torch.get_num_threads()


def test_workers_that_need_threads_are_spawned():
    assert ep.launch(_threads, 1, threads=1) == [1]  # forked on Linux
    assert ep.launch(_threads, 1, threads=2, timeout_s=300) == [2]  # spawned: OpenMP does not survive a fork


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        ep.launch(_sleep, 2, backend="mpi")
    with pytest.raises(ValueError, match="world_size"):
        ep.launch(_sleep, 0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nccl"):
            ep.launch(_sleep, 2, backend="nccl")
    with pytest.raises(TypeError, match="fn"):
        ep.launch("not a function", 2)


def test_the_layer_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group exists in this test process")
    with pytest.raises(RuntimeError, match="process group"):
        ep.ExpertParallelMoE(TINY)


# ------------------------------------------------------------------------------------------------ pure helpers
def test_expert_placement():
    assert ep.expert_placement(256, 64, 8) == (4, 8)  # V3: 64 GPUs on 8 nodes
    with pytest.raises(ValueError, match="n_routed_experts must be divisible by the world size"):
        ep.expert_placement(10, 4)
    with pytest.raises(ValueError, match="ranks_per_node"):
        ep.expert_placement(16, 4, 3)


def test_split_matrix():
    idx = torch.tensor([[[0, 5], [1, 2]], [[7, 6], [4, 0]]])  # 2 ranks, 2 tokens, top-2, 8 experts (4 per rank)
    assert ep.split_matrix(idx, 8).tolist() == [[3, 1], [1, 3]]
    ragged = [torch.tensor([[0, 5]]), torch.zeros(0, 2, dtype=torch.long)]
    assert ep.split_matrix(ragged, 8).tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ValueError, match="divisible"):
        ep.split_matrix(torch.zeros(3, 2, 2, dtype=torch.long), 8)


@pytest.mark.parametrize("seed", range(4))
def test_node_limited_routing_never_uses_more_than_m_nodes(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(25):
        n_nodes = rng.choice([2, 4, 8])
        m = rng.randint(1, n_nodes)
        per_node = rng.choice([2, 4, 8])
        top_k = m * rng.randint(1, per_node)
        logits = torch.randn(rng.randint(1, 40), n_nodes * per_node, generator=gen)
        bias = torch.randn(n_nodes * per_node, generator=gen) if rng.random() < 0.5 else None
        _, idx = ep.node_limited_route(logits, bias, top_k, n_nodes, m)
        assert int(ep.nodes_used(idx, n_nodes * per_node, n_nodes).max()) <= m
        free = moe.route(logits, bias, top_k)[1]  # without the limit a token may spread wider
        assert int(ep.nodes_used(free, n_nodes * per_node, n_nodes).max()) <= min(top_k, n_nodes)


def test_node_limited_routing_is_lab01s_group_limit_with_the_paper_score():
    gen = torch.Generator().manual_seed(0)
    logits, bias = torch.randn(50, 256, generator=gen), 0.1 * torch.randn(256, generator=gen)
    # V3's 8 of 256 experts on at most 4 of 8 nodes: K_r/M = 2, exactly the official top-2 group score
    w, i = ep.node_limited_route(logits, bias, 8, 8, 4, route_scale=2.5)
    w_ref, i_ref = moe.route(logits, bias, 8, 8, 4, "sigmoid", 2.5)
    assert torch.equal(i.sort(-1).values, i_ref.sort(-1).values) and torch.allclose(w.sum(-1), w_ref.sum(-1))
    # M = 2 scores each node by its top 4, which can pick other nodes than a top-2 score would
    _, i4 = ep.node_limited_route(logits, bias, 8, 8, 2)
    s = torch.sigmoid(logits) + bias
    node_score = s.view(50, 8, 32).topk(4, -1).values.sum(-1)
    for t in range(50):
        assert set((i4[t] // 32).tolist()) <= set(node_score[t].topk(2).indices.tolist())


def test_node_limited_routing_bad_input():
    logits = torch.randn(3, 16)
    with pytest.raises(ValueError, match="max_nodes"):
        ep.node_limited_route(logits, None, 4, 4, 5)  # M larger than the node count
    with pytest.raises(ValueError, match="max_nodes"):
        ep.node_limited_route(logits, None, 4, 4, 3)  # K_r/M not whole
    with pytest.raises(ValueError, match="group_topk"):
        moe.route(logits, None, 2, 4, 2, group_topk=5)  # more than a group holds


def test_token_traffic_counts_copies_v3s_way():
    # 4 ranks, 2 per node, 8 experts (2 per rank). A token on rank 0 (node 0, slot 0) choosing experts on ranks
    # 0, 1 (its node), 2 and 3 (node 1): one IB copy to node 1 landing on rank 2 (slot 0), NVLink to ranks 1 and 3.
    idx = torch.tensor([[0, 2, 4, 6], [4, 5, 6, 7], [0, 1, 0, 1]])
    out = ep.token_traffic(idx, 0, 8, 4, 2)
    assert out["ib"].tolist() == [1, 1, 0]
    assert out["nvlink"].tolist() == [2, 1, 0]
    assert out["ib_per_expert"].tolist() == [2, 4, 0]
    assert out["nvlink_per_expert"].tolist() == [1, 0, 0]
    # a token living on rank 3 (node 1, slot 1) sending to rank 0: lands on rank 1 by IB, then NVLink to rank 0
    out = ep.token_traffic(torch.tensor([[0, 1]]), torch.tensor([3]), 8, 4, 2)
    assert out["ib"].tolist() == [1] and out["nvlink"].tolist() == [1]


def test_token_bytes():
    assert ep.token_bytes(7168, "fp8") == 7168 + 4 * 56
    assert ep.token_bytes(7168, "bf16") == 14336
    with pytest.raises(ValueError, match="fmt"):
        ep.token_bytes(7168, "int4")


def test_route_group_topk_keeps_the_default_behaviour():
    gen = torch.Generator().manual_seed(3)
    logits, bias = torch.randn(20, 32, generator=gen), torch.randn(32, generator=gen)
    assert torch.equal(moe.route(logits, bias, 4, 8, 2)[1], moe.route(logits, bias, 4, 8, 2, group_topk=2)[1])


@pytest.mark.slow
def test_torchrun_runs_the_same_check():
    """``torchrun --standalone`` (a free port of its own choosing) with 2 processes runs the layer unchanged."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "dslab.expert_parallel",
                          "--tokens", "8"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("rank ")]
    assert len(lines) == 2
    for line in lines:
        output_diff = float(line.split("output ")[1].split(",")[0])
        assert output_diff < 1e-5


@pytest.mark.slow
def test_the_benchmark_measures_both_layers():
    """The benchmark's harness on a tiny size (a functional check, not a timing). Its rank 0 runs with 2 threads
    after this process has run parallel ops: forked, that hung in OpenMP; spawned it must not."""
    from dslab.bench import BENCHMARKS
    from dslab.bench import expert_parallel as bench

    assert "expert_parallel" in BENCHMARKS
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    (torch.randn(512, 512) @ torch.randn(512, 512)).sum()  # the parent's OpenMP pool is up
    torch.set_num_threads(before)
    m = bench.measure(tokens_per_rank=32, rounds=1)
    assert m["ep_tokens_per_s"] > 0 and m["single_tokens_per_s"] > 0 and m["single_1_thread_tokens_per_s"] > 0
    assert 0 <= m["a2a_share"] <= 1 and m["bytes_sent_per_step"] > 0
