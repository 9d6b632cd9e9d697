"""The Snakemake DAG: dry runs of both configs resolve every cell, a single-cell target resolves
to exactly its jobs, the lint is clean, and config errors stop snakemake before any job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fda.bench.config import load as cfg_load
from fda.bench.config import naming as cfg_names
from fda.bench.config import suite_views as cfg_views

ROOT = Path(__file__).resolve().parents[2]
_VENV_SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAKEMAKE = str(_VENV_SNAKEMAKE) if _VENV_SNAKEMAKE.exists() else shutil.which("snakemake") or "snakemake"
# jobs call `fda-bench`: take it from the interpreter running the tests (the venv need not be active)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def snakemake(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in ``cwd`` (a scratch directory)."""
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def parse_jobs(text: str) -> list[dict]:
    """Jobs of a dry run: [{"rule", "output": [...], "wildcards": {...}}], from the printed job list."""
    jobs: list[dict] = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", "\n" + text):
        m = re.match(r"\n?(?:local)?rule (\S+):\n", block)
        if not m:
            continue
        job = {"rule": m.group(1), "output": [], "wildcards": {}}
        out = re.search(r"^\s+output: (.*)$", block, re.M)
        if out:
            job["output"] = [o.strip() for o in out.group(1).split(",")]
        wcs = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        if wcs:
            job["wildcards"] = dict(kv.strip().split("=", 1) for kv in wcs.group(1).split(", "))
        jobs.append(job)
    return jobs


_CACHE: dict[tuple[str, ...], list[dict]] = {}


def dry_run(tmp: Path, *args: str) -> list[dict]:
    """Jobs of ``snakemake -n ARGS`` (cached per argument list: each run costs seconds)."""
    if args not in _CACHE:
        proc = snakemake("-n", "--workflow-profile", "none", *args, cwd=tmp)
        _CACHE[args] = parse_jobs(proc.stdout + proc.stderr)
    return _CACHE[args]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dag")


CASES = [
    ((), "config/config.yaml", "coarse"),  # no --configfile: the default config
    (("--configfile", str(ROOT / "config/paper.yaml")), "config/paper.yaml", "fine"),
    (("--configfile", str(ROOT / "config/paper.yaml"), "--config", "fda_jobs=coarse"), "config/paper.yaml", "coarse"),
]


@pytest.mark.parametrize("args, configfile, fda_jobs", CASES, ids=["default", "paper-fine", "paper-coarse"])
def test_dry_run_resolves_every_cell(scratch, args, configfile, fda_jobs):
    jobs = dry_run(scratch, *args)
    outputs = {o for j in jobs for o in j["output"]}
    config = cfg_load.load_config([ROOT / configfile], [f"fda_jobs={fda_jobs}"])
    # exactly the configured suites: --configfile replaces the default suites, it does not extend them
    assert {j["wildcards"].get("suite") for j in jobs} - {None} == set(config["suites"])
    for cell in cfg_names.cells(config):
        assert cell in outputs, cell
    for suite in config["suites"]:
        assert f"results/tables/{suite}-paper.md" in outputs
        assert f"results/figures/{suite}-spectra-weight.pdf" in outputs
        # the cost table and the accuracy-vs-cost figure (rule costs; its inputs, the jobs' benchmark
        # files, resolve to the jobs that write them or the dry run would fail)
        for out in (f"results/costs/{suite}.csv", f"results/tables/{suite}-cost.md", f"results/figures/{suite}-cost.pdf"):
            assert out in outputs, out
    rules = Counter(j["rule"] for j in jobs)
    assert rules["all"] == 1
    assert rules["costs"] == len(config["suites"])
    suites = config["suites"]
    assert rules["cell"] == sum(len(s["methods"]) for s in suites.values())
    assert rules["cell_fda"] == sum(len(s["fda"]["inits"]) for s in suites.values())
    # streaming (LLM) suites run llm.smk's rules, the others the in-memory ones
    llm = cfg_views.streaming_suites(config)
    in_memory = [s for s in config["suites"] if s not in llm]
    baselines_of = {n: len([m for m in s["methods"] if m in cfg_names.BASELINE_METHODS]) for n, s in suites.items()}
    variants = {n: len(s["fda"]["inits"]) * len(s["fda"]["anchor_inits"]) for n, s in suites.items()}  # (init, anchor init)
    assert rules["merge_baseline"] == sum(baselines_of[n] for n in in_memory)
    assert rules["llm_merge"] == sum(baselines_of[n] for n in llm)
    # anchors are shared by the four inits: construction never depends on the init
    construct = [j for j in jobs if j["rule"].startswith(("fda_construct", "llm_construct"))]
    assert all("init" not in j["wildcards"] for j in construct)
    per_block = {n: len(s["tasks"]) * s["fda"]["n_blocks"] * 2 for n, s in config["suites"].items()}
    blocks = {n: s["fda"]["n_blocks"] for n, s in config["suites"].items()}
    # streaming suites: one job per (layer, expert) and per layer whatever fda_jobs says
    assert rules["llm_construct"] == sum(per_block[n] for n in llm)
    assert rules["llm_adapt"] == sum(blocks[n] * variants[n] for n in llm)
    assert rules["llm_assemble"] == sum(variants[n] for n in llm)
    if fda_jobs == "fine":
        assert rules["fda_construct"] == sum(per_block[n] for n in in_memory)
        assert rules["fda_adapt_block"] == sum(blocks[n] * variants[n] for n in in_memory)
        assert rules["fda_assemble"] == sum(variants[n] for n in in_memory)
    else:
        assert sum(v for r, v in rules.items() if r.startswith("fda_construct_")) == 2 * len(in_memory)
        assert rules["fda_adapt"] == sum(variants[n] for n in in_memory)


def test_single_cell_resolves_to_exactly_its_jobs(scratch):
    jobs = dry_run(scratch, "results/vitb16_wudi_fda.csv", "--configfile", str(ROOT / "config/paper.yaml"))
    rules = Counter(j["rule"] for j in jobs)
    tasks, blocks = 8, 12
    assert rules == Counter({
        "prepare_data": 1, "prepare_base": 1, "prepare_expert": tasks,
        "evaluate_reference": 1,                    # individual (for `normalized`), not pretrained
        "merge_baseline": 1,                        # the wudi init only
        "fda_construct": tasks * blocks * 2,        # (block, expert) x 2 anchor inits (paper: fda_jobs fine)
        "fda_adapt_block": blocks * 2, "fda_assemble": 2, "evaluate_fda": 2, "cell_fda": 1,
    })
    assert {j["wildcards"]["suite"] for j in jobs if j["wildcards"]} == {"vitb16"}
    assert {j["wildcards"]["baseline"] for j in jobs if j["rule"] == "merge_baseline"} == {"wudi"}
    assert {j["wildcards"]["reference"] for j in jobs if j["rule"] == "evaluate_reference"} == {"individual"}
    assert {j["wildcards"]["init"] for j in jobs if "init" in j["wildcards"]} == {"wudi"}
    assert [j["output"] for j in jobs if j["rule"] == "cell_fda"] == [["results/vitb16_wudi_fda.csv", "results/vitb16_wudi_fda.npz"]]


def test_baseline_cell_needs_no_fda(scratch):
    jobs = dry_run(scratch, "results/minitext_ta.csv")
    rules = Counter(j["rule"] for j in jobs)
    assert set(rules) == {"prepare_data", "prepare_base", "prepare_expert", "merge_baseline",
                          "evaluate_baseline", "evaluate_reference", "cell"}
    assert rules["prepare_expert"] == 8 and rules["merge_baseline"] == 1


def test_smoke_config_shrinks_the_dag(scratch):
    jobs = dry_run(scratch, "--config", "smoke=true")
    full = dry_run(scratch)
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    smoke = {name: s["smoke_overrides"] for name, s in config["suites"].items()}
    experts = [j for j in jobs if j["rule"] == "prepare_expert"]
    assert len(experts) == sum(len(s["tasks"]) for s in smoke.values())
    adapt = [j for j in jobs if j["rule"] == "fda_adapt"]  # coarse: one job per (init, anchor init)
    assert len(adapt) == sum(len(s["fda"]["inits"]) * len(s["fda"]["anchor_inits"]) for s in smoke.values())
    assert len(jobs) < len(full)


def test_expert_seeds_multiply_what_depends_on_the_experts(scratch):
    """`--config fda_seeds=[0,1] expert_seeds=[0,1]` (two --config items, as `make run-seeds` passes
    them): experts, merges and evaluations per expert seed, FDA per (expert seed, FDA seed); data
    and base once; one cell per method, gathering both expert seeds."""
    jobs = dry_run(scratch, "--config", "fda_seeds=[0,1]", "expert_seeds=[0,1]")
    one = Counter(j["rule"] for j in dry_run(scratch))
    rules = Counter(j["rule"] for j in jobs)
    for rule in ("prepare_data", "prepare_base", "cell", "cell_fda", "tables", "figures", "costs", "construction_figures"):
        assert rules[rule] == one[rule], rule
    for rule in ("prepare_expert", "merge_baseline", "evaluate_reference", "evaluate_baseline"):
        assert rules[rule] == 2 * one[rule], rule
    for rule in ("fda_construct_minitext", "fda_construct_minivision", "fda_adapt", "evaluate_fda"):
        assert rules[rule] == 4 * one[rule], rule  # 2 expert seeds x 2 FDA seeds
    for j in jobs:
        if j["rule"] in ("prepare_expert", "merge_baseline", "fda_adapt", "evaluate_fda", "evaluate_baseline"):
            e, suite = j["wildcards"]["eseed"], j["wildcards"]["suite"]
            assert e in ("0", "1") and all(o.startswith(f"work/{suite}/eseed{e}/") for o in j["output"]), j
    assert "work/minitext/eseed1/experts/tech" in {o for j in jobs for o in j["output"]}
    assert "work/minitext/data" in {o for j in jobs for o in j["output"]}


def test_a_cell_gathers_every_expert_seed(scratch):
    jobs = dry_run(scratch, "results/minitext_ta_fda.csv", "--config", "expert_seeds=[0,1]")
    rules = Counter(j["rule"] for j in jobs)
    anchor_inits = len(cfg_load.load_config([ROOT / "config/config.yaml"])["suites"]["minitext"]["fda"]["anchor_inits"])
    assert rules["cell_fda"] == 1 and rules["evaluate_fda"] == 2 * anchor_inits and rules["merge_baseline"] == 2
    assert {j["wildcards"]["reference"] for j in jobs if j["rule"] == "evaluate_reference"} == {"individual"}
    assert rules["evaluate_reference"] == 2  # each expert seed's individual experts, for `normalized`
    baseline = Counter(j["rule"] for j in dry_run(scratch, "results/minitext_ta.csv", "--config", "expert_seeds=[0,1]"))
    assert baseline["cell"] == 1 and baseline["evaluate_baseline"] == 2 and baseline["prepare_expert"] == 16


def test_cell_names_parse_one_way(scratch):
    # "wudi_fda" can only be the FDA cell: `method` never contains an underscore
    jobs = dry_run(scratch)
    producers = [j["rule"] for j in jobs if "results/minitext_wudi_fda.csv" in j["output"]]
    assert producers == ["cell_fda"]
    proc = snakemake("-n", "--workflow-profile", "none", "results/minitext_foo.csv", cwd=scratch, check=False)
    assert proc.returncode != 0


def test_lint_is_clean(scratch):
    for args in ([], ["--configfile", str(ROOT / "config/paper.yaml")]):
        proc = snakemake("--lint", "--workflow-profile", "none", *args, cwd=scratch, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Congratulations" in text, text[-3000:]


def _bad_config(tmp: Path, edit) -> Path:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    edit(cfg)
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _two_mistakes(c):
    c["suites"]["minitext"]["seedz"] = [0]
    c["suites"]["minitext"]["methods"]["fisher"] = {}


@pytest.mark.parametrize("edit, expected", [
    (_two_mistakes, ["'seedz'", "allowed keys:", "seeds", "'fisher'", "tsvm", "isocts"]),
    (lambda c: c["suites"]["minitext"]["fda"].__setitem__("n_blocks", "six"), ["n_blocks", "expected integer"]),
], ids=["typo-and-unknown-method", "wrong-type"])
def test_config_errors_stop_snakemake_before_any_job(tmp_path, edit, expected):
    bad = _bad_config(tmp_path, edit)
    proc = snakemake("-n", "--workflow-profile", "none", "--configfile", str(bad), cwd=tmp_path, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid workflow config" in text
    for piece in expected:
        assert piece in text, (piece, text[-2000:])
    assert "rule " not in text.split("invalid workflow config")[0]  # no job was planned
