"""Task Arithmetic (Ilharco et al., ICLR 2023): θ0 + α·Σ_i τ_i on every covered float tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import engine
from .errors import HyperparameterError
from .inputs import MergeInputs, StateDict
from .registry import hparam, register


@dataclass
class TAHparams(engine.CommonHparams):
    alpha: float = hparam(0.3, "scaling λ of the summed task vectors (0.3: 8 ViT tasks / RoBERTa-base; FDA uses 0.2 for RoBERTa-large)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.alpha == self.alpha:  # NaN
            raise HyperparameterError("alpha must be a number, got NaN")


def sum_task_vectors(taus: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i τ_i, summed left to right (so float64 results are reproducible term by term)."""
    total = taus[0].clone()
    for t in taus[1:]:
        total += t
    return total


def merge_ta(inputs: MergeInputs, hp: TAHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "elementwise", hp)
    engine.check_plan_selects(plan, "ta", hp)
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: sum_task_vectors(taus), hp.alpha, progress)


register("ta", merge_ta, TAHparams, "Task Arithmetic: θ0 + α·Σ τ_i")
