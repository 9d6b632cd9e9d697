"""Checkpoint I/O: safetensors files, HF directories (sharded), weights-only pickles, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from fda.io.checkpoints import (
    CheckpointError,
    LazyCheckpoint,
    atomic_path,
    load_state_dict,
    read_metadata,
    save_state_dict,
)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.layer.0.attention.self.query.weight": torch.randn(8, 8, generator=g),
        "encoder.layer.0.attention.self.query.bias": torch.randn(8, generator=g),
        "embeddings.position_ids": torch.arange(16).unsqueeze(0),
        "pooler.dense.weight": torch.randn(8, 8, generator=g, dtype=torch.float64),
    }


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_safetensors_round_trip_with_metadata(tmp_path):
    sd = _state()
    path = save_state_dict(sd, tmp_path / "m.safetensors", metadata={"method": "ta", "lambda": 0.3})
    _assert_equal(load_state_dict(path), sd)
    assert read_metadata(path) == {"method": "ta", "lambda": "0.3"}


def test_save_handles_views_and_shared_storage(tmp_path):
    base = torch.randn(4, 6)
    sd = {"a": base[:, :3], "b": base.t(), "c": base}
    path = save_state_dict(sd, tmp_path / "v.safetensors")
    _assert_equal(load_state_dict(path), {k: v.contiguous() for k, v in sd.items()})


def test_hf_directory_single_file(tmp_path):
    sd = _state()
    save_file(sd, str(tmp_path / "model.safetensors"))
    _assert_equal(load_state_dict(tmp_path), sd)


def test_hf_directory_sharded_index(tmp_path):
    sd = _state()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
        weight_map.update({k: name for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _assert_equal(load_state_dict(tmp_path), sd)

    lazy = LazyCheckpoint(tmp_path)
    assert sorted(lazy.keys()) == keys
    assert lazy.shape(keys[0]) == tuple(sd[keys[0]].shape)
    _assert_equal(lazy.tensors(keys), sd)
    with pytest.raises(CheckpointError, match="no tensor named 'missing.key'"):
        lazy.tensor("missing.key")


def test_sharded_index_with_missing_shard_names_it(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard-1.safetensors"):
        load_state_dict(tmp_path)


def test_pickle_weights_only(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    _assert_equal(load_state_dict(tmp_path), sd)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_equal(load_state_dict(tmp_path / "ckpt.pt"), sd)


def test_pickled_module_is_refused_not_unpickled(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(tmp_path / "module.pt")


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="directory without weights"):
        load_state_dict(tmp_path)
    path = save_state_dict(_state(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_state_dict(truncated)
    (tmp_path / "weights.npz").write_bytes(b"xx")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "weights.npz")


def test_atomic_files_get_the_umask_mode_not_mkstemp_private(tmp_path):
    from fda.io import atomic

    path = atomic.write_json_atomic({"a": 1}, tmp_path / "x.json")
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "temporary file left behind"


def test_atomic_write_is_rename(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real_replace(a, b)))
    save_state_dict(_state(), tmp_path / "m.safetensors")
    assert len(calls) == 1 and str(calls[0][1]).endswith("m.safetensors")


def test_metadata_order_is_canonical_so_files_are_byte_identical(tmp_path):
    # safetensors writes metadata in hash-map order; equal inputs must still give equal bytes
    meta = {f"key{i}": str(i) for i in range(12)}
    blobs = {save_state_dict(_state(), tmp_path / f"m{i}.safetensors", metadata=meta).read_bytes() for i in range(4)}
    assert len(blobs) == 1
    assert read_metadata(tmp_path / "m0.safetensors") == meta
    _assert_equal(load_state_dict(tmp_path / "m0.safetensors"), _state())


def test_saving_a_non_tensor_names_the_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"non-tensor value\(s\), e\.g\. 'a' \(list\)"):
        save_state_dict({"w": torch.zeros(2), "a": [1, 2]}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
