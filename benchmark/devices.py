"""Which GPU a job trains on.

Under a scheduler that hands each job its own GPUs (Slurm sets ``CUDA_VISIBLE_DEVICES`` for the allocation), the
job's first visible device is its own. On one machine with several GPUs and no such scheduler (``snakemake
--resources gpu=4`` runs four jobs at once), each job claims a device no other job holds: an exclusive lock on
``<lock dir>/gpu<k>.lock``, held until the process ends (the kernel drops it even when the job is killed).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

#: lock files held by this process (kept open: closing one would release its device)
_HELD: dict[int, int] = {}


def lock_dir() -> Path:
    return Path(os.environ.get("MMBENCH_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"mmbench-gpus-{os.getuid()}")


def scheduler_assigned() -> bool:
    """True where a scheduler has narrowed the visible GPUs to this job's allocation."""
    return bool(os.environ.get("SLURM_JOB_ID")) and "CUDA_VISIBLE_DEVICES" in os.environ


def claim_gpu(count: int, locks: Path | None = None) -> int:
    """The index of a GPU among ``count`` visible ones that no other job on this machine holds (this process keeps
    the one it claimed). All held: the lowest index, shared (more jobs than GPUs were started)."""
    if _HELD:
        return next(iter(_HELD))
    if count <= 1 or scheduler_assigned():
        return 0
    folder = Path(locks or lock_dir())
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        fd = os.open(folder / f"gpu{k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[k] = fd
        return k
    return 0


def release_gpus() -> None:
    """Give up the claimed device (tests; a job keeps its claim until it exits)."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
