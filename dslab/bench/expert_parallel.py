"""Expert parallelism on one machine: tokens/s of the 2-process ``ExpertParallelMoE`` (gloo over loopback, one torch
thread per process) against the single-process ``MoE`` on the same tokens, forward + backward. The headline divides
by the faster of the single process with 2 threads and with 1 thread, round by round.

Both use the same cores and do the same arithmetic, so parity (1.0x) is the best the expert-parallel layer can do
here: what it loses is the price of its three all-to-alls per pass (split sizes, dispatch, combine, and the same in
backward), of the processes waiting for each other at every one of them, and of smaller GEMMs per process. The time
inside the all-to-alls is reported separately (the slowest rank's, per step). The two are timed in alternating
rounds inside the same two worker processes: the single-process layer runs on rank 0 with 2 threads while rank 1
sleeps in a barrier (gloo's barrier does not spin), then both ranks run the expert-parallel step with 1 thread each.
The single process is also timed with 1 thread: on a machine busy with other jobs, a 2-thread kernel waits for
whichever of its threads was descheduled, which made the 2-thread baseline 6x slower than 1 thread here; hence the
headline's "faster of the two". ``--threads`` does not apply (each worker sets its own thread count).

Shape: dim 512, 64 routed experts (top-6, hidden 128) + 1 shared, sigmoid gate with bias, as the ``moe`` benchmark;
4,096 tokens per rank (quick: 512).

Measured on the shared 2-core development machine while other jobs kept it loaded (load average 7-13), so only the
orders of magnitude mean anything (the lead re-measures on a quiet machine): expert-parallel 1,814 tokens/s against
2,977 for one process with 1 thread and 497 with 2 threads (the descheduling effect above); the all-to-alls took
0.99 s of the 4.5 s expert-parallel step (22%, waiting included) and each rank sent 96 MiB per step; a second run
gave 1,994 / 2,937 / 631 tokens/s and 21%. Headline: 0.61x and 0.68x (rounds 0.57-0.81x) of the best single process.
On one machine the all-to-alls buy nothing: they are the price of holding more experts than one device could.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from dslab.bench import Result
from dslab.configs import ModelArgs
from dslab.expert_parallel import ExpertParallelMoE, launch
from dslab.moe import MoE

WORLD = 2


def bench_args() -> ModelArgs:
    return ModelArgs(name="ep-bench", dim=512, moe_inter_dim=128, n_routed_experts=64, n_shared_experts=1,
                     n_activated_experts=6, n_expert_groups=1, n_limited_groups=1, score_func="sigmoid",
                     gate_bias=True, n_layers=1, n_dense_layers=0)


def _worker(rank: int, world: int, tokens: int, rounds: int) -> dict:
    args = bench_args()
    torch.manual_seed(0)
    moe = MoE(args)
    layer = ExpertParallelMoE.from_moe(moe, args)
    gen = torch.Generator().manual_seed(1)
    x_all = torch.randn(world * tokens, args.dim, generator=gen)
    x = x_all[rank * tokens:(rank + 1) * tokens].clone().requires_grad_()
    x_ref = x_all.clone().requires_grad_()

    def ep_step():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    def single_step():
        moe.zero_grad(set_to_none=True)
        moe(x_ref).sum().backward()

    times = {"ep": [], "single": [], "single_1_thread": [], "a2a": []}
    for r in range(rounds + 1):  # round 0 warms both up
        dist.barrier()
        if rank == 0:
            single = {}
            for threads in (world, 1):
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                single_step()
                single[threads] = time.perf_counter() - t0
        dist.barrier()
        torch.set_num_threads(1)
        layer.stats.reset()
        dist.barrier()
        t0 = time.perf_counter()
        ep_step()
        took = torch.tensor([time.perf_counter() - t0, layer.stats.seconds])
        dist.all_reduce(took, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        if r and rank == 0:
            times["ep"].append(float(took[0]))
            times["a2a"].append(float(took[1]))
            times["single"].append(single[world])
            times["single_1_thread"].append(single[1])
    return {**times, "rows_sent": layer.stats.rows_sent, "bytes_sent": layer.stats.bytes_sent}


def measure(tokens_per_rank: int = 4096, rounds: int = 7) -> dict:
    """Median seconds per forward + backward step of both layers, the all-to-all seconds inside the expert-parallel
    step, tokens/s and their ratio. The workers are spawned, not forked: rank 0 raises its thread count for the
    single-process baseline, and OpenMP does not survive a fork (see ``launch``)."""
    r = launch(_worker, WORLD, (tokens_per_rank, rounds), timeout_s=1800, pg_timeout_s=600, start_method="spawn")[0]
    tokens = WORLD * tokens_per_rank
    ep, single, single_1, a2a = (statistics.median(r[k]) for k in ("ep", "single", "single_1_thread", "a2a"))
    best = [min(a, b) for a, b in zip(r["single"], r["single_1_thread"])]  # the faster single process, per round
    ratios = [s / e for s, e in zip(best, r["ep"])]
    return {"ep_s": ep, "single_s": single, "single_1_thread_s": single_1, "a2a_s": a2a, "ep_tokens_per_s": tokens / ep,
            "single_tokens_per_s": tokens / single, "single_1_thread_tokens_per_s": tokens / single_1,
            "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios)), "a2a_share": a2a / ep, "bytes_sent_per_step": r["bytes_sent"]}


def run(quick: bool = False) -> Result:
    tokens = 512 if quick else 4096
    m = measure(tokens, rounds=3 if quick else 7)
    details = {
        "setup": f"CPU float32, {WORLD} gloo processes x 1 thread vs 1 process (the faster of {WORLD} threads and 1), "
                 f"{tokens} tokens per rank, dim 512, 64 experts top-6 (hidden 128) + 1 shared, forward + backward",
        "tokens_per_s": {"expert_parallel": round(m["ep_tokens_per_s"]),
                         f"single_process_{WORLD}_threads": round(m["single_tokens_per_s"]),
                         "single_process_1_thread": round(m["single_1_thread_tokens_per_s"])},
        "ms_per_step": {"expert_parallel": round(1e3 * m["ep_s"], 1),
                        f"single_process_{WORLD}_threads": round(1e3 * m["single_s"], 1),
                        "single_process_1_thread": round(1e3 * m["single_1_thread_s"], 1)},
        "all_to_all_ms_per_step": f"{1e3 * m['a2a_s']:.1f} ({m['a2a_share']:.0%} of the expert-parallel step; the "
                                  f"slowest rank, waiting included)",
        "bytes_sent_per_rank_per_step": f"{m['bytes_sent_per_step'] / 2**20:.1f} MiB",
        "ratio_range_over_rounds": f"{m['ratio_range'][0]:.2f}-{m['ratio_range'][1]:.2f}x",
    }
    return Result(name="expert_parallel", value=m["ratio"], unit="x", op=">=", target=1.0, details=details)
