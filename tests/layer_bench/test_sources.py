"""Source specs: parsing, local/hub/recipe resolution (offline fail-fast), verification."""

from __future__ import annotations

import time

import pytest
import torch

from fda.io.checkpoints import save_state_dict
from fda.bench.sources import (
    DatasetSpec,
    Source,
    SourceError,
    atomic_dir,
    checkpoint_specs,
    load_split,
    open_task_split,
    parse_settings,
    parse_source,
    prepare_task_data,
    resolve_source,
    sha256_file,
    tensor_specs,
    verify_checkpoint,
)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("hf:openai/clip-vit-base-patch32", Source("hub", "openai/clip-vit-base-patch32")),
        ("tanganke/clip-vit-base-patch32_mnist", Source("hub", "tanganke/clip-vit-base-patch32_mnist")),
        ("hf:SphereLab/nlu_models_in_FDA/cola/roberta-base_lr1e-05@main",
         Source("hub", "SphereLab/nlu_models_in_FDA", "cola/roberta-base_lr1e-05", "main")),
        ("recipe:finetune", Source("recipe", "finetune")),
        ("/abs/path/model", Source("local", "/abs/path/model")),
        ("./rel/model", Source("local", "rel/model")),
        ("file:models/x", Source("local", "models/x")),
    ],
)
def test_parse(spec, want):
    assert parse_source(spec) == want


def test_parse_errors():
    with pytest.raises(SourceError, match="empty"):
        parse_source("  ")
    with pytest.raises(SourceError, match="recipe needs a name"):
        parse_source("recipe:")
    with pytest.raises(SourceError, match="hf:owner/name"):
        parse_source("hf:justonename")


def test_existing_relative_path_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_source("owner/name").kind == "local"


def test_local_dir_resolves(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert resolve_source(str(d)) == d
    with pytest.raises(SourceError, match="local source not found"):
        resolve_source(str(tmp_path / "missing"))


def test_recipe_is_not_fetched():
    with pytest.raises(SourceError, match="built by the suite"):
        resolve_source("recipe:finetune")


def test_hub_offline_fails_fast_with_download_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        resolve_source("hf:tanganke/clip-vit-base-patch32_mnist", cache_dir=tmp_path / "hf")
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "tanganke/clip-vit-base-patch32_mnist" in msg and "download" in msg and "--local-dir" in msg


def test_hub_dataset_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        load_split(DatasetSpec("fda-bench-test/no-such-dataset", None, "test"), cache_dir=str(tmp_path / "ds"))
    assert time.monotonic() - t0 < 10
    assert "fda-bench-test/no-such-dataset" in str(err.value) and "save_to_disk" in str(err.value)


# ------------------------------------------------------------------ verification


def _state():
    return {"a.weight": torch.randn(4, 3), "a.bias": torch.zeros(4), "b": torch.ones(2, dtype=torch.float16)}


def test_verify_ok_and_specs_from_headers(tmp_path):
    st = _state()
    f = save_state_dict(st, tmp_path / "m.safetensors")
    assert checkpoint_specs(f)["a.weight"][0] == (4, 3)
    verify_checkpoint(f, tensor_specs(st), sha256=sha256_file(f))


def test_verify_missing_key_names_file_and_key(tmp_path):
    st = _state()
    f = save_state_dict({k: v for k, v in st.items() if k != "a.bias"}, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match=r"m\.safetensors.*a\.bias"):
        verify_checkpoint(f, tensor_specs(st))


def test_verify_extra_key(tmp_path):
    st = _state()
    f = save_state_dict({**st, "c": torch.zeros(1)}, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match="unexpected"):
        verify_checkpoint(f, tensor_specs(st))


def test_verify_shape_mismatch(tmp_path):
    st = _state()
    f = save_state_dict({**st, "a.weight": torch.randn(4, 5)}, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match=r"m\.safetensors.*'a\.weight'.*\(4, 5\).*\(4, 3\)"):
        verify_checkpoint(f, tensor_specs(st))


def test_verify_dtype_mismatch(tmp_path):
    st = _state()
    f = save_state_dict({**st, "b": torch.ones(2)}, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match="'b' has dtype"):
        verify_checkpoint(f, tensor_specs(st))
    verify_checkpoint(f, tensor_specs(st), check_dtype=False)


def test_verify_sha256_mismatch(tmp_path):
    st = _state()
    f = save_state_dict(st, tmp_path / "m.safetensors")
    with pytest.raises(SourceError, match=r"m\.safetensors: sha256 mismatch"):
        verify_checkpoint(f, tensor_specs(st), sha256="0" * 64)
    with pytest.raises(SourceError, match="'weights.bin'.*missing"):
        verify_checkpoint(tmp_path, tensor_specs(st), sha256={"weights.bin": "0" * 64})


# ------------------------------------------------------------------ settings, data, atomic dirs


def test_parse_settings_unknown_and_type():
    from dataclasses import dataclass, field

    @dataclass
    class S:
        n: int = 1
        lr: float = 0.1
        name: str | None = None
        extra: dict[str, str] = field(default_factory=dict)

    assert parse_settings(S, {"n": 3, "extra": {"a": "b"}}, suite="x").n == 3
    assert parse_settings(S, {"lr": "1e-5"}, suite="x").lr == 1e-5  # YAML reads 1e-5 as a string
    with pytest.raises(ValueError, match="'lr'"):
        parse_settings(S, {"lr": "fast"}, suite="x")
    with pytest.raises(ValueError, match=r"unknown settings key.*\['bogus'\].*valid keys: n \(int, default 1\), lr \(float"):
        parse_settings(S, {"bogus": 1}, suite="x")
    with pytest.raises(ValueError, match="'n'"):
        parse_settings(S, {"n": "three"}, suite="x")


def test_prepare_task_data_marker_and_copy(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1, 2, 3]}),
                               "test": datasets.Dataset.from_dict({"x": [4, 5]})})
    dd.save_to_disk(str(tmp_path / "src"))
    spec = DatasetSpec(str(tmp_path / "src"), None, "test")
    marker = prepare_task_data(tmp_path / "marker" / "t", {"eval": spec}, copy=False)
    assert marker["splits"]["eval"]["num_rows"] == 2 and not (tmp_path / "marker" / "t" / "dataset_dict.json").exists()
    assert open_task_split(tmp_path / "marker" / "t", "eval", DatasetSpec("unused/x"))["x"] == [4, 5]
    prepare_task_data(tmp_path / "copy" / "t", {"eval": spec}, copy=True)
    assert open_task_split(tmp_path / "copy" / "t", "eval", DatasetSpec("unused/x"))["x"] == [4, 5]
    with pytest.raises(SourceError, match="no split 'validation'"):
        load_split(DatasetSpec(str(tmp_path / "src"), None, "validation"))


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("x")
    assert (tmp_path / "out" / "done").is_file()
