"""An HF shard index that lies about its shards is an error naming the index and the keys/files,
for eager loads (``load_state_dict``), lazy reads (``LazyCheckpoint`` / ``StreamSource``), pickle
``.bin`` indexes and the ``.bin`` -> safetensors conversion."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fda.io.checkpoints import (
    PICKLE_INDEX,
    SAFETENSORS_INDEX,
    CheckpointError,
    LazyCheckpoint,
    load_state_dict,
)
from fda.io.stream_source import StreamSource
from fda.io.streaming import convert_bin_to_safetensors

S1, S2, S3 = (f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))


def _sharded(tmp_path, shards: dict[str, list[str]], weight_map: dict[str, str] | None = None, pickle: bool = False):
    """Write shards holding the given keys, and an index (by default the true one)."""
    true_map = {}
    for name, keys in shards.items():
        sd = {k: torch.full((2, 2), float(i)) for i, k in enumerate(keys)}
        if pickle:
            torch.save(sd, tmp_path / name)
        else:
            save_file(sd, str(tmp_path / name))
        true_map.update({k: name for k in keys})
    index = tmp_path / (PICKLE_INDEX if pickle else SAFETENSORS_INDEX)
    index.write_text(json.dumps({"metadata": {}, "weight_map": true_map if weight_map is None else weight_map}))
    return index


def _readers():
    return [load_state_dict, LazyCheckpoint, StreamSource]


@pytest.mark.parametrize("read", _readers())
def test_a_true_index_reads(tmp_path, read):
    _sharded(tmp_path, {S1: ["a", "b"], S2: ["c"], S3: ["d"]})
    got = read(tmp_path)
    assert sorted(got.keys()) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("read", _readers())
def test_index_naming_keys_the_shards_do_not_hold(tmp_path, read):
    wm = {"a": S1, "b": S1, "c": S2, "ghost.weight": S2, "phantom.bias": S1}
    index = _sharded(tmp_path, {S1: ["a", "b"], S2: ["c"]}, wm)
    with pytest.raises(CheckpointError) as err:
        read(tmp_path)
    msg = str(err.value)
    assert str(index) in msg and "'ghost.weight'" in msg and "'phantom.bias'" in msg and "(2)" in msg, msg
    assert "do not hold" in msg


@pytest.mark.parametrize("read", _readers())
def test_index_naming_a_shard_file_that_does_not_exist(tmp_path, read):
    index = _sharded(tmp_path, {S1: ["a"]}, {"a": S1, "b": S2})
    with pytest.raises(CheckpointError) as err:
        read(tmp_path)
    assert str(index) in str(err.value) and S2 in str(err.value) and "missing" in str(err.value)


@pytest.mark.parametrize("read", _readers())
def test_shards_of_the_index_naming_that_it_does_not_list(tmp_path, read):
    # model-00003-of-00003 exists but the index lists only shards 1 and 2: its tensors would vanish
    index = _sharded(tmp_path, {S1: ["a"], S2: ["b"], S3: ["c"]}, {"a": S1, "b": S2})
    with pytest.raises(CheckpointError) as err:
        read(tmp_path)
    msg = str(err.value)
    assert str(index) in msg and S3 in msg and "does not list" in msg, msg


@pytest.mark.parametrize("read", _readers())
def test_shard_holding_keys_the_index_maps_elsewhere_or_omits(tmp_path, read):
    index = _sharded(tmp_path, {S1: ["a", "b", "extra"], S2: ["c"]}, {"a": S1, "b": S1, "c": S2})
    with pytest.raises(CheckpointError) as err:
        read(tmp_path)
    msg = str(err.value)
    assert str(index) in msg and "'extra'" in msg and S1 in msg and "does not list" in msg, msg


def test_many_offending_keys_are_shown_first_few_and_counted(tmp_path):
    wm = {"a": S1, **{f"k{i:02d}": S1 for i in range(12)}}
    _sharded(tmp_path, {S1: ["a"]}, wm)
    with pytest.raises(CheckpointError, match=r"and 7 more; 12 in all"):
        load_state_dict(tmp_path)


def test_unrelated_files_and_other_totals_are_not_shards_of_the_index(tmp_path):
    _sharded(tmp_path, {S1: ["a"], S2: ["b"], S3: ["c"]})
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model-00001-of-00005.safetensors"))  # another save's total
    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter.safetensors"))
    assert sorted(load_state_dict(tmp_path)) == ["a", "b", "c"]


def test_pickle_bin_index_that_lies(tmp_path):
    b1, b2 = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    index = _sharded(tmp_path, {b1: ["a"], b2: ["b"]}, {"a": b1, "b": b2, "ghost": b2}, pickle=True)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path)
    assert str(index) in str(err.value) and "'ghost'" in str(err.value)
    with pytest.raises(CheckpointError, match="ghost"):
        convert_bin_to_safetensors(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out" / SAFETENSORS_INDEX).exists()  # no converted checkpoint


def test_pickle_bin_index_with_an_unlisted_shard(tmp_path):
    b1, b2 = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    index = _sharded(tmp_path, {b1: ["a"], b2: ["b"]}, {"a": b1}, pickle=True)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path)
    assert str(index) in str(err.value) and b2 in str(err.value)
    with pytest.raises(CheckpointError, match=b2):
        convert_bin_to_safetensors(tmp_path, tmp_path / "out")


def test_true_pickle_index_still_converts(tmp_path):
    b1, b2 = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    _sharded(tmp_path, {b1: ["a"], b2: ["b"]}, pickle=True)
    convert_bin_to_safetensors(tmp_path, tmp_path / "out")
    assert sorted(load_state_dict(tmp_path / "out")) == ["a", "b"]
