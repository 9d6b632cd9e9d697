"""Errors a person can act on, before any job runs: config values are checked against the
dataclasses that state their ranges, task names and the family against the suite, each problem is
reported once where it is, an empty config file is named, a result cell (or any file) the config
does not ask for is refused with the valid names, a failing job's log reaches the console, the CLI
prints the project's errors in one line, and a corrupt data asset names the file and the fix."""

from __future__ import annotations

import ast
import copy
import gzip
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fda.bench import cli
from fda.bench.config import load as cfg_load
from fda.bench.config import naming as cfg_names
from fda.bench.config.vocabulary import ConfigError
from fda.bench.settings import SettingsError
from fda.bench.suites import CorruptAssetError, MissingAssetError, assets, get_suite
from fda.bench.suites.minivision import MinivisionSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "config" / "config.yaml"
_VENV_SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAKEMAKE = str(_VENV_SNAKEMAKE) if _VENV_SNAKEMAKE.exists() else shutil.which("snakemake") or "snakemake"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def _raw() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def _set(cfg: dict, path: str, value) -> dict:
    """``cfg`` with the dotted ``path`` set to ``value`` (missing mappings created)."""
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return cfg


def _problems(cfg: dict) -> list[str]:
    """The problem lines of the ConfigError that validating ``cfg`` raises."""
    with pytest.raises(ConfigError) as info:
        cfg_load.validate_config(cfg)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid workflow config:"
    return [line.removeprefix("  - ") for line in lines[1:]]


def _only_problem(path: str, value) -> str:
    (problem,) = _problems(_set(_raw(), path, value))
    return problem


# ------------------------------------------------------------------------ 1. values are checked


@pytest.mark.parametrize("path, value, expected", [
    # baselines: the ranges of baselines.METHODS[m].hparams (their __post_init__)
    ("suites.minitext.methods.wudi.steps", -1, "steps must be ≥ 0"),
    ("suites.minitext.methods.wudi.lr", 0.0, "lr must be a positive finite number"),
    ("suites.minitext.methods.wudi.lr", float("nan"), "lr must be a positive finite number"),
    ("suites.minitext.methods.ta.alpha", float("inf"), "alpha must be a finite number"),
    ("suites.minivision.methods.ties.topk", 0, "topk is a percentage in (0, 100]"),
    ("suites.minivision.methods.ties.topk", 150.0, "topk is a percentage in (0, 100]"),
    ("suites.minivision.methods.tsvm.coverage", "everything", "coverage"),
    # FDA: fda.FDAConfig's own checks, field by field
    ("suites.minivision.fda.hparams.adapt_lr", -1.0, "FDAConfig.adapt_lr must be a positive finite number"),
    ("suites.minivision.fda.hparams.construct_lr", float("inf"), "FDAConfig.construct_lr must be a positive finite number"),
    ("suites.minitext.fda.hparams.sigma", 0.0, "FDAConfig.sigma must be a positive finite number"),
    ("suites.minitext.fda.hparams.n_anchors", 0, "FDAConfig.n_anchors must be an int >= 1"),
    ("suites.minitext.fda.hparams.adapt_batch", 0, "FDAConfig.adapt_batch must be an int >= 1"),
    ("suites.minitext.fda.hparams.construct_steps", -5, "FDAConfig.construct_steps must be an int >= 0"),
    ("suites.minitext.fda.hparams.ta_lambda", float("nan"), "FDAConfig.ta_lambda must be a finite number"),
    ("suites.minivision.fda.per_init.ta.adapt_lr", float("inf"), "FDAConfig.adapt_lr must be a positive finite number"),
    # the suites' settings: types and the ranges their dataclasses state
    ("suites.minitext.settings.steps", 0, "must be >= 1"),
    ("suites.minitext.settings.lr", float("nan"), "must be > 0"),
    ("suites.minitext.settings.warmup_frac", 1.5, "must be >= 0 and <= 1"),
    ("suites.minivision.settings.hidden_size", 0, "must be >= 1"),
    ("suites.minivision.settings.batch_size", "many", "expected int"),
])
def test_out_of_range_values_name_the_key_and_the_range(path, value, expected):
    problem = _only_problem(path, value)
    assert problem.startswith(f"{path}: "), problem
    assert expected in problem, problem


@pytest.mark.parametrize("path, value, expected", [
    ("suites.minitext.fda.n_blocks", 0, "less than the minimum of 1"),
    ("suites.minitext.seeds", [-1], "less than the minimum of 0"),
    ("suites.minitext.data_seed", -3, "less than the minimum of 0"),
    ("suites.minitext.eval_limit", 0, "less than the minimum of 1"),
    ("suites.minitext.smoke_overrides.eval_limit", 0, "less than the minimum of 1"),
])
def test_workflow_keys_have_their_ranges_in_the_schema(path, value, expected):
    problem = _only_problem(path, value)
    assert path.rsplit(".", 1)[0] in problem and expected in problem


def test_settings_checked_together_name_the_settings():
    problem = _only_problem("suites.minivision.settings.patch_size", 5)
    assert problem.startswith("suites.minivision.settings: ") and "patch_size must divide 28" in problem


def test_a_value_only_the_merge_can_judge_is_left_to_it():
    # alpha is finite: whether α·Σ τ_i overflows depends on the checkpoints (the merge checks it)
    cfg_load.validate_config(_set(_raw(), "suites.minitext.methods.ta.alpha", 1e300))


def test_fda_ranges_are_declared_once_in_fdaconfig_not_in_the_schema():
    schema = cfg_load.load_schema()["$defs"]
    for group in ("fda_hparams", "fda_adapt_hparams"):
        for name, prop in schema[group]["properties"].items():
            assert not {"minimum", "exclusiveMinimum", "maximum"} & set(prop), (group, name)


@pytest.mark.parametrize("path, value, expected", [
    ("suites.minitext.tasks", ["tech", "bogus"], "unknown task 'bogus'; allowed: tech, society, life"),
    ("suites.minivision.tasks", ["fashionrot", "digitz"], "unknown task 'digitz'; allowed: fashionrot, fashionflip"),
])
def test_unknown_task_lists_the_valid_tasks(path, value, expected):
    problem = _only_problem(path, value)
    assert problem.startswith(f"{path}: ") and expected in problem


def test_unknown_paper_task_lists_the_ids_and_display_names():
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    paper["suites"] = {"robertab": paper["suites"]["robertab"]}
    paper["suites"]["robertab"]["tasks"] = ["SST-2", "SST-3"]
    paper["suites"]["robertab"].pop("experts", None)
    (problem,) = _problems(paper)
    assert problem.startswith("suites.robertab.tasks: unknown task 'SST-3'; allowed: ") and "SST-2" in problem
    assert "sst2" in problem and problem.endswith("(the tasks of suite 'robertab')")


@pytest.mark.parametrize("suite, family, fits", [
    ("minivision", "bert", "use family: clip-vision or openclip"),
    ("minitext", "clip-vision", "use family: bert"),
    ("minitext", "roberta", "use family: bert"),
])
def test_a_family_that_does_not_fit_the_suite_is_an_error(suite, family, fits):
    problem = _only_problem(f"suites.{suite}.family", family)
    assert problem.startswith(f"suites.{suite}.family: {family!r} does not fit suite '{suite}'") and fits in problem


# ------------------------------------------------------------------------ 2. once, where it is


def test_a_typo_under_the_suite_is_reported_once_there():
    problems = _problems(_set(_raw(), "suites.minitext.methods.wudi.stepz", 3))
    assert problems == [problems[0]] and problems[0].startswith("suites.minitext.methods.wudi.stepz: ")


def test_a_typo_under_smoke_overrides_is_reported_once_there():
    problems = _problems(_set(_raw(), "suites.minitext.smoke_overrides.methods.wudi.stepz", 3))
    assert len(problems) == 1 and problems[0].startswith("suites.minitext.smoke_overrides.methods.wudi.stepz: ")


def test_an_unknown_key_is_named_by_its_own_path():
    (problem,) = _problems(_set(_raw(), "suites.minitext.smoke_overrides.fda.hparams.adapt_lrr", 1e-3))
    assert problem.startswith("suites.minitext.smoke_overrides.fda.hparams.adapt_lrr: unknown key 'adapt_lrr'")
    assert "adapt_lr" in problem.split("allowed keys:")[1]


@pytest.mark.parametrize("path, value", [
    ("suites.minitext.settings.stepz", 3),
    ("suites.minitext.settings.steps", 0),
    ("suites.minivision.settings.patch_size", 5),
    ("suites.minivision.fda.hparams.adapt_lr", -1.0),
    ("suites.minitext.tasks", ["tech", "bogus"]),
])
def test_a_problem_of_the_section_is_not_repeated_for_the_smoke_run(path, value):
    problems = _problems(_set(_raw(), path, value))
    assert len(problems) == 1 and "smoke_overrides" not in problems[0], problems


def test_the_same_mistake_in_both_places_is_reported_at_both():
    cfg = _set(_raw(), "suites.minitext.methods.wudi.steps", -1)
    _set(cfg, "suites.minitext.smoke_overrides.methods.wudi.steps", -2)
    problems = _problems(cfg)
    assert [p.split(":")[0] for p in problems] == ["suites.minitext.methods.wudi.steps",
                                                   "suites.minitext.smoke_overrides.methods.wudi.steps"]


def test_a_problem_only_the_merge_makes_says_so():
    # smoke tasks [tech, society]: an expert for `arts` (a full-run task) is fine in the full run only
    problems = _problems(_set(_raw(), "suites.minitext.experts.arts", {"path": "/x/arts"}))
    assert len(problems) == 1 and problems[0].startswith("suites.minitext.experts.arts: ")
    assert "smoke_overrides merged in" in problems[0]


# ------------------------------------------------------------------------ empty config files


def test_an_empty_config_file_is_named(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=f"{empty}: the config file is empty"):
        cfg_load.load_config([empty])


def test_a_config_file_without_suites_is_named(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("smoke: true\n")
    with pytest.raises(ConfigError, match=f"{bare}: no `suites:` section") as info:
        cfg_load.load_config([bare])
    assert "--config smoke=true" in str(info.value)


def test_validate_config_names_an_empty_file_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli.main(["validate-config", str(empty)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"fda-bench validate-config: error: {empty}: the config file is empty; a workflow config needs " \
                     "a `suites:` section (see config/config.yaml)"
    assert "--debug" in err[1] and "Traceback" not in "\n".join(err)


# ------------------------------------------------------------------------ 3. configured names only


def test_wildcard_values_are_the_configured_ones_per_suite():
    config = cfg_load.load_config([DEFAULT], ["smoke=true"])
    vision = cfg_names.suite_wildcard_values(config, "minivision")
    assert vision["init"] == ["tsvm", "wudi", "isocts"] and vision["anchorinit"] == ["weight"]
    assert vision["task"] == ["fashionrot", "digits"] and vision["block"] == ["0", "1"] and vision["seed"] == ["0"]
    assert cfg_names.configured_values(config)["init"] == ["pretrained", "ta", "tsvm", "wudi", "isocts"]
    assert cfg_names.wildcard_problems(config, {"suite": "minivision", "init": "tsvm", "task": "digits"}) == []
    (problem,) = cfg_names.wildcard_problems(config, {"suite": "minivision", "init": "ta"})
    assert problem.startswith("init 'ta' is not configured for suite 'minivision' (configured: tsvm, wudi")


def test_a_cell_the_config_does_not_ask_for_lists_the_cells():
    config = cfg_load.load_config([DEFAULT], ["smoke=true"])
    cfg_names.check_cell(config, "results/minivision_tsvm_fda.csv", {"suite": "minivision", "init": "tsvm"})
    with pytest.raises(ConfigError) as info:
        cfg_names.check_cell(config, "results/minivision_ta_fda.csv", {"suite": "minivision", "init": "ta"})
    listed = str(info.value).split("lists them):")[1].split()
    assert listed == cfg_names.cells(config)


def _snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target, extra, expected", [
    ("results/minitext_bogus.csv", [], "method 'bogus' is not configured for suite 'minitext'"),
    ("results/minivision_ta_fda.csv", ["--config", "smoke=true"], "init 'ta' is not configured for suite 'minivision'"),
], ids=["bogus-method", "init-not-in-smoke"])
def test_snakemake_refuses_an_unconfigured_cell_listing_the_cells(tmp_path, target, extra, expected):
    proc = _snakemake("-n", "--workflow-profile", "none", target, *extra, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{target} is not a result cell of this config" in text and expected in text, text[-3000:]
    config = cfg_load.load_config([DEFAULT], extra[1:])
    listed = text.split("lists them):")[1]
    for cell in cfg_names.cells(config):
        assert cell in listed
    assert target not in listed
    assert "\nrule " not in text  # no job was planned


def test_snakemake_refuses_a_task_of_another_suite(tmp_path):
    proc = _snakemake("-n", "--workflow-profile", "none", "work/minitext/eseed0/experts/fashionrot", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "task 'fashionrot' is not configured for suite 'minitext' (configured: tech, society, life" in text, text[-3000:]


def test_snakemake_names_a_configfile_without_suites(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("smoke: true\n")
    proc = _snakemake("-n", "--workflow-profile", "none", "--configfile", str(bare), cwd=tmp_path)
    assert proc.returncode != 0
    assert f"{bare}: no `suites:` section" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------ 4. failed logs on the console


def test_the_default_profile_shows_failed_logs():
    help_text = subprocess.run([SNAKEMAKE, "--help"], env=ENV, capture_output=True, text=True, timeout=120).stdout
    assert "--show-failed-logs" in help_text
    # snakemake auto-loads <Snakefile dir>/profiles/default (a link to workflow/profiles)
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "profile.v9+.yaml").read_text())
    assert profile["show-failed-logs"] is True


def test_a_failing_job_prints_its_log_with_the_fix(tmp_path):
    cfg = _raw()
    cfg["suites"] = {"minivision": cfg["suites"]["minivision"]}
    cfg["suites"]["minivision"]["settings"] = {"fashion_mnist": str(tmp_path / "no-fashion")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the default profile (auto-loaded) is in use: no --workflow-profile none
    proc = _snakemake("work/minivision/data", "--cores", "1", "--configfile", str(path), cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "fda-bench prepare-data: error: Fashion-MNIST not found at" in text, text[-3000:]
    assert "apt-get install dataset-fashion-mnist" in text
    assert "Traceback" not in (tmp_path / "logs" / "minivision" / "prepare_data.log").read_text()


# ------------------------------------------------------------------------ 5. one line from the CLI


def _corrupt_fashion(tmp_path: Path) -> Path:
    """A Fashion-MNIST directory whose training labels are truncated (the rest links the real files)."""
    d = tmp_path / "fashion"
    d.mkdir()
    src = Path(assets.FASHION_DEFAULT_DIR)
    for name in assets.FASHION_FILES.values():
        (d / name).symlink_to(src / name)
    labels = d / assets.FASHION_FILES["train_labels"]
    data = (src / labels.name).read_bytes()
    labels.unlink()
    labels.write_bytes(data[: len(data) // 2])
    return d


def test_a_project_error_is_one_line_and_exit_status_2(tmp_path, capsys):
    code = cli.main(["prepare-data", "--suite", "minivision", "--settings", json.dumps({"fashion_mnist": str(tmp_path / "nope")}),
                     "--seed", "0", "--out", str(tmp_path / "data")])
    assert code == cli.EXIT_ERROR == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"fda-bench prepare-data: error: Fashion-MNIST not found at {tmp_path / 'nope'}")
    assert "apt-get install dataset-fashion-mnist" in err[0]
    assert err[1] == ("fda-bench prepare-data: rerun as `fda-bench --debug prepare-data ...` (or with FDA_BENCH_DEBUG=1) "
                      "to see the traceback")
    assert len(err) == 2


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    args = ["prepare-data", "--suite", "minivision", "--settings", json.dumps({"fashion_mnist": str(tmp_path / "nope")}),
            "--seed", "0", "--out", str(tmp_path / "data")]
    with pytest.raises(MissingAssetError):
        cli.main(["--debug", *args])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(MissingAssetError):
        cli.main(args)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr("fda.bench.cli.configs.cmd_cells", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["cells", str(DEFAULT)])


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class named ``*Error`` in fda/ and baselines/."""
    out = []
    for path in [*(ROOT / "fda").rglob("*.py"), *(ROOT / "baselines").rglob("*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                out.append((module, node.name))
    return out


#: error classes that are not the user's to fix: a broken method registration, the sandbox's own
#: per-candidate signal (never leaves the sandbox)
BUGS = {("baselines.registry", "RegistrationError"), ("baselines.errors", "RegistrationError"),
        ("fda.bench.eval.llm.sandbox", "CandidateError")}


def test_every_project_error_class_is_printed_without_a_traceback():
    listed = []
    for module, name in cli.PROJECT_ERRORS:
        listed.append(getattr(importlib.import_module(module), name))
    for module, name in _error_classes():
        if (module, name) in BUGS:
            continue
        cls = getattr(importlib.import_module(module), name, None)
        assert cls is not None and issubclass(cls, tuple(listed)), f"{module}.{name}: add it to cli.PROJECT_ERRORS or BUGS"
        assert cli.is_project_error(cls.__new__(cls)), (module, name)


# ------------------------------------------------------------------------ settings ranges


def test_settings_ranges_are_checked_however_the_settings_are_built():
    with pytest.raises(SettingsError, match="setting 'steps': must be >= 1, got 0"):
        get_suite("minitext", {"steps": 0})
    with pytest.raises(SettingsError, match="setting 'lr': must be > 0"):
        get_suite("minivision", {"preset": "smoke", "lr": -1e-3})
    with pytest.raises(SettingsError, match="setting 'logit_scale'"):
        MinivisionSettings(logit_scale=float("inf"))
    MinivisionSettings.smoke()  # the presets are in range


# ------------------------------------------------------------------------ 6. corrupt assets


def test_a_truncated_fashion_mnist_file_names_the_file_and_the_fix(tmp_path):
    d = _corrupt_fashion(tmp_path)
    suite = get_suite("minivision", {"preset": "smoke", "fashion_mnist": str(d)})
    with pytest.raises(CorruptAssetError) as info:
        suite.prepare_data(tmp_path / "data", seed=0)
    msg = str(info.value)
    assert msg.startswith(f"{d / assets.FASHION_FILES['train_labels']} is corrupt (EOFError")
    assert "apt-get install --reinstall dataset-fashion-mnist" in msg
    assert isinstance(info.value, MissingAssetError)


def test_the_debian_copy_damaged_says_reinstall(tmp_path, monkeypatch):
    d = _corrupt_fashion(tmp_path)
    monkeypatch.setattr(assets, "FASHION_DEFAULT_DIR", str(d))
    with pytest.raises(CorruptAssetError, match=r"reinstall it with `apt-get install --reinstall dataset-fashion-mnist`$"):
        assets.load_fashion_mnist(str(d))


@pytest.mark.parametrize("content, expected", [
    (b"not gzip at all", r"is corrupt \(BadGzipFile"),
    (gzip.compress(b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + bytes(50)), "header announces 108"),
    (gzip.compress(b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big") + bytes(16)), "not an IDX file of unsigned bytes"),
], ids=["not-gzip", "short-idx", "float-idx"])
def test_a_damaged_idx_file_is_a_corrupt_asset(tmp_path, content, expected):
    d = _corrupt_fashion(tmp_path)
    (d / assets.FASHION_FILES["train_labels"]).write_bytes(content)
    with pytest.raises(CorruptAssetError, match=expected):
        assets.load_fashion_mnist(str(d))


@pytest.mark.parametrize("content, expected", [
    (b"\x00\x01\x02\x03" * 64, "NUL bytes"),
    (b"", "holds no quote"),
    (bytes(range(128, 256)) * 8, "not UTF-8"),
], ids=["binary", "empty", "not-utf8"])
def test_a_corrupt_fortunes_file_names_the_file_and_the_fix(tmp_path, monkeypatch, content, expected):
    d = tmp_path / "fortunes"
    d.mkdir()
    (d / "computers").write_bytes(content)
    monkeypatch.setattr(assets, "FORTUNES_DEFAULT_DIR", str(d))
    with pytest.raises(CorruptAssetError, match=expected) as info:
        assets.read_fortunes(d, "computers")
    assert str(d / "computers") in str(info.value)
    assert "reinstall it with `apt-get install --reinstall fortunes fortunes-min`" in str(info.value)


def test_a_corrupt_fortunes_file_stops_prepare_data(tmp_path):
    d = tmp_path / "fortunes"
    d.mkdir()
    for f in Path(assets.FORTUNES_DEFAULT_DIR).iterdir():
        (d / f.name).symlink_to(f)
    (d / "computers").unlink()
    (d / "computers").write_bytes(b"\x00" * 100)
    suite = get_suite("minitext", {"preset": "smoke", "fortunes_dir": str(d)})
    with pytest.raises(CorruptAssetError, match=f"fortunes category file {d / 'computers'} is corrupt"):
        suite.prepare_data(tmp_path / "data", seed=0)


def test_the_real_assets_still_load():
    data = assets.load_fashion_mnist(assets.FASHION_DEFAULT_DIR)
    assert data["train_images"].shape == (60000, 28, 28) and data["test_labels"].shape == (10000,)
    assert len(assets.read_fortunes(Path(assets.FORTUNES_DEFAULT_DIR), "computers")) > 100


def test_shipped_configs_are_still_valid():
    for path in (DEFAULT, ROOT / "config" / "paper.yaml"):
        for overrides in ([], ["smoke=true"]):
            cfg_load.load_config([path], overrides)
    assert copy.deepcopy(_raw()) == _raw()
