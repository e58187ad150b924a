"""Pipeline schedules: simulated bubbles equal V3 Table 2 over a grid of valid settings, every timeline respects its
dependencies, memory and parameter accounting match the table, bad settings are refused, and the overlap model."""

import itertools
import math

import pytest
import torch

from dslab import accounting, configs, runtime
from dslab import systems as S

GRID_F = [0.5, 1.0, 2.0]
GRID_W = [0.25, 0.5, 1.0]
GRID_BI = [0.5, 1.0, 1.5, 3.0]


def _fb_values(d):
    lo, hi = max(d.F, d.B), d.F + d.B
    return [lo, (lo + hi) / 2, hi]


def _grid(schedule):
    """(pp, microbatches, Durations) inside closed_form_holds, over stage counts, micro-batches and F/B/W ratios."""
    pps = [2, 4, 6, 8] if schedule == "dualpipe" else [1, 2, 3, 5, 8]
    for pp in pps:
        m0 = S.min_microbatches(schedule, pp)
        for m in (m0, m0 + 2, m0 + 6):
            for f, w, bi in itertools.product(GRID_F, GRID_W, GRID_BI):
                if schedule == "dualpipe":
                    bi = f  # the region where Table 2's DualPipe formula is exact: F = B - W
                d = S.Durations(f, bi + w, w)
                for fb in _fb_values(d) if schedule == "dualpipe" else [None]:
                    d2 = S.Durations(f, bi + w, w, fb)
                    if S.closed_form_holds(schedule, pp, m, d2):
                        yield pp, m, d2


@pytest.mark.parametrize("schedule", S.SCHEDULES)
def test_simulated_bubbles_equal_table_2(schedule):
    n = 0
    for pp, m, d in _grid(schedule):
        tl = S.simulate(schedule, pp, m, d)
        assert math.isclose(tl.max_bubble, S.closed_form_bubble(schedule, pp, d), abs_tol=1e-9), (pp, m, d)
        if schedule != "dualpipe":  # every device waits the same in 1F1B and ZB1P
            assert max(tl.bubble) - min(tl.bubble) < 1e-9
        n += 1
    assert n >= 100  # the grid is not empty


def test_the_region_is_tight():
    """Outside closed_form_holds the published orders do give other bubbles (so the region is not a formality)."""
    d = S.Durations(F=2.0, B=2.0, W=1.0, FB=3.0)  # F != B - W
    assert not S.closed_form_holds("dualpipe", 8, 16, d)
    assert S.simulate("dualpipe", 8, 16, d).max_bubble != S.closed_form_bubble("dualpipe", 8, d)
    d = S.Durations(F=0.5, B=2.0, W=1.0)  # W > F: the held-back weight passes no longer fit
    assert not S.closed_form_holds("zb1p", 4, 8, d)
    assert S.simulate("zb1p", 4, 8, d).max_bubble > S.closed_form_bubble("zb1p", 4, d)
    assert not S.closed_form_holds("1f1b", 4, 8, S.Durations(comm=0.1))


def test_v3_figure_settings():
    """DualPipe's README figure: 8 devices, 20 micro-batches, F = W = 1, B = 2, F&B drawn as F + B."""
    d = S.Durations(F=1, B=2, W=1, FB=3)
    tl = S.simulate("dualpipe", 8, 20, d)
    assert tl.bubble == [6.0] * 8 == [S.closed_form_bubble("dualpipe", 8, d)] * 8
    one = S.simulate("1f1b", 8, 20, d)
    assert one.max_bubble == 7 * 3 and one.makespan == 20 * 3 + 21


@pytest.mark.parametrize("schedule,pp,m", [("1f1b", 4, 6), ("1f1b", 5, 2), ("zb1p", 4, 7), ("zb1p", 6, 6),
                                           ("dualpipe", 4, 8), ("dualpipe", 6, 16), ("dualpipe", 8, 20)])
@pytest.mark.parametrize("comm", [0.0, 0.3])
def test_timelines_respect_dependencies(schedule, pp, m, comm):
    d = S.Durations(F=1.0, B=2.5, W=0.75, FB=3.0, comm=comm)
    tl = S.simulate(schedule, pp, m, d)
    end = {}  # (event, direction, micro-batch, stage) -> (end time, device)
    for device in tl.chunks:
        for a, b in zip(device, device[1:]):
            assert a.end <= b.start + 1e-12  # one thing at a time on a device
        for t in device:
            assert math.isclose(t.end - t.start, d.of(t.kind))
            for i, (k, mb, stage) in enumerate(t.parts):
                event = "F" if t.kind == "F" or (t.kind == "F&B" and i == 0) else "W" if t.kind == "W" else "B"
                assert (event, k, mb, stage) not in end  # each piece of work happens once
                end[(event, k, mb, stage)] = (t.end, t.device)
    for device in tl.chunks:
        for t in device:
            for i, (k, mb, stage) in enumerate(t.parts):
                forward = t.kind == "F" or (t.kind == "F&B" and i == 0)
                if forward and stage > 0:
                    before, where = end[("F", k, mb, stage - 1)]
                    assert before + (comm if where != t.device else 0) <= t.start + 1e-9
                if t.kind == "W":
                    assert end[("B", k, mb, stage)][0] <= t.start + 1e-9
                if not forward and t.kind != "W":
                    assert end[("F", k, mb, stage)][0] <= t.start + 1e-9  # no backward before its forward
                    if stage < pp - 1:
                        before, where = end[("B", k, mb, stage + 1)]
                        assert before + (comm if where != t.device else 0) <= t.start + 1e-9
    directions = 2 if schedule == "dualpipe" else 1
    per_direction = m // directions
    for k, mb, s in itertools.product(range(directions), range(per_direction), range(pp)):
        assert ("F", k, mb, s) in end and ("B", k, mb, s) in end  # every micro-batch crosses every stage both ways
        if schedule != "1f1b":
            assert ("W", k, mb, s) in end or any(t.kind == "B" and (k, mb, s) in t.parts or
                                                 t.kind == "F&B" and t.parts[1] == (k, mb, s)
                                                 for dev in tl.chunks for t in dev)


def test_communication_lengthens_the_step():
    d0, d1 = S.Durations(), S.Durations(comm=0.5)
    for schedule in S.SCHEDULES:
        a, b = S.simulate(schedule, 4, 8, d0), S.simulate(schedule, 4, 8, d1)
        assert b.makespan > a.makespan
    # 1F1B: at least each of the PP - 1 hops crossed once on the way in and once on the way out; in its steady phase
    # a stage also waits for the round trip of every micro-batch, so it costs more than that
    one = S.simulate("1f1b", 4, 8, d1).makespan
    assert one > S.simulate("1f1b", 4, 8, d0).makespan + 2 * 3 * 0.5


@pytest.mark.parametrize("schedule", S.SCHEDULES)
@pytest.mark.parametrize("pp", [2, 4, 8])
def test_memory_and_parameters_match_table_2(schedule, pp):
    m = max(S.min_microbatches(schedule, pp), pp) + 4
    tl = S.simulate(schedule, pp, m, S.Durations(F=1, B=2, W=1, FB=2.5))
    assert max(tl.peak_activations) == S.closed_form_activations(schedule, pp)
    assert {len(s) for s in tl.stages} == {S.closed_form_parameters(schedule)}
    if schedule == "1f1b":  # stage s holds PP - s micro-batches: the first stage is the one at PP
        assert tl.peak_activations == [pp - s for s in range(pp)]
    if schedule == "dualpipe":  # device d holds stages d and PP-1-d
        assert tl.stages == [tuple(sorted({d, pp - 1 - d})) for d in range(pp)]


def test_with_fewer_microbatches_1f1b_holds_fewer_activations():
    tl = S.simulate("1f1b", 8, 3)
    assert max(tl.peak_activations) == 3 and math.isclose(tl.max_bubble, 7 * 3)


def test_chunk_counts():
    for schedule, pp, m in [("1f1b", 4, 9), ("zb1p", 5, 7), ("dualpipe", 6, 14)]:
        orders = S.chunk_orders(schedule, pp, m)
        for order in orders:
            forwards = sum(1 for c in order if c.kind in ("F", "F&B"))
            backwards = sum(1 for c in order if c.kind in ("B", "Bi", "F&B"))
            weights = sum(1 for c in order if c.kind == "W")
            assert forwards == backwards == m
            assert weights == sum(1 for c in order if c.kind == "Bi")


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    ({"F": 0.0}, "F"), ({"B": -1.0}, "B"), ({"W": 0.0}, "W"), ({"W": 2.0, "B": 2.0}, "W must be < B"),
    ({"FB": 0.5}, "FB"), ({"FB": 10.0}, "FB"), ({"comm": -0.1}, "comm"), ({"F": float("nan")}, "F"),
])
def test_bad_durations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.Durations(**kwargs)


def test_bad_schedules():
    with pytest.raises(ValueError, match="pp must be even"):
        S.simulate("dualpipe", 5, 20)
    with pytest.raises(ValueError, match="microbatches must be >= 8"):
        S.simulate("dualpipe", 4, 6)
    with pytest.raises(ValueError, match="microbatches must be even"):
        S.simulate("dualpipe", 4, 9)
    with pytest.raises(ValueError, match="microbatches must be >= 4"):
        S.simulate("zb1p", 4, 3)
    with pytest.raises(ValueError, match="microbatches"):
        S.simulate("1f1b", 4, 0)
    with pytest.raises(ValueError, match="schedule"):
        S.simulate("gpipe", 4, 8)
    with pytest.raises(ValueError, match="pp"):
        S.simulate("1f1b", 0, 8)
    with pytest.raises(TypeError, match="durations"):
        S.simulate("1f1b", 4, 8, {"F": 1})


# --------------------------------------------------------------------------------------------------- overlap
def test_a2a_seconds_takes_the_slower_link():
    assert S.a2a_seconds(50e9, 0) == 1.0 and S.a2a_seconds(0, 160e9) == 1.0
    assert S.a2a_seconds(50e9, 3.2 * 50e9) == 1.0  # 3.2 NVLink copies per IB copy cost no extra time (V3 §3.2.2)
    assert S.a2a_seconds(50e9, 4 * 50e9) > 1.0
    with pytest.raises(ValueError, match="ib_gbps"):
        S.a2a_seconds(1, 1, ib_gbps=0)


def test_overlap_model():
    r = S.overlap_model(tokens=1000, ib_copies=4, nvlink_copies=4, flops_per_token=1e9, achieved_flops=1e14,
                        dispatch_bytes=7392, combine_bytes=14336)
    assert math.isclose(r["compute"], 1e-2)
    assert math.isclose(r["dispatch"], 1000 * 4 * 7392 / 50e9)
    assert math.isclose(r["serial"], r["compute"] + r["dispatch"] + r["combine"])
    assert r["overlapped"] == max(r["compute"], r["dispatch"] + r["combine"]) and r["exposed"] == 0.0
    slow = S.overlap_model(1000, 4, 4, 1e9, 1e16, 7392, 14336)
    assert slow["exposed"] > 0 and slow["comm_to_compute"] > 1


def test_gantt_draws():
    tl = S.simulate("dualpipe", 4, 8, S.Durations(FB=2.5))
    fig = S.gantt(tl)
    ax = fig.axes[0]
    boxes = sum(len(c.get_paths()) for c in ax.collections)
    assert boxes == sum(2 if t.kind == "F&B" else 1 for d in tl.chunks for t in d)
    assert "DualPipe" in ax.get_title()


# ------------------------------------------------------------------------------------------------------- MFU
def test_training_flops_per_token():
    v3 = configs.load("deepseek-v3-671b")
    n = accounting.activated_params(v3, include_embedding=False)
    per_key = accounting.attention_flops_per_token(v3, 1)
    assert accounting.training_flops_per_token(v3, 4096) == 3 * (2 * n + per_key * 4097 / 2)
    assert accounting.training_flops_per_token(v3, 4096, causal=False) == 3 * (2 * n + per_key * 4096)
    assert accounting.training_flops_per_token(v3, 4096) == pytest.approx(2.505e11, rel=1e-3)  # "~250 GFLOPs"
    with pytest.raises(ValueError, match="seq_len"):
        accounting.training_flops_per_token(v3, 0)


def test_mfu():
    assert accounting.mfu(1e9, 100.0, 1e12) == pytest.approx(0.1)
    v3 = configs.load("deepseek-v3-671b")
    per_gpu = accounting.V3_PRETRAIN_TOKENS / (accounting.V3_PRETRAIN_GPU_HOURS * 3600)
    assert accounting.mfu(accounting.training_flops_per_token(v3, 4096), per_gpu, 989.4e12) == pytest.approx(
        0.3907, abs=5e-4)
    for bad in ({"flops_per_token": 0.0}, {"tokens_per_second": -1.0}, {"peak_flops": 0.0}):
        kwargs = {"flops_per_token": 1.0, "tokens_per_second": 1.0, "peak_flops": 1.0, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            accounting.mfu(**kwargs)


def test_peak_flops_on_this_cpu_is_a_measured_gemm():
    peak = runtime.peak_flops("cpu")
    assert peak > 1e8 and runtime.peak_flops("cpu") == peak  # cached per device, dtype and thread count
    assert runtime.peak_flops_source("cpu") == "measured: the fastest 256-2048-square float32 GEMM on cpu, 1 threads"
    assert runtime.peak_flops("cpu", refresh=True) >= peak  # measured again, the best of both kept
    with pytest.raises(ValueError, match="dtype"):
        runtime.peak_flops("cpu", torch.int32)


def test_the_peak_is_cached_per_thread_count_and_validated(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_best_gemm", lambda device, dtype, n, repeats, seconds: calls.append(n) or 1e9 * n)
    monkeypatch.setattr(runtime, "_MEASURED", {})
    assert runtime.measure_gemm_flops("cpu") == 2048e9 and calls == [256, 512, 1024, 2048]  # the fastest size
    assert runtime.measure_gemm_flops("cpu") == 2048e9 and len(calls) == 4
    with runtime.num_threads(2):
        runtime.measure_gemm_flops("cpu")
    assert len(calls) == 8
    for bad in ({"size": 32}, {"repeats": 0}, {"size": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            runtime.measure_gemm_flops("cpu", **bad)


def test_gpu_datasheet_table_matches_names():
    match = runtime._gpu_entry
    assert match("NVIDIA H100 80GB HBM3") == "H100" and match("NVIDIA H100 PCIe") == "H100 PCIe"
    assert match("NVIDIA H800") == "H800" and match("NVIDIA A100-SXM4-80GB") == "A100"
    assert match("NVIDIA A10") == "A10" and match("NVIDIA L40S") is None and match("Tesla T4") == "T4"
    assert runtime.GPU_PEAK_TFLOPS["H800"]["bfloat16"] == 989.4
