"""Helpers shared by the embedded suites: per-task seeds, dataset I/O, encoder state loading."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fda.bench.suites.base import StateDict

if TYPE_CHECKING:
    import datasets


def task_seed(seed: int, task: str, stage: str) -> int:
    """A stable per-(task, stage) seed derived from the run seed (no Python ``hash``: it is salted)."""
    return (seed * 1_000_003 + zlib.crc32(f"{task}/{stage}".encode())) % (2**31 - 1)


def load_split(data_dir: Path, task: str, split: str) -> datasets.Dataset:
    """One split of a task written by ``prepare_data``; a clear error if it is missing."""
    path = Path(data_dir) / task
    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"no data for task '{task}' at {path}: run the suite's prepare_data first")
    import datasets  # noqa: PLC0415  (local: merge and FDA jobs build suites but read no data)

    return datasets.load_from_disk(str(path))[split]


def load_encoder_state(model: nn.Module, state: StateDict) -> None:
    """Copy ``state`` into ``model`` in place; keys must match the model's (buffers may be absent)."""
    own = model.state_dict()
    buffers = {n for n, _ in model.named_buffers()}
    missing = sorted(k for k in own if k not in state and k not in buffers)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ValueError(f"encoder state does not match the base encoder: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"encoder state has wrong shapes for {bad[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
