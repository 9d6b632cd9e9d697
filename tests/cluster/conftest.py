"""A one-node SLURM cluster for the tests in this directory (tests/cluster/slurm-up, slurm-down).

The cluster needs the Debian packages `slurmctld slurmd slurm-client munge`, root, and the
executor plugin (`pip install -e ".[slurm]"`). Without them the tests skip, unless
FDA_BENCH_REQUIRE_SLURM=1 (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NEEDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
PLUGIN = "snakemake_executor_plugin_slurm"


@dataclass
class Cluster:
    dir: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str) -> str:
        """stdout of a SLURM client command against this cluster."""
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=30).stdout

    def controller_log(self) -> str:
        return (self.dir / "log/slurmctld.log").read_text(errors="replace")


def _missing() -> str | None:
    """Why a cluster cannot be brought up here, or None."""
    absent = [b for b in NEEDS if shutil.which(b) is None]
    if absent:
        return f"{', '.join(absent)} not found: apt-get install slurmctld slurmd slurm-client munge"
    if importlib.util.find_spec(PLUGIN) is None:
        return f'{PLUGIN} not installed: pip install -e ".[slurm]"'
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd starts jobs as their user)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Cluster:
    """A running one-node cluster; every daemon is stopped afterwards, whatever the tests did."""
    why = _missing()
    if why:
        if os.environ.get("FDA_BENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"FDA_BENCH_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    up = subprocess.run([str(HERE / "slurm-up"), str(root)], capture_output=True, text=True, timeout=120)
    if up.returncode != 0:  # slurm-up stopped what it had started
        pytest.fail(f"slurm-up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    try:
        yield Cluster(root, root / "slurm.conf")
    finally:
        subprocess.run([str(HERE / "slurm-down"), str(root)], timeout=120)
