"""Task heads: stored apart from the encoder (``head.safetensors``), never merged.

A head file holds ``weight`` [k, d] and ``bias`` [k] (a linear classifier on pooled features)
plus metadata (one ``fda_head`` entry, a JSON object): ``kind`` ("linear" trained with the expert, or "prototype" frozen from the
pretrained model), ``task``, ``classes`` (comma-separated names) and ``logit_scale``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fda.io.checkpoints import load_state_dict, read_metadata, save_state_dict

HEAD_FILE = "head.safetensors"
HEAD_META_KEY = "fda_head"


def save_head(path: Path, weight: torch.Tensor, bias: torch.Tensor, *, kind: str, task: str,
              classes: list[str], logit_scale: float = 1.0) -> None:
    """Write a head: ``weight`` [k, d], ``bias`` [k]."""
    meta = {"kind": kind, "task": task, "classes": ",".join(classes), "logit_scale": repr(float(logit_scale))}
    # One metadata entry holding sorted JSON: safetensors writes its str->str header from a hash
    # map, so several entries come out in a random order and the file would not be byte-stable.
    save_state_dict({"weight": weight.detach().float(), "bias": bias.detach().float()}, path,
                    metadata={HEAD_META_KEY: json.dumps(meta, sort_keys=True)})


def load_head(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """``(weight [k, d], bias [k], metadata)`` of a head file."""
    sd = load_state_dict(path)
    return sd["weight"], sd["bias"], head_metadata(path)


def head_metadata(path: Path) -> dict[str, str]:
    """The head's metadata: ``kind``, ``task``, ``classes``, ``logit_scale`` (all strings)."""
    return json.loads(read_metadata(path)[HEAD_META_KEY])


def prototype_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class prototypes of L2-normalised features, re-normalised: [k, d] from features [n, d].

    The offline analogue of CLIP's zero-shot head (normalised class-text embeddings)."""
    z = F.normalize(features.float(), dim=-1)
    protos = torch.zeros(num_classes, z.shape[1]).index_add_(0, labels, z)
    return F.normalize(protos, dim=-1)


def apply_head(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, meta: dict[str, str]) -> torch.Tensor:
    """Logits [n, k] from pooled features [n, d]; prototype heads see normalised features."""
    if meta.get("kind") == "prototype":
        features = F.normalize(features, dim=-1)
    return float(meta.get("logit_scale", "1.0")) * (features @ weight.T) + bias
