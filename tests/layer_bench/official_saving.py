"""A re-statement, for tests, of how the official FDA scripts (github.com/Sphere-AI-Lab/FDA, HEAD
8cbe5f8) name and save their anchors, so that the importer is tested on files laid out exactly as
the releases are. Our words and code; the file names, folders, dtypes, shapes and pickling are the
scripts':

- ``Vision/construct_fda.py``: folder ``{save_anchors_path}/{model}/{name}-anchor-{n}-scale-{s}-opt-{steps}-{lr}``
  (``s`` is ``1.0`` for ``init_by_weights``, else ``args.scale``), then ``{dataset}/``; file
  ``dual_anchors_layer_{layer_idx + 1}.npy`` holding ``np.save(best_X.cpu().numpy())`` of the
  sequence-first ``[T, n, d]`` float32 anchors.
- ``NLU/construct_fda.py``: the same folders (``s`` is ``1.0`` when ``'weights' in name``); the file
  holds ``np.save`` of a dict ``{input: X [n, T, d], gt: the finetuned layer's output [n, T, d],
  attention_mask: zeros [n, 1, T, T]}``, each converted with ``.detach().cpu().numpy()``: a pickled
  0-d object array.
- ``NLG/construct_fda.py``: folder ``{root}/{dataset}/{name}-scale-{scale}-gen-{gen_steps}-lr-{gen_lr}-anchor-{n}``,
  file ``dual_anchors_layer_{layer_idx + 1}.npy`` holding the ``[n, 5120]`` float32 MLP inputs.

Python formats the float arguments: ``--scale 0.01`` and ``--opt_lr 1e-2`` both print as ``0.01``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def vision_nlu_run_dir(save_anchors_path: Path, model: str, name: str, anchor_num: int, scale: float,
                       opt_steps: int, opt_lr: float) -> Path:
    """The run folder of the vision and NLU construct scripts' ``__main__``."""
    scale_text = "1.0" if "weights" in name else f"{scale}"
    return Path(f"{save_anchors_path}/{model}/{name}-anchor-{anchor_num}-scale-{scale_text}-opt-{opt_steps}-{opt_lr}")


def save_vision(run_dir: Path, dataset: str, layer_idx: int, best_X: torch.Tensor) -> Path:
    """One (task, layer) of ``Vision/construct_fda.py``: ``best_X`` is ``[T, n, d]``."""
    save_path = f"{run_dir}/{dataset}"
    os.makedirs(save_path, exist_ok=True)
    save_file = os.path.join(save_path, f"dual_anchors_layer_{layer_idx + 1}.npy")
    np.save(save_file, best_X.cpu().numpy())
    return Path(save_file)


def save_nlu(run_dir: Path, dataset: str, layer_idx: int, best_X: torch.Tensor, gt: torch.Tensor) -> Path:
    """One (task, layer) of ``NLU/construct_fda.py``: ``best_X`` and ``gt`` are ``[n, T, d]``."""
    n, tokens = best_X.shape[0], best_X.shape[1]
    entry = {"input": best_X.detach().cpu(), "gt": gt, "attention_mask": torch.zeros(n, 1, tokens, tokens).cpu()}
    save_path = f"{run_dir}/{dataset}"
    os.makedirs(save_path, exist_ok=True)
    numpy_dict = {key: value.detach().cpu().numpy() for key, value in entry.items()}
    save_path = os.path.join(save_path, f"dual_anchors_layer_{layer_idx + 1}.npy")
    np.save(save_path, numpy_dict)
    return Path(save_path)


def save_nlg(root: Path, dataset: str, name: str, scale: float, gen_steps: int, gen_lr: float, anchor_num: int,
             layer_idx: int, best_X: torch.Tensor) -> Path:
    """One (task, layer) of ``NLG/construct_fda.py`` (its root is hard-coded there): ``[n, d]``."""
    save_path1 = f"{root}/{dataset}/{name}-scale-{scale}-gen-{gen_steps}-lr-{gen_lr}-anchor-{anchor_num}"
    os.makedirs(save_path1, exist_ok=True)
    save_file = os.path.join(save_path1, f"dual_anchors_layer_{layer_idx + 1}.npy")
    np.save(save_file, best_X.detach().cpu().numpy())
    return Path(save_file)
