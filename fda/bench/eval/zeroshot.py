"""CLIP zero-shot classification heads built with the text tower, cached as safetensors.

Head of a task with C classes and embedding width D: ``W`` [C, D], row c = exp(logit_scale) ·
normalise(mean_t normalise(text_embed(template_t(class_c)))). Logits of an image are
``normalise(image_embed) @ W.T`` (no bias), so argmax gives the zero-shot prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fda.io.checkpoints import read_metadata, save_state_dict
from safetensors.torch import load_file


def template_hash(templates: Sequence[str], classnames: Sequence[str]) -> str:
    """12-hex digest of the templates and class names (a head's identity besides the model)."""
    blob = json.dumps({"templates": list(templates), "classnames": list(classnames)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def head_cache_path(cache_dir: str | os.PathLike, model_id: str, task: str, templates: Sequence[str], classnames: Sequence[str]) -> Path:
    """``{cache_dir}/{model id, sanitised}/{task}-{template hash}.safetensors``."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", model_id).strip("-") or "model"
    return Path(cache_dir) / safe / f"{task}-{template_hash(templates, classnames)}.safetensors"


@torch.no_grad()
def encode_texts(clip_model, tokenizer, texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Projected text embeddings [len(texts), D] (not normalised) from an HF ``CLIPModel``."""
    max_len = getattr(clip_model.config.text_config, "max_position_embeddings", 77)
    tok = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = clip_model.text_model(input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device))
    return clip_model.text_projection(out.pooler_output)


@torch.no_grad()
def build_zeroshot_head(
    clip_model,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Zero-shot head [C, D] (float32, on CPU): per class, encode every template, L2-normalise,
    average over templates, renormalise; stack and scale by ``exp(logit_scale)``."""
    if not classnames or not templates:
        raise ValueError("a zero-shot head needs at least one class name and one template")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' placeholder for the class name")
    clip_model = clip_model.to(device).eval()
    rows = []
    for name in tqdm(classnames, desc="zero-shot head", disable=not progress, leave=False):
        emb = encode_texts(clip_model, tokenizer, [t.format(name) for t in templates], device)
        emb = F.normalize(emb.float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=0))
    head = torch.stack(rows) * clip_model.logit_scale.detach().float().exp()
    return head.cpu()


def cached_zeroshot_head(
    cache_dir: str | os.PathLike | None,
    model_id: str,
    task: str,
    clip_model_factory,
    tokenizer_factory,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, Path | None]:
    """The head from the cache, or built (``clip_model_factory()``, ``tokenizer_factory()`` are called
    only on a miss) and stored. Returns ``(head [C, D], cache path or None)``."""
    path = head_cache_path(cache_dir, model_id, task, templates, classnames) if cache_dir else None
    if path is not None and path.is_file():
        head = load_file(str(path))["weight"]
        if head.shape[0] == len(classnames):
            return head, path
    head = build_zeroshot_head(clip_model_factory(), tokenizer_factory(), classnames, templates, device=device, progress=progress)
    if path is not None:
        save_state_dict({"weight": head}, path, metadata=head_metadata(model_id, task, templates, classnames))
    return head, path


def head_metadata(model_id: str, task: str, templates: Sequence[str], classnames: Sequence[str]) -> dict[str, str]:
    return {
        "kind": "zeroshot",
        "model_id": model_id,
        "task": task,
        "template_hash": template_hash(templates, classnames),
        "num_classes": str(len(classnames)),
        "templates": json.dumps(list(templates)),
        "classnames": json.dumps(list(classnames)),
        "normalize_input": "true",
    }


def load_head(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, str]]:
    """``(weight [C, D], bias [C] or None, metadata)`` of a ``head.safetensors``."""
    state = load_file(str(path))
    if "weight" not in state or state["weight"].ndim != 2:
        raise ValueError(f"{path}: a zero-shot head needs a 2-D 'weight' tensor [classes, embed dim]; found {sorted(state)}")
    return state["weight"], state.get("bias"), read_metadata(path)


def zeroshot_logits(image_embeds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, C] = normalise(image_embeds [B, D]) @ weight.T (+ bias)."""
    logits = F.normalize(image_embeds.float(), dim=-1) @ weight.float().t()
    return logits + bias.float() if bias is not None else logits
