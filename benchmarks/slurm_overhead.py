"""Per-job overhead of a workflow run on SLURM: what a SLURM job costs beyond its command.

From Snakemake's console output (the jobs it submitted and when it saw them finish), the
controller's log (submit, allocation and completion of each SLURM job; `SlurmctldDebug=info`, as
tests/cluster/slurm-up writes it) and the rules' benchmark files (each command's own wall time)::

    in job     allocated -> completed, minus the commands' own time: the job's two Snakemake
               start-ups (the sbatch script's and the srun step's each parse the workflow) and srun
    status     completed -> Snakemake reports it finished (the status polling interval); jobs
               that are not groups only (the console does not say which group is which SLURM job)
    queue      submitted -> allocated (on a busy or small cluster: waiting for a free CPU)

Markdown to stdout::

    python benchmarks/slurm_overhead.py RUN.log SLURMCTLD.log WORKDIR
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^\s*\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
# allocations come from the main scheduler (`sched: Allocate`) or the backfill one (`Started`)
_CTLD = re.compile(r"^\[(\S+)\] (?:_slurm_rpc_submit_batch_job: JobId=(\d+) "
                   r"|(?:sched: Allocate|sched/backfill: _start_job: Started) JobId=(\d+) "
                   r"|_job_complete: JobId=(\d+) done)")


def parse_console(text: str) -> dict:
    """What a run's console says: {"submitted": {job: slurm id} (job: Snakemake's id, a UUID for
    a group), "benchmarks": [files of submitted rules' jobs, group members included],
    "finished": {job id: time}, "local": count of local jobs}."""
    out = {"submitted": {}, "benchmarks": [], "finished": {}, "local": 0}
    stamp = None
    rule = None
    for line in text.splitlines():
        if m := _STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        if m := re.match(r"^\s*(local)?rule (\S+):$", line):
            rule = None if m.group(1) else m.group(2)
            out["local"] += bool(m.group(1))
        elif (m := re.match(r"^\s+benchmark: (\S+)$", line)) and rule:
            out["benchmarks"].append(m.group(1))
        elif m := re.match(r"^Job (\S+) has been submitted with SLURM jobid (\d+)", line):
            out["submitted"][m.group(1)] = m.group(2)  # a retry replaces the first attempt
        elif m := re.match(r"^Finished jobid: (\S+)", line):
            out["finished"][m.group(1)] = stamp
    return out


def parse_controller(text: str) -> dict[str, dict[str, datetime]]:
    """SLURM job id -> {submit, start, end} from slurmctld's log."""
    out: dict[str, dict[str, datetime]] = {}
    for line in text.splitlines():
        if m := _CTLD.match(line):
            when = datetime.fromisoformat(m.group(1))
            for key, group in (("submit", 2), ("start", 3), ("end", 4)):
                if m.group(group):
                    out.setdefault(m.group(group), {})[key] = when
    return out


def overhead(console: str, controller: str, workdir: Path) -> dict:
    """Totals and medians in seconds over the run's SLURM jobs (see the module doc)."""
    run = parse_console(console)
    ctld = parse_controller(controller)
    jobs = [ctld[s] for s in run["submitted"].values() if {"submit", "start", "end"} <= ctld.get(s, {}).keys()]
    own = 0.0
    for path in run["benchmarks"]:
        with (workdir / path).open() as fh:
            own += float(next(csv.DictReader(fh, delimiter="\t"))["s"])
    status = [
        max(0.0, (run["finished"][job] - ctld[s]["end"].replace(microsecond=0)).total_seconds())
        for job, s in run["submitted"].items()
        if job in run["finished"] and "end" in ctld.get(s, {})  # plain jobs: finished under their own id
    ]
    in_slurm = sum((j["end"] - j["start"]).total_seconds() for j in jobs)
    return {
        "slurm_jobs": len(jobs),
        "rule_jobs": len(run["benchmarks"]),
        "local_jobs": run["local"],
        "own_s": own,
        "in_job_s": in_slurm - own,
        "in_job_per_slurm_job_s": (in_slurm - own) / max(1, len(jobs)),
        "status_median_s": statistics.median(status) if status else float("nan"),
        "queue_median_s": statistics.median((j["start"] - j["submit"]).total_seconds() for j in jobs) if jobs else 0.0,
    }


def summary(o: dict) -> str:
    return (f"{o['slurm_jobs']} SLURM jobs for {o['rule_jobs']} rule jobs (+{o['local_jobs']} local); "
            f"commands' own time {o['own_s']:.0f} s; overhead inside SLURM jobs {o['in_job_s']:.0f} s "
            f"({o['in_job_per_slurm_job_s']:.1f} s per SLURM job); status poll latency median "
            f"{o['status_median_s']:.0f} s; queue wait median {o['queue_median_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("console", type=Path, help="snakemake's console output (stdout and stderr)")
    ap.add_argument("controller", type=Path, help="slurmctld's log")
    ap.add_argument("workdir", type=Path, help="the run's working directory (for logs/benchmarks)")
    args = ap.parse_args(argv)
    o = overhead(args.console.read_text(errors="replace"), args.controller.read_text(errors="replace"), args.workdir)
    if not o["slurm_jobs"]:
        print("no finished SLURM jobs found", file=sys.stderr)
        return 1
    print(summary(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
