"""Incremental, crash-safe writer of HF-style sharded safetensors checkpoints.

Tensors are added block by block; a shard is flushed (atomically, via
:func:`fda.io.checkpoints.atomic_path`) when the buffered bytes reach ``shard_size``. The HF index
``model.safetensors.index.json`` is written **last**, atomically, so a killed run never leaves an
index that names missing shards. A small progress manifest (``.stream-progress.json``) records, after
every flush, which shards exist and which blocks they hold, so a resumed run keeps the blocks that
are entirely in flushed shards and recomputes the rest.

Final shard names follow ``save_pretrained``: ``model-00001-of-00004.safetensors``. While writing,
shards are named ``model-00001.safetensors`` (the total is unknown until the end) and renamed when
the writer finishes, just before the index is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from fda.io.checkpoints import SAFETENSORS_INDEX, CheckpointError, save_state_dict, write_json_atomic

PROGRESS_FILE = ".stream-progress.json"
_PARTIAL_RE = re.compile(r"^model-(\d{5})\.safetensors$")
_FINAL_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"5GB"``, ``"500MB"``, ``"2GiB"`` (HF ``max_shard_size`` style)."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"shard size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot parse size {size!r}: use an int (bytes) or e.g. '500MB', '5GB', '2GiB'")
    return parse_size(int(float(m.group(1)) * _UNITS[m.group(2).upper()]))


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ShardedWriter:
    """Write a checkpoint as size-capped safetensors shards plus an HF index.

    Use::

        w = ShardedWriter(out_dir, shard_size="2GB", resume=True)
        for block, state in blocks:
            if block in w.done_blocks: continue
            w.add_block(block, state)   # may flush one or more shards
        w.finish(metadata={"format": "pt"})

    ``resume=False`` (default) first removes an existing index and our partial shards, so the
    directory can never pair an old index with new shards. Memory: at most ``shard_size`` bytes
    buffered plus the block being added (a single tensor larger than the cap gets its own shard).
    """

    def __init__(self, out_dir: str | os.PathLike, *, shard_size: int | str = "5GB", resume: bool = False,
                 run_key: str | None = None):
        self.out_dir = Path(out_dir)
        # what the shards are a merge of: a resumed run keeps only blocks written under the same key
        self.run_key = run_key
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = parse_size(shard_size)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_blocks: dict[str, str] = {}  # key -> block of buffered tensors
        self._buffer_bytes = 0
        # flushed shards: partial file name -> {key: block}
        self._shards: dict[str, dict[str, str]] = {}
        self._sizes: dict[str, int] = {}  # key -> bytes, for the index total_size
        self._finished = False
        self._current: set[str] = set()  # the block being added (its flushed parts are not yet valid)
        index = self.out_dir / SAFETENSORS_INDEX
        if index.exists():
            # Never let an old index describe new shards: drop it before writing anything.
            index.unlink()
        if resume:
            self._load_progress()
        else:
            self._clean_partials(keep=set())
            (self.out_dir / PROGRESS_FILE).unlink(missing_ok=True)
        self.done_blocks: frozenset[str] = frozenset(self._complete_blocks())

    # -- resume ------------------------------------------------------------------------------------
    def _load_progress(self) -> None:
        path = self.out_dir / PROGRESS_FILE
        if not path.exists():
            self._clean_partials(keep=set())
            return
        try:
            data = json.loads(path.read_text())
            shards = {str(s["file"]): {str(k): str(b) for k, b in s["blocks"].items()} for s in data["shards"]}
            sizes = {str(k): int(v) for k, v in data["sizes"].items()}
            incomplete = set(data.get("incomplete", []))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: unreadable progress manifest ({err}); delete it (and {self.out_dir}'s shards) to start over") from err
        if data.get("run_key") != self.run_key:  # shards of another merge (other method, settings or inputs)
            self._clean_partials(keep=set())
            return
        present = {f: kb for f, kb in shards.items() if (self.out_dir / f).is_file()}
        # a block is kept only if none of its tensors sits in a lost shard or was never flushed
        lost_blocks = incomplete | {b for f, kb in shards.items() if f not in present for b in kb.values()}
        self._shards = {f: kb for f, kb in present.items() if not (set(kb.values()) & lost_blocks)}
        self._sizes = {k: sizes[k] for kb in self._shards.values() for k in kb}
        self._clean_partials(keep=set(self._shards))
        self._write_progress()

    def _clean_partials(self, keep: set[str]) -> None:
        for p in self.out_dir.iterdir():
            if (_PARTIAL_RE.match(p.name) or _FINAL_RE.match(p.name)) and p.name not in keep:
                p.unlink()

    def _complete_blocks(self) -> set[str]:
        flushed = {b for kb in self._shards.values() for b in kb.values()}
        return flushed - set(self._buffer_blocks.values()) - self._open_blocks()

    def _open_blocks(self) -> set[str]:
        return set(self._current)

    def _write_progress(self) -> None:
        open_blocks = sorted(set(self._buffer_blocks.values()) | self._open_blocks())
        data = {
            "shards": [{"file": f, "blocks": kb} for f, kb in sorted(self._shards.items())],
            "sizes": self._sizes,
            # blocks with tensors still in memory: any flushed part of them is not reusable
            "incomplete": open_blocks,
            "run_key": self.run_key,
        }
        write_json_atomic(data, self.out_dir / PROGRESS_FILE)

    # -- writing -----------------------------------------------------------------------------------
    def add_block(self, block: str, state: Mapping[str, torch.Tensor]) -> None:
        """Buffer all tensors of ``block``; flush shards whenever the cap is reached."""
        if self._finished:
            raise RuntimeError("ShardedWriter: add_block after finish")
        self._current = {block}
        for key, t in state.items():
            self.add(key, t, block=block)
        self._current = set()
        if self._shards:  # record that the block is no longer open (its flushed parts become valid)
            self._write_progress()

    def add(self, key: str, tensor: torch.Tensor, *, block: str = "") -> None:
        if key in self._sizes or key in self._buffer:
            raise CheckpointError(f"{self.out_dir}: tensor '{key}' written twice (block '{block}')")
        nbytes = tensor_nbytes(tensor)
        if self._buffer and self._buffer_bytes + nbytes > self.shard_size:
            self.flush()
        self._buffer[key] = tensor.detach().to("cpu")
        self._buffer_blocks[key] = block
        self._buffer_bytes += nbytes
        if self._buffer_bytes >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered tensors as the next shard (atomically) and record progress."""
        if not self._buffer:
            return
        name = f"model-{self._next_number():05d}.safetensors"
        save_state_dict(self._buffer, self.out_dir / name, metadata={"format": "pt"})
        self._shards[name] = dict(self._buffer_blocks)
        for k, t in self._buffer.items():
            self._sizes[k] = tensor_nbytes(t)
        self._buffer, self._buffer_blocks, self._buffer_bytes = {}, {}, 0
        self._write_progress()

    def _next_number(self) -> int:
        used = [int(_PARTIAL_RE.match(f).group(1)) for f in self._shards]  # type: ignore[union-attr]
        return max(used, default=0) + 1

    def finish(self, metadata: Mapping[str, object] | None = None) -> Path:
        """Flush, rename shards to ``model-0000i-of-0000n``, write the index last. Returns its path."""
        self.flush()
        partial = sorted(self._shards, key=lambda f: int(_PARTIAL_RE.match(f).group(1)))  # type: ignore[union-attr]
        n = len(partial)
        weight_map: dict[str, str] = {}
        for i, f in enumerate(partial, start=1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / f, self.out_dir / final)
            weight_map.update({k: final for k in self._shards[f]})
        meta = {"total_size": sum(self._sizes.values()), **dict(metadata or {})}
        if self.run_key is not None:
            meta["run_key"] = self.run_key
        index = {"metadata": meta, "weight_map": weight_map}
        path = write_json_atomic(index, self.out_dir / SAFETENSORS_INDEX)
        (self.out_dir / PROGRESS_FILE).unlink(missing_ok=True)
        self._finished = True
        return path

    @property
    def written_keys(self) -> set[str]:
        return set(self._sizes) | set(self._buffer)


def shard_files(out_dir: str | os.PathLike) -> list[Path]:
    """Shard files named in ``out_dir``'s index (sorted)."""
    idx = json.loads((Path(out_dir) / SAFETENSORS_INDEX).read_text())
    return [Path(out_dir) / f for f in sorted(set(idx["weight_map"].values()))]
