"""Pin one GPU per job on a local multi-GPU machine.

Snakemake counts a ``gpu`` resource but never says *which* GPU a job may use (snakemake#281).
With ``FDA_BENCH_GPU_SLOTS=0,1,2,3`` in the environment, every ``fda-bench`` command that may use
a GPU leases one free slot by taking an exclusive ``flock`` on ``<lock dir>/gpu<slot>.lock`` and
sets ``CUDA_VISIBLE_DEVICES`` to that slot before torch initialises CUDA. The kernel drops the
lock when the process exits, however it exits (a killed job frees its GPU). Run snakemake with
``--resources gpu=<number of slots>`` so there is always a free slot for a started job.

Nothing happens when ``FDA_BENCH_GPU_SLOTS`` is unset, or when ``CUDA_VISIBLE_DEVICES`` is
already set (SLURM and other schedulers set it themselves).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SLOTS_ENV = "FDA_BENCH_GPU_SLOTS"
LOCK_DIR_ENV = "FDA_BENCH_GPU_LOCK_DIR"
TIMEOUT_ENV = "FDA_BENCH_GPU_TIMEOUT"


class GPUSlotError(RuntimeError):
    """No GPU slot became free in time (more concurrent GPU jobs than slots?)."""


def configured_slots(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids from ``FDA_BENCH_GPU_SLOTS`` (comma-separated), empty when unset."""
    value = (env if env is not None else os.environ).get(SLOTS_ENV, "")
    return [s.strip() for s in value.split(",") if s.strip()]


def lock_dir(env: dict[str, str] | None = None) -> Path:
    env = env if env is not None else dict(os.environ)
    default = Path(tempfile.gettempdir()) / f"fda-bench-gpu-{os.getuid()}"
    return Path(env.get(LOCK_DIR_ENV, str(default)))


def try_lease(slots: list[str], directory: Path) -> tuple[str, IO[str]] | None:
    """Take the first free slot; return (slot, open lock file) or None if all are taken."""
    directory.mkdir(parents=True, exist_ok=True)
    for slot in slots:
        fh = open(directory / f"gpu{slot}.lock", "a+")  # noqa: SIM115 - kept open to hold the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        return slot, fh
    return None


@contextlib.contextmanager
def gpu_slot(timeout: float | None = None, poll: float = 0.5) -> Iterator[str | None]:
    """Lease a GPU slot for the duration of the block and export ``CUDA_VISIBLE_DEVICES``.

    Yields the slot id, or None when pinning is off (no slots configured, or the scheduler has
    already set ``CUDA_VISIBLE_DEVICES``). Waits up to ``timeout`` seconds (default
    ``$FDA_BENCH_GPU_TIMEOUT`` or 3600) for a slot, then raises ``GPUSlotError``.
    """
    slots = configured_slots()
    if not slots or os.environ.get("CUDA_VISIBLE_DEVICES"):
        yield None
        return
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, "3600"))
    directory = lock_dir()
    deadline = time.monotonic() + timeout
    lease = try_lease(slots, directory)
    while lease is None:
        if time.monotonic() > deadline:
            raise GPUSlotError(f"no free GPU among {SLOTS_ENV}={','.join(slots)} after {timeout:.0f} s "
                               f"(locks in {directory}); run snakemake with --resources gpu={len(slots)}")
        time.sleep(poll)
        lease = try_lease(slots, directory)
    slot, fh = lease
    os.environ["CUDA_VISIBLE_DEVICES"] = slot
    try:
        yield slot
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        fh.close()  # releases the flock
