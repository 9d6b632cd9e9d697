"""End-to-end runs of the workflow on the embedded suites' smoke settings (slow: they fine-tune,
merge, construct and evaluate for real). Run with ``pytest -m slow tests/layer_bench/test_workflow_e2e.py``.

- the smoke run finishes and writes every cell, table and figure (its wall time is printed, not
  asserted: a benchmark measures, a test checks behaviour);
- deleting one cell and rerunning rebuilds only that cell (and what is derived from it), with
  byte-identical contents;
- changing one hyperparameter reruns only the jobs that read it;
- a rerun of a coarse FDA adaptation job reuses every cached block;
- the validated cells (docs/selection.md) record their choice and stand beside the fixed rows, and
  editing a grid reruns only its selection.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fda.bench.eval.outcomes import TASK, read_outcomes
from fda.bench.report.tables import row_label
from test_workflow import ROOT, parse_jobs, snakemake  # tests/ is on sys.path (pytest prepend mode)

pytestmark = pytest.mark.slow
# config.yaml smoke_overrides: (inits, anchor init) per suite
SMOKE_FDA = {"minitext": (("pretrained", "ta"), "gauss"), "minivision": (("tsvm", "wudi", "isocts"), "weight")}
# config.yaml smoke_overrides: the one baseline with a selection grid per suite (docs/selection.md)
SMOKE_VALIDATED = {"minitext": "ta", "minivision": "ties"}


# smoke_run: the session's one local smoke run (tests/conftest.py), shared with tests/cluster


def test_smoke_run_writes_every_cell_table_and_figure(smoke_run):
    work, seconds, _ = smoke_run
    print(f"\nsmoke run: {seconds:.0f} s wall")
    for suite, (inits, anchor_init) in SMOKE_FDA.items():
        for cell in ("pretrained", "individual", "ta", "tsvm", "wudi", "average", "ties", "isoc", "isocts"):
            assert (work / f"results/{suite}_{cell}.csv").is_file()
        for init in inits:
            assert (work / f"results/{suite}_{init}_fda.csv").is_file()
            assert row_label("fda", init, anchor_init) in (work / f"results/tables/{suite}.md").read_text()
        assert (work / f"results/figures/{suite}-spectra-{anchor_init}.png").stat().st_size > 1000
        # per-example outcomes beside every cell, and intervals in the tables built from them
        for init in inits:
            outcomes = read_outcomes(work / f"results/{suite}_{init}_fda.npz")
            assert {k[TASK] for k in outcomes} == set(_smoke_tasks(suite))
            assert {k[3] for k in outcomes} == {0}  # one expert seed
        cell = pd.read_csv(work / f"results/{suite}_ta.csv")
        assert set(cell["expert_seed"]) == {0}
        absolute = pd.read_csv(work / f"results/tables/{suite}.csv")
        assert (absolute["Avg lo"] <= absolute["Avg"] + 1e-12).all() and (absolute["Avg"] <= absolute["Avg hi"] + 1e-12).all()
        assert absolute.loc[absolute["method"] == "fda", "Δ lo"].notna().all()
        assert "95% bootstrap interval" in (work / f"results/tables/{suite}.md").read_text()
        # cost: every counted job reported its own resources; FDA rows have FLOPs and count construction
        jobs = pd.read_csv(work / f"results/costs/{suite}.csv")
        assert set(jobs["measured_by"]) == {"job"}, jobs[jobs["measured_by"] != "job"]["benchmark"].tolist()
        table = pd.read_csv(work / f"results/tables/{suite}-cost.csv")
        fda_rows = table[table["method"] == "fda"]
        assert len(fda_rows) == len(inits) and (fda_rows["flops"] > 0).all()
        assert (fda_rows["wall_s"] > fda_rows["construct_s"]).all() and (fda_rows["construct_s"] > 0).all()
        assert (work / f"results/figures/{suite}-cost.png").stat().st_size > 1000


def test_smoke_run_writes_the_validated_cells(smoke_run):
    """Each suite's validated cell: the choice names every grid point's validation score and takes
    the first best; its rows are test rows with the chosen values; its outcomes are its own; the
    table shows it beside the fixed row."""
    work, _, _ = smoke_run
    for suite, method in SMOKE_VALIDATED.items():
        choice = json.loads((work / f"work/{suite}/eseed0/select/{method}/choice.json").read_text())
        scores = [p["score"] for p in choice["points"]]
        assert len(scores) == 2 and choice["chosen"]["point"] == scores.index(max(scores))
        assert choice["tie_rule"] == "first best in declared order" and choice["split"] == "validation"
        for p in range(2):
            val = pd.read_csv(work / f"work/{suite}/eseed0/select/{method}/point{p}-validation.csv", keep_default_na=False)
            assert set(val["split"]) == {"validation"}
        cell = pd.read_csv(work / f"results/{suite}_{method}_validated.csv", keep_default_na=False)
        chosen = json.dumps(choice["chosen"]["values"], sort_keys=True, separators=(",", ":"))
        assert set(cell["protocol"]) == {"validated"} and set(cell["hparams"]) == {chosen}
        assert set(pd.read_csv(work / f"results/{suite}_{method}.csv", keep_default_na=False)["protocol"]) == {"fixed"}
        outcomes = read_outcomes(work / f"results/{suite}_{method}_validated.npz")
        assert {k[6] for k in outcomes} == {"validated"} and {k[TASK] for k in outcomes} == set(_smoke_tasks(suite))
        table = pd.read_csv(work / f"results/tables/{suite}.csv", keep_default_na=False)
        rows = table[table["method"] == method]
        assert list(rows["protocol"]) == ["fixed", "validated"] and rows["row"].iloc[1].startswith(
            row_label(method) + " (validated, α=")
        assert rows["Avg lo"].astype(float).notna().all()


def test_smoke_run_writes_the_validated_fda_cell(smoke_run):
    """minivision's validated FDA cell (TSV-M init, weight anchors): 4 points (lr x {0.1, 1} x epochs
    {1, 3}) from 2 grid runs and the fixed model, the first best chosen, its rows and table row
    labelled with it, its Δ against the fixed TSV-M row; the grid runs report progress under their
    own label."""
    work, _, console = smoke_run
    sel = work / "work/minivision/eseed0/fda/seed0/select/tsvm-weight"
    choice = json.loads((sel / "choice.json").read_text())
    assert [p["values"] for p in choice["points"]] == [{"adapt_epochs": e, "adapt_lr_scale": s}
                                                       for s in (0.1, 1.0) for e in (1, 3)]
    assert [p["model"] for p in choice["points"]][-1] == "work/minivision/eseed0/fda/seed0/tsvm-weight/merged.safetensors"
    models = {k: sorted(p.name for p in (sel / f"scale{k}").glob("*.safetensors")) for k in (0, 1)}
    assert models == {0: ["epochs1.safetensors", "epochs3.safetensors"], 1: ["epochs1.safetensors"]}  # 1x 3: the fixed run
    scores = [p["score"] for p in choice["points"]]
    assert choice["chosen"]["point"] == scores.index(max(scores)) and choice["init"] == "tsvm" and choice["seed"] == 0
    cell = pd.read_csv(work / "results/minivision_tsvm_fda_validated.csv", keep_default_na=False)
    chosen = json.dumps(choice["chosen"]["values"], sort_keys=True, separators=(",", ":"))
    assert set(cell["protocol"]) == {"validated"} and set(cell["hparams"]) == {chosen} and set(cell["init"]) == {"tsvm"}
    table = pd.read_csv(work / "results/tables/minivision.csv", keep_default_na=False)
    rows = table[(table["method"] == "fda") & (table["init"] == "tsvm")].set_index("protocol")
    tsvm = table[(table["method"] == "tsvm") & (table["protocol"] == "fixed")]["Avg"].astype(float).item()
    assert rows.loc["validated", "row"].startswith("FDA (TSV-M, Weight, validated, epochs=")
    assert float(rows.loc["validated", "Δ"]) == pytest.approx(float(rows.loc["validated", "Avg"]) - tsvm)
    assert re.search(r"^fda-adapt minivision seed0 tsvm weight \(grid: lr 0\.001, epochs 1,3\): block \d+ \(\d+/2\) done",
                     console, re.M)


def test_changing_a_grid_reruns_only_its_selection(smoke_run):
    work, _, _ = smoke_run
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["suites"]["minitext"]["smoke_overrides"]["selection"]["grids"]["ta"] = {"alpha": [0.3, 0.7]}
    changed = work / "changed-grid.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))  # sorted keys would reorder methods (the cost plan)
    rules = Counter(j["rule"] for j in _dry(work, "--configfile", str(changed)))
    assert rules == Counter({"merge_grid": 1, "evaluate_grid": 1, "select": 1, "evaluate_validated": 1,
                             "cell_validated": 1, "tables": 1, "figures": 1, "costs": 1, "all": 1})


def _smoke_tasks(suite: str) -> list[str]:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())["suites"][suite]["smoke_overrides"]["tasks"]


def _dry(work: Path, *args: str) -> list[dict]:
    proc = snakemake("-n", "--cores", "2", "--config", "smoke=true", *args, cwd=work)
    return parse_jobs(proc.stdout + proc.stderr)


def test_fda_jobs_report_progress_on_the_console(smoke_run):
    """Coarse FDA jobs write a line per finished block, with the share done and the time left, to
    the console (fd 3 of the rule's shell), not only to their logs."""
    _, _, console = smoke_run
    for suite, (inits, anchor_init) in SMOKE_FDA.items():
        for label in [f"fda-construct {suite} seed0 {anchor_init}"] + [f"fda-adapt {suite} seed0 {i} {anchor_init}" for i in inits]:
            done = re.findall(rf"^{label}: block \d+ \((\d+)/(\d+)\) done · (\d+)% after \S+(, ~\S+ left)?$", console, re.M)
            assert done, f"no progress lines of {label!r} on the console:\n{console[-2000:]}"
            assert [int(k) for k, _, _, _ in done] == list(range(1, int(done[0][1]) + 1))  # every block once, in order
            assert done[0][3] and done[-1][2] == "100"  # the first line estimates the time left; the last is at 100%


def test_delete_one_cell_rebuilds_only_that_cell(smoke_run):
    work, _, _ = smoke_run
    cell = work / "results/minitext_ta.csv"
    before = cell.read_bytes()
    cell.unlink()
    jobs = _dry(work)
    assert Counter(j["rule"] for j in jobs) == Counter({"cell": 1, "tables": 1, "figures": 1, "costs": 1, "all": 1})
    assert [j["output"] for j in jobs if j["rule"] == "cell"] == [["results/minitext_ta.csv", "results/minitext_ta.npz"]]
    snakemake("--cores", "2", "--config", "smoke=true", cwd=work)
    assert cell.read_bytes() == before  # same inputs, same bytes


def test_rerunning_a_cell_is_byte_identical(smoke_run):
    work, _, _ = smoke_run
    cell = work / "results/minivision_wudi_fda.csv"
    before = cell.read_bytes()
    snakemake("--cores", "2", "--config", "smoke=true", "--forcerun", "cell_fda", "--until",
              "results/minivision_wudi_fda.csv", cwd=work)
    assert cell.read_bytes() == before


def test_changing_one_hyperparameter_reruns_only_its_jobs(smoke_run):
    work, _, _ = smoke_run
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["suites"]["minivision"]["methods"]["wudi"]["lr"] = 3.0e-5
    changed = work / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = _dry(work, "--configfile", str(changed))
    rules = {j["rule"] for j in jobs}
    assert not rules & {"prepare_data", "prepare_base", "prepare_expert", "fda_construct_minivision"}
    for j in jobs:
        w = j["wildcards"]
        if j["rule"] in ("merge_baseline", "evaluate_baseline"):
            assert w == {"suite": "minivision", "eseed": "0", "baseline": "wudi"}
        if j["rule"] in ("fda_adapt", "evaluate_fda", "cell_fda"):
            assert w["suite"] == "minivision" and w["init"] == "wudi"
        if j["rule"] == "cell":
            assert w == {"suite": "minivision", "method": "wudi"}
    assert "merge_baseline" in rules and "fda_adapt" in rules


def test_coarse_adaptation_reuses_cached_blocks(smoke_run):
    work, _, _ = smoke_run
    snakemake("--cores", "2", "--config", "smoke=true", "--forcerun", "fda_adapt", "--until",
              "work/minivision/eseed0/fda/seed0/tsvm-weight/merged.safetensors", cwd=work)
    log = (work / "logs/minivision/eseed0/fda/seed0/adapt-tsvm-weight.log").read_text()
    assert log.count("cached") == 2  # both blocks of the smoke ViT came from the cache


def test_report_has_tables_and_figures(smoke_run):
    work, _, _ = smoke_run
    snakemake("--config", "smoke=true", "--report", "report.html", cwd=work)
    html = (work / "report.html").read_text(errors="replace")
    for name in ("minitext-paper.csv", "minivision-methods.png", "minivision-spectra-weight.png", "minitext-cost.csv",
                 "minivision-cost.png"):
        assert name in html, name


def test_kill_9_mid_construction_resumes_without_redoing_finished_blocks(tmp_path):
    """kill -9 the whole run while the coarse construction job is between blocks, then resume with
    --rerun-incomplete: the finished blocks come from the cache, the rest are built."""
    import signal
    import subprocess

    from fda.io.checkpoints import load_state_dict, read_metadata
    from test_workflow import ENV, SNAKEMAKE

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["suites"] = {"minitext": cfg["suites"]["minitext"]}
    cfg["suites"]["minitext"]["smoke_overrides"]["fda"]["hparams"]["construct_steps"] = 40  # a few s per block
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "work/minitext/eseed0/fda/seed0/anchors/gauss/block5/society.safetensors"
    # the target comes first: everything after --config is read as KEY=VALUE
    cmd = [SNAKEMAKE, target, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
           "--configfile", str(config), "--config", "smoke=true"]
    cache = tmp_path / "work/minitext/eseed0/fda/seed0/anchors-cache/gauss"

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while not (cache / "block1/society.safetensors").is_file():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "construction never reached block 1"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run, the job and the fda-bench process alike
        proc.wait()
    finished = sorted(int(p.parent.name[5:]) for p in cache.glob("block*/society.safetensors"))
    assert finished and finished[-1] < 5, finished
    assert not (tmp_path / target).exists()

    # a killed snakemake leaves its directory lock behind: --unlock, then resume
    subprocess.run([*cmd[:2], "--unlock", *cmd[2:]], cwd=tmp_path, env=ENV, check=True, capture_output=True)
    rerun = subprocess.run([*cmd[:2], "--rerun-incomplete", *cmd[2:]], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = (tmp_path / "logs/minitext/eseed0/fda/seed0/construct-gauss.log").read_text()
    for block in finished:
        assert f"block {block}: cached anchors" in log
    assert f"construct block {finished[-1] + 1} " in log
    # the console's progress counts only the blocks left to build
    left = 5 - finished[-1]
    assert re.search(rf"^fda-construct minitext seed0 gauss: block {finished[-1] + 1} \(1/{left}\) done", rerun.stdout + rerun.stderr, re.M)
    anchors = load_state_dict(tmp_path / target)
    assert json.loads(read_metadata(tmp_path / target)["task"]) == "society" and all(v.isfinite().all() for v in anchors.values())
