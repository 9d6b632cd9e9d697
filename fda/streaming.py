"""Block-by-block streaming over sharded safetensors checkpoints: merges at 13B scale on small RAM.

A checkpoint is never loaded whole. Keys are grouped into *blocks* by a regex on the key name
(Llama: ``model.layers.{i}.``; everything else, i.e. embed_tokens, norm and lm_head, is the block
``rest``). For each block the reads of base + experts are planned together: per checkpoint, the
block's keys are grouped by shard and each shard is opened once (``safe_open``, memory-mapped, then
closed, so pages of finished blocks are not kept mapped). The merged block is handed to a
:class:`~fda.sharded_writer.ShardedWriter`, which flushes size-capped shards atomically and writes the
HF index last.

Peak host memory ≈ (m + 2) × largest block + shard_size + the method's temporaries, for m experts,
independent of the number of layers (measured in ``benchmarks/bench_streaming.py``; numbers for
Llama-2-13B in ``docs/llm.md``).

Per-key methods (``ta``, ``average``, ``tsvm``, ``wudi``) stream exactly. ``ties`` trims each task
vector to its global top-k magnitudes; the global threshold of every task is computed exactly in a
first streaming pass by a two-level radix selection over float32 bit patterns (two reads of the
task vectors, 2 × 65536 counters per task, no per-entry storage); see :func:`global_topk_thresholds`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fda.checkpoints import (
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFETENSORS_INDEX,
    SAFETENSORS_WEIGHTS,
    CheckpointError,
    LazyCheckpoint,
    atomic_path,
)
from fda.sharded_writer import PROGRESS_FILE, ShardedWriter

StateDict = dict[str, torch.Tensor]
MergeFn = Callable[[StateDict, list[StateDict]], StateDict]

#: decoder layers of HF Llama-family models (also Mistral, Qwen2: same key layout)
LLAMA_BLOCK_PATTERN = r"^model\.layers\.(\d+)\."
REST_BLOCK = "rest"
#: tensors whose first dimension is the vocabulary (may differ when an expert added tokens)
VOCAB_KEYS = re.compile(r"(^|\.)(embed_tokens|lm_head)\.weight$")
_WEIGHT_FILE = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt)$|^(model\.safetensors\.index\.json|pytorch_model\.bin\.index\.json)$")


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
                    f"fda.streaming.convert_bin_to_safetensors('{p}', '<out_dir>') (weights_only loading, shard by shard)."
                )
        super().__init__(p)
        self.name = name or p.name

    def shard_of(self, key: str) -> Path:
        """The shard file holding ``key``."""
        return self._key_to_file[self._check(key)]


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


# --------------------------------------------------------------------------------------------
# Methods


def _baselines_merge_fn(method: str, hparams: Mapping[str, Any]) -> MergeFn:
    try:
        import baselines
    except ImportError as err:  # pragma: no cover - baselines ships with the project
        raise StreamingError(f"stream_merge('{method}'): the baselines package is not importable ({err})") from err
    # unknown method or hyperparameter -> error listing the valid ones, before any I/O
    baselines.build_hparams(baselines.method_spec(method), dict(hparams))

    def fn(pre: StateDict, experts: list[StateDict]) -> StateDict:
        return baselines.merge(method, pre, experts, **dict(hparams))

    return fn


def _block_method(method: str | MergeFn, hparams: Mapping[str, Any], base: StreamSource, experts: Sequence[StreamSource],
                  blocks: Mapping[str, list[str]], truncate: Mapping[str, int]) -> MergeFn:
    if callable(method):
        if hparams:
            raise ValueError("stream_merge: hparams are for named methods; bind them into your callable instead")
        return method
    if method == "ties":
        from fda.streaming_ties import ties_block_fn

        return ties_block_fn(base, experts, blocks, truncate, hparams)
    return _baselines_merge_fn(method, hparams)


# --------------------------------------------------------------------------------------------
# The streaming merge


@dataclasses.dataclass
class StreamReport:
    """What :func:`stream_merge` did: blocks merged / skipped (resumed), tensors, bytes, seconds."""

    out_dir: Path
    index: Path
    blocks_merged: list[str]
    blocks_skipped: list[str]
    tensors: int
    total_bytes: int
    seconds: float


def stream_merge(
    method: str | MergeFn,
    base_dir: str | os.PathLike,
    expert_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    hparams: Mapping[str, Any] | None = None,
    shard_size: int | str = "5GB",
    block_pattern: str = LLAMA_BLOCK_PATTERN,
    resume: bool = False,
    vocab_mismatch: str = "error",
    files_from: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> StreamReport:
    """Merge ``expert_dirs`` onto ``base_dir`` block by block and write an HF sharded checkpoint.

    ``method``: a ``baselines`` name (``ta``, ``average``, ``tsvm``, ``wudi``, ``ties``) applied per
    block with ``hparams``, or a callable ``(pretrained_block, [expert_block, ...]) -> merged_block``
    (float tensors only). Exact for per-key methods; ``ties`` gets its exact global per-task
    thresholds from extra streaming passes (:mod:`fda.streaming_ties`). Non-float tensors are copied from the base; every non-weight file of
    ``files_from`` (default ``base_dir``: config, generation config, tokenizer) is copied, so
    ``out_dir`` loads with ``from_pretrained``.

    ``shard_size``: output shard cap (bytes or ``"2GB"``); ``resume``: keep blocks that a killed run
    already flushed. Peak memory is about (m + 2) blocks + ``shard_size``.
    """
    t0 = time.perf_counter()
    base = StreamSource(base_dir, "base")
    experts = [StreamSource(d, f"expert{i}") for i, d in enumerate(expert_dirs)]
    truncate = check_compatible(base, experts, vocab_mismatch=vocab_mismatch)
    blocks = plan_blocks(base.keys(), block_pattern)
    hparams = dict(hparams or {})
    if isinstance(method, str):
        _baselines_merge_fn(method, hparams)  # unknown method / hyperparameter: fail before any pass
    out = Path(out_dir)
    for src in [base, *experts]:
        if out.resolve() == src.path.resolve():
            raise StreamingError(f"out_dir {out} is an input checkpoint; choose another directory")
    if resume and _complete_output(out, base.keys()):
        # a finished run (killed at most after its index was written): keep it as it is
        copy_model_files(files_from or base_dir, out)
        (out / PROGRESS_FILE).unlink(missing_ok=True)
        index = out / SAFETENSORS_INDEX
        total = int(json.loads(index.read_text())["metadata"]["total_size"])
        return StreamReport(out, index, [], list(blocks), len(base.keys()), total, time.perf_counter() - t0)
    merge_fn = _block_method(method, hparams, base, experts, blocks, truncate)  # ties: threshold passes here
    writer = ShardedWriter(out, shard_size=shard_size, resume=resume)
    merged_names, skipped = [], []
    bar = _progress(blocks, progress)
    for name, keys in blocks.items():
        if name in writer.done_blocks:
            skipped.append(name)
            bar.update(1)
            continue
        fkeys = [k for k in keys if is_float_key(base, k)]
        parts = read_block([base, *experts], [keys] + [fkeys] * len(experts), device=device)
        pre, exps = parts[0], parts[1:]
        for e in exps:
            for k, rows in truncate.items():
                if k in e:
                    e[k] = e[k][:rows]
        merged = merge_fn({k: pre[k] for k in fkeys}, exps)
        missing = [k for k in fkeys if k not in merged]
        if missing:
            raise StreamingError(f"method {method!r} returned no tensor for '{missing[0]}' (block {name})")
        block_out = {k: (merged[k] if k in merged else pre[k]) for k in keys}
        del parts, pre, exps, merged
        writer.add_block(name, block_out)
        del block_out
        merged_names.append(name)
        bar.update(1)
    bar.close()
    method_name = method if isinstance(method, str) else getattr(method, "__name__", "callable")
    index = writer.finish(metadata={"merge_method": str(method_name)})
    copy_model_files(files_from or base_dir, out)
    total = int(json.loads(index.read_text())["metadata"]["total_size"])
    return StreamReport(out, index, merged_names, skipped, len(base.keys()), total, time.perf_counter() - t0)


def _complete_output(out: Path, keys: Sequence[str]) -> bool:
    index = out / SAFETENSORS_INDEX
    if not index.is_file():
        return False
    try:
        wm = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    return set(wm) == set(keys) and all((out / f).is_file() for f in set(wm.values()))


def copy_model_files(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Copy the non-weight files of an HF directory (config, tokenizer, generation config) atomically."""
    src = Path(src_dir)
    copied: list[Path] = []
    if not src.is_dir():
        return copied
    for f in sorted(src.iterdir()):
        if not f.is_file() or _WEIGHT_FILE.search(f.name) or f.name == PROGRESS_FILE or f.name.startswith("."):
            continue
        with atomic_path(Path(out_dir) / f.name) as tmp:
            shutil.copyfile(f, tmp)
        copied.append(Path(out_dir) / f.name)
    return copied


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(blocks: Mapping[str, list[str]], enabled: bool):  # noqa: ANN202
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=len(blocks), desc="blocks", unit="block")


# --------------------------------------------------------------------------------------------
# .bin -> safetensors


def convert_bin_to_safetensors(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *, shard_size: int | str = "5GB") -> Path:
    """Convert a pickled HF checkpoint (``pytorch_model.bin`` or its sharded index) to safetensors.

    Each ``.bin`` shard is loaded alone with ``torch.load(weights_only=True, mmap=True)`` (no
    arbitrary unpickling; peak memory about one input shard + one output shard), written through
    :class:`ShardedWriter`, then dropped. Tied tensors get their own storage. Non-weight files are
    copied. Returns the written index path.
    """
    src = Path(src_dir)
    index = src / PICKLE_INDEX
    if (src / PICKLE_WEIGHTS).is_file():
        shards = [src / PICKLE_WEIGHTS]
    elif index.is_file():
        shards = [src / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif src.is_file() and src.suffix in (".bin", ".pt", ".pth"):
        shards = [src]
    else:
        raise StreamingError(f"{src}: no {PICKLE_WEIGHTS} or {PICKLE_INDEX} to convert")
    writer = ShardedWriter(out_dir, shard_size=shard_size)
    for shard in shards:
        try:
            sd = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles
            raise StreamingError(f"{shard}: torch.load(weights_only=True) refused it ({type(err).__name__}: {err}); only plain tensor state dicts convert") from err
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise StreamingError(f"{shard}: not a state dict of tensors")
        seen: dict[int, str] = {}
        for k, t in sd.items():
            ptr = t.untyped_storage().data_ptr()
            # tied weights (lm_head = embed_tokens) share storage: safetensors needs separate buffers
            writer.add(k, t.clone() if ptr in seen else t, block=shard.name)
            seen[ptr] = k
        del sd
        writer.flush()
    path = writer.finish(metadata={"converted_from": "pytorch_model.bin"})
    if src.is_dir():
        copy_model_files(src, out_dir)
    return path
