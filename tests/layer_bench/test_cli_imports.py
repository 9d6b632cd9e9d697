"""What `fda-bench` commands import: every workflow job is a fresh process, so a module imported
needlessly is paid by every job. The light paths (help, the aggregation commands, building a
suite for a merge or FDA job) must not load the heavy libraries; each check runs in a fresh
interpreter and lists the packages in ``sys.modules`` afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: the model and data stack: only jobs that load a model or read a dataset may import these
MODEL_STACK = {"torch", "transformers", "safetensors", "datasets", "sklearn", "scipy"}


def loaded_after(code: str, cwd: Path = REPO) -> set[str]:
    """Run ``code`` in a fresh interpreter; the top-level packages and the ``fda.bench`` modules
    it left in ``sys.modules``."""
    probe = (
        f"{code}\n"
        "import json, sys\n"
        "print('MODULES=' + json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        " | {m for m in sys.modules if m.startswith('fda.bench.')})))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def run_cli(argv: list[str]) -> str:
    """Code that runs ``fda-bench ARGV`` in-process (``--help`` exits through SystemExit)."""
    return (
        "from fda.bench.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    status = stop.code\n"
        f"assert status in (0, None), ('fda-bench', {argv!r}, status)\n"
    )


def test_the_probe_sees_a_heavy_import():
    """The check can fail: a module that loads torch shows up as loading torch."""
    assert {"torch", "safetensors"} <= loaded_after("import fda.io.checkpoints")


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["merge", "--help"], ["cell", "--help"]])
def test_help_loads_no_library(argv):
    loaded = loaded_after(run_cli(argv))
    heavy = loaded & (MODEL_STACK | {"numpy", "pandas", "matplotlib", "yaml", "jsonschema"})
    assert not heavy, f"fda-bench {' '.join(argv)} imported {sorted(heavy)}"
    suites = {m for m in loaded if m.startswith(("fda.bench.suites", "fda.bench.report", "fda.bench.eval"))}
    assert not suites, f"fda-bench {' '.join(argv)} imported {sorted(suites)}"


def test_aggregation_commands_load_no_model_stack(tmp_path):
    """cell, aggregate, figures and construction-figures read CSV and JSON: pandas and matplotlib only."""
    header = "method,init,anchor_init,seed,task,metric,headline,value\n"
    (tmp_path / "individual.csv").write_text(header + "individual,,,0,x,accuracy,True,0.9\nindividual,,,0,y,accuracy,True,0.6\n")
    (tmp_path / "ta.csv").write_text(header + "ta,,,0,x,accuracy,True,0.45\nta,,,0,y,accuracy,True,0.3\n")
    log = {"suite": "minitext", "block": 0, "task": "x", "anchor_init": "gauss", "best_step": 1, "best_loss": 0.5,
           "steps": [0, 1], "loss": [1.0, 0.5], "cos_mean": [0.1, 0.3], "cos": {"w": [0.1, 0.3]},
           "unalignable": [], "sv_steps": [0], "singular_values": [[2.0, 1.0, 0.5]]}
    (tmp_path / "x.json").write_text(json.dumps(log))
    common = ["--individual", "individual.csv", "--expert-source", "finetuned-here", "--config-hash", "0123456789ab"]
    cells = ["minitext_individual.csv", "minitext_ta.csv"]
    code = "\n".join([
        run_cli(["cell", "--suite", "minitext", "--raw", "individual.csv", *common, "--out", cells[0]]),
        run_cli(["cell", "--suite", "minitext", "--raw", "ta.csv", *common, "--out", cells[1]]),
        run_cli(["aggregate", "--suite", "minitext", "--tasks", "x", "y", "--cells", *cells, "--out-dir", "tables"]),
        run_cli(["figures", "--suite", "minitext", "--tasks", "x", "y", "--cells", *cells, "--out-dir", "figures"]),
        run_cli(["construction-figures", "--suite", "minitext", "--anchor-init", "gauss", "--logs", "x.json",
                 "--out-dir", "figures"]),
    ])
    loaded = loaded_after(code, cwd=tmp_path)
    assert (tmp_path / "tables" / "minitext.csv").is_file() and (tmp_path / "figures" / "minitext-spectra-gauss.png").is_file()
    assert not loaded & MODEL_STACK, f"the aggregation commands imported {sorted(loaded & MODEL_STACK)}"


def test_building_a_suite_loads_no_data_or_model_library():
    """Merge and FDA jobs build their suite (merge layout, encoder class) but read no dataset and
    score nothing: no datasets, transformers, sklearn or pandas, and none of the other suites."""
    code = (
        "from fda.bench.suites import get_suite, suite_family, suite_settings_schema\n"
        "for name in ('minitext', 'minivision'):\n"
        "    suite = get_suite(name, {'preset': 'smoke'})\n"
        "    suite.qkv_layout, suite.tasks, suite_family(name), suite_settings_schema(name)\n"
    )
    loaded = loaded_after(code)
    heavy = loaded & {"datasets", "transformers", "sklearn", "scipy", "pandas"}
    assert not heavy, f"building the embedded suites imported {sorted(heavy)}"
    others = loaded & {"fda.bench.suites.clip_vision", "fda.bench.suites.glue", "fda.bench.suites.llama"}
    assert not others, f"building the embedded suites imported the paper suites' modules {sorted(others)}"
