"""Pipeline schedules (1F1B, ZB1P, DualPipe) simulated chunk by chunk, and a compute/communication overlap model.

Pipeline parallelism cuts the model into PP stages on PP devices and streams micro-batches through them. A device
idles while it waits for its neighbours: the *bubble*. DeepSeek-V3 §3.2.1 compares three schedules (Table 2), with
F the time of a forward chunk (one stage, one micro-batch), B of a full backward chunk, W of its "backward for
weights" part (so B − W computes the input gradient) and F&B of a forward and a backward chunk run overlapped:

    schedule   bubble                     parameters   activations   (per device)
    1F1B       (PP − 1)(F + B)            1×           PP
    ZB1P       (PP − 1)(F + B − 2W)       1×           PP
    DualPipe   (PP/2 − 1)(F&B + B − 3W)   2×           PP + 1

``simulate`` builds each device's chunk order and plays it out in time: a chunk starts when its device is free and
its inputs exist (the forward of the same micro-batch on the previous stage, the backward on the next stage, plus
``comm`` for each hop between devices). The bubble of a device is the makespan minus the time it computed.

- 1F1B (PipeDream-flush, Narayanan et al. 2021): stage s runs PP − 1 − s forwards, then alternates one forward and
  one backward, then drains its backwards.
- ZB1P (ZB-H1 of Qi et al. 2023, "Zero Bubble Pipeline Parallelism"): the same order with each backward split into
  B − W (input gradient, needed upstream at once) and W (weight gradient, needed only by the optimizer); stage s
  holds back s weight passes and runs them in its cool-down, where 1F1B would wait.
- DualPipe (V3 §3.2.1): micro-batches enter from both ends; device d holds stage d of the forward direction and
  stage PP − 1 − d of the reverse one, and pairs a forward of one direction with a backward of the other as one F&B
  chunk whose all-to-alls hide behind the other's compute. The chunk order is that of ``DualPipe.step`` in
  deepseek-ai/DualPipe (steps 1-8: warm-up forwards, zero-bubble backwards, the F&B main phase, drain).

With zero communication, identical stages and at least ``min_microbatches`` micro-batches, the simulated bubbles
equal Table 2 inside the region ``closed_form_holds`` describes (tested on a grid); the largest per-device bubble is
Table 2's figure (DualPipe's devices differ: its middle devices wait longest). ``peak_activations`` counts, per
device, the forward chunks whose activations are still held (until their backward, or their W when it is split).

The overlap model (``a2a_seconds``, ``overlap_model``) prices an MoE layer's dispatch and combine on V3's links,
NVLink 160 GB/s inside a node and InfiniBand 50 GB/s between nodes (§3.2.2), against its compute, serial or
overlapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch

from dslab import validate

SCHEDULES = ("1f1b", "zb1p", "dualpipe")
LABELS = {"1f1b": "1F1B", "zb1p": "ZB1P", "dualpipe": "DualPipe"}
KINDS = ("F", "B", "Bi", "W", "F&B")  # forward, full backward, backward for input (B − W), backward for weights, both
NVLINK_GBPS = 160.0  # V3 §3.2.2: NVLink bandwidth inside a node (H800)
IB_GBPS = 50.0  # V3 §3.2.2: InfiniBand bandwidth between nodes


# ------------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Durations:
    """Chunk durations in any time unit: F (forward), B (full backward), W (its weight-gradient part, 0 < W < B),
    FB (a forward and a backward chunk overlapped; default F + B, i.e. no gain; V3 hides communication inside it, so
    max(F, B) <= FB <= F + B) and comm (one hop of activations or gradients between adjacent stages, >= 0)."""

    F: float = 1.0
    B: float = 2.0
    W: float = 1.0
    FB: float | None = None
    comm: float = 0.0

    def __post_init__(self):
        for name in ("F", "B", "W"):
            validate.real(name, getattr(self, name), 0, lo_open=True)
        if not self.W < self.B:
            raise ValueError(f"W must be < B (W is part of the full backward B), got W={self.W:g}, B={self.B:g}")
        if self.FB is None:
            object.__setattr__(self, "FB", self.F + self.B)
        validate.real("FB", self.FB, 0, lo_open=True)
        lo, hi = max(self.F, self.B), self.F + self.B
        if not lo - 1e-12 <= self.FB <= hi + 1e-12:
            raise ValueError(f"FB must lie in [max(F, B), F + B] = [{lo:g}, {hi:g}] (overlapping cannot beat the "
                             f"longer chunk nor cost more than both), got {self.FB:g}")
        validate.real("comm", self.comm, 0)

    def of(self, kind: str) -> float:
        return {"F": self.F, "B": self.B, "Bi": self.B - self.W, "W": self.W, "F&B": self.FB}[kind]


def min_microbatches(schedule: str, pp: int) -> int:
    """The fewest micro-batches per step for which the schedule runs as designed and Table 2 holds.

    1F1B: 1 (its bubble is (PP − 1)(F + B) for any number; below PP it never reaches the alternating steady phase,
    so the bubble *fraction* is large). ZB1P: PP (stage s holds back s weight passes for its cool-down, up to PP − 1,
    and the warm-up of stage 0 is PP − 1 forwards). DualPipe: 2·PP (the official ``DualPipe.step`` asserts it: its
    warm-up steps already take PP micro-batches from each direction on the outer devices, and the main F&B step
    must run at least once), and an even number (half enter from each end).
    """
    check_pp(schedule, pp)
    return {"1f1b": 1, "zb1p": pp, "dualpipe": 2 * pp}[schedule]


def check_pp(schedule: str, pp: int) -> int:
    """ValueError naming the parameter unless schedule is known and pp fits it (DualPipe: even, each device holds
    stage d and stage PP − 1 − d, which would be the same stage on the middle device of an odd pipeline)."""
    validate.choice("schedule", schedule, SCHEDULES)
    validate.integer("pp", pp, 1, 256)
    if schedule == "dualpipe" and (pp < 2 or pp % 2):
        raise ValueError(f"pp must be even and >= 2 for DualPipe (device d holds stages d and PP-1-d of the two "
                         f"directions; with odd PP the middle device would hold one stage twice), got {pp}")
    return pp


def check_microbatches(schedule: str, pp: int, microbatches: int) -> int:
    """ValueError naming ``microbatches`` when there are fewer than the schedule needs (or an odd number for
    DualPipe); see ``min_microbatches`` for why."""
    need = min_microbatches(schedule, pp)
    validate.integer("microbatches", microbatches, 1)
    if microbatches < need:
        why = {"1f1b": "at least one", "zb1p": "stage s postpones s weight passes, up to PP - 1, into its cool-down",
               "dualpipe": "the warm-up takes PP from each direction and the main F&B step must run once"}[schedule]
        raise ValueError(f"microbatches must be >= {need} for {LABELS[schedule]} with pp={pp} ({why}), "
                         f"got {microbatches}")
    if schedule == "dualpipe" and microbatches % 2:
        raise ValueError(f"microbatches must be even for DualPipe (half enter from each end), got {microbatches}")
    return microbatches


# -------------------------------------------------------------------------------------------------- chunk orders
@dataclass(frozen=True)
class Chunk:
    """One unit of work in a device's order: kind ("F", "B", "Bi", "W" or "F&B") and its parts, each a
    (direction, micro-batch) pair; an F&B chunk has two parts, the forward first."""

    kind: str
    parts: tuple[tuple[int, int], ...]


class _DeviceOrder:
    """One device's chunk order under construction, in the schedules' own letters: F(phase), B(phase, zero_bubble),
    W(), FB(forward phase, backward phase), each on the next micro-batch of its direction. In DualPipe a device's
    phase 0 is the direction that enters at its own end (forward on the first half of the devices, reverse on the
    second half: ``second``). A zero-bubble B is a Bi whose W is queued; W() runs the queue first-in first-out."""

    def __init__(self, second: bool = False):
        self.second = second
        self.next_fwd, self.next_bwd = [0, 0], [0, 0]  # next micro-batch of each direction
        self.queue: list[tuple[int, int]] = []  # (direction, micro-batch) of the W passes held back
        self.order: list[Chunk] = []

    def _take(self, counters: list[int], phase: int) -> tuple[int, int]:
        k = phase ^ self.second  # phase -> direction
        counters[k] += 1
        return k, counters[k] - 1

    def F(self, phase: int) -> None:  # noqa: N802
        self.order.append(Chunk("F", (self._take(self.next_fwd, phase),)))

    def B(self, phase: int, zero_bubble: bool = False) -> None:  # noqa: N802
        part = self._take(self.next_bwd, phase)
        self.order.append(Chunk("Bi" if zero_bubble else "B", (part,)))
        if zero_bubble:
            self.queue.append(part)

    def W(self) -> None:  # noqa: N802
        self.order.append(Chunk("W", (self.queue.pop(0),)))

    def FB(self, fwd_phase: int, bwd_phase: int) -> None:  # noqa: N802
        self.order.append(Chunk("F&B", (self._take(self.next_fwd, fwd_phase), self._take(self.next_bwd, bwd_phase))))


def _one_f_one_b(pp: int, m: int, split: bool) -> list[list[Chunk]]:
    """1F1B (split=False) or ZB-H1 (split=True: backward = Bi now, W held back, s of them on stage s)."""
    orders = []
    for s in range(pp):
        dev, warm = _DeviceOrder(), min(pp - 1 - s, m)
        for _ in range(warm):
            dev.F(0)
        for j in range(m):  # one forward and one backward while forwards remain, then the remaining backwards
            if j < m - warm:
                dev.F(0)
            dev.B(0, zero_bubble=split)
            if len(dev.queue) > s:  # stage s keeps s weight passes for later (ZB-H1)
                dev.W()
        while dev.queue:
            dev.W()
        orders.append(dev.order)
    return orders


def _dualpipe_device(pp: int, m: int, d: int) -> list[Chunk]:
    """Device d's chunk order in ``DualPipe.step`` (deepseek-ai/DualPipe, dualpipe/dualpipe.py): steps 1-5 here
    (warm-up forwards, zero-bubble backwards, the F&B main phase), 6-8 in ``_dualpipe_drain``. hr: how far d is from
    the nearer end of the pipeline."""
    half, hr = pp // 2, min(d, pp - 1 - d)
    dev = _DeviceOrder(second=d >= half)
    for _ in range((half - hr - 1) * 2):  # step 1: nF0
        dev.F(0)
    for _ in range(hr + 1):  # step 2: nF0F1
        dev.F(0)
        dev.F(1)
    for _ in range(half - hr - 1):  # step 3: nB1W1F1 (zero bubble)
        dev.B(1, True)
        dev.W()
        dev.F(1)
    for i in range(m // 2 - pp + hr + 1):  # step 4, the main step: nF0B1F1B0
        if i == 0 and d in (half - 1, half):  # the middle devices do not overlap this first pair
            dev.F(0)
            dev.B(1)
        else:
            dev.FB(0, 1)
        dev.FB(1, 0)
    for _ in range(half - hr - 1):  # step 5: nB1F1B0
        dev.B(1)
        dev.FB(1, 0)
    _dualpipe_drain(dev, half, hr)
    return dev.order


def _dualpipe_drain(dev: _DeviceOrder, half: int, hr: int) -> None:
    """Steps 6-8 of ``DualPipe.step``: the last backwards (zero bubble from mid step 6), the held-back Ws."""
    zero_bubble, steps = False, hr + 1
    for i in range(steps):  # step 6: nB1B0, zero bubble from the middle on
        if i == steps // 2 and hr % 2 == 1:
            zero_bubble = True
        dev.B(1, zero_bubble)
        if i == steps // 2 and hr % 2 == 0:
            zero_bubble = True
        dev.B(0, zero_bubble)
    for _ in range(half - hr - 1):  # step 7: nWB0 (zero bubble)
        dev.W()
        dev.B(0, True)
    for _ in range(hr + 1):  # step 8: nW
        dev.W()


def chunk_orders(schedule: str, pp: int, microbatches: int) -> list[list[Chunk]]:
    """Each device's chunks in the order it runs them. Raises ValueError for a bad schedule, pp or micro-batch count."""
    check_pp(schedule, pp)
    check_microbatches(schedule, pp, microbatches)
    if schedule == "dualpipe":
        return [_dualpipe_device(pp, microbatches, d) for d in range(pp)]
    return _one_f_one_b(pp, microbatches, split=schedule == "zb1p")


def stage_of(schedule: str, pp: int, device: int, direction: int) -> int:
    """The pipeline stage (0 = first layers) that ``device`` runs for micro-batches of ``direction``."""
    return pp - 1 - device if schedule == "dualpipe" and direction == 1 else device


# ------------------------------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class TimedChunk:
    """A chunk placed in time on a device: kind, [start, end) and its parts as (direction, micro-batch, stage)."""

    device: int
    kind: str
    start: float
    end: float
    parts: tuple[tuple[int, int, int], ...]


@dataclass
class Timeline:
    """A simulated step: ``chunks[d]`` lists device d's chunks in time order; ``bubble[d]`` = makespan − time d
    computed; ``peak_activations[d]`` the most forward chunks d held activations for at once; ``stages[d]`` the
    model stages whose parameters d holds."""

    schedule: str
    pp: int
    microbatches: int
    durations: Durations
    chunks: list[list[TimedChunk]]
    makespan: float = 0.0
    busy: list[float] = field(default_factory=list)
    bubble: list[float] = field(default_factory=list)
    peak_activations: list[int] = field(default_factory=list)
    stages: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def max_bubble(self) -> float:
        """The largest per-device bubble: Table 2's figure."""
        return max(self.bubble)

    @property
    def bubble_fraction(self) -> float:
        """max_bubble / makespan: the share of the step the most idle device waits."""
        return self.max_bubble / self.makespan


def _needs(kind: str, direction: int, mb: int, stage: int, pp: int, part: int) -> list[tuple]:
    """The (event, direction, mb, stage) keys a part of a chunk waits for, and whether each crosses devices."""
    if kind == "F" or (kind == "F&B" and part == 0):
        return [("F", direction, mb, stage - 1, True)] if stage > 0 else []
    if kind == "W":
        return [("B", direction, mb, stage, False)]
    needs = [("F", direction, mb, stage, False)]  # B, Bi, or the backward half of F&B
    if stage < pp - 1:
        needs.append(("B", direction, mb, stage + 1, True))
    return needs


def _inputs_done(schedule: str, pp: int, d: int, chunk: Chunk, done: dict[tuple, float],
                 comm: float) -> tuple[float, tuple] | None:
    """When everything ``chunk`` on device d needs is done (plus comm per hop between devices), and its parts as
    (direction, micro-batch, stage); None while some input is still missing."""
    ready, parts = 0.0, []
    for i, (k, mb) in enumerate(chunk.parts):
        stage = stage_of(schedule, pp, d, k)
        parts.append((k, mb, stage))
        for event, kk, j, s, hop in _needs(chunk.kind, k, mb, stage, pp, i):
            if (event, kk, j, s) not in done:
                return None
            ready = max(ready, done[(event, kk, j, s)] + (comm if hop else 0.0))
    return ready, tuple(parts)


def simulate(schedule: str, pp: int, microbatches: int, durations: Durations | None = None) -> Timeline:
    """Play ``chunk_orders`` out in time. Each chunk starts when its device is free and everything it needs is done
    (plus durations.comm for a hop between devices); an F&B chunk waits for both halves' inputs. Returns a Timeline.
    Raises ValueError for bad settings and RuntimeError if an order could deadlock (it cannot for these three)."""
    durations = Durations() if durations is None else durations
    if not isinstance(durations, Durations):
        raise TypeError(f"durations must be a dslab.systems.Durations, got {type(durations).__name__}")
    orders = chunk_orders(schedule, pp, microbatches)
    done: dict[tuple, float] = {}  # (event, direction, micro-batch, stage) -> when it finished
    nxt, free = [0] * pp, [0.0] * pp
    chunks: list[list[TimedChunk]] = [[] for _ in range(pp)]
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for d in range(pp):
            while nxt[d] < len(orders[d]):
                chunk = orders[d][nxt[d]]
                inputs = _inputs_done(schedule, pp, d, chunk, done, durations.comm)
                if inputs is None:
                    break
                start = max(free[d], inputs[0])
                end = start + durations.of(chunk.kind)
                for i, (k, mb, stage) in enumerate(inputs[1]):
                    event = "F" if chunk.kind == "F" or (chunk.kind == "F&B" and i == 0) else \
                        "W" if chunk.kind == "W" else "B"
                    done[(event, k, mb, stage)] = end
                chunks[d].append(TimedChunk(d, chunk.kind, start, end, inputs[1]))
                free[d], nxt[d] = end, nxt[d] + 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"the {schedule} order deadlocks at chunks {nxt}")
    return _summarize(Timeline(schedule, pp, microbatches, durations, chunks))


def _summarize(tl: Timeline) -> Timeline:
    tl.makespan = max(t.end for device in tl.chunks for t in device)
    tl.busy = [sum(t.end - t.start for t in device) for device in tl.chunks]
    tl.bubble = [tl.makespan - b for b in tl.busy]
    tl.peak_activations = [_peak_activations(device) for device in tl.chunks]
    tl.stages = [tuple(sorted({p[2] for t in device for p in t.parts})) for device in tl.chunks]
    return tl


def _peak_activations(chunks: list[TimedChunk]) -> int:
    """Forward chunks whose activations a device holds, at its worst: +1 at a forward, −1 when its backward is done
    (at W when the backward is split). During an F&B chunk the new forward's activations and the old backward's
    coexist, so it counts before it frees."""
    held = peak = 0
    for t in chunks:
        if t.kind in ("F", "F&B"):
            held += 1
            peak = max(peak, held)
        if t.kind in ("B", "W", "F&B"):
            held -= 1
    return peak


# --------------------------------------------------------------------------------------------- the closed forms
def closed_form_bubble(schedule: str, pp: int, durations: Durations) -> float:
    """V3 Table 2: (PP−1)(F+B) for 1F1B, (PP−1)(F+B−2W) for ZB1P, (PP/2−1)(F&B+B−3W) for DualPipe."""
    check_pp(schedule, pp)
    d = durations
    if schedule == "1f1b":
        return (pp - 1) * (d.F + d.B)
    if schedule == "zb1p":
        return (pp - 1) * (d.F + d.B - 2 * d.W)
    return (pp / 2 - 1) * (d.FB + d.B - 3 * d.W)


def closed_form_activations(schedule: str, pp: int) -> int:
    """V3 Table 2, activations per device in units of one chunk's: PP, PP, PP + 1."""
    check_pp(schedule, pp)
    return pp + 1 if schedule == "dualpipe" else pp


def closed_form_parameters(schedule: str) -> int:
    """V3 Table 2, parameter copies per device: 1, 1, 2 (DualPipe holds a stage of each direction)."""
    validate.choice("schedule", schedule, SCHEDULES)
    return 2 if schedule == "dualpipe" else 1


def closed_form_holds(schedule: str, pp: int, microbatches: int, durations: Durations) -> bool:
    """Whether Table 2's bubble is exact for these settings (zero communication, identical stages assumed).

    Found by simulating the schedules, and tested: 1F1B always; ZB1P when microbatches >= PP and W <= min(F, B − W)
    (each held-back W must fit a gap it fills); DualPipe when F = B − W and W <= F, the zero-bubble papers'
    assumption that a forward and an input-backward take equally long (the DualPipe figure draws F = B − W = W).
    Outside this region the simulation, not the formula, gives the bubble.
    """
    check_microbatches(schedule, check_pp(schedule, pp), microbatches)
    d, eps = durations, 1e-9
    if d.comm > 0:
        return False
    if schedule == "1f1b":
        return True
    if schedule == "zb1p":
        return d.W <= min(d.F, d.B - d.W) + eps
    return abs(d.F - (d.B - d.W)) <= eps and d.W <= d.F + eps


# ------------------------------------------------------------------------------------------ overlap of all-to-all
def a2a_seconds(ib_bytes: float, nvlink_bytes: float, ib_gbps: float = IB_GBPS,
                nvlink_gbps: float = NVLINK_GBPS) -> float:
    """Seconds for one all-to-all (a dispatch or a combine) that sends ib_bytes over a GPU's InfiniBand link and
    nvlink_bytes over its NVLink, both at once: the slower of the two sets the time (latency ignored)."""
    ib = validate.real("ib_bytes", ib_bytes, 0) / (validate.real("ib_gbps", ib_gbps, 0, lo_open=True) * 1e9)
    nv = validate.real("nvlink_bytes", nvlink_bytes, 0) / (validate.real("nvlink_gbps", nvlink_gbps, 0,
                                                                          lo_open=True) * 1e9)
    return max(ib, nv)


def overlap_model(tokens: int, ib_copies: float, nvlink_copies: float, flops_per_token: float, achieved_flops: float,
                  dispatch_bytes: float, combine_bytes: float, ib_gbps: float = IB_GBPS,
                  nvlink_gbps: float = NVLINK_GBPS) -> dict[str, float]:
    """One MoE layer's chunk on one GPU: ``tokens`` tokens, each sent as ib_copies IB copies and nvlink_copies
    NVLink copies (average per token, e.g. from ``dslab.expert_parallel.token_traffic``) of dispatch_bytes on the
    way out and combine_bytes on the way back, and flops_per_token of compute at achieved_flops FLOP/s.

    Returns seconds: compute, dispatch, combine, serial (compute + both all-to-alls, one after the other) and
    overlapped (max(compute, communication): another micro-batch's compute hides them, as DualPipe's F&B chunks
    do), exposed (communication left uncovered) and the communication / compute ratio.
    """
    validate.integer("tokens", tokens, 0)
    validate.real("ib_copies", ib_copies, 0)
    validate.real("nvlink_copies", nvlink_copies, 0)
    validate.real("flops_per_token", flops_per_token, 0)
    validate.real("achieved_flops", achieved_flops, 0, lo_open=True)
    compute = tokens * flops_per_token / achieved_flops
    dispatch, combine = (a2a_seconds(tokens * ib_copies * b, tokens * nvlink_copies * b, ib_gbps, nvlink_gbps)
                         for b in (dispatch_bytes, combine_bytes))
    comm = dispatch + combine
    return {"compute": compute, "dispatch": dispatch, "combine": combine, "serial": compute + comm,
            "overlapped": max(compute, comm), "exposed": max(0.0, comm - compute),
            "comm_to_compute": comm / compute if compute > 0 else float("inf")}


# ------------------------------------------------------------------------------------------------------- figures
COLORS = {"F": "#f0a830", "B": "#5cb85c", "Bi": "#9fd89f", "W": "#5aa9e6"}


def gantt(timeline: Timeline, ax=None, title: str | None = None, label_microbatches: bool = True):
    """Draw a Timeline: one row per device, a box per chunk (forward orange, full backward green, input backward
    light green, weight backward blue, F&B half orange half green), micro-batch numbers inside (the reverse
    direction's in italics). Returns the figure."""
    if ax is None:
        fig = Figure(figsize=(10, 0.35 * timeline.pp + 1.2), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure
    for d, chunks in enumerate(timeline.chunks):
        spans: dict[str, list] = {k: [] for k in COLORS}  # one collection per device and colour: fast to draw
        for t in chunks:
            w = t.end - t.start
            if t.kind == "F&B":
                spans["F"].append((t.start, w / 2))
                spans["B"].append((t.start + w / 2, w / 2))
            else:
                spans[t.kind].append((t.start, w))
            if label_microbatches and w >= 0.012 * timeline.makespan:
                for i, (k, mb, _) in enumerate(t.parts):
                    x = t.start + (i + 0.5) * w / len(t.parts)
                    ax.text(x, d, str(mb), ha="center", va="center", fontsize=6, style="italic" if k else "normal")
        for kind, xranges in spans.items():
            if xranges:
                ax.broken_barh(xranges, (d - 0.4, 0.8), facecolors=COLORS[kind], edgecolor="k", lw=0.3)
    ax.set_ylim(timeline.pp - 0.5, -0.5)
    ax.set_yticks(range(timeline.pp), [f"device {d}" for d in range(timeline.pp)], fontsize=7)
    ax.set_xlim(0, timeline.makespan)
    ax.set_xlabel("time")
    ax.set_title(title or f"{LABELS[timeline.schedule]}: PP={timeline.pp}, {timeline.microbatches} micro-batches, "
                          f"bubble {timeline.max_bubble:g} ({timeline.bubble_fraction:.1%} of the step)", fontsize=9)
    kinds = sorted({t.kind for device in timeline.chunks for t in device}, key=KINDS.index)
    names = {"F": "forward", "B": "backward", "Bi": "backward for input", "W": "backward for weights",
             "F&B": "overlapped forward & backward"}
    handles = [(Patch(facecolor=COLORS["F"], edgecolor="k"), Patch(facecolor=COLORS["B"], edgecolor="k"))
               if k == "F&B" else Patch(facecolor=COLORS[k], edgecolor="k") for k in kinds]
    ax.legend(handles, [names[k] for k in kinds], handler_map={tuple: HandlerTuple(ndivide=None, pad=0)},
              fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


__all__ = ["IB_GBPS", "KINDS", "LABELS", "NVLINK_GBPS", "SCHEDULES", "Chunk", "Durations", "Timeline", "TimedChunk",
           "a2a_seconds", "check_microbatches", "check_pp", "chunk_orders", "closed_form_activations",
           "closed_form_bubble", "closed_form_holds", "closed_form_parameters", "gantt", "min_microbatches",
           "overlap_model", "simulate", "stage_of"]
