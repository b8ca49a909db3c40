"""Which process this is under torchrun, and the helpers that follow from it; needs nothing of kit.

    if is_main_process(): write_status(...)   # rank 0 only writes files and pushes
    print0("shard 3: starting")                # one log line, not one per GPU
    gpu_count()                                # CUDA devices visible here (0 on a CPU)

torchrun sets RANK and WORLD_SIZE for every process it starts; outside torchrun
this process is rank 0 of 1. The driver that starts torchrun is kit/launch.py.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only: one log, not one per GPU."""
    if is_main_process():
        print(*args, **kwargs)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
