"""Progress lines of the coarse FDA jobs (fda.bench.progress), on a fake clock."""

from __future__ import annotations

import io

import pytest

from fda.bench.cli.common import UsageError
from fda.bench.cli.fda_jobs import open_progress_fd
from fda.bench.progress import JobProgress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_duration_reads_as_minutes_and_hours():
    assert [duration(s) for s in (0, 59.4, 95, 3599, 3725)] == ["0s", "59s", "1m35s", "59m59s", "1h02m"]


def test_lines_per_block_and_throttled_steps_with_the_time_left():
    out, clock = io.StringIO(), Clock()
    progress = JobProgress("fda-construct minitext seed0 gauss", [3, 4], out, every=10, clock=clock)
    on_step = progress.step(3)
    for done in range(1, 5):  # 4 steps of 5 s each: a line after 10 s, none before
        clock.now += 5
        on_step(done, 8)
    clock.now += 20
    on_step(8, 8)  # the last step is the block's end, reported by finished()
    progress.finished(3)
    lines = out.getvalue().splitlines()
    # after 10 s, 2 of 8 steps of block 1 of 2 = 12.5% done: 70 s left at that rate
    assert lines == [
        "fda-construct minitext seed0 gauss: block 3 (1/2), step 2/8 · 12% after 10s, ~1m10s left",
        "fda-construct minitext seed0 gauss: block 3 (1/2), step 4/8 · 25% after 20s, ~1m00s left",
        "fda-construct minitext seed0 gauss: block 3 (1/2) done · 50% after 40s, ~40s left",
    ]
    progress.step(4)(1, 8)  # within 10 s of the last line: nothing
    clock.now += 40
    progress.finished(4)
    assert out.getvalue().splitlines()[-1] == "fda-construct minitext seed0 gauss: block 4 (2/2) done · 100% after 1m20s, ~0s left"


def test_no_stream_means_no_callback():
    progress = JobProgress("job", [0], None)
    assert progress.step(0) is None
    progress.finished(0)  # nothing to write to: no error


def test_a_closed_fd_is_a_usage_error_naming_the_fix():
    assert open_progress_fd(None) is None
    with pytest.raises(UsageError, match=r"--progress-fd 97: .*not open.*`97>&2`"):
        open_progress_fd(97)
