"""Seeds, devices, headless detection, progress bars, the torchrun join and timing: the few run-time facts every
notebook, trainer and benchmark shares."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

_TRUE = {"1", "true", "yes", "on"}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed`` for explicit use."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to train on: ``prefer`` or $DSLAB_DEVICE if given, else cuda > mps > cpu.

    MPS is only taken when asked for explicitly or when $DSLAB_ALLOW_MPS=1: its numerics differ from the CPU's, and
    graded numbers are always computed in float32 on the CPU.
    """
    choice = prefer or os.environ.get("DSLAB_DEVICE") or "auto"
    if choice not in {"auto", "cpu", "cuda", "mps"} and not choice.startswith("cuda:"):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {choice!r}")
    if choice != "auto":
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} was asked for but torch.cuda.is_available() is False")
        if choice == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for but torch.backends.mps.is_available() is False")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps_ok = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if mps_ok and os.environ.get("DSLAB_ALLOW_MPS", "").lower() in _TRUE:
        return torch.device("mps")
    return torch.device("cpu")


def is_headless() -> bool:
    """True under papermill, nbval, the grader or CI ($DSLAB_HEADLESS=1): widgets then draw their static default."""
    return os.environ.get("DSLAB_HEADLESS", "").lower() in _TRUE


def progress(iterable: Iterable, **kwargs):
    """A tqdm.auto bar, silent when headless or when $TQDM_DISABLE is set, so executed notebooks stay clean."""
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", None)
    if disable is None:
        disable = is_headless() or os.environ.get("TQDM_DISABLE", "").lower() in _TRUE
    return tqdm(iterable, disable=disable, **kwargs)


# ---------------------------------------------------------------------------------------------------- peak FLOP/s
# Dense (no structured sparsity) tensor-core peaks from NVIDIA's datasheets, in TFLOP/s, for MFU's denominator.
# Keys are matched against torch.cuda.get_device_name() in order (first match wins: "H100 PCIe" before "H100").
# A GPU that is not listed, or a dtype a listed GPU has no entry for, falls back to a measured GEMM.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.2},
    "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},  # SXM; H800 and H200 share its compute
    "H800": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "A10": {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3},
    "T4": {"float16": 65.0, "float32": 8.1},
    "V100": {"float16": 125.0, "float32": 15.7},
}
_MEASURED: dict[tuple, float] = {}


def _gpu_entry(name: str) -> str | None:
    import re

    for key in GPU_PEAK_TFLOPS:  # whole words, so that "A10" does not match "A100" nor "L4" match "L40"
        if re.search(r"(?<![A-Za-z0-9])" + re.escape(key) + r"(?![0-9])", name):
            return key
    return None


GEMM_SIZES = {"cpu": (256, 512, 1024, 2048), "gpu": (4096, 8192)}  # n of the n x n x n GEMMs the peak is the best of


def _gemm_sizes(device: torch.device) -> tuple[int, ...]:
    return GEMM_SIZES["cpu" if device.type == "cpu" else "gpu"]


def _best_gemm(device: torch.device, dtype: torch.dtype, n: int, repeats: int, min_seconds: float) -> float:
    """FLOP/s of the fastest of ``repeats`` timed n x n x n GEMMs, more until min_seconds have passed, fewer (at
    least one) once 10·min_seconds have: an overloaded machine must not stall the caller."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, device="cpu").to(device, dtype)  # CPU generator, then moved
    b = torch.randn(n, n, generator=gen, device="cpu").to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: first-call allocation and kernel selection
    sync()
    best, spent, runs = float("inf"), 0.0, 0
    while (runs < repeats and spent < 10 * min_seconds) or (spent < min_seconds and runs < 50 * repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        took = time.perf_counter() - t0
        best, spent, runs = min(best, took), spent + took, runs + 1
    return 2 * n**3 / best


def measure_gemm_flops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       size: int | None = None, repeats: int = 3, *, refresh: bool = False) -> float:
    """The FLOP/s a device delivers on its friendliest workload: the fastest of many square GEMMs (2·n³ FLOPs each)
    at torch's current thread count, for n in ``size`` or by default ``GEMM_SIZES`` (256 to 2048 on a CPU), each
    timed at least ``repeats`` times and for at least 0.2 s after a warm-up.

    Why the best of several sizes, repeated: on a shared machine a GEMM longer than the scheduler's time slice is
    always interrupted and measures the machine's load, not the device (one thread of a 2-core machine running six
    other programs: 2048³ GEMMs 36-39 GFLOP/s, 256³ to 512³ ones 88-93), which put a GEMM chain at 117% "MFU" when
    the machine was busier during the peak's timing than during the chain's. Cached per (device, dtype,
    thread count, sizes); ``refresh`` measures again and keeps the best of both, so the peak only ever rises."""
    sizes = _gemm_sizes(torch.device(device)) if size is None else (size,)
    for n in sizes:
        if not isinstance(n, int) or isinstance(n, bool) or n < 64:
            raise ValueError(f"size must be an int >= 64, got {n!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    device = torch.device(device)
    key = (str(device), str(dtype), torch.get_num_threads(), sizes)
    if key not in _MEASURED or refresh:
        best = max(_best_gemm(device, dtype, n, repeats, 0.2) for n in sizes)
        _MEASURED[key] = max(best, _MEASURED.get(key, 0.0))
    return _MEASURED[key]


def peak_flops_source(device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> str:
    """Where ``peak_flops`` takes its number from: "datasheet: <GPU entry>, <dtype> dense" or "measured: ..."."""
    device = pick_device() if device is None else torch.device(device)
    if device.type == "cuda":
        entry = _gpu_entry(torch.cuda.get_device_name(device))
        if entry is not None and str(dtype).removeprefix("torch.") in GPU_PEAK_TFLOPS[entry]:
            return f"datasheet: NVIDIA {entry}, {str(dtype).removeprefix('torch.')} dense"
    sizes = _gemm_sizes(device)
    return (f"measured: the fastest {sizes[0]}-{sizes[-1]}-square {str(dtype).removeprefix('torch.')} GEMM on {device}"
            + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""))


def peak_flops(device: str | torch.device | None = None, dtype: torch.dtype = torch.float32, *,
               refresh: bool = False) -> float:
    """The FLOP/s that MFU divides by (``dslab.accounting.mfu``): on a listed NVIDIA GPU the datasheet's dense peak
    for ``dtype`` (``GPU_PEAK_TFLOPS``); elsewhere (a CPU, an unlisted GPU, MPS) the measured FLOP/s of the fastest
    large GEMM on this machine at the current thread count (``measure_gemm_flops``; ``refresh`` measures again,
    keeping the best), i.e. what this device really delivers on the friendliest workload. ``peak_flops_source`` says
    which one was used. device: None picks it as ``pick_device``. The trainer and the notebooks call it with the
    same (device, dtype, threads) and get the same number."""
    device = pick_device() if device is None else torch.device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if device.type == "cuda":
        entry = _gpu_entry(torch.cuda.get_device_name(device))
        peaks = GPU_PEAK_TFLOPS.get(entry, {}) if entry else {}
        if str(dtype).removeprefix("torch.") in peaks:
            return peaks[str(dtype).removeprefix("torch.")] * 1e12
    return measure_gemm_flops(device, dtype, refresh=refresh)


# ----------------------------------------------------------------------------------------------- torchrun join
BACKENDS = ("gloo", "nccl")


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface ("lo" on Linux, "lo0" on macOS), or None if not found."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n in ("lo", "lo0")), next((n for n in names if n.startswith("lo")), None))


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None, timeout_s: float = 120.0) -> tuple[int, int]:
    """Join the job ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), unless a
    process group exists already; (0, 1) when the process was not started by torchrun with WORLD_SIZE > 1.

    backend: None picks nccl when CUDA is available (one GPU per rank, LOCAL_RANK's), else gloo; gloo with every
    rank on this machine talks over loopback, never a NIC. Returns (rank, world size)."""
    if dist.is_initialized():
        return world()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    one_machine = os.environ.get("LOCAL_WORLD_SIZE") == os.environ["WORLD_SIZE"]
    if backend == "gloo" and one_machine and "GLOO_SOCKET_IFNAME" not in os.environ and loopback_interface():
        os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


# --------------------------------------------------------------------------------------------------------- timing
@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run with n intra-op threads (None: leave as is), restoring the setting afterwards. One thread keeps timings
    steadier on a busy machine, where a multi-threaded kernel waits for whichever of its threads was descheduled."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
