"""Block-by-block streaming over sharded safetensors checkpoints: merges at 13B scale on small RAM.

A checkpoint is never loaded whole. Keys are grouped into *blocks* by a regex on the key name
(Llama: ``model.layers.{i}.``; everything else, i.e. embed_tokens, norm and lm_head, is the block
``rest``). For each block the reads of base + experts are planned together: per checkpoint, the
block's keys are grouped by shard and each shard is opened once (``safe_open``, memory-mapped, then
closed, so pages of finished blocks are not kept mapped). The merged block is handed to a
:class:`~fda.io.sharded_writer.ShardedWriter`, which flushes size-capped shards atomically and writes the
HF index last.

Peak host memory ≈ (m + 2) × largest block + shard_size + the method's temporaries, for m experts,
independent of the number of layers (measured in ``benchmarks/bench_streaming.py``; numbers for
Llama-2-13B in ``docs/llm.md``).

Per-key methods (``ta``, ``average``, ``tsvm``, ``wudi``, ``isoc``, ``isocts``) stream exactly. ``ties`` trims each task
vector to its global top-k magnitudes; the global threshold of every task is computed exactly in a
first streaming pass by a two-level radix selection over float32 bit patterns (two reads of the
task vectors, 2 × 65536 counters per task, no per-entry storage); see :func:`global_topk_thresholds`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from baselines.finite import check_finite, check_result
from fda.io.checkpoints import (
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFETENSORS_INDEX,
    atomic_path,
    read_shard_index,
)
from fda.io.sharded_writer import PROGRESS_FILE, ShardedWriter
from fda.io.stream_source import (
    LLAMA_BLOCK_PATTERN,
    StateDict,
    StreamingError,
    StreamSource,
    check_compatible,
    is_float_key,
    plan_blocks,
    read_block,
    source_label,
)

MergeFn = Callable[[StateDict, list[StateDict]], StateDict]
_WEIGHT_FILE = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt)$|^(model\.safetensors\.index\.json|pytorch_model\.bin\.index\.json)$")

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
        from fda.io.streaming_ties import ties_block_fn

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
    thresholds from extra streaming passes (:mod:`fda.io.streaming_ties`). Non-float tensors are copied from the base; every non-weight file of
    ``files_from`` (default ``base_dir``: config, generation config, tokenizer) is copied, so
    ``out_dir`` loads with ``from_pretrained``.

    ``shard_size``: output shard cap (bytes or ``"2GB"``); ``resume``: keep blocks that a killed run
    of the same merge already flushed, or its finished output (same method, hyperparameters, inputs
    and options, recorded as ``run_key`` in the progress file and the index; anything else is
    merged anew). Peak memory is about (m + 2) blocks + ``shard_size``.

    Every float tensor read is checked to be finite (``MergeInputError`` naming the source directory
    and key; ``ties`` checks in its first threshold pass, before anything is written); named methods
    check their results (``NonFiniteError`` naming e.g. ``alpha``), and a callable's results are
    checked before its block is written. A failed run leaves no index, i.e. no checkpoint.
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
    run_key = _run_key(method, hparams, [base, *experts], block_pattern, vocab_mismatch, shard_size)
    if resume and _complete_output(out, base.keys(), run_key):
        # a finished run (killed at most after its index was written): keep it as it is
        copy_model_files(files_from or base_dir, out)
        (out / PROGRESS_FILE).unlink(missing_ok=True)
        index = out / SAFETENSORS_INDEX
        total = int(json.loads(index.read_text())["metadata"]["total_size"])
        return StreamReport(out, index, [], list(blocks), len(base.keys()), total, time.perf_counter() - t0)
    method_label = method if isinstance(method, str) else getattr(method, "__name__", "callable")
    merge_fn = _block_method(method, hparams, base, experts, blocks, truncate)  # ties: threshold passes here
    writer = ShardedWriter(out, shard_size=shard_size, resume=resume, run_key=run_key)
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
        # every value read is checked once, naming the source directory and key (MergeInputError)
        for src, part in zip([base, *experts], parts):
            for k in fkeys:
                check_finite(source_label(src), k, part[k])
        merged = merge_fn({k: pre[k] for k in fkeys}, exps)
        missing = [k for k in fkeys if k not in merged]
        if missing:
            raise StreamingError(f"method {method!r} returned no tensor for '{missing[0]}' (block {name})")
        block_out = {k: (merged[k] if k in merged else pre[k]) for k in keys}
        if callable(method):  # named methods check their own results (naming their hyperparameters)
            for k in fkeys:
                check_result(f"stream_merge({method_label})", f"the merged tensor {k!r} (block {name})", block_out[k], {},
                             fix="the merge callable returned NaN/inf; nothing was written for this block")
        del parts, pre, exps, merged
        writer.add_block(name, block_out)
        del block_out
        merged_names.append(name)
        bar.update(1)
    bar.close()
    index = writer.finish(metadata={"merge_method": str(method_label)})
    copy_model_files(files_from or base_dir, out)
    total = int(json.loads(index.read_text())["metadata"]["total_size"])
    return StreamReport(out, index, merged_names, skipped, len(base.keys()), total, time.perf_counter() - t0)


def _run_key(method: str | MergeFn, hparams: Mapping[str, Any], sources: Sequence[StreamSource], block_pattern: str,
             vocab_mismatch: str, shard_size: int | str) -> str:
    """What a merge's output depends on: the method (a callable by its ``__qualname__``: give
    different merge functions different names), its hyperparameters, the options, and each input's
    weight files by (path, size, mtime)."""
    label = method if isinstance(method, str) else "callable:" + getattr(method, "__qualname__", type(method).__qualname__)
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns)
             for src in sources for f in sorted({src.shard_of(k) for k in src.keys()})]
    blob = json.dumps({"method": label, "hparams": dict(hparams), "files": files, "block_pattern": block_pattern,
                       "vocab_mismatch": vocab_mismatch, "shard_size": str(shard_size)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _complete_output(out: Path, keys: Sequence[str], run_key: str) -> bool:
    """Whether ``out`` holds the finished output of this very merge (its index records ``run_key``)."""
    index = out / SAFETENSORS_INDEX
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
        wm, recorded = data["weight_map"], data["metadata"].get("run_key")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False
    return recorded == run_key and set(wm) == set(keys) and all((out / f).is_file() for f in set(wm.values()))


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
    parsed = None
    if (src / PICKLE_WEIGHTS).is_file():
        shards = [src / PICKLE_WEIGHTS]
    elif index.is_file():
        parsed = read_shard_index(index)  # listed shards exist, no unlisted shard of its naming
        shards = [src / s for s in parsed.values_sorted()]
    elif src.is_file() and src.suffix in (".bin", ".pt", ".pth"):
        shards = [src]
    else:
        raise StreamingError(f"{src}: no {PICKLE_WEIGHTS} or {PICKLE_INDEX} to convert")
    writer = ShardedWriter(out_dir, shard_size=shard_size)
    held: dict[Path, list[str]] = {}
    for shard in shards:
        try:
            sd = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles
            raise StreamingError(f"{shard}: torch.load(weights_only=True) refused it ({type(err).__name__}: {err}); only plain tensor state dicts convert") from err
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise StreamingError(f"{shard}: not a state dict of tensors")
        if parsed is not None:
            held[shard] = list(sd)
        seen: dict[int, str] = {}
        for k, t in sd.items():
            ptr = t.untyped_storage().data_ptr()
            # tied weights (lm_head = embed_tokens) share storage: safetensors needs separate buffers
            writer.add(k, t.clone() if ptr in seen else t, block=shard.name)
            seen[ptr] = k
        del sd
        writer.flush()
    if parsed is not None:
        parsed.check_held(held)  # before the index is written: a lying index converts to no checkpoint
    path = writer.finish(metadata={"converted_from": "pytorch_model.bin"})
    if src.is_dir():
        copy_model_files(src, out_dir)
    return path
