"""Progress of a long FDA job where the user is looking: one line per block and, in between, at
most one line every few seconds, each with an estimate of the time left for the job.

The workflow's rules send a job's stdout and stderr to its log; they open fd 3 on the console
first (``3>&2``) and pass ``--progress-fd 3``, so these lines reach the terminal that runs
Snakemake (on SLURM: the job's SLURM log) while everything else stays in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TextIO

#: seconds between two in-block lines of one job (block ends are always reported)
DEFAULT_EVERY = 15.0


def duration(seconds: float) -> str:
    """``95`` -> ``"1m35s"``; ``3725`` -> ``"1h02m"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class JobProgress:
    """Progress over the blocks one job computes (cached blocks excluded: they take no time).

    ``step(block)`` returns the ``on_step(done, total)`` callback for one block (what
    :func:`fda.construct_block` and :func:`fda.adapt_block` accept); ``finished(block)`` reports
    its end. Time left = time so far × (work left / work done), work counted in blocks, a block's
    share by its ``done / total``.
    """

    def __init__(self, label: str, blocks: Sequence[int], stream: TextIO | None, *, every: float = DEFAULT_EVERY,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.label, self.blocks, self.stream, self.every, self.clock = label, list(blocks), stream, every, clock
        self.start = clock()
        self.last = self.start  # the first in-block line after `every` seconds: an estimate needs some work done
        self.done_blocks = 0

    def _line(self, text: str, fraction: float) -> None:
        now = self.clock()
        elapsed = now - self.start
        left = f", ~{duration(elapsed * (1 - fraction) / fraction)} left" if fraction > 0 else ""
        self.last = now
        print(f"{self.label}: {text} · {fraction:.0%} after {duration(elapsed)}{left}", file=self.stream, flush=True)

    def step(self, block: int) -> Callable[[int, int], None] | None:
        """The callback for ``block``'s steps (None without a stream: no overhead at all)."""
        if self.stream is None:
            return None
        position = f"block {block} ({self.blocks.index(block) + 1}/{len(self.blocks)})"

        def on_step(done: int, total: int) -> None:
            if total and done < total and self.clock() - self.last >= self.every:
                self._line(f"{position}, step {done}/{total}", (self.done_blocks + done / total) / len(self.blocks))

        return on_step

    def finished(self, block: int) -> None:
        """Report the end of ``block``."""
        self.done_blocks += 1
        if self.stream is not None:
            position = f"block {block} ({self.blocks.index(block) + 1}/{len(self.blocks)})"
            self._line(f"{position} done", self.done_blocks / len(self.blocks))
