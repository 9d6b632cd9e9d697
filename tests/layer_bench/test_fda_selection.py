"""FDA's validated protocol (docs/selection.md, fda.bench.config.fda_selection): the `fda.selection`
config key and its errors, grid points and the adaptation runs they need, `fda-adapt
--snapshot-epochs` (a snapshot is the shorter run), several models scored in one `evaluate`, the
validated FDA row in tables and claims (its Δ is against the fixed init), and the DAG of one cell."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from fda.bench.cli.common import UsageError
from fda.bench.config import fda_selection as fs
from fda.bench.config.grids import apply_values
from fda.bench.config.load import validate_config
from fda.bench.config.naming import cell_slice, cells, check_cell, config_hash
from fda.bench.config.suite_views import effective_suite
from fda.bench.config.vocabulary import ConfigError
from fda.bench.report import claims, results, tables

# the default config and its mutate-and-validate helpers (tests/layer_bench is on sys.path: pytest prepend mode)
from test_selection import DEFAULT, _errors, _with

# ------------------------------------------------------------------------------------ config


def test_points_runs_and_the_fixed_point_of_the_default_grid():
    s = effective_suite(validate_config(DEFAULT), "minivision")
    assert fs.fda_points(s) == [{"adapt_lr_scale": 0.1, "adapt_epochs": 15}, {"adapt_lr_scale": 0.1, "adapt_epochs": 50},
                                {"adapt_lr_scale": 1.0, "adapt_epochs": 15}, {"adapt_lr_scale": 1.0, "adapt_epochs": 50}]
    # scale 0.1 runs to 50 epochs keeping 15 and 50; scale 1 runs to 15 only: its 50 is the fixed FDA model
    assert fs.run_epochs(s, 50) == {0: [15, 50], 1: [15]}
    assert fs.point_run(s, {"adapt_lr_scale": 1.0, "adapt_epochs": 50}, 50) is None
    assert fs.point_run(s, {"adapt_lr_scale": 1.0, "adapt_epochs": 15}, 50) == (1, 15)
    # an init whose fixed epochs are not on the grid has no fixed point: every point is adapted
    assert fs.run_epochs(s, 40) == {0: [15, 50], 1: [15, 50]}
    assert fs.validated_inits(s) == ["pretrained", "ta"] and fs.validated_anchor_inits(s) == ["gauss"]
    # minivision's lrs: 1e-3 from pretrained, 1e-2 from TA (fda.per_init), whatever scale multiplies
    hp = {"adapt_lr": 1e-2, "adapt_epochs": 50, "n_anchors": 16}
    assert apply_values(hp, {"adapt_lr_scale": 0.1, "adapt_epochs": 15}) == {"adapt_lr": pytest.approx(1e-3),
                                                                            "adapt_epochs": 15, "n_anchors": 16}
    with pytest.raises(KeyError, match="adapt_lr"):
        apply_values({"adapt_epochs": 3}, {"adapt_lr_scale": 0.1})


def test_grid_without_a_scale_or_without_epochs():
    s = {"family": "bert", "fda": {"inits": ["ta"], "anchor_inits": ["gauss"], "selection": {"grid": {"adapt_epochs": [5, 50]}}}}
    assert fs.scales(s) == [1.0] and fs.run_epochs(s, 50) == {0: [5]}
    s["fda"]["selection"]["grid"] = {"adapt_lr_scale": [0.1, 1.0]}
    assert fs.run_epochs(s, 50) == {0: [50]}  # the 0.1x run at the fixed epochs; 1x is the fixed model
    assert fs.fda_selection({"fda": {"selection": None}}) is None


@pytest.mark.parametrize("mutate, where, says", [
    (lambda f: f["selection"].__setitem__("inits", ["isoc"]), "suites.minivision.fda.selection.inits",
     "['isoc'] not among fda.inits"),
    (lambda f: f["selection"]["grid"].__setitem__("adapt_lr", [1e-3]), "fda.selection.grid", "adapt_lr"),
    (lambda f: f["selection"]["grid"].__setitem__("adapt_lr_scale", [0.0, 1.0]), "fda.selection.grid.adapt_lr_scale", "0"),
    (lambda f: (f["per_init"]["ta"].__setitem__("adapt_lr", 1e300), f["selection"]["grid"].__setitem__(
        "adapt_lr_scale", [1e10, 1.0])), "fda.selection.grid.adapt_lr_scale", "x adapt_lr 1e+300 of init 'ta' is not a finite"),
    (lambda f: f["selection"].__setitem__("grids", {}), "fda.selection", "grids"),
])
def test_fda_selection_typos_and_bad_values_name_the_key(mutate, where, says):
    text = _errors(_with(lambda c: mutate(c["suites"]["minivision"]["fda"])))
    assert where in text and says in text


def test_validated_fda_cells_their_hash_and_unknown_cells():
    cfg = validate_config(DEFAULT)
    got = [c for c in cells(cfg) if c.endswith("_fda_validated.csv")]
    assert got == ["results/minitext_pretrained_fda_validated.csv", "results/minitext_ta_fda_validated.csv",
                   "results/minivision_pretrained_fda_validated.csv", "results/minivision_ta_fda_validated.csv"]
    h = config_hash(cell_slice(cfg, "minivision", "fda", "ta", protocol="validated"))
    fixed = config_hash(cell_slice(cfg, "minivision", "fda", "ta"))
    wider = validate_config(_with(lambda c: c["suites"]["minivision"]["fda"]["selection"]["grid"].__setitem__(
        "adapt_epochs", [5, 15, 50])))
    assert config_hash(cell_slice(wider, "minivision", "fda", "ta", protocol="validated")) != h
    assert config_hash(cell_slice(wider, "minivision", "fda", "ta")) == fixed  # the fixed cell does not move
    with pytest.raises(ConfigError, match="vinit 'tsvm' is not configured for suite 'minivision' .configured: pretrained, ta"):
        check_cell(cfg, "results/minivision_tsvm_fda_validated.csv", {"suite": "minivision", "init": "tsvm"})


# ------------------------------------------------------------------------------------ jobs


def _adapt(root: Path, hp: dict, *extra: str) -> list[str]:
    return ["fda-adapt", "--suite", "vitb32", "--family", "openclip", "--fda", json.dumps(hp), "--anchor-init", "gauss",
            "--n-blocks", "2", "--base", str(root / "base"), "--expert", f"MNIST={root / 'mnist.safetensors'}",
            "--block", "0", "--block", "1", "--init", "pretrained", "--anchors-dir", str(root / "anchors"), *extra]


def test_a_snapshot_model_is_the_shorter_run_and_is_cached(tiny_clip, capsys):
    from fda.bench import cli
    from fda.io.checkpoints import load_state_dict

    hp = {"n_anchors": 2, "construct_steps": 2, "progress": False, "adapt_lr": 1e-3}
    cli.main(["fda-construct", "--suite", "vitb32", "--family", "openclip", "--fda", json.dumps(hp), "--anchor-init",
              "gauss", "--n-blocks", "2", "--base", str(tiny_clip / "base"), "--expert",
              f"MNIST={tiny_clip / 'mnist.safetensors'}", "--block", "0", "--block", "1", "--out-dir",
              str(tiny_clip / "anchors")])
    grid = _adapt(tiny_clip, {**hp, "adapt_epochs": 3}, "--blocks-dir", str(tiny_clip / "grid-blocks"),
                  "--snapshot-epochs", "1", "3", "--snapshot-dir", str(tiny_clip / "grid"))
    cli.main(grid)
    cli.main(_adapt(tiny_clip, {**hp, "adapt_epochs": 1}, "--blocks-dir", str(tiny_clip / "one-blocks"),
                    "--assemble", str(tiny_clip / "one.safetensors")))
    snap, one = load_state_dict(tiny_clip / "grid" / "epochs1.safetensors"), load_state_dict(tiny_clip / "one.safetensors")
    assert snap.keys() == one.keys() and all(torch.equal(snap[k], one[k]) for k in snap)
    from fda.io.checkpoints import read_metadata

    assert json.loads(read_metadata(tiny_clip / "grid" / "epochs1.safetensors")["fda"])["adapt_epochs"] == 1
    three = load_state_dict(tiny_clip / "grid" / "epochs3.safetensors")
    assert any(not torch.equal(three[k], one[k]) for k in one)  # two more epochs moved it
    capsys.readouterr()
    cli.main(grid)
    assert "block 1: cached" in capsys.readouterr().err
    assert cli.main(grid[:-5] + ["--snapshot-epochs", "1", "5", "--snapshot-dir", str(tiny_clip / "grid")]) != 0
    assert "each must lie in 1..3 (adapt_epochs)" in capsys.readouterr().err
    assert cli.main(grid[:-2]) != 0
    assert "--snapshot-epochs needs --snapshot-dir" in capsys.readouterr().err


def test_evaluate_pairs_each_model_with_its_output():
    from fda.bench.cli.evaluation import evaluations

    args = argparse.Namespace(model=["a", "b"], out=["a.csv", "b.csv"], choice=None, outcomes=None, split="validation")
    assert evaluations(args) == [("a", "fixed", "", "a.csv"), ("b", "fixed", "", "b.csv")]
    with pytest.raises(UsageError, match="one --out per --model"):
        evaluations(argparse.Namespace(**{**vars(args), "out": ["a.csv"]}))
    with pytest.raises(UsageError, match="neither --choice nor --outcomes"):
        evaluations(argparse.Namespace(**{**vars(args), "outcomes": "x.npz"}))


# ------------------------------------------------------------------------------------ tables, claims

TASKS = ["a", "b"]


def _cell(method, values, init="", protocol="fixed", hparams="", seed=0):
    rows = [{"task": t, "metric": "accuracy", "value": v} for t, v in zip(TASKS, values)]
    individual = results.raw_frame([{"task": t, "metric": "accuracy", "value": 1.0} for t in TASKS], method="individual")
    raw = results.raw_frame(rows, method=method, init=init, anchor_init="gauss" if init else "", seed=seed,
                            protocol=protocol, hparams=hparams)
    return results.build_cell([raw], individual, suite="minitext", expert_source="finetuned-here",
                              config_hash="h", version="0")


def test_a_validated_fda_row_is_compared_with_its_fixed_init():
    df = pd.concat([_cell("ta", [0.5, 0.7]), _cell("ta", [0.9, 0.9], protocol="validated", hparams='{"alpha":0.5}'),
                    _cell("fda", [0.6, 0.8], "ta"),
                    _cell("fda", [0.7, 0.7], "ta", "validated", '{"adapt_epochs":15,"adapt_lr_scale":0.1}'),
                    _cell("fda", [0.7, 0.7], "ta", "validated", '{"adapt_epochs":15,"adapt_lr_scale":1.0}', seed=1)],
                   ignore_index=True)
    t = tables.build_table(df, "minitext", TASKS).set_index("row")
    label = "FDA (TA, Gauss, validated, epochs=15, lr×=0.1/epochs=15, lr×=1)"  # FDA seeds that chose differently
    assert t.loc[label, "Δ"] == pytest.approx(0.7 - 0.6)  # against TA (fixed), the model it started from
    assert t.loc["FDA (TA, Gauss)", "Δ"] == pytest.approx(0.1)
    rows = [("ta", "", ""), ("ta", "", "", "validated"), ("fda", "ta", "gauss"), ("fda", "ta", "gauss", "validated")]
    assert ("fda >= init", ("fda", "ta", "gauss", "validated"), ("ta", "", "", "fixed")) in claims.pairs(rows)


# ------------------------------------------------------------------------------------ the DAG


def test_one_validated_fda_cell_builds_only_what_it_needs(tmp_path):
    from test_workflow import dry_run

    jobs = dry_run(tmp_path, "results/minivision_ta_fda_validated.csv")
    rules = Counter(j["rule"] for j in jobs)
    assert rules == Counter({"prepare_data": 1, "prepare_base": 1, "prepare_expert": 8, "evaluate_reference": 1,
                             "merge_baseline": 1,  # TA, the init
                             "fda_construct_minivision": 1, "fda_adapt": 1,  # the fixed point's model
                             "fda_adapt_grid": 2, "evaluate_fda_grid_minivision": 1, "select_fda": 1,
                             "evaluate_fda_validated": 1, "cell_fda_validated": 1})
    assert {j["wildcards"]["scale"] for j in jobs if j["rule"] == "fda_adapt_grid"} == {"0", "1"}
    assert {j["wildcards"]["anchorinit"] for j in jobs if j["rule"] == "select_fda"} == {"gauss"}


def test_select_without_the_lr_a_scale_multiplies_says_so(tmp_path, capsys):
    from fda.bench import cli

    raw = results.raw_frame([{"task": "a", "metric": "accuracy", "value": 0.5}], method="fda", split="validation")
    results.write_csv(raw, tmp_path / "p0.csv")
    argv = ["select", "--suite", "minivision", "--method", "fda", "--init", "ta", "--tasks", "a",
            "--grid", '{"adapt_lr_scale": [0.1]}', "--point", f"{tmp_path / 'p0.csv'}=m0", "--out", str(tmp_path / "c.json")]
    assert cli.main(argv + ["--hparams", '{"adapt_epochs": 50}']) != 0
    assert "scales 'adapt_lr'" in capsys.readouterr().err and not (tmp_path / "c.json").exists()
    assert cli.main(argv + ["--hparams", '{"adapt_lr": 0.01}']) == 0
    assert json.loads((tmp_path / "c.json").read_text())["chosen"]["hparams"]["adapt_lr"] == pytest.approx(1e-3)
