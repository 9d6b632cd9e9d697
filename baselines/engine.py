"""The per-key driver every method uses, and the hyperparameters all methods share.

For each key of the pretrained model, in order:
  non-float buffer            -> copied from θ0 (never merged, like the reference implementations)
  role KEEP (coverage/exclude) -> copied from θ0
  role MEAN                    -> θ0 + α·(1/T)·Σ τ_i
  role MERGE                   -> θ0 + α·method(τ_1..τ_T)
Results are cast back to the pretrained dtype and device. Task vectors are computed per key, lazily
(``TaskVectors``), so methods that can stream over experts hold one τ_i at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from . import coverage as cov
from .coverage import Role
from .errors import HyperparameterError
from .finite import check_result
from .inputs import MergeInputs, StateDict, TaskVectors
from .registry import hparam

Progress = Callable[[int, int, str], None]
DtypeName = Literal["auto", "float32", "float64"]


@dataclass
class CommonHparams:
    """Hyperparameters every method accepts."""

    coverage: str = hparam("all", "which tensors are merged / averaged / kept at θ0: " + ", ".join(cov.PRESETS))
    exclude: tuple[str, ...] = hparam((), "regexes (re.search on the key) of tensors kept at θ0, e.g. ['classifier']")
    dtype: DtypeName = hparam("auto", "compute dtype: auto = float64 for float64 inputs, else float32")
    device: str | None = hparam(None, "compute device (e.g. 'cuda'); default: the pretrained tensor's device")

    def __post_init__(self) -> None:
        cov.check_preset(self.coverage)
        self._exclude = cov.compile_exclude(self.exclude)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as err:
                raise HyperparameterError(f"device {self.device!r} is not a torch device ({err})") from None

    @property
    def exclude_patterns(self) -> list[re.Pattern]:
        return self._exclude


def check_alpha(alpha: float) -> None:
    """A scaling coefficient must be finite (NaN or inf would silently poison every merged tensor)."""
    if not math.isfinite(alpha):
        raise HyperparameterError(f"alpha must be a finite number, got {alpha}")


def sum_task_vectors(taus: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ_i τ_i, summed left to right holding one τ_i at a time (reproducible term by term in float64)."""
    it = iter(taus)
    total = next(it).clone()
    for t in it:
        total += t
    return total


def mean_task_vector(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1/T)·Σ_i τ_i."""
    return sum_task_vectors(taus) / len(taus)


def compute_dtype(name: str, stored: torch.dtype) -> torch.dtype:
    """float64 stays float64 under 'auto'; half precision is upcast (SVDs and Adam need float32)."""
    if name == "float64":
        return torch.float64
    if name == "float32":
        return torch.float32
    return torch.float64 if stored == torch.float64 else torch.float32


def plan(inputs: MergeInputs, family: str, hp: CommonHparams) -> dict[str, Role]:
    """Role of every float key (non-float keys are always copied and not listed)."""
    return {
        k: cov.role(hp.coverage, family, k, tuple(inputs.pretrained[k].shape), hp.exclude_patterns)
        for k in inputs.float_keys
    }


def check_plan_selects(plan_: dict[str, Role], method: str, hp: CommonHparams) -> None:
    """A coverage that merges nothing is almost surely the wrong preset for the model: refuse it."""
    if not any(r is Role.MERGE for r in plan_.values()):
        raise HyperparameterError(
            f"method {method!r} with coverage={hp.coverage!r} and exclude={list(hp.exclude)} selects no tensor of this "
            f"model to merge (the result would be the pretrained model); pick the preset of the model family "
            f"({', '.join(cov.PRESETS)}) or 'all'"
        )


def run_per_key(
    inputs: MergeInputs,
    hp: CommonHparams,
    plan_: dict[str, Role],
    merge_key: Callable[[TaskVectors, str], torch.Tensor],
    alpha: float,
    progress: Progress | None = None,
    *,
    method: str = "merge",
    scaling: Mapping[str, Any] | None = None,
) -> StateDict:
    """Apply the key loop described in the module docstring; ``merge_key(taus, key) -> delta``.

    ``taus`` is a lazy ``TaskVectors`` sequence: iterate it to hold one task vector at a time.
    Every merged tensor is checked to be finite as stored (after the cast back to its dtype); a
    non-finite one raises ``NonFiniteError`` naming ``method``, the key and the hyperparameters
    ``scaling`` (name -> value; default ``{"alpha": alpha}``) that scale it.
    """
    scaling = {"alpha": alpha} if scaling is None else scaling
    out: StateDict = {}
    keys = list(inputs.pretrained)
    for n, key in enumerate(keys):
        base = inputs.pretrained[key]
        r = plan_.get(key, Role.KEEP)
        if r is Role.KEEP:
            out[key] = base.clone()
        else:
            cdt = compute_dtype(hp.dtype, base.dtype)
            dev = hp.device if hp.device is not None else base.device
            taus = inputs.task_vectors(key, cdt, dev)
            delta = mean_task_vector(taus) if r is Role.MEAN else merge_key(taus, key)
            merged = base.to(device=dev, dtype=cdt) + alpha * delta
            out[key] = merged.to(device=base.device, dtype=base.dtype)
            del taus, delta, merged
            check_result(method, f"the merged tensor {key!r}", out[key], scaling)
        if progress is not None:
            progress(n + 1, len(keys), key)
    return out
