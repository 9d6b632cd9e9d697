"""The shipped SLURM profile against a real one-node cluster (conftest.py, slurm-up):

- the smoke workflow's minivision cells run through `--workflow-profile workflow/profiles/slurm`
  as shipped, every non-local job submitted with sbatch and sized by its rule (one CPU on the
  embedded suites), and are the same, byte for byte, as the local smoke run's;
- a job that exits non-zero is tried twice (`retries: 1`), then the run ends with an error naming
  its rule and SLURM job, instead of hanging;
- a job cancelled with scancel is tried once more; cancelled again, the run fails saying so, and a
  rerun submits only what is missing.

Per-job overhead of the smoke run (benchmarks/slurm_overhead.py) is printed, not asserted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_workflow import ENV, ROOT, SNAKEMAKE  # tests/layer_bench, on sys.path by tests/conftest.py

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PROFILE = ROOT / "workflow/profiles/slurm"


def run_snakemake(cluster, *args: str, cwd: Path, snakefile: Path = ROOT / "Snakefile", timeout: float = 1500,
                  popen: bool = False):
    """snakemake with the shipped SLURM profile (and nothing else) against ``cluster``.

    A run that outlives ``timeout`` is a hang (the failure this profile fixes): its whole process
    group is killed and the test fails with the output so far."""
    cmd = [SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(cwd), "--workflow-profile", str(PROFILE),
           *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**ENV, "SLURM_CONF": str(cluster.conf)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if popen:
        return proc
    return finish(proc, timeout)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"snakemake still running after {timeout:.0f} s (hung?):\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def submissions(console: str) -> dict[str, list[str]]:
    """Rule name -> SLURM job ids it was submitted as, from snakemake's console (plain jobs)."""
    rule_of = {m.group(2): m.group(1) for m in re.finditer(r"^rule (\S+):\n(?:\s+\w+: .*\n)*?\s+jobid: (\d+)$",
                                                           console, re.M)}
    out: dict[str, list[str]] = {}
    for job, slurm_id in re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", console, re.M):
        out.setdefault(rule_of[job], []).append(slurm_id)
    return out


# ---------------------------------------------------------------- the smoke workflow


def test_smoke_workflow_on_slurm_writes_the_local_runs_cells(slurm_cluster, smoke_run, tmp_path):
    local, local_seconds, _ = smoke_run  # the session's local smoke run (tests/conftest.py)
    # One suite's cells: minivision's smoke run takes every kind of job (data, base, experts, merges
    # and their groups, validated grids, FDA construction, adaptation and its validated grid,
    # evaluation, cells) through the same rules as minitext's; both would double the test's minutes.
    cells = sorted(p.name for p in (local / "results").glob("minivision_*.csv"))
    start = time.monotonic()
    proc = run_snakemake(slurm_cluster, *[f"results/{c}" for c in cells], "--config", "smoke=true", cwd=tmp_path)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Using workflow specific profile" in proc.stdout and "profiles/default" not in proc.stdout

    # every job but the local rules went through sbatch, once (a group of jobs as one), and
    # completed on the cluster
    console = proc.stdout
    submitted = dict(re.findall(r"^Job (\S+) has been submitted with SLURM jobid (\d+)", console, re.M))
    plain = re.findall(r"^rule \S+:$", console, re.M)  # group members are indented
    groups = re.findall(r"Group job (\S+) \(jobs", console)
    assert plain and "merge_eval" in groups and len(submitted) == len(plain) + len(groups)
    log = slurm_cluster.controller_log()
    for slurm_id in submitted.values():
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={slurm_id} ", log), slurm_id
        assert re.search(rf"_job_complete: JobId={slurm_id} WEXITSTATUS 0$", log, re.M), slurm_id
    # each asked for its rule's threads (1 on the embedded suites), so they run side by side
    cpus = dict(re.findall(r"sched: Allocate JobId=(\d+) NodeList=\S+ #CPUs=(\d+)", log))
    assert {cpus[s] for s in submitted.values() if s in cpus} == {"1"}

    assert cells and sorted(p.name for p in (tmp_path / "results").glob("*.csv")) == cells
    for name in cells:
        assert (tmp_path / "results" / name).read_bytes() == (local / "results" / name).read_bytes(), name

    spec = importlib.util.spec_from_file_location("slurm_overhead", ROOT / "benchmarks/slurm_overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    print(f"\nsmoke run on SLURM: {seconds:.0f} s wall (local: {local_seconds:.0f} s); "
          + overhead.summary(overhead.overhead(console, log, tmp_path)))


# ---------------------------------------------------------------- failures

# A tiny workflow of its own: failures in seconds instead of after a smoke run's worth of jobs.
FLOW = """
localrules: all

rule all:
    input: "a.txt", "b.txt"

rule a:
    output: "a.txt"
    resources: mem_mb=100, runtime=5
    shell: "touch {output}"

rule slow:
    output: "slow.txt"
    resources: mem_mb=100, runtime=5
    # `hold` keeps it running until the test cancels it; `fail` makes it exit with status 3
    shell: "if [ -e fail ]; then echo slow fails >&2; exit 3; fi; if [ -e hold ]; then sleep 600; fi; touch {output}"

rule b:
    input: "slow.txt"
    output: "b.txt"
    resources: mem_mb=100, runtime=5
    shell: "cp {input} {output}"
"""


@pytest.fixture()
def flow(tmp_path) -> Path:
    (tmp_path / "Snakefile").write_text(FLOW)
    return tmp_path


def test_a_failing_job_ends_the_run_with_an_error_naming_it(slurm_cluster, flow):
    (flow / "fail").touch()
    proc = run_snakemake(slurm_cluster, cwd=flow, snakefile=flow / "Snakefile", timeout=300)
    out = proc.stdout
    assert proc.returncode != 0
    slow = submissions(out)["slow"]
    assert len(slow) == 2  # tried twice (retries: 1)
    assert re.search(rf"Error in rule slow:.*?SLURM-job '{slow[-1]}' failed, SLURM status is: 'FAILED'", out, re.S), out[-3000:]
    assert (flow / "a.txt").is_file() and not (flow / "b.txt").exists()  # keep-going: a ran


def _wait_running(cluster, rule: str, exclude: set[str], proc: subprocess.Popen, timeout: float = 120) -> str:
    """The SLURM id of a running job of ``rule`` (its comment names the rule) not in ``exclude``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake ended early"
        for line in cluster.run("squeue", "-h", "-t", "running", "-o", "%i|%k").splitlines():
            slurm_id, comment = line.split("|", 1)
            if comment == f"rule_{rule}" and slurm_id not in exclude:
                return slurm_id
        time.sleep(0.5)
    pytest.fail(f"no running job of rule {rule} after {timeout:.0f} s")


def test_scancel_is_retried_once_then_fails_and_a_rerun_submits_only_what_is_missing(slurm_cluster, flow):
    (flow / "hold").touch()
    proc = run_snakemake(slurm_cluster, cwd=flow, snakefile=flow / "Snakefile", popen=True)
    try:
        first = _wait_running(slurm_cluster, "slow", set(), proc)
        slurm_cluster.run("scancel", first)
        second = _wait_running(slurm_cluster, "slow", {first}, proc)  # the retry
        slurm_cluster.run("scancel", second)
    except BaseException:  # snakemake would wait for the held job: stop it (slurm-down cancels the job)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    done = finish(proc, 300)
    out = done.stdout
    assert done.returncode != 0
    assert submissions(out)["slow"] == [first, second]
    assert re.search(rf"Error in rule slow:.*?SLURM-job '{second}' failed, SLURM status is: 'CANCELLED'", out, re.S), out[-3000:]
    assert (flow / "a.txt").is_file() and not (flow / "slow.txt").exists()

    (flow / "hold").unlink()
    rerun = run_snakemake(slurm_cluster, cwd=flow, snakefile=flow / "Snakefile", timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert {rule: len(ids) for rule, ids in submissions(rerun.stdout).items()} == {"slow": 1, "b": 1}
    assert (flow / "b.txt").is_file()
