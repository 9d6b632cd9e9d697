"""Weight averaging (model soup of the experts): θ0 + (1/T)·Σ_i τ_i = (1/T)·Σ_i θ_i."""

from __future__ import annotations

from dataclasses import dataclass

from . import engine
from .inputs import MergeInputs, StateDict
from .registry import register


@dataclass
class AverageHparams(engine.CommonHparams):
    """No method-specific hyperparameters (TA with α = 1/T)."""


def merge_average(inputs: MergeInputs, hp: AverageHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "elementwise", hp)
    engine.check_plan_selects(plan, "average", hp)
    # MERGE and MEAN are the same rule here: the mean task vector, unscaled.
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: engine.mean_task_vector(taus), 1.0, progress,
                               method="average", scaling={})


register("average", merge_average, AverageHparams, "weight averaging: mean of the experts, θ0 + (1/T)·Σ τ_i")
