"""The `fda-bench` CLI: config commands, cell/aggregate/figures commands, construction logs, GPU
slot leasing. Commands run in-process through ``fda.bench.cli.main``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fda.bench import cli, gpu
from fda.bench.cli.common import construct_log_record, inputs_key
from fda.bench.report import results

ROOT = Path(__file__).resolve().parents[2]


def test_validate_config_ok(capsys):
    assert cli.main(["validate-config", str(ROOT / "config/config.yaml")]) == 0
    assert "ok:" in capsys.readouterr().out
    assert cli.main(["validate-config", str(ROOT / "config/paper.yaml"), "--config", "smoke=true"]) == 0


def test_validate_config_error(tmp_path, capsys):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["suites"]["minitext"]["methods"]["tsvm"]["alpah"] = 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert cli.main(["validate-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "suites.minitext.methods.tsvm" in err and "'alpah'" in err and "alpha" in err


def test_cells_lists_the_cells(capsys):
    assert cli.main(["cells", str(ROOT / "config/paper.yaml")]) == 0
    out = capsys.readouterr().out.split()
    assert "results/vitb16_isocts_fda.csv" in out and len(out) == 78  # 3 vision suites x (9 + 6), 3 others x (7 + 4)


def _raw(path: Path, method: str, values: dict[str, float], init: str = "", ai: str = "", seed: int = 0,
         expert_seed: int = 0) -> Path:
    rows = [{"task": t, "metric": "accuracy", "value": v} for t, v in values.items()]
    results.write_csv(results.raw_frame(rows, method=method, init=init, anchor_init=ai, seed=seed,
                                        expert_seed=expert_seed), path)
    return path


def test_cell_aggregate_and_figures_commands(tmp_path):
    ind = _raw(tmp_path / "individual.csv", "individual", {"x": 0.9, "y": 0.6})
    ta = _raw(tmp_path / "ta.csv", "ta", {"x": 0.45, "y": 0.3})
    g = _raw(tmp_path / "g.csv", "fda", {"x": 0.63, "y": 0.45}, "ta", "gauss")
    w = _raw(tmp_path / "w.csv", "fda", {"x": 0.72, "y": 0.48}, "ta", "weight")
    cells = tmp_path / "results"
    common = ["--individual", str(ind), "--expert-source", "finetuned-here", "--config-hash", "0123456789ab"]
    assert cli.main(["cell", "--suite", "minitext", "--raw", str(ind), *common, "--out", str(cells / "minitext_individual.csv")]) == 0
    assert cli.main(["cell", "--suite", "minitext", "--raw", str(ta), *common, "--out", str(cells / "minitext_ta.csv")]) == 0
    assert cli.main(["cell", "--suite", "minitext", "--raw", str(g), "--raw", str(w), *common,
                     "--out", str(cells / "minitext_ta_fda.csv")]) == 0
    fda_cell = pd.read_csv(cells / "minitext_ta_fda.csv", keep_default_na=False)
    assert list(fda_cell.columns) == results.CELL_COLUMNS
    assert list(fda_cell["anchor_init"]) == ["gauss", "gauss", "weight", "weight"]
    assert fda_cell["normalized"].tolist() == pytest.approx([0.7, 0.75, 0.8, 0.8])
    assert set(fda_cell["config_hash"].astype(str)) == {"0123456789ab"}

    files = sorted(str(p) for p in cells.glob("*.csv"))
    assert cli.main(["aggregate", "--suite", "minitext", "--tasks", "x", "y", "--cells", *files,
                     "--out-dir", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "minitext.md").read_text()
    assert "| TA | 45.00 | 30.00 | 37.50 | – |" in md
    assert "| FDA (TA, Gauss) | 63.00 | 45.00 | 54.00 | +16.50 |" in md
    assert "| FDA (TA, Weight) | 72.00 | 48.00 | 60.00 | +22.50 |" in md
    assert cli.main(["figures", "--suite", "minitext", "--tasks", "x", "y", "--cells", *files,
                     "--out-dir", str(tmp_path / "figs")]) == 0
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {
        "minitext-methods.png", "minitext-methods.pdf", "minitext-heatmap.png", "minitext-heatmap.pdf"}


def test_a_cell_of_two_expert_seeds_normalizes_by_each_seed_s_own_experts(tmp_path):
    """`cell` with the raw files and individual experts of expert seeds 0 and 1: each row is divided
    by the individual expert of its own expert seed; a raw file from before expert seeds (no
    column) reads as expert seed 0."""
    ind = [_raw(tmp_path / f"individual{e}.csv", "individual", {"x": v}, expert_seed=e) for e, v in ((0, 0.8), (1, 0.5))]
    old = tmp_path / "ta0.csv"
    _raw(old, "ta", {"x": 0.4})
    pd.read_csv(old).drop(columns="expert_seed").to_csv(old, index=False)  # written before expert seeds
    ta = [old, _raw(tmp_path / "ta1.csv", "ta", {"x": 0.4}, expert_seed=1)]
    common = ["--individual", str(ind[0]), "--individual", str(ind[1]), "--expert-source", "finetuned-here",
              "--config-hash", "0123456789ab"]
    out = tmp_path / "results"
    assert cli.main(["cell", "--suite", "minitext", "--raw", str(ta[0]), "--raw", str(ta[1]), *common,
                     "--out", str(out / "minitext_ta.csv")]) == 0
    cell = pd.read_csv(out / "minitext_ta.csv")
    assert list(cell.columns) == results.CELL_COLUMNS
    assert cell["expert_seed"].tolist() == [0, 1] and cell["normalized"].tolist() == pytest.approx([0.5, 0.8])
    assert cli.main(["cell", "--suite", "minitext", "--raw", str(ta[0]), *common[2:], "--individual", str(ind[1]),
                     "--out", str(out / "bad.csv")]) == 0  # no expert of seed 0: normalized is empty, not wrong
    assert pd.isna(pd.read_csv(out / "bad.csv")["normalized"]).all()


def test_prepare_expert_refuses_an_expert_seed_for_a_copied_expert(tmp_path, capsys):
    src = tmp_path / "expert"
    src.mkdir()
    (src / "head.safetensors").write_bytes(b"")
    argv = ["prepare-expert", "--suite", "minitext", "--task", "tech", "--source", json.dumps({"path": str(src)}),
            "--base", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--expert-seed", "1"]) == 2
    assert "one expert seed" in capsys.readouterr().err
    assert cli.main(argv) == 0 and (tmp_path / "out" / "head.safetensors").is_file()


def test_construct_log_record_from_a_construct_result():
    from fda.anchors import ConstructLog, ConstructResult

    log = ConstructLog(param_names=["w", "b"], loss=torch.tensor([2.0, 1.0, 0.5]),
                       cos=torch.tensor([[0.0, 0.2], [0.5, 0.7], [0.8, 0.9]]), grad_norm=torch.ones(3, 2),
                       unalignable=[], sv_steps=[0, 2], sv=[torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.1])])
    res = ConstructResult(block=1, expert=0, anchors=torch.zeros(2, 3, 4), initial=torch.zeros(2, 3, 4),
                          best_loss=0.5, best_step=2, log=log)
    rec = construct_log_record(res, suite="s", block=1, task="t", anchor_init="gauss", seed=0)
    assert rec["loss"] == [2.0, 1.0, 0.5] and rec["steps"] == [0, 1, 2]
    assert rec["cos_mean"] == pytest.approx([0.1, 0.6, 0.85])
    assert rec["cos"]["b"] == pytest.approx([0.2, 0.7, 0.9])
    assert rec["sv_steps"] == [0, 2] and rec["singular_values"][1] == pytest.approx([1.0, 0.1])
    assert rec["best_step"] == 2 and rec["block"] == 1
    json.dumps(rec)  # JSON-able


def test_inputs_key_follows_files_and_settings(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    k1 = inputs_key([f], {"lr": 1})
    assert k1 == inputs_key([f], {"lr": 1})
    assert k1 != inputs_key([f], {"lr": 2})
    f.write_bytes(b"xy")
    assert k1 != inputs_key([f], {"lr": 1})


def test_bad_json_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["merge", "--method", "ta", "--hparams", "{alpha: 1", "--base", "b", "--expert", "t=d", "--out", "o"])
    assert "not valid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ GPU slots


@pytest.fixture
def slots(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu.SLOTS_ENV, "0,1")
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path / "locks"


def test_gpu_slots_are_leased_one_per_holder(slots):
    a = gpu.try_lease(["0", "1"], slots)
    b = gpu.try_lease(["0", "1"], slots)
    assert a and b and {a[0], b[0]} == {"0", "1"}
    assert gpu.try_lease(["0", "1"], slots) is None  # both taken
    a[1].close()  # the holder exits: its slot is free again
    c = gpu.try_lease(["0", "1"], slots)
    assert c is not None and c[0] == a[0]
    b[1].close()
    c[1].close()


def test_gpu_slot_sets_and_clears_cuda_visible_devices(slots):
    with gpu.gpu_slot() as slot:
        assert slot == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        held = gpu.try_lease(["0"], slots)
        assert held is None  # slot 0 is locked while the job runs
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_slot_waits_then_fails_when_all_are_taken(slots):
    leases = [gpu.try_lease(["0", "1"], slots) for _ in range(2)]
    with pytest.raises(gpu.GPUSlotError, match="--resources gpu=2"):
        with gpu.gpu_slot(timeout=0.2, poll=0.05):
            pass
    for lease in leases:
        lease[1].close()


def test_gpu_pinning_is_off_without_slots_or_under_a_scheduler(slots, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu.gpu_slot() as slot:
        assert slot is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv(gpu.SLOTS_ENV)
    with gpu.gpu_slot() as slot:
        assert slot is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_every_subcommand_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {
        "validate-config", "cells", "prepare-data", "prepare-base", "prepare-expert", "merge", "fda-construct",
        "fda-adapt", "fda-assemble", "import-anchors", "evaluate", "select", "cell", "aggregate", "figures", "construction-figures", "join-runs", "claims", "paper-tables", "costs",
        "stream-merge", "convert-bin", "llm-construct", "llm-adapt", "llm-assemble", "llm-eval"}
    assert cli.GPU_COMMANDS <= set(sub.choices)


def test_json_arguments_must_be_objects(capsys):
    with pytest.raises(SystemExit):
        cli.main(["merge", "--method", "ta", "--hparams", "[0.3]", "--base", "b", "--expert", "t=d", "--out", "o"])
    assert "expected a JSON object" in capsys.readouterr().err
