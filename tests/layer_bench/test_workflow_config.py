"""Workflow config: schema validation with readable errors, smoke overrides, slices and hashes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fda.bench.config import load as cfg_load
from fda.bench.config import naming as cfg_names
from fda.bench.config import suite_views as cfg_views
from fda.bench.config.vocabulary import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "config" / "config.yaml"
PAPER = ROOT / "config" / "paper.yaml"


def _raw(path: Path = DEFAULT) -> dict:
    return yaml.safe_load(path.read_text())


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        cfg_load.validate_config(config)
    return str(info.value)


@pytest.mark.parametrize("path", [DEFAULT, PAPER], ids=["default", "paper"])
def test_shipped_configs_validate(path):
    config = cfg_load.load_config([path])
    assert config["smoke"] is False
    assert config["fda_jobs"] in ("fine", "coarse")
    for suite, section in config["suites"].items():
        assert section["methods"], suite
        assert section["seeds"] == [0]
        assert "n_blocks" in section["fda"]


def test_default_config_has_every_method_and_fda_variant():
    config = cfg_load.load_config([DEFAULT])
    assert set(config["suites"]) == {"minitext", "minivision"}
    for section in config["suites"].values():
        assert list(section["methods"]) == list(cfg_names.METHODS)
        # the paper's four inits; isoc and isocts (BEYOND the paper) are left out of the full run for
        # time (config.yaml says how much) and covered by the smoke run
        assert section["fda"]["inits"] == ["pretrained", "ta", "tsvm", "wudi"]
        assert section["fda"]["anchor_inits"] == ["gauss", "weight"]  # the paper's two; taskspan is an option
    # 9 method cells, 4 FDA cells, 2 validated baseline cells (ta, ties: docs/selection.md) and 2
    # validated FDA cells (pretrained, ta), per suite: the default run's time budget
    assert len(cfg_names.cells(config)) == 2 * (9 + 4 + 2 + 2)
    smoke = cfg_load.load_config([DEFAULT], ["smoke=true"])
    smoke_inits = {i for s in smoke["suites"] for i in cfg_names.suite_wildcard_values(smoke, s)["init"]}
    assert smoke_inits >= {"pretrained", "ta", "tsvm", "wudi"} and smoke_inits & {"isoc", "isocts"}


def test_paper_config_uses_the_papers_hyperparameters():
    config = cfg_load.load_config([PAPER])
    s = config["suites"]
    assert set(s) == {"vitb32", "vitb16", "vitl14", "robertab", "robertal", "llama13b"}
    assert [s[n]["methods"]["ta"]["alpha"] for n in ("vitb16", "robertab", "robertal", "llama13b")] == [0.3, 0.3, 0.2, 0.5]
    assert s["vitb32"]["methods"]["wudi"]["lr"] == 1e-5 and s["robertab"]["methods"]["wudi"]["lr"] == 2e-5
    # NLU TSV-M and WUDI scale the merged delta by --alpha, default 0.4 (official NLU/fda_args.py); vision adds it unscaled
    for n in ("robertab", "robertal"):
        assert s[n]["methods"]["wudi"]["alpha"] == s[n]["methods"]["tsvm"]["alpha"] == 0.4
    assert s["vitb32"]["methods"]["wudi"]["alpha"] == s["vitb32"]["methods"]["tsvm"]["alpha"] == 1.0
    assert s["robertab"]["fda"]["hparams"]["adapt_epochs"] == 125  # NLU/adapt.sh (the paper's text says 100)
    assert s["vitb16"]["fda"]["hparams"]["construct_steps"] == 1200
    assert s["llama13b"]["fda"]["hparams"]["construct_steps"] == 200
    assert s["robertal"]["fda"]["hparams"]["adapt_epochs"] == 25
    assert s["robertal"]["fda"]["per_init"]["ta"]["adapt_epochs"] == 15
    assert s["vitl14"]["fda"]["n_blocks"] == 24 and s["llama13b"]["fda"]["n_blocks"] == 40
    assert s["vitb16"]["tasks"] == ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    # Iso-C / Iso-CTS: the Iso paper's α per backbone (its Table 5) and common-space fraction 0.8
    iso = {n: (s[n]["methods"]["isoc"]["alpha"], s[n]["methods"]["isocts"]["alpha"]) for n in ("vitb32", "vitb16", "vitl14")}
    assert iso == {"vitb32": (1.3, 1.5), "vitb16": (1.4, 1.6), "vitl14": (1.5, 1.9)}
    assert all(s[n]["methods"]["isocts"]["common_space_fraction"] == 0.8 for n in iso)
    assert all({"isoc", "isocts"} <= set(s[n]["fda"]["inits"]) for n in iso)


def test_typo_key_names_the_key_and_allowed_keys():
    cfg = _raw()
    cfg["suites"]["minitext"]["sedds"] = cfg["suites"]["minitext"].pop("seeds")
    msg = _error(cfg)
    assert "suites.minitext" in msg and "'sedds'" in msg
    assert "allowed keys:" in msg and "seeds" in msg and "methods" in msg


def test_top_level_typo():
    cfg = _raw()
    cfg["smokee"] = True
    msg = _error(cfg)
    assert "'smokee'" in msg and "smoke" in msg.split("allowed keys:")[1]


def test_wrong_type_names_key_and_expected_type():
    cfg = _raw()
    cfg["suites"]["minitext"]["fda"]["n_blocks"] = "six"
    msg = _error(cfg)
    assert "suites.minitext.fda.n_blocks" in msg and "expected integer" in msg and "'six'" in msg


def test_smoke_must_be_a_bool():
    cfg = _raw()
    cfg["smoke"] = 3
    assert "smoke: expected boolean" in _error(cfg)


def test_unknown_method_lists_the_methods():
    cfg = _raw()
    cfg["suites"]["minivision"]["methods"]["fisher"] = {}
    msg = _error(cfg)
    assert "suites.minivision.methods" in msg and "'fisher'" in msg
    for m in cfg_names.METHODS:
        assert m in msg


def test_unknown_suite_lists_the_suites():
    cfg = _raw()
    cfg["suites"]["vitb99"] = copy.deepcopy(cfg["suites"]["minitext"])
    msg = _error(cfg)
    assert "'vitb99'" in msg and "vitb16" in msg and "minitext" in msg


@pytest.mark.parametrize(
    "path, value, allowed",
    [
        (("fda", "anchor_inits"), ["gauss", "uniform"], "gauss, weight"),
        (("fda", "inits"), ["pretrained", "iso"], "pretrained, ta, tsvm, wudi"),
        (("family",), "gpt2", "bert, roberta, clip-vision, openclip, llama"),
        (("expert_source",), "gdrive", "finetuned-here"),
    ],
)
def test_enums_list_allowed_values(path, value, allowed):
    cfg = _raw()
    node = cfg["suites"]["minitext"]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    msg = _error(cfg)
    assert "allowed values:" in msg and allowed in msg


def test_schema_enums_follow_the_vocabulary():
    """The schema (YAML, checked before any job) and the vocabulary (the CLI's choices, the
    tables' rows) name the same methods, inits and anchor inits."""
    from fda.bench.config.vocabulary import ANCHOR_INITS, ANCHOR_SOURCES, FDA_INITS, METHODS

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["$defs"]
    assert schema["fda_init"]["enum"] == list(FDA_INITS)
    assert schema["anchor_init"]["enum"] == list(ANCHOR_INITS)
    assert schema["anchor_source"]["enum"] == list(ANCHOR_SOURCES)
    assert list(schema["methods"]["properties"]) == list(METHODS)  # the reference rows and every baseline


def test_fda_jobs_lists_allowed_values():
    cfg = _raw()
    cfg["fda_jobs"] = "medium"
    msg = _error(cfg)
    assert "fda_jobs" in msg and "fine" in msg and "coarse" in msg


def test_unknown_fda_hparam_lists_fields():
    cfg = _raw()
    cfg["suites"]["minitext"]["fda"]["hparams"]["n_anchor"] = 8
    msg = _error(cfg)
    assert "'n_anchor'" in msg and "n_anchors" in msg


def test_per_init_refuses_construction_settings():
    cfg = _raw()
    cfg["suites"]["minitext"]["fda"]["per_init"] = {"ta": {"construct_steps": 5}}
    msg = _error(cfg)
    assert "per_init.ta" in msg and "'construct_steps'" in msg and "adapt_epochs" in msg


def test_unknown_baseline_hparam_lists_the_methods_fields():
    pytest.importorskip("baselines")
    cfg = _raw()
    cfg["suites"]["minitext"]["methods"]["ta"] = {"lam": 0.3}
    msg = _error(cfg)
    assert "suites.minitext.methods.ta" in msg and "'lam'" in msg and "alpha" in msg


def test_bad_baseline_hparam_type_is_reported():
    pytest.importorskip("baselines")
    cfg = _raw()
    cfg["suites"]["minitext"]["methods"]["wudi"] = {"steps": "many"}
    msg = _error(cfg)
    assert "suites.minitext.methods.wudi" in msg and "steps" in msg


def test_fda_init_needs_its_baseline():
    cfg = _raw()
    del cfg["suites"]["minitext"]["methods"]["tsvm"]
    msg = _error(cfg)
    assert "fda.inits" in msg and "'tsvm'" in msg


def test_unknown_suite_setting_lists_the_settings():
    pytest.importorskip("fda.bench.suites")
    cfg = _raw()
    cfg["suites"]["minitext"]["settings"] = {"stepz": 3}
    msg = _error(cfg)
    assert "suites.minitext.settings" in msg and "'stepz'" in msg and "steps" in msg


def test_names_with_underscores_are_refused():
    cfg = _raw()
    cfg["suites"]["minitext"]["tasks"] = ["tech_news"]
    assert "no underscores" in _error(cfg)


def test_every_problem_is_reported_at_once():
    cfg = _raw()
    cfg["suites"]["minitext"]["seedz"] = [0]
    cfg["suites"]["minivision"]["fda"]["n_blocks"] = -1
    msg = _error(cfg)
    assert "seedz" in msg and "minivision.fda.n_blocks" in msg


def test_overrides_like_snakemake_config():
    config = cfg_load.load_config([DEFAULT], ["smoke=true"])
    assert config["smoke"] is True
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cfg_load.load_config([DEFAULT], ["smoke"])


def test_smoke_overrides_apply_only_with_smoke():
    config = cfg_load.load_config([DEFAULT])
    full = cfg_views.effective_suite(config, "minivision")
    smoke = cfg_views.effective_suite({**config, "smoke": True}, "minivision")
    assert full["fda"]["n_blocks"] == 4 and smoke["fda"]["n_blocks"] == 2
    assert smoke["tasks"] == config["suites"]["minivision"]["smoke_overrides"]["tasks"]
    assert len(smoke["tasks"]) < len(full["tasks"])
    assert smoke["settings"]["preset"] == "smoke"
    assert smoke["fda"]["hparams"]["construct_steps"] == 5
    assert smoke["fda"]["hparams"]["adapt_lr"] == full["fda"]["hparams"]["adapt_lr"]  # deep merge keeps the rest
    assert "smoke_overrides" not in smoke


def test_fda_seeds_replace_every_suites_seeds_like_snakemake_passes_them():
    # snakemake's --config parses [0,1,2] into a list of strings
    config = cfg_load.validate_config({**_raw(), "fda_seeds": ["0", "1", "2"]})
    assert config["fda_seeds"] == [0, 1, 2]
    for suite in ("minitext", "minivision"):
        assert cfg_views.effective_suite(config, suite)["seeds"] == [0, 1, 2]
        assert cfg_views.effective_suite({**config, "smoke": True}, suite)["seeds"] == [0, 1, 2]
    assert "seed" in cfg_names.suite_wildcard_values(config, "minitext") and \
        cfg_names.suite_wildcard_values(config, "minitext")["seed"] == ["0", "1", "2"]
    assert cfg_views.effective_suite(cfg_load.validate_config(_raw()), "minitext")["seeds"] == [0]
    assert "fda_seeds.1: expected integer" in _error({**_raw(), "fda_seeds": ["0", "-1"]})
    assert "fda_seeds" in _error({**_raw(), "fda_seeds": [1, 1]})


def test_expert_seeds_replace_the_seeds_of_suites_that_fine_tune_their_experts():
    """The top-level `expert_seeds` (snakemake passes strings) reaches the suites whose experts are
    fine-tuned here, and the `eseed` wildcard; a suite's own default is [0]."""
    raw = _raw()
    assert {s["expert_source"] for s in raw["suites"].values()} == {"finetuned-here"}
    config = cfg_load.validate_config({**raw, "expert_seeds": ["0", "1", "2"]})
    assert config["expert_seeds"] == [0, 1, 2]
    for suite in ("minitext", "minivision"):
        assert cfg_views.effective_suite(config, suite)["expert_seeds"] == [0, 1, 2]
        assert cfg_views.effective_suite({**config, "smoke": True}, suite)["expert_seeds"] == [0, 1, 2]
        assert cfg_names.suite_wildcard_values(config, suite)["eseed"] == ["0", "1", "2"]
    assert cfg_names.configured_values(config)["eseed"] == ["0", "1", "2"]
    default = cfg_load.validate_config(_raw())
    assert cfg_views.effective_suite(default, "minitext")["expert_seeds"] == [0]
    assert cfg_names.suite_wildcard_values(default, "minitext")["eseed"] == ["0"]
    # the cell's hash says which expert seeds are behind its rows
    h = lambda c: cfg_names.config_hash(cfg_names.cell_slice(c, "minitext", "ta"))  # noqa: E731
    assert h(config) != h(default)
    assert "expert_seeds.1: expected integer" in _error({**_raw(), "expert_seeds": ["0", "x"]})
    assert "expert_seeds" in _error({**_raw(), "expert_seeds": [1, 1]})
    assert "less than the minimum of 0" in _error({**_raw(), "expert_seeds": [-1]})


def test_hub_or_local_experts_have_one_expert_seed():
    """The paper suites' experts come from the hub or local files: the top-level switch leaves them
    at expert seed 0, and a suite that asks for more is a config error naming the key."""
    paper = cfg_load.load_config([PAPER], ["expert_seeds=[0,1]"])
    for suite in paper["suites"]:
        assert cfg_views.effective_suite(paper, suite)["expert_seeds"] == [0], suite
        assert cfg_names.suite_wildcard_values(paper, suite)["eseed"] == ["0"]
    raw = _raw()
    raw["suites"]["minitext"]["expert_source"] = "local"
    raw["suites"]["minitext"]["expert_seeds"] = [0, 1]
    msg = _error(raw)
    assert "suites.minitext.expert_seeds" in msg and "hub or local experts have one expert seed" in msg
    raw["suites"]["minitext"]["expert_seeds"] = [0]
    cfg_load.validate_config(raw)
    mixed = cfg_load.validate_config({**raw, "expert_seeds": [0, 1]})  # the switch skips the local suite
    assert cfg_views.effective_suite(mixed, "minitext")["expert_seeds"] == [0]
    assert cfg_views.effective_suite(mixed, "minivision")["expert_seeds"] == [0, 1]


def test_expert_seed_0_keeps_the_training_seeds_of_before():
    """Expert seed 0 trains with the seeds the experts had before expert seeds existed
    (task_seed(data_seed, task, stage)); other expert seeds change them, not the data split."""
    from fda.bench.suites.base import no_expert_seeds, training_seed
    from fda.bench.suites.common import task_seed

    for data_seed in (0, 3):
        assert training_seed(data_seed, 0) == data_seed
        for stage in ("expert", "batches"):
            assert task_seed(training_seed(data_seed, 0), "tech", stage) == task_seed(data_seed, "tech", stage)
        others = {training_seed(data_seed, e) for e in range(1, 6)}
        assert len(others) == 5 and data_seed not in others
        assert task_seed(training_seed(data_seed, 1), "tech", "expert") != task_seed(data_seed, "tech", "expert")
    assert training_seed(0, 1) == training_seed(0, 1) != training_seed(1, 1)  # stable, and mixes the data seed
    with pytest.raises(ValueError):
        training_seed(0, -1)
    no_expert_seeds("vitb32", 0, "published")
    with pytest.raises(ValueError, match="one expert seed"):
        no_expert_seeds("vitb32", 1, "published")


def test_tasks_are_injected_into_suite_settings():
    pytest.importorskip("fda.bench.suites")
    config = cfg_load.load_config([DEFAULT])
    assert cfg_views.effective_suite(config, "minitext")["settings"]["tasks"] == config["suites"]["minitext"]["tasks"]


def test_config_hash_is_stable_and_order_free():
    assert cfg_names.config_hash({"a": 1, "b": [1, 2]}) == cfg_names.config_hash({"b": [1, 2], "a": 1})
    assert cfg_names.config_hash({"a": 1}) != cfg_names.config_hash({"a": 2})
    assert len(cfg_names.config_hash({})) == 12


def _with(cfg: dict, path: tuple, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return cfg_load.validate_config(cfg)


def test_slices_change_only_where_a_setting_is_read():
    base = cfg_load.load_config([DEFAULT])
    s = ("suites", "minitext")
    wudi_lr = _with(base, s + ("methods", "wudi", "lr"), 3e-5)
    assert cfg_names.merge_slice(wudi_lr, "minitext", "wudi") != cfg_names.merge_slice(base, "minitext", "wudi")
    assert cfg_names.merge_slice(wudi_lr, "minitext", "ta") == cfg_names.merge_slice(base, "minitext", "ta")
    assert cfg_names.adapt_slice(wudi_lr, "minitext", "wudi", "gauss", 0) != cfg_names.adapt_slice(base, "minitext", "wudi", "gauss", 0)
    assert cfg_names.adapt_slice(wudi_lr, "minitext", "ta", "gauss", 0) == cfg_names.adapt_slice(base, "minitext", "ta", "gauss", 0)
    assert cfg_names.construct_slice(wudi_lr, "minitext", "gauss", 0) == cfg_names.construct_slice(base, "minitext", "gauss", 0)

    epochs = _with(base, s + ("fda", "hparams", "adapt_epochs"), 7)
    assert cfg_names.construct_slice(epochs, "minitext", "gauss", 0) == cfg_names.construct_slice(base, "minitext", "gauss", 0)
    assert cfg_names.adapt_slice(epochs, "minitext", "ta", "gauss", 0) != cfg_names.adapt_slice(base, "minitext", "ta", "gauss", 0)

    per_init = _with(base, s + ("fda", "per_init", "tsvm"), {"adapt_epochs": 9})
    assert cfg_names.adapt_slice(per_init, "minitext", "tsvm", "weight", 0)["fda"]["adapt_epochs"] == 9
    assert cfg_names.adapt_slice(per_init, "minitext", "ta", "weight", 0) == cfg_names.adapt_slice(base, "minitext", "ta", "weight", 0)

    steps = _with(base, s + ("fda", "hparams", "construct_steps"), 11)
    assert cfg_names.construct_slice(steps, "minitext", "gauss", 0) != cfg_names.construct_slice(base, "minitext", "gauss", 0)
    h = lambda c, m, i=None: cfg_names.config_hash(cfg_names.cell_slice(c, "minitext", m, i))  # noqa: E731
    assert h(steps, "fda", "ta") != h(base, "fda", "ta") and h(steps, "ta") == h(base, "ta")
    assert h(base, "ta") != h(base, "tsvm")


def test_cells_follow_the_config():
    config = cfg_load.load_config([PAPER])
    cells = cfg_names.cells(config)
    assert "results/vitb16_wudi_fda.csv" in cells and "results/llama13b_individual.csv" in cells
    # vision suites: 9 methods and 6 inits (with isoc, isocts); GLUE and Llama: 7 and 4
    assert len(cells) == len(set(cells)) == 3 * (9 + 6) + 3 * (7 + 4)
    for c in cells:
        assert Path(c).stem.count("_") in (1, 2)


def test_fda_job_granularity_per_stage():
    config = cfg_load.load_config([DEFAULT])
    assert cfg_names.fda_granularity(config, "construct") == "coarse"
    cfg = _raw()
    cfg["fda_jobs"] = {"construct": "fine"}
    config = cfg_load.validate_config(cfg)
    assert cfg_names.fda_granularity(config, "construct") == "fine" and cfg_names.fda_granularity(config, "adapt") == "coarse"
    cfg["fda_jobs"] = {"construct": "fine", "assemble": "fine"}
    assert "'assemble'" in _error(cfg)


def test_construction_params_leave_out_adaptation_fields():
    config = cfg_load.load_config([PAPER])
    section = cfg_views.effective_suite(config, "robertal")
    construct = cfg_names.fda_hparams(section)
    assert "adapt_epochs" not in construct and construct["construct_steps"] == 1200
    assert cfg_names.fda_hparams(section, "pretrained")["adapt_epochs"] == 25
    assert cfg_names.fda_hparams(section, "wudi")["adapt_epochs"] == 15


def test_beyond_the_paper_construction_options_are_config_words():
    # the taskspan anchor init and the lbfgs optimiser are accepted by the schema and reach FDAConfig;
    # a misspelt optimiser is refused with the allowed values
    cfg = _raw()
    fda_cfg = cfg["suites"]["minivision"]["fda"]
    fda_cfg["anchor_inits"] = ["gauss", "taskspan"]
    fda_cfg["hparams"]["construct_optimizer"] = "lbfgs"
    config = cfg_load.validate_config(copy.deepcopy(cfg))
    section = cfg_views.effective_suite(config, "minivision")
    assert section["fda"]["anchor_inits"] == ["gauss", "taskspan"]
    assert cfg_names.fda_hparams(section)["construct_optimizer"] == "lbfgs"
    fda_cfg["hparams"]["construct_optimizer"] = "bfgs"
    assert "adamw, lbfgs" in _error(cfg)


def test_selection_overlays_are_valid_and_add_the_validated_cells_they_declare():
    """config/fda-selection.yaml and config/selection-iso.yaml (docs/selection.md): each valid over
    the default config, and each adds validated cells to the default's, keeping all of them."""
    default = cfg_load.load_config([ROOT / "config" / "config.yaml"])
    base = set(cfg_names.cells(default))
    added = {}
    for name in ("fda-selection.yaml", "selection-iso.yaml"):
        cells = set(cfg_names.cells(cfg_load.load_config([ROOT / "config" / "config.yaml", ROOT / "config" / name])))
        assert base < cells, name
        added[name] = cells - base
    assert added["selection-iso.yaml"] == {f"results/{s}_{m}_validated.csv" for s in ("minitext", "minivision")
                                           for m in ("isoc", "isocts")}
    # every FDA init gets a validated cell (the default: pretrained and TA only)
    assert added["fda-selection.yaml"] == {f"results/{s}_{i}_fda_validated.csv" for s in ("minitext", "minivision")
                                           for i in ("tsvm", "wudi")}


def test_robustness_variants_move_task_subsets_and_data_seeds():
    """config/robustness/v*.yaml (make robustness): each valid over the default config, at least
    three, each suite on its own data seed and a task subset unlike the default's and each other's."""
    default = cfg_load.load_config([ROOT / "config" / "config.yaml"])
    variants = sorted((ROOT / "config" / "robustness").glob("v*.yaml"))
    assert len(variants) >= 3
    for suite in ("minitext", "minivision"):
        seen = {(default["suites"][suite]["data_seed"], frozenset(default["suites"][suite]["tasks"]))}
        for v in variants:
            s = cfg_load.load_config([ROOT / "config" / "config.yaml", v])["suites"][suite]
            key = (s["data_seed"], frozenset(s["tasks"]))
            assert key[0] not in {k[0] for k in seen} and key[1] not in {k[1] for k in seen}, (v.name, suite)
            assert set(s["tasks"]) < set(default["suites"][suite]["tasks"])
            seen.add(key)
