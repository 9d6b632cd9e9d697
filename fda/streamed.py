"""FDA for decoder LLMs (Llama-2-13B), one decoder layer per job, reading only that layer.

Every (layer, expert) construction job and every layer adaptation job is independent: each reads
the layer's tensors of base + experts (+ the TA-merged init) lazily from sharded safetensors and
writes one small file, so a workflow can fan them out (40 layers × 2 experts + 40 layers for
Llama-2-13B). The model object the FDA API needs is a **meta-device skeleton** built from
``config.json`` (all layers, no memory: block indices and seeds equal a full-model run); only the
rotary embedding is materialised on CPU, for ``part="layer"``.

Official setting (``FDAConfig.for_family("llama", init="ta")``): the MLP of each decoder layer,
8192 single-token anchors of width d, 200 construction steps, adaptation of one elementwise
coefficient tensor over the TA merge (λ 0.5), 50 epochs, batch 8192, cosine loss; everything outside
the MLPs is taken from the TA merge. ``part="layer"`` adapts the whole decoder layer instead.

Memory per job (13B, fp32): construction holds the MLP of base + one expert (2 × 3 × 5120 × 13824
≈ 0.85 GB each) plus anchors ``[8192, 5120]`` (168 MB) and the ``[8192, 13824]`` intermediates of
the double-backward graph (≈ 0.45 GB each, several alive): a few GB, on one GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from baselines.finite import check_finite, check_result
from fda.io.checkpoints import save_state_dict
from fda.io.sharded_writer import ShardedWriter
from fda.io.stream_source import (
    LLAMA_BLOCK_PATTERN,
    StreamingError,
    StreamSource,
    plan_blocks,
    read_block,
    source_label,
)
from fda.io.streaming import copy_model_files


def decoder_skeleton(model_dir: str | os.PathLike) -> nn.Module:
    """``AutoModelForCausalLM`` of ``model_dir``'s config on the meta device (structure only).

    The rotary embedding (a buffer the whole-layer block needs) is rebuilt on CPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    inner = getattr(model, "model", model)
    rot = getattr(inner, "rotary_emb", None)
    if rot is not None:
        inner.rotary_emb = type(rot)(config=cfg)  # real inv_freq on CPU
    return model


def _sources(base_dir: str | os.PathLike, expert_dirs: Sequence[str | os.PathLike]) -> tuple[StreamSource, list[StreamSource]]:
    return StreamSource(base_dir, "base"), [StreamSource(d, f"expert{i}") for i, d in enumerate(expert_dirs)]


def construct_layer(base_dir: str | os.PathLike, expert_dirs: Sequence[str | os.PathLike], layer: int, anchor_init: str, *,
                    config=None, experts_subset: Sequence[int] | None = None,  # noqa: ANN001 - fda.FDAConfig
                    out_paths: Sequence[str | os.PathLike] | None = None) -> list:
    """Construct anchors for decoder layer ``layer`` and the chosen experts (default: all).

    Reads only that layer's block tensors. ``out_paths[j]`` (one per chosen expert) receives the
    anchors via ``fda.api.save_anchors`` (atomic). Returns the ``ConstructResult`` list. The layer's
    tensors are checked as ``fda.construct_block`` checks them (errors name the checkpoint's path).
    """
    from fda.api import construct_block, save_anchors
    from fda.config import FDAConfig

    model = decoder_skeleton(base_dir)
    cfg = config or FDAConfig.for_family("llama", init="ta")
    base, experts = _sources(base_dir, expert_dirs)
    results = construct_block(model, base, experts, layer, anchor_init, cfg, experts_subset=experts_subset)
    if out_paths is not None:
        if len(out_paths) != len(results):
            raise ValueError(f"{len(out_paths)} out_paths for {len(results)} constructed experts")
        for res, path in zip(results, out_paths):
            save_anchors(res, path, metadata={"layer": layer, "anchor_init": anchor_init, "base": str(base_dir)})
    return results


def adapt_layer(base_dir: str | os.PathLike, expert_dirs: Sequence[str | os.PathLike], layer: int,
                anchor_paths: Sequence[str | os.PathLike], *, init: str = "ta", init_dir: str | os.PathLike | None = None,
                config=None, out_path: str | os.PathLike | None = None):  # noqa: ANN001, ANN201
    """Adapt decoder layer ``layer`` on the anchors of every expert (``anchor_paths`` in expert order).

    ``init_dir``: the merged init checkpoint (TA for the official setting), read lazily. Writes the
    adapted tensors (full keys) to ``out_path`` (safetensors, atomic). Returns the ``AdaptResult``.
    Non-finite anchors files, layer tensors or results are errors (``fda.load_anchors``,
    ``fda.adapt_block``), and then nothing is written.
    """
    from fda.api import adapt_block, load_anchors
    from fda.config import FDAConfig

    if len(anchor_paths) != len(expert_dirs):
        raise ValueError(f"{len(anchor_paths)} anchor files for {len(expert_dirs)} experts (one per expert, same order)")
    if init != "pretrained" and init_dir is None and init != "ta":
        raise StreamingError(f"init={init!r} needs init_dir (the merged checkpoint to adapt from)")
    model = decoder_skeleton(base_dir)
    cfg = config or FDAConfig.for_family("llama", init=init)
    base, experts = _sources(base_dir, expert_dirs)
    anchors = [load_anchors(p)[0] for p in anchor_paths]
    init_state = StreamSource(init_dir, "init") if init_dir is not None else None
    result = adapt_block(model, base, experts, layer, anchors, init, init_state, cfg)
    if out_path is not None:
        save_state_dict(result.params, out_path, metadata={"layer": str(layer), "init": init})
    return result


def assemble_streamed(source_dir: str | os.PathLike, block_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                      shard_size: int | str = "5GB", block_pattern: str = LLAMA_BLOCK_PATTERN, resume: bool = False) -> Path:
    """Write the FDA model: ``source_dir`` (the TA merge, or base) with the adapted tensors of
    ``block_files`` swapped in, block by block, as a sharded HF checkpoint. Returns the index path.

    Adapted tensors are cast to the source's dtype. Every adapted key must exist in the source, with
    its shape. Every tensor is checked to be finite before its block is written: a NaN/inf in the
    source is a ``MergeInputError`` naming it and the key, an adapted tensor that is non-finite
    (or overflows the source's dtype when cast) a ``NonFiniteError`` naming its file and key.
    """
    src = StreamSource(source_dir, "source")
    adapted = [StreamSource(f, Path(f).name) for f in block_files]
    owner: dict[str, int] = {}
    for i, a in enumerate(adapted):
        for k in a.keys():
            if k not in src:
                raise StreamingError(f"{a.path}: adapted tensor '{k}' is not in {source_dir}")
            if k in owner:
                raise StreamingError(f"tensor '{k}' appears in both {adapted[owner[k]].path} and {a.path}")
            if tuple(a.shape(k)) != tuple(src.shape(k)):
                raise StreamingError(f"{a.path}: adapted tensor '{k}' has shape {tuple(a.shape(k))} but {source_dir} has {tuple(src.shape(k))}")
            owner[k] = i
    writer = ShardedWriter(out_dir, shard_size=shard_size, resume=resume)
    for name, keys in plan_blocks(src.keys(), block_pattern).items():
        if name in writer.done_blocks:
            continue
        block = read_block([src], [keys])[0]
        for k in keys:
            if k not in owner:
                check_finite(source_label(src), k, block[k])
        for i, a in enumerate(adapted):
            mine = [k for k in keys if owner.get(k) == i]
            if mine:
                block.update({k: v.to(block[k].dtype) for k, v in a.tensors(mine).items()})
                for k in mine:
                    check_result(f"assemble_streamed({a.path})", f"the adapted tensor {k!r}", block[k], {},
                                 fix=f"the adapted block file holds NaN/inf, or values beyond {block[k].dtype}'s range; "
                                     "adapt this layer again (a lower adapt_lr)")
        writer.add_block(name, block)
    index = writer.finish(metadata={"merge_method": "fda"})
    copy_model_files(source_dir, out_dir)
    return index
