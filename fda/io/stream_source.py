"""Reading sharded safetensors checkpoints block by block: the input side of streaming merges.

A :class:`StreamSource` is a lazily read checkpoint that knows which shard holds each key. Keys are
grouped into *blocks* by a regex on the key name (Llama: ``model.layers.{i}.``; everything else is
the block ``rest``); :func:`read_block` reads one block of base and experts together, opening each
(source, shard) once. :func:`check_compatible` validates experts against the base from headers only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from fda.io.checkpoints import (
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFETENSORS_INDEX,
    SAFETENSORS_WEIGHTS,
    CheckpointError,
    LazyCheckpoint,
)

StateDict = dict[str, torch.Tensor]

#: decoder layers of HF Llama-family models (also Mistral, Qwen2: same key layout)
LLAMA_BLOCK_PATTERN = r"^model\.layers\.(\d+)\."
REST_BLOCK = "rest"
#: tensors whose first dimension is the vocabulary (may differ when an expert added tokens)
VOCAB_KEYS = re.compile(r"(^|\.)(embed_tokens|lm_head)\.weight$")


class StreamingError(CheckpointError):
    """Streaming inputs that cannot be merged block by block (names the file, key and fix)."""


# --------------------------------------------------------------------------------------------
# Sources and blocks


class StreamSource(LazyCheckpoint):
    """A lazily read safetensors checkpoint (file or HF directory) with shard look-up per key."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        p = Path(path)
        if p.is_dir() and not (p / SAFETENSORS_WEIGHTS).exists() and not (p / SAFETENSORS_INDEX).exists():
            if (p / PICKLE_WEIGHTS).exists() or (p / PICKLE_INDEX).exists():
                raise StreamingError(
                    f"{p}: pickled (.bin) checkpoint; streaming reads safetensors only. Convert it once with "
                    f"fda.io.streaming.convert_bin_to_safetensors('{p}', '<out_dir>') (weights_only loading, shard by shard)."
                )
        super().__init__(p)
        self.name = name or p.name

    def shard_of(self, key: str) -> Path:
        """The shard file holding ``key``."""
        return self._key_to_file[self._check(key)]


def source_label(source: LazyCheckpoint) -> str:
    """``expert0 (/path/to/dir)``: how messages name a streamed source."""
    name = getattr(source, "name", None) or Path(source.path).name
    return f"{name} ({source.path})"


def is_float_key(source: LazyCheckpoint, key: str) -> bool:
    """Whether ``key`` is a floating-point tensor (the only ones merging methods see)."""
    return source.dtype(key) in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def block_of(key: str, pattern: str | re.Pattern = LLAMA_BLOCK_PATTERN) -> str:
    """Block name of ``key``: the matched prefix (``model.layers.3.``) or ``"rest"``."""
    m = re.match(pattern, key)
    return m.group(0) if m else REST_BLOCK


def plan_blocks(keys: Sequence[str], pattern: str | re.Pattern = LLAMA_BLOCK_PATTERN) -> dict[str, list[str]]:
    """Group ``keys`` into blocks, ordered by layer index (numeric), then ``rest``.

    Returns ``{block name: [keys in the checkpoint's order]}``.
    """
    rx = re.compile(pattern)
    blocks: dict[str, list[str]] = {}
    for k in keys:
        blocks.setdefault(block_of(k, rx), []).append(k)

    def order(name: str) -> tuple[int, int | str]:
        if name == REST_BLOCK:
            return (1, 0)
        m = rx.match(name)
        nums = [g for g in (m.groups() if m else ()) if g is not None and g.isdigit()]
        return (0, int(nums[0])) if nums else (0, name)  # type: ignore[return-value]

    return {b: blocks[b] for b in sorted(blocks, key=order)}


@dataclasses.dataclass(frozen=True)
class ShardRead:
    """One shard opening: ``keys`` of source ``source`` (0 = base, i = expert i) from ``shard``."""

    source: int
    shard: Path
    keys: tuple[str, ...]


def plan_reads(sources: Sequence[StreamSource], keys_per_source: Sequence[Sequence[str]]) -> list[ShardRead]:
    """The shard openings that read a block: one per (source, shard), in shard order."""
    plan: list[ShardRead] = []
    for i, (src, keys) in enumerate(zip(sources, keys_per_source, strict=True)):
        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            by_shard.setdefault(src.shard_of(k), []).append(k)
        plan += [ShardRead(i, s, tuple(ks)) for s, ks in sorted(by_shard.items())]
    return plan


def read_block(sources: Sequence[StreamSource], keys_per_source: Sequence[Sequence[str]], device: str = "cpu") -> list[StateDict]:
    """Read the keys of one block from every source, opening each (source, shard) once.

    Returns one state dict per source (``keys_per_source[i]`` of ``sources[i]``).
    """
    out: list[StateDict] = [{} for _ in sources]
    for r in plan_reads(sources, keys_per_source):
        # LazyCheckpoint.tensors opens the shard once for all keys that live in it
        out[r.source].update(sources[r.source].tensors(r.keys, device=device))
    return out


def iter_blocks(path: str | os.PathLike, pattern: str | re.Pattern = LLAMA_BLOCK_PATTERN) -> Iterator[tuple[str, StateDict]]:
    """Yield ``(block name, state dict of that block)`` for one checkpoint, block by block."""
    src = path if isinstance(path, StreamSource) else StreamSource(path)
    for name, keys in plan_blocks(src.keys(), pattern).items():
        yield name, read_block([src], [keys])[0]


# --------------------------------------------------------------------------------------------
# Validation (headers only)


def check_compatible(base: StreamSource, experts: Sequence[StreamSource], *, vocab_mismatch: str = "error") -> dict[str, int]:
    """Check every expert has every base key with the same shape and dtype (headers only).

    ``vocab_mismatch="truncate"`` accepts experts whose ``embed_tokens`` / ``lm_head`` have *more*
    rows than the base (an added pad token, as WizardMath-13B) and uses their first ``V_base`` rows.
    Returns ``{key: rows}`` for the keys to truncate. Raises :class:`StreamingError` naming the
    expert, key and fix.
    """
    if vocab_mismatch not in ("error", "truncate"):
        raise ValueError(f"vocab_mismatch must be 'error' or 'truncate', got {vocab_mismatch!r}")
    if not experts:
        raise StreamingError("stream_merge needs at least one expert directory")
    truncate: dict[str, int] = {}
    for i, e in enumerate(experts):
        missing = [k for k in base.keys() if k not in e]
        if missing:
            raise StreamingError(
                f"expert {i} ({e.path}): missing {len(missing)} tensors of the base, e.g. '{missing[0]}'; "
                "experts must be fine-tunes of the base architecture"
            )
        for k in base.keys():
            bs, es = base.shape(k), e.shape(k)
            if base.dtype(k) != e.dtype(k):
                raise StreamingError(
                    f"expert {i} ({e.path}), tensor '{k}': dtype {e.dtype(k)} vs base {base.dtype(k)}; "
                    "re-save the expert in the base's dtype (e.g. from_pretrained(torch_dtype=...) then save_pretrained)"
                )
            if bs == es:
                continue
            if vocab_mismatch == "truncate" and VOCAB_KEYS.search(k) and bs[1:] == es[1:] and es[0] > bs[0]:
                truncate[k] = bs[0]
                continue
            hint = ""
            if VOCAB_KEYS.search(k):
                hint = " (expert vocabulary larger than the base: pass vocab_mismatch='truncate' to merge the base's rows only)"
            raise StreamingError(f"expert {i} ({e.path}), tensor '{k}': shape {es} vs base {bs}{hint}")
    return truncate
