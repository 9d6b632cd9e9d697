"""Checkpoint I/O: safetensors files, HF model directories (sharded or not), atomic writes.

Everything here returns or takes plain state dicts, ``dict[str, torch.Tensor]``. Pickled
checkpoints are read only with ``torch.load(..., weights_only=True)``: a file that needs full
unpickling (e.g. a pickled ``nn.Module``) is refused with a message that says how to convert it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fda.io.atomic import atomic_path, write_json_atomic  # noqa: F401  (re-exported)

StateDict = dict[str, torch.Tensor]

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


#: safetensors header dtype names -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not in a format we accept."""


# --------------------------------------------------------------------------------------------
# Reading


def resolve_weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files behind ``path``: a file, or the shards of an HF model directory.

    Order: ``model.safetensors``, ``model.safetensors.index.json`` (shards), ``pytorch_model.bin``,
    ``pytorch_model.bin.index.json``. Raises ``CheckpointError`` naming what was expected, and when
    a shard index lists missing files or the directory holds shards of its naming it does not list.
    """
    return _resolve(path)[0]


def _resolve(path: str | os.PathLike) -> tuple[list[Path], ShardIndex | None]:
    """``resolve_weight_files`` plus the parsed shard index (None without one)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (expected a .safetensors file or an HF model directory)")
    if p.is_file():
        return [p], None
    for single in (SAFETENSORS_WEIGHTS, PICKLE_WEIGHTS):
        if (p / single).is_file():
            return [p / single], None
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        index = p / index_name
        if index.is_file():
            parsed = read_shard_index(index)
            return [p / shard for shard in parsed.values_sorted()], parsed
    raise CheckpointError(
        f"{p} is a directory without weights: expected one of {SAFETENSORS_WEIGHTS}, {SAFETENSORS_INDEX}, "
        f"{PICKLE_WEIGHTS} or {PICKLE_INDEX} (an HF `save_pretrained` directory)"
    )


#: HF shard names: ``model-00001-of-00004.safetensors``, ``pytorch_model-00001-of-00002.bin``
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<num>\d+)-of-(?P<total>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


def _few(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` items and the count, for messages: ``'a', 'b' (2)`` / ``'a', ... (and 7 more; 12 in all)``."""
    shown = ", ".join(items[:n])
    return f"{shown} (and {len(items) - n} more; {len(items)} in all)" if len(items) > n else f"{shown} ({len(items)})"


class ShardIndex:
    """A parsed HF shard index (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``):
    tensor name -> shard file name. :meth:`check_held` compares it with what the shards hold."""

    def __init__(self, path: Path, weight_map: dict[str, str]):
        self.path = path
        self.weight_map = weight_map

    def values_sorted(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def check_held(self, held: Mapping[Path, Iterable[str]]) -> None:
        """``held``: shard file (path) -> the tensor names it holds (from its header, or loaded).

        Raises ``CheckpointError`` naming the index and the offending keys when the index names a
        tensor its shard does not hold, or a shard holds a tensor the index does not map to it.
        """
        expected: dict[Path, set[str]] = defaultdict(set)
        for key, shard in self.weight_map.items():
            expected[self.path.parent / shard].add(key)
        absent, unlisted = [], []
        for path, keys in held.items():
            shard, have = Path(path).name, set(keys)
            absent += [f"{k!r} (in {shard})" for k in sorted(expected.get(Path(path), set()) - have)]
            unlisted += [f"{k!r} (in {shard})" for k in sorted(have - expected.get(Path(path), set()))]
        if absent:
            raise CheckpointError(
                f"{self.path}: the index names tensors that its shards do not hold: {_few(absent)}; the index does not "
                f"describe these shards (a partial copy, or shards of another save): re-save or re-download the checkpoint"
            )
        if unlisted:
            raise CheckpointError(
                f"{self.path}: shards hold tensors that the index does not list (or maps to another shard): "
                f"{_few(unlisted)}; the index does not describe these shards: re-save or re-download the checkpoint"
            )


_Index = ShardIndex  # the former private name


def read_shard_index(index: str | os.PathLike) -> ShardIndex:
    """Parse an HF shard index and check it against the directory: every shard it lists exists, and
    no shard of its naming (``model-0000X-of-0000N.safetensors``, same stem and N) is left out.
    Raises ``CheckpointError`` naming the index and the files."""
    index = Path(index)
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a valid shard index ({err}); expected a JSON object with 'weight_map'") from err
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names (str -> str)")
    missing = sorted({s for s in weight_map.values() if not (index.parent / s).is_file()})
    if missing:
        raise CheckpointError(f"{index}: shard files listed in the index are missing: {missing}")
    listed = set(weight_map.values())
    naming = set()
    for name in listed:
        m = _SHARD_NAME.match(name)
        if m:
            naming.add((m["stem"], len(m["num"]), m["total"], m["ext"]))
    unlisted = []
    for f in sorted(index.parent.iterdir()):
        m = _SHARD_NAME.match(f.name)
        if m and f.name not in listed and (m["stem"], len(m["num"]), m["total"], m["ext"]) in naming and f.is_file():
            unlisted.append(f.name)
    if unlisted:
        raise CheckpointError(
            f"{index}: shard files in the directory that the index does not list: {_few(unlisted)}; their tensors "
            f"would be silently left out: re-save the checkpoint or remove the stray shards"
        )
    return ShardIndex(index, weight_map)


_read_index = read_shard_index  # the former private name


def _load_one_file(f: Path, device: str) -> StateDict:
    if f.suffix == ".safetensors":
        try:
            return load_file(str(f), device=device)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{f}: cannot read safetensors file ({err}); the file may be truncated or corrupt, re-download or re-create it") from err
    if f.suffix in PICKLE_SUFFIXES:
        return _load_pickle_weights_only(f, device)
    raise CheckpointError(f"{f}: unknown checkpoint format '{f.suffix}' (accepted: .safetensors, {', '.join(PICKLE_SUFFIXES)})")


def _load_pickle_weights_only(f: Path, device: str) -> StateDict:
    try:
        obj = torch.load(str(f), map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles
        raise CheckpointError(
            f"{f}: cannot load with torch.load(weights_only=True) ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Only plain tensor state dicts are accepted; a pickled nn.Module (e.g. the task_vectors open_clip "
            "checkpoints) must be converted first with `fda-bench convert-openclip` on a trusted machine."
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{f}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def load_state_dict(path: str | os.PathLike, *, device: str = "cpu") -> StateDict:
    """Load all tensors of a checkpoint into memory.

    ``path`` is a ``.safetensors`` file, a ``.bin/.pt`` file (weights only), or an HF model
    directory (single file or sharded with an index). Returns ``{key: tensor}``.
    """
    state: StateDict = {}
    files, index = _resolve(path)
    held: dict[Path, list[str]] = {}
    for f in files:
        part = _load_one_file(f, device)
        dup = state.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f}: tensors {sorted(dup)[:5]} appear in more than one shard of {path}")
        state.update(part)
        held[f] = list(part)
    if index is not None:
        index.check_held(held)
    return state


class LazyCheckpoint:
    """Per-tensor, shard-aware read access to a safetensors checkpoint without loading it whole.

    ``keys()`` and ``shape(key)`` read only headers. ``tensors(keys)`` groups the requested keys by
    shard so each shard is opened once per call. Peak memory is what the caller keeps.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        files, index = _resolve(self.path)
        bad = [f for f in files if f.suffix != ".safetensors"]
        if bad:
            raise CheckpointError(f"{bad[0]}: lazy reading needs safetensors; convert with `fda-bench convert` first")
        self._key_to_file: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        held: dict[Path, list[str]] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    held[f] = list(h.keys())
                    for k in held[f]:
                        sl = h.get_slice(k)
                        self._key_to_file[k] = f
                        self._shapes[k] = tuple(sl.get_shape())
                        self._dtypes[k] = sl.get_dtype()
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{f}: cannot read safetensors header ({err}); the file may be corrupt") from err
        if index is not None:
            index.check_held(held)  # headers only: a lying index is an error, not a silently missing tensor

    def keys(self) -> list[str]:
        return list(self._key_to_file)

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_file

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[self._check(key)]

    def dtype(self, key: str) -> str:
        return self._dtypes[self._check(key)]

    def torch_dtype(self, key: str) -> torch.dtype:
        """The torch dtype of ``key`` (from the header)."""
        name = self.dtype(key)
        if name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor '{key}' has dtype {name}, which torch cannot hold")
        return SAFETENSORS_DTYPES[name]

    def _check(self, key: str) -> str:
        if key not in self._key_to_file:
            raise CheckpointError(f"{self.path}: no tensor named '{key}'")
        return key

    def tensor(self, key: str, device: str = "cpu") -> torch.Tensor:
        return self.tensors([key], device=device)[key]

    def tensors(self, keys: Iterable[str], device: str = "cpu") -> StateDict:
        by_file: dict[Path, list[str]] = defaultdict(list)
        for k in keys:
            by_file[self._key_to_file[self._check(k)]].append(k)
        out: StateDict = {}
        for f, ks in by_file.items():
            with safe_open(str(f), framework="pt", device=device) as h:
                for k in ks:
                    out[k] = h.get_tensor(k)
        return out


# --------------------------------------------------------------------------------------------
# Writing


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` to a safetensors file atomically. Tensors are made contiguous and unshared.

    ``metadata`` values must be strings (safetensors stores a str->str header).
    """
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: cannot save {len(bad)} non-tensor value(s), e.g. {bad[0]!r} "
                              f"({type(state[bad[0]]).__name__}); a state dict maps names to torch tensors")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    tensors = {k: _own_storage(v) for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_metadata_in_header(tmp)
    return Path(path)


def _sort_metadata_in_header(path: Path) -> None:
    """Rewrite the header's ``__metadata__`` with sorted keys, in place.

    safetensors writes metadata in hash-map order, which changes from process to process; sorted
    keys make equal inputs give byte-identical files (same config + seed -> same bytes). The
    re-serialised header has the same length (same characters, other order), so the data stays put.
    """
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        ordered = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # never expected; leave the (valid) file as written
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    # safetensors refuses tensors that share storage or are views: give each its own buffer.
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The str->str metadata header of a safetensors file."""
    f = Path(path)
    try:
        with safe_open(str(f), framework="pt") as h:
            return dict(h.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{f}: cannot read safetensors header ({err})") from err
