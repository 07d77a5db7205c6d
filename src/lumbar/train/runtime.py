"""Device, mixed precision and distributed set-up, decided once, in one place.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group is initialised here: NCCL on CUDA
(one GPU per local rank), gloo on CPU. Everything else asks the `Runtime` (`is_main`, `autocast()`,
`all_gather`) instead of looking at the environment, so single-process and DDP runs share one code path.
Only rank 0 logs, draws progress bars and writes files.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Where and how this process trains.

    Attributes:
        device: the torch device of this process.
        amp_dtype: autocast dtype on CUDA (bfloat16 where supported, else float16), None when AMP is off.
        channels_last: use channels-last memory formats (CUDA only).
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

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and saves."""
        return self.rank == 0

    @property
    def needs_scaler(self) -> bool:
        """fp16 autocast needs loss scaling; bf16 does not."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

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
    """"auto" -> CUDA when available, else CPU; "cpu"/"cuda"/"cuda:N" as given (CUDA must exist)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


def setup_runtime(device: str = "auto", amp: bool = True, channels_last: bool = True, threads: int = 0) -> Runtime:
    """Decide device, AMP, CPU threads and distributed mode; initialise the process group under torchrun.

    Args:
        device: "auto", "cpu" or "cuda".
        amp: mixed precision when on CUDA (ignored on CPU, where it is slower and less exact).
        channels_last: channels-last memory format when on CUDA.
        threads: torch CPU threads (0 = leave torch's setting).
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
    if amp and on_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    return Runtime(dev, amp_dtype, channels_last and on_cuda, rank, world_size, local_rank, previous)


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
