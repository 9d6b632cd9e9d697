"""The layer rule of docs/ARCHITECTURE.md: the import-linter contracts in pyproject.toml hold, a
break of them is caught, and importing the method stays light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` (its pyproject.toml holds the contracts)."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: install the project's test dependencies (import-linter)")
    # --no-cache: a cached graph of another tree must never answer for this one
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


@pytest.mark.parametrize(
    "module,injected,contract",
    [
        ("fda/anchors.py", "import fda.bench.gpu", "fda: the harness (bench) over the method"),
        ("fda/io/atomic.py", "import fda.api", "fda: the harness (bench) over the method"),
        ("baselines/ta.py", "import fda.io.atomic", "baselines imports neither"),
        ("fda/blocks.py", "import pandas", "the method and fda.io stay light"),
        ("fda/io/stream_source.py", "import fda.io.streaming", "no import cycles"),
    ],
)
def test_a_broken_layer_rule_is_caught(tmp_path, module, injected, contract):
    """The check can fail: one forbidden import in a copy of the packages breaks its contract."""
    for name in ("fda", "baselines"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{injected}  # injected by the test\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert contract in proc.stdout.split("Broken contracts")[-1], proc.stdout[-3000:]


HEAVY = ("pandas", "matplotlib", "snakemake", "datasets", "sklearn")


def test_importing_the_method_stays_light():
    """``import fda`` and the method's public API pull in none of the harness's libraries."""
    code = (
        "import sys, fda\n"
        "for name in ('merge', 'FDAConfig', 'construct_block', 'adapt_block', 'assemble', 'adapter_for'):\n"
        "    getattr(fda, name)\n"
        "import fda.streamed, fda.io.streaming, fda.io.checkpoints\n"
        f"heavy = {HEAVY!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m == 'fda.bench' or m.startswith('fda.bench.'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"importing the method imported: {proc.stdout.strip()}"
