"""What a finished ``fda-bench`` job used, reported by the job itself: one line on stderr (the
job's log), read back by the cost table (:mod:`fda.bench.report.cost`).

Snakemake's benchmark files sample a job's processes (every 0.5 s for its first 30 s, then every
30 s), so for a long job their ``cpu_time`` and ``max_rss`` miss what happened after the last
sample; the kernel's own counters (``getrusage``) do not. GPU memory is not in the benchmark
files at all: torch's peak allocation is reported when the job used CUDA.

    [fda-bench] resources {"cpu_s": 41.2, "max_rss_mb": 1210.5, "gpu_peak_mb": null}

Memory in MiB (2**20 bytes, Snakemake's "MB"); ``cpu_s`` is user + system time of the process
and its finished children; ``max_rss_mb`` is the process's own peak resident set.
"""

from __future__ import annotations

import json
import re
import resource
import sys
from pathlib import Path
from typing import Any

PREFIX = "[fda-bench] resources "
_LINE = re.compile(r"^\[fda-bench\] resources (\{.*\})\s*$", re.MULTILINE)


def gpu_peak_mb() -> float | None:
    """Peak memory torch allocated on the CUDA devices this process used (MiB, summed over
    devices), or None when it never initialised CUDA. Never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


def process_usage() -> dict[str, Any]:
    """``cpu_s`` (s), ``max_rss_mb`` and ``gpu_peak_mb`` (MiB, None without CUDA) so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_bytes = own.ru_maxrss if sys.platform == "darwin" else own.ru_maxrss * 1024  # macOS: bytes, Linux: KiB
    return {"cpu_s": round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 3),
            "max_rss_mb": round(rss_bytes / 2**20, 3),
            "gpu_peak_mb": None if (g := gpu_peak_mb()) is None else round(g, 3)}


def usage_line(usage: dict[str, Any] | None = None) -> str:
    """The line a job prints (:data:`PREFIX` + JSON)."""
    return PREFIX + json.dumps(process_usage() if usage is None else usage, sort_keys=True)


def parse_usage(text: str) -> dict[str, Any] | None:
    """The last resources line in ``text`` (a job's log), or None without one."""
    found = _LINE.findall(text)
    if not found:
        return None
    try:
        return json.loads(found[-1])
    except json.JSONDecodeError:
        return None


def read_usage(log: str | Path) -> dict[str, Any] | None:
    """:func:`parse_usage` of the log file ``log``; None when it does not exist."""
    path = Path(log)
    if not path.is_file():
        return None
    return parse_usage(path.read_text(errors="replace"))
