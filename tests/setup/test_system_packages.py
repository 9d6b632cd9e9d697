"""scripts/ensure-debian-packages, which `make run` and `make test` call first: installs what is
missing as root or with password-less sudo, else stops with the exact command. Run against stub
`dpkg-query`, `id`, `sudo` and `apt-get` on PATH, so no package is touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/ensure-debian-packages"

STUBS = {
    # installed packages: $STUB_INSTALLED (space-separated)
    "dpkg-query": 'for p in $STUB_INSTALLED; do [ "$p" = "${@: -1}" ] && { printf "install ok installed"; exit 0; }; done; exit 1',
    "id": 'echo "$STUB_UID"',
    # `sudo -n true` succeeds only with STUB_SUDO=ok; `sudo CMD...` logs "sudo" and runs CMD
    "sudo": '[ "$STUB_SUDO" = ok ] || exit 1; [ "$1" = -n ] && exit 0; echo sudo >> "$STUB_LOG"; exec "$@"',
    "apt-get": 'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$STUB_LOG"',
}


@pytest.fixture
def run(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def _run(*packages: str, installed: str = "", uid: int = 0, sudo: str = "no", path: str | None = None):
        env = {"PATH": path or f"{stubs}:{os.environ['PATH']}", "STUB_INSTALLED": installed, "STUB_UID": str(uid),
               "STUB_SUDO": sudo, "STUB_LOG": str(log)}
        proc = subprocess.run([str(SCRIPT), *packages], env=env, capture_output=True, text=True, timeout=30)
        return proc, log.read_text().splitlines() if log.exists() else []

    return _run


def test_nothing_missing_installs_nothing(run):
    proc, calls = run("fortunes", "bubblewrap", installed="fortunes bubblewrap", uid=1000)
    assert proc.returncode == 0 and calls == []


def test_root_installs_only_what_is_missing(run):
    proc, calls = run("fortunes", "fortunes-min", "bubblewrap", installed="fortunes")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["apt-get update -qq DEBIAN_FRONTEND=noninteractive",
                     "apt-get install -y -qq fortunes-min bubblewrap DEBIAN_FRONTEND=noninteractive"]


def test_a_user_with_passwordless_sudo_installs_through_sudo(run):
    proc, calls = run("fortunes", uid=1000, sudo="ok")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["sudo", "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
                     "sudo", "apt-get install -y -qq fortunes DEBIAN_FRONTEND=noninteractive"]


def test_a_user_who_cannot_install_gets_the_exact_command_and_a_failure(run):
    proc, calls = run("dataset-fashion-mnist", "fortunes", installed="fortunes", uid=1000)
    assert proc.returncode == 1 and calls == []
    assert "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n" in proc.stderr


def test_the_check_can_be_skipped_and_is_harmless_off_debian(run, tmp_path):
    env = {**os.environ, "FDA_BENCH_SKIP_SYSTEM_PACKAGES": "1"}
    assert subprocess.run([str(SCRIPT), "no-such-package-xyz"], env=env).returncode == 0
    # no dpkg-query on PATH: a note, not a failure (the jobs name a missing asset themselves)
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("bash", "env"):
        (bare / tool).symlink_to(subprocess.check_output(["bash", "-c", f"command -v {tool}"], text=True).strip())
    proc, calls = run("fortunes", path=str(bare))
    assert proc.returncode == 0 and calls == [] and "not a Debian-based system" in proc.stderr


def test_make_checks_packages_before_anything_else():
    """`make run` and `make test` name the check as their first prerequisite (before the venv)."""
    for target, wanted in (("run", "dataset-fashion-mnist fortunes fortunes-min"), ("test", "fortunes-min bubblewrap")):
        out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        first = out.splitlines()[0]
        assert first.startswith("scripts/ensure-debian-packages ") and wanted in first, out
