"""Device, mixed precision and distributed set-up, decided once, in one place.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group is initialised here: NCCL on CUDA
(one GPU per local rank), gloo on CPU. Everything else asks the `Runtime` (`is_main`, `autocast()`,
`all_gather`) instead of looking at the environment, so single-process and DDP runs share one code path.
Only rank 0 logs, draws progress bars and writes files.

A step never waits for the device on its own: the running loss stays on the device (`RunningMean`, read once
per log interval), AdamW runs as one fused kernel where torch has one (`make_adamw`), and cuDNN picks its
fastest convolution for the fixed crop shapes (`cudnn.benchmark`, CUDA only). On Linux the C allocator keeps
the blocks a step frees for the next step (`keep_freed_memory`) instead of handing them back to the OS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from lumbar.core.progress import print_line


@dataclass
class Runtime:
    """Where and how this process trains.

    Attributes:
        device: the torch device of this process.
        amp_dtype: autocast dtype on CUDA (`amp_dtype_for`: bfloat16 from compute capability 8.0, float16
        where
            the GPU has native half arithmetic), None when AMP is off or the GPU has neither.
        channels_last: use channels-last memory formats (CUDA only).
        cpu_channels_last: on CPU, channels-last for the models that ask for it there (`cpu_channels_last`
            attribute, set where it was measured faster, e.g. cnn3d; see `memory_format`).
        rank, world_size, local_rank: distributed coordinates (0, 1, 0 in a single process).
        previous_threads: torch's CPU thread count before `setup_runtime` changed it (restored at teardown).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    previous_threads: int = 0
    cpu_channels_last: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and saves."""
        return self.rank == 0

    @property
    def precision(self) -> str:
        """What this process computes in, for logs and records (`precision_name`)."""
        return precision_name(self.device, self.amp_dtype)

    @property
    def needs_scaler(self) -> bool:
        """fp16 autocast needs loss scaling; bf16 does not."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def memory_format(self, model: torch.nn.Module) -> torch.memory_format | None:
        """The memory format `model` runs in here (None: contiguous): its own channels-last format on CUDA
        when
        `channels_last`; on CPU only when the model says channels-last is faster there
        (`cpu_channels_last`)."""
        while hasattr(model, "module"):  # DDP or EMA wrappers
            model = model.module
        wanted = getattr(model, "memory_format", torch.channels_last_3d)
        if self.channels_last:
            return wanted
        if (
            self.cpu_channels_last
            and self.device.type == "cpu"
            and getattr(model, "cpu_channels_last", False)
        ):
            return wanted
        return None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, obj):
        """Every rank's `obj`, in rank order (a one-element list in a single process)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cpu"/"cuda"/"cuda:N" as given (CUDA must exist)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


def setup_runtime(
    device: str = "auto",
    amp: bool = True,
    channels_last: bool = True,
    threads: int = 0,
    benchmark: bool = True,
) -> Runtime:
    """Decide device, AMP, CPU threads and distributed mode; initialise the process group under torchrun.

    Args:
        device: "auto", "cpu" or "cuda".
        amp: mixed precision when on CUDA (ignored on CPU, where it is slower and less exact).
        channels_last: channels-last memory format on CUDA; on CPU for the models measured faster with it.
        threads: torch CPU threads (0 = leave torch's setting).
        benchmark: on CUDA, let cuDNN time its convolution algorithms once per input shape and keep the
        fastest
            (`torch.backends.cudnn.benchmark`): the crops have one fixed shape, so it is timed once.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world_size > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    on_cuda = dev.type == "cuda"
    amp_dtype = None
    if on_cuda:
        check_gpu_supported(dev)
        amp_dtype = amp_dtype_for(torch.cuda.get_device_capability(dev)) if amp else None
    if on_cuda and benchmark:
        torch.backends.cudnn.benchmark = True
    keep_freed_memory()
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    runtime = Runtime(
        dev,
        amp_dtype,
        channels_last and on_cuda,
        rank,
        world_size,
        local_rank,
        previous,
        cpu_channels_last=channels_last and dev.type == "cpu",
    )
    if runtime.is_main:
        _announce(runtime.precision)
    return runtime


#: Compute capabilities with full-rate float16 arithmetic below 7.0 (Jetson TX1, P100, Jetson TX2); the
#: consumer Pascal cards (6.1: GTX 10xx, P4, P40) compute float16 at 1/64 of the float32 rate.
_NATIVE_FP16_BELOW_7 = ((5, 3), (6, 0), (6, 2))


def amp_dtype_for(capability: tuple[int, int]) -> torch.dtype | None:
    """The autocast dtype a GPU of this compute capability computes natively, None for float32.

    bfloat16 from Ampere (8.0) on; below it `torch.cuda.is_bf16_supported()` also says yes where bfloat16 is
    only emulated (a T4, 7.5, or a V100, 7.0), several times slower than float16. float16 (with a GradScaler
    when training) where the GPU has full-rate half arithmetic; float32 elsewhere.
    """
    if capability >= (8, 0):
        return torch.bfloat16
    if capability >= (7, 0) or tuple(capability) in _NATIVE_FP16_BELOW_7:
        return torch.float16
    return None


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build compiled for `arch_list` (`torch.cuda.get_arch_list()`) runs on this GPU.

    A cubin for sm_XY runs on GPUs of the same major version and a minor version >= Y; PTX (compute_XY) is
    compiled at load time for any GPU of capability >= XY.
    """
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit() or len(number) < 2:
            continue
        a_major, a_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


class UnsupportedGPUError(RuntimeError):
    """The GPU is not among the architectures this torch build was compiled for."""


def check_gpu_supported(device: torch.device) -> None:
    """Raise `UnsupportedGPUError` with one line naming the GPU, its capability and what to choose instead."""
    capability = torch.cuda.get_device_capability(device)
    arch_list = torch.cuda.get_arch_list()
    if arch_list and not arch_supported(capability, arch_list):
        name = torch.cuda.get_device_name(device)
        raise UnsupportedGPUError(
            f"{name} (sm_{capability[0]}{capability[1]}) is not supported by this torch build "
            f"({torch.__version__}: {' '.join(arch_list)}): choose GPU T4 x2 (sm_75) or a newer GPU"
        )


def precision_name(device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """One line: the arithmetic a process uses and on what, e.g. `float16 autocast + GradScaler (Tesla T4,
    sm_75)`."""
    if device.type != "cuda":
        return f"float32 ({device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    where = f"{torch.cuda.get_device_name(device)}, sm_{major}{minor}"
    if amp_dtype is None:
        return f"float32 ({where})"
    scaler = " + GradScaler" if amp_dtype == torch.float16 else ""
    return f"{str(amp_dtype).removeprefix('torch.')} autocast{scaler} ({where})"


@functools.cache
def _announce(precision: str) -> None:
    """Print the precision once per process (a run sets its runtime up once per fold and per model)."""
    print_line(f"precision: {precision}")


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's allocator keep freed blocks of up to 32 MiB (and 256 MiB of free heap) for reuse; True if
    set.

    By default glibc returns large freed blocks to the OS at once, so every CPU training step maps its
    activations afresh and the kernel zeroes the pages again: on the demo's training (`cnn3d`,
    `timm25d:resnet18`, one thread) that cost 10-17 % of the CPU seconds, most of it system time; the numbers
    computed are the same. The freed memory stays with the process (up to the trim threshold). Once per
    process; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(
            libc.mallopt(m_trim_threshold, 256 * 2**20)
        )
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def teardown_runtime(runtime: Runtime) -> None:
    """Destroy the process group this module created and restore the thread count (safe in one process)."""
    torch.set_num_threads(runtime.previous_threads)
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on CPU also ask torch for deterministic algorithms.

    Sampling order and augmentation draw from generators derived from (seed, epoch, sample), not from these
    global states, so they do not depend on worker count or on where a resumed run restarted.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, as one fused kernel over all parameters where torch has one (CPU and CUDA, floating parameters).

    The default implementation runs a dozen small operations per parameter tensor; fused, a timm resnet18's
    step on the demo's CPU took 6 ms instead of 29 ms (`benchmarks/profile_step.py`). The update is AdamW's
    either way (rounding may differ in the last bits).
    """
    params = list(params)
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


class RunningMean:
    """A weighted mean of per-batch values kept on the device: `add` never waits for the device, `value` does.

    Summed in float64 as `float(value) * n` would be on the host, so the mean is exactly the one a Python loop
    of `total += float(loss) * len(x)` gives (the CPU numbers do not change), while on CUDA the step queues
    its kernels without a synchronisation; read it once per log interval and at the end of the epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.total = torch.zeros((), dtype=self.dtype, device=device)
        self.count = 0

    def add(self, value: torch.Tensor, n: int) -> None:
        self.total += value.detach().to(self.dtype) * n
        self.count += n

    def sum(self) -> float:
        """The weighted sum (waits for the device)."""
        return float(self.total)

    def value(self) -> float:
        """The mean so far (waits for the device); NaN before the first value."""
        return self.sum() / self.count if self.count else float("nan")
