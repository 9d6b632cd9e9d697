"""The suite contract: what the workflow needs from a task suite (data, base, experts, evaluation).

A suite owns everything task-specific. Merging code never sees heads or data: it gets encoder
state dicts. Every method is deterministic given ``seed``; every file is written atomically.
"""

from __future__ import annotations

import abc
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]

# A result row as returned by ``Suite.evaluate``: {"task": str, "metric": str, "value": float}
# (the workflow adds suite/method/init/anchor_init/expert_seed/seed and provenance columns).
Row = dict[str, Any]


def training_seed(data_seed: int, expert_seed: int = 0) -> int:
    """The seed an expert's fine-tuning draws its randomness from (head init, data order), given
    the suite's ``data_seed`` and the ``expert_seed``: ``data_seed`` itself for expert seed 0 (so
    expert seed 0 reproduces the experts fine-tuned before expert seeds existed), else a stable mix
    of both (no Python ``hash``: it is salted). The data split never depends on the expert seed."""
    if expert_seed < 0:
        raise ValueError(f"expert seed must be >= 0, got {expert_seed}")
    if expert_seed == 0:
        return int(data_seed)
    return (int(data_seed) * 1_000_003 + zlib.crc32(f"expert-seed/{int(expert_seed)}".encode())) % (2**31 - 1)


#: the splits ``Suite.evaluate`` scores: ``test`` (every number in a result cell) and ``validation``
#: (hyperparameter selection only; docs/selection.md)
EVAL_SPLITS = ("test", "validation")


def no_expert_seeds(suite: str, expert_seed: int, why: str) -> None:
    """A ``ValueError`` when a suite that fine-tunes nothing (``why``) is asked for an expert seed
    other than 0: its experts are one fixed set."""
    if expert_seed != 0:
        raise ValueError(f"suite '{suite}': expert seed {expert_seed} asked for, but {why}: hub or local experts "
                         "have one expert seed (0)")


class Suite(abc.ABC):
    """One benchmark suite: a base model family, its tasks and its evaluation protocol."""

    #: suite name as used in config keys and file names (no underscores)
    name: str
    #: block-adapter family of the encoder (see fda.blocks): "bert", "clip-vision", ...
    family: str
    #: q/k/v layout ("split"/"fused") the merges and FDA's construction loss run in, recorded in
    #: every result row; the HF layout unless a suite says otherwise (paper CLIP suites)
    qkv_layout: str = "split"
    #: why the suite has no selection split (``evaluate(split="validation")`` refuses, and a config
    #: ``selection`` for the suite is an error naming it); None: it has one, disjoint from its test split
    no_validation: str | None = None

    def __init__(self, settings: dict[str, Any]):
        #: the suite's validated section of the workflow config
        self.settings = settings

    @property
    @abc.abstractmethod
    def tasks(self) -> list[str]:
        """Task names in table order (no underscores)."""

    @abc.abstractmethod
    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Write every task's splits under ``out_dir/{task}`` (``datasets.save_to_disk``)."""

    @abc.abstractmethod
    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Write the pretrained encoder as an HF model directory at ``out_dir``."""

    @abc.abstractmethod
    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Fetch or fine-tune the expert for ``task``: HF encoder directory at ``out_dir`` plus
        ``out_dir/head.safetensors`` (the task head used at evaluation; never merged). ``seed`` is
        the data seed; ``expert_seed`` changes only the fine-tuning's randomness
        (:func:`training_seed`); a suite that fine-tunes nothing accepts only 0."""

    @abc.abstractmethod
    def load_encoder(self, model_dir: Path) -> nn.Module:
        """The encoder architecture with the weights stored at ``model_dir``."""

    @abc.abstractmethod
    def evaluate(
        self,
        encoder_state: StateDict,
        task: str,
        base_dir: Path,
        data_dir: Path,
        expert_dir: Path,
        *,
        limit: int | None = None,
        split: str = "test",
    ) -> list[Row]:
        """Score ``encoder_state`` (keys of the base encoder) with ``task``'s own head on its
        ``split`` (``test``, or ``validation`` for selection: see :meth:`check_split`). Returns rows
        ``{"task", "metric", "value"}``; the first row is the headline metric."""

    def selection_unavailable(self) -> str | None:
        """Why this suite, as configured, has no selection split (None: it has one). The class's
        ``no_validation`` unless a suite's settings decide (GLUE: only experts fine-tuned here)."""
        return self.no_validation

    def check_split(self, split: str) -> str:
        """``split`` when the suite can score it; ``ValueError`` naming the suite and why otherwise
        (an unknown split, or ``validation`` on a suite without a selection split:
        :meth:`selection_unavailable`)."""
        if split not in EVAL_SPLITS:
            raise ValueError(f"suite '{self.name}': unknown evaluation split {split!r}; allowed: {', '.join(EVAL_SPLITS)}")
        why = self.selection_unavailable() if split == "validation" else None
        if why:
            raise ValueError(f"suite '{self.name}' has no validation split for selection: {why}")
        return split
