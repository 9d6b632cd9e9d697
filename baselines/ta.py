"""Task Arithmetic (Ilharco et al., ICLR 2023): θ0 + α·Σ_i τ_i on every covered float tensor."""

from __future__ import annotations

from dataclasses import dataclass

from . import engine
from .inputs import MergeInputs, StateDict
from .registry import hparam, register


@dataclass
class TAHparams(engine.CommonHparams):
    alpha: float = hparam(0.3, "scaling λ of the summed task vectors (0.3: 8 ViT tasks / RoBERTa-base; FDA uses 0.2 for RoBERTa-large)")

    def __post_init__(self) -> None:
        super().__post_init__()
        engine.check_alpha(self.alpha)


def merge_ta(inputs: MergeInputs, hp: TAHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "elementwise", hp)
    engine.check_plan_selects(plan, "ta", hp)
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: engine.sum_task_vectors(taus), hp.alpha, progress,
                               method="ta", scaling={"alpha": hp.alpha})


register("ta", merge_ta, TAHparams, "Task Arithmetic: θ0 + α·Σ τ_i")
