"""open_clip ViT image towers ↔ the canonical HF layout, the fused/split q-k-v transform, and the
one-time conversion of the task_vectors pickles (``zeroshot.pt``, ``<Task>/finetuned.pt``,
``head_<Task>.pt``) to safetensors.

Canonical layout = ``CLIPVisionModelWithProjection`` keys: ``vision_model.*`` (the CLIPVisionModel
layout) plus ``visual_projection.weight``. Key map (open_clip ``visual.`` prefix dropped):

=========================================  ==================================================
open_clip                                  HF
=========================================  ==================================================
conv1.weight [d,3,p,p]                     vision_model.embeddings.patch_embedding.weight
class_embedding [d]                        vision_model.embeddings.class_embedding
positional_embedding [n+1,d]               vision_model.embeddings.position_embedding.weight
ln_pre.*                                   vision_model.pre_layrnorm.*
transformer.resblocks.{l}.ln_1.*           vision_model.encoder.layers.{l}.layer_norm1.*
...attn.in_proj_weight [3d,d] (q;k;v)      ...self_attn.{q,k,v}_proj.weight [d,d] each
...attn.in_proj_bias [3d]                  ...self_attn.{q,k,v}_proj.bias
...attn.out_proj.*                         ...self_attn.out_proj.*
...ln_2.*                                  ...layer_norm2.*
...mlp.c_fc.* / mlp.c_proj.*               ...mlp.fc1.* / mlp.fc2.*
ln_post.*                                  vision_model.post_layernorm.*
proj [d,e]                                 visual_projection.weight [e,d] (transposed)
=========================================  ==================================================

OpenAI-pretrained open_clip ViTs use QuickGELU (x·σ(1.702x)), which is HF ``hidden_act="quick_gelu"``.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fda.io.checkpoints import CheckpointError, save_state_dict

StateDict = dict[str, torch.Tensor]
QkvLayout = Literal["fused", "split"]

HF_PREFIX = "vision_model."
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_MAP = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
}


class ConversionError(CheckpointError):
    """A state dict is not in the layout a conversion expects (names the key and the fix)."""


# --------------------------------------------------------------------------------------------
# open_clip <-> HF


def find_visual_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """The prefix in front of the open_clip image tower keys: ``""``, ``"visual."``,
    ``"model.visual."`` (task_vectors ImageEncoder), ... found from the ``conv1.weight`` key."""
    hits = [k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight")]
    if len(hits) != 1:
        raise ConversionError(
            f"expected exactly one '*conv1.weight' key in an open_clip state dict, found {hits or 'none'}; "
            "is this an open_clip ViT image tower?"
        )
    return hits[0]


def openclip_visual_to_hf(state: Mapping[str, torch.Tensor], *, prefix: str | None = None) -> StateDict:
    """Convert an open_clip ViT image tower to ``CLIPVisionModelWithProjection`` keys.

    Keys outside the visual prefix (text tower leftovers, ``logit_scale``) are dropped. Any visual
    key without a mapping (attention pooling, layer scale, ...) raises ``ConversionError``.
    """
    prefix = find_visual_prefix(state) if prefix is None else prefix
    out: StateDict = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if k in _TOP_MAP:
            out[HF_PREFIX + _TOP_MAP[k]] = value
        elif k == "proj":
            out["visual_projection.weight"] = value.t().contiguous()  # open_clip: x @ proj; HF: Linear(x) = x @ W.T
        elif m := _BLOCK.match(k):
            layer, rest = m.groups()
            base = f"{HF_PREFIX}encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                q, k_, v = _split3(value, key)
                out[base + f"self_attn.q_proj.{kind}"] = q
                out[base + f"self_attn.k_proj.{kind}"] = k_
                out[base + f"self_attn.v_proj.{kind}"] = v
            elif rest in _BLOCK_MAP:
                out[base + _BLOCK_MAP[rest]] = value
            else:
                raise ConversionError(f"open_clip key '{key}' has no HF CLIP counterpart (unsupported ViT variant)")
        else:
            raise ConversionError(f"open_clip key '{key}' has no HF CLIP counterpart (unsupported ViT variant)")
    if not out:
        raise ConversionError(f"no key starts with the visual prefix '{prefix}'")
    return out


def _split3(t: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if t.shape[0] % 3:
        raise ConversionError(f"'{key}': first dimension {t.shape[0]} is not divisible by 3 (fused q,k,v expected)")
    return tuple(c.contiguous() for c in t.chunk(3, dim=0))  # type: ignore[return-value]


def hf_to_openclip_visual(state: Mapping[str, torch.Tensor], *, prefix: str = "visual.") -> StateDict:
    """Inverse of :func:`openclip_visual_to_hf` (HF split q/k/v are fused into ``in_proj_*``)."""
    top = {v: k for k, v in _TOP_MAP.items()}
    blk = {v: k for k, v in _BLOCK_MAP.items()}
    out: StateDict = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
            continue
        if not key.startswith(HF_PREFIX):
            raise ConversionError(f"HF key '{key}' is not part of the CLIP vision tower")
        k = key[len(HF_PREFIX):]
        if k in top:
            out[prefix + top[k]] = value
            continue
        m = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", k)
        if not m:
            raise ConversionError(f"HF key '{key}' has no open_clip counterpart")
        layer, rest = m.groups()
        base = f"{prefix}transformer.resblocks.{layer}."
        qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qkv:
            pending.setdefault((base, qkv.group(2)), {})[qkv.group(1)] = value
        elif rest in blk:
            out[base + blk[rest]] = value
        else:
            raise ConversionError(f"HF key '{key}' has no open_clip counterpart")
    for (base, kind), parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"{base}: q/k/v {kind} incomplete (have {sorted(parts)})")
        out[base + f"attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------------------------
# fused <-> split q/k/v (the merge layout)

_SPLIT_QKV = re.compile(r"^(.*)\b([qkv])_proj\.(weight|bias)$")
FUSED_NAME = "qkv_proj"


def fuse_qkv(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Fuse every ``<p>.q_proj/k_proj/v_proj.{weight,bias}`` triple into ``<p>.qkv_proj.{weight,bias}``
    (rows q;k;v: weight [3d, d], bias [3d]), the open_clip ``in_proj`` layout that TSV-M and WUDI
    see as one matrix. Other keys pass through; order is kept (the fused key sits where q was)."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in state:
        m = _SPLIT_QKV.match(key)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = key
    for (p, kind), parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"cannot fuse q/k/v at '{p}*_proj.{kind}': only {sorted(parts)} present")
    out: StateDict = {}
    for key, value in state.items():
        m = _SPLIT_QKV.match(key)
        if not m:
            out[key] = value
            continue
        p, which, kind = m.groups()
        if which == "q":
            parts = groups[(p, kind)]
            out[f"{p}{FUSED_NAME}.{kind}"] = torch.cat([state[parts["q"]], state[parts["k"]], state[parts["v"]]], dim=0)
    return out


def split_qkv(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Inverse of :func:`fuse_qkv`: ``<p>.qkv_proj.*`` [3d, ...] → ``<p>.{q,k,v}_proj.*`` [d, ...]."""
    out: StateDict = {}
    suffix = re.compile(rf"^(.*\b){FUSED_NAME}\.(weight|bias)$")
    for key, value in state.items():
        m = suffix.match(key)
        if not m:
            out[key] = value
            continue
        p, kind = m.groups()
        q, k, v = _split3(value, key)
        out[f"{p}q_proj.{kind}"], out[f"{p}k_proj.{kind}"], out[f"{p}v_proj.{kind}"] = q, k, v
    return out


def to_layout(state: Mapping[str, torch.Tensor], layout: QkvLayout) -> StateDict:
    """``state`` (any layout) in ``layout``: fused for ``"fused"``, split for ``"split"``."""
    if layout == "fused":
        return fuse_qkv(split_qkv(state))  # idempotent on already-fused input
    if layout == "split":
        return split_qkv(state)
    raise ValueError(f"qkv_layout must be 'fused' or 'split', got {layout!r}")


def is_fused(state: Mapping[str, Any]) -> bool:
    return any(k.endswith((f"{FUSED_NAME}.weight", f"{FUSED_NAME}.bias")) for k in state)


# --------------------------------------------------------------------------------------------
# task_vectors pickles -> safetensors (behind an explicit trust flag)

#: suite task name -> task_vectors directory / head name
TASKVECTORS_NAMES = {
    "sun397": "SUN397", "cars": "Cars", "resisc45": "RESISC45", "eurosat": "EuroSAT",
    "svhn": "SVHN", "gtsrb": "GTSRB", "mnist": "MNIST", "dtd": "DTD",
}

#: the globals a pickled module's weights need, by module: tensor and parameter rebuilders,
#: containers and the reduce helpers pickle itself emits. Nothing else from torch is resolved
#: (``torch.utils.collect_env.run`` and friends execute code).
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "torch._utils": frozenset({"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                               "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"}),
    "torch": frozenset({"Size", "device", "Tensor"}),
    "torch.nn.parameter": frozenset({"Parameter"}),
    "collections": frozenset({"OrderedDict"}),
    "_codecs": frozenset({"encode"}),
    "copyreg": frozenset({"_reconstructor"}),
}
_SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "str", "bytes", "bytearray", "slice", "complex", "object"}


def _stub_class(module: str, name: str) -> type:
    """A plain ``nn.Module`` subclass standing in for a class we will not import (open_clip's
    VisionTransformer, task_vectors' ImageEncoder, ...): unpickling fills ``_parameters``,
    ``_buffers`` and ``_modules``, which is all ``state_dict()`` needs."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError(f"{module}.{name} was loaded as a weights-only stub; it cannot run")

    return type(name, (nn.Module,), {"forward": forward, "__module__": f"fda_stub.{module}"})


def _torch_class(module: str, name: str) -> Any | None:
    """The real object for the torch globals a module's weights need beyond the fixed list: storage
    classes (``torch.FloatStorage``), dtypes (``torch.float32``) and ``torch.nn`` module classes
    (``torch.nn.modules.linear.Linear``); None for anything else."""
    if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name, None)
    if module.startswith("torch.nn.modules."):
        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
    return None


class _AllowlistUnpickler(pickle.Unpickler):
    """Resolves only the globals that rebuild tensors, parameters and ``torch.nn`` modules, stands in
    any other class with an ``nn.Module`` stub, and refuses every other function (``os.system``,
    ``torch.utils.collect_env.run``, ...) even under ``trust_pickle``."""

    def find_class(self, module: str, name: str):  # noqa: D401
        if module in ("__builtin__", "builtins"):
            if name in _SAFE_BUILTINS:
                return super().find_class("builtins", name)
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if name in _ALLOWED_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" or module.startswith("torch."):
            obj = _torch_class(module, name)
            if obj is None:
                raise pickle.UnpicklingError(f"refusing global {module}.{name} (not needed to rebuild weights)")
            return obj
        if name[:1].isupper():  # a class name by convention: a weight-holding stub, never the real code
            return _stub_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} (not a class that holds weights)")


class _StubPickleModule:
    """A ``pickle_module`` for ``torch.load`` that uses :class:`_AllowlistUnpickler`."""

    Unpickler = _AllowlistUnpickler
    load = staticmethod(lambda f, **kw: _AllowlistUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _AllowlistUnpickler(io.BytesIO(b), **kw).load())
    __name__ = "fda_stub_pickle"


def load_taskvectors_object(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
    """Load one task_vectors checkpoint: a plain state dict when ``weights_only`` suffices; else
    (a pickled ``nn.Module``) only with ``trust_pickle=True``, through an allow-list unpickler that
    replaces non-torch classes with weight-holding stubs (so neither open_clip 2.0.2 nor the
    task_vectors ``src`` package is needed)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found (expected a task_vectors checkpoint such as ViT-B-32/zeroshot.pt)")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for non-weights pickles
        first = err
    if not trust_pickle:
        raise CheckpointError(
            f"{p}: a pickled Python object, not a plain state dict ({type(first).__name__}). Loading it runs "
            "pickle code: convert it once on a trusted machine with trust_pickle=True "
            "(`fda-bench convert-openclip --trust-pickle ...`), then use the .safetensors output"
        ) from first
    warnings.warn(
        f"unpickling {p} with full pickle semantics (trust_pickle=True): only do this for files you trust",
        RuntimeWarning,
        stacklevel=2,
    )
    try:
        return torch.load(str(p), map_location="cpu", weights_only=False, pickle_module=_StubPickleModule)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{p}: cannot unpickle ({type(err).__name__}: {err})") from err


def module_state_dict(obj: Any, path: str | os.PathLike) -> StateDict:
    """The tensors of a loaded checkpoint object: ``nn.Module.state_dict()`` or a (nested ``state_dict``) mapping."""
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, Mapping):
        if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(f"{path}: expected an nn.Module or a state dict of tensors, found {type(obj).__name__}")


def convert_taskvectors_encoder(src: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False) -> Path:
    """``zeroshot.pt`` / ``finetuned.pt`` → canonical HF-layout safetensors at ``out`` (atomic)."""
    p = Path(src)
    state = openclip_visual_to_hf(module_state_dict(load_taskvectors_object(p, trust_pickle=trust_pickle), p))
    return save_state_dict(state, out, metadata={"source": str(p), "layout": "hf-clip-vision", "converted_by": "fda.bench.openclip_convert"})


def convert_taskvectors_head(src: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False) -> Path:
    """``head_<Task>.pt`` (a ClassificationHead: Linear [C, D] on normalised features) →
    ``head.safetensors`` with ``weight`` [C, D] (and ``bias`` [C] when non-zero)."""
    p = Path(src)
    state = module_state_dict(load_taskvectors_object(p, trust_pickle=trust_pickle), p)
    w = [k for k in state if k.endswith("weight")]
    if len(w) != 1 or state[w[0]].ndim != 2:
        raise CheckpointError(f"{p}: expected one 2-D 'weight' tensor in a classification head, found keys {sorted(state)}")
    head = {"weight": state[w[0]].float()}
    b = [k for k in state if k.endswith("bias")]
    if b and bool(state[b[0]].abs().sum() > 0):
        head["bias"] = state[b[0]].float()
    return save_state_dict(head, out, metadata={"source": str(p), "kind": "zeroshot", "normalize_input": "true"})


HEAD_SUFFIXES = ("", "Val", "ValfromTrain")  # task_vectors/FDA name heads after the dataset they were built for


def find_taskvectors_head(root: str | os.PathLike, name: str) -> Path | None:
    """``head_<Name>[Val|ValfromTrain].{safetensors,pt}`` in ``root`` or its parent (safetensors
    first), or None."""
    root = Path(root)
    for folder in (root, root.parent):
        for suffix in HEAD_SUFFIXES:
            for ext in (".safetensors", ".pt"):
                f = folder / f"head_{name}{suffix}{ext}"
                if f.is_file():
                    return f
    return None


def convert_taskvectors_dir(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tasks: list[str] | None = None,
    trust_pickle: bool = False,
) -> dict[str, Path]:
    """Convert a task_vectors model folder (e.g. ``.../ViT-B-32``) once:
    ``zeroshot.pt`` → ``zeroshot.safetensors``; ``<Task>/finetuned.pt`` → ``<Task>/finetuned.safetensors``;
    ``head_<Task>[Val|ValfromTrain].pt`` → ``head_<Task>.safetensors`` (when present, next to the
    model files or one level up). Existing outputs are kept. Returns ``{name: output path}``."""
    root, out_dir = Path(root), Path(out_dir)
    done: dict[str, Path] = {}
    jobs: list[tuple[str, Path, Path, bool]] = [("zeroshot", root / "zeroshot.pt", out_dir / "zeroshot.safetensors", True)]
    for task in tasks or list(TASKVECTORS_NAMES):
        name = TASKVECTORS_NAMES.get(task, task)
        jobs.append((task, root / name / "finetuned.pt", out_dir / name / "finetuned.safetensors", True))
        head = find_taskvectors_head(root, name)
        if head is not None and head.suffix == ".pt":
            jobs.append((f"head:{task}", head, out_dir / f"head_{name}.safetensors", False))
    for label, src, dst, is_encoder in jobs:
        if not dst.exists():
            (convert_taskvectors_encoder if is_encoder else convert_taskvectors_head)(src, dst, trust_pickle=trust_pickle)
        done[label] = dst
    return done


def openclip_available() -> bool:
    """Whether ``open_clip`` imports (it needs torchvision; see docs/paper-suites.md)."""
    try:
        importlib.import_module("open_clip")
    except Exception:  # noqa: BLE001 - ImportError or torchvision's RuntimeError
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m fda.bench.openclip_convert ROOT OUT [--trust-pickle] [--tasks mnist dtd ...]``."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m fda.bench.openclip_convert",
        description="Convert a task_vectors model folder (zeroshot.pt, <Task>/finetuned.pt, head_<Task>.pt) to safetensors "
        "in the HF CLIPVisionModelWithProjection layout, once.",
    )
    ap.add_argument("root", help="the task_vectors folder of one model, e.g. checkpoints/ViT-B-32")
    ap.add_argument("out", help="output folder (same file names, .safetensors)")
    ap.add_argument("--tasks", nargs="*", default=None, help=f"suite task names (default all: {' '.join(TASKVECTORS_NAMES)})")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow unpickling pickled nn.Modules (runs pickle code: only for files you trust)")
    args = ap.parse_args(argv)
    try:
        done = convert_taskvectors_dir(args.root, args.out, tasks=args.tasks, trust_pickle=args.trust_pickle)
    except CheckpointError as err:
        print(f"error: {err}")
        return 2
    for name, path in done.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
