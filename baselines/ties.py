"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: keep the top ``topk`` % entries of |τ_i|, the threshold being **global over the whole
   flattened task vector** of expert i (all covered keys together, as in the paper and
   FusionBench), not per tensor. As in the reference code (TIES repo, FusionBench), the threshold
   is the (P − ⌊P·topk/100⌋)-th smallest |τ_i| over the P covered entries and entries ``>=`` it are
   kept, i.e. ⌊P·topk/100⌋ + 1 entries when magnitudes are distinct; kept so results match
   the references exactly (one entry in a model is immaterial).
2. Elect: γ = sign(Σ_i τ̂_i) per entry; entries where that sum is exactly 0 take the majority sign,
   sign(Σ over all entries of γ).
3. Disjoint merge over the experts whose trimmed entry agrees with γ: ``sum`` (FusionBench's
   default, used with α = 0.3), ``mean`` (the paper's dis-mean, used with α = 1) or ``max``.
θ = θ0 + α·τ_TIES.

Memory: the thresholds need one flattened |τ_i| at a time (one model's worth of floats; found with
``kthvalue``); the merge itself then goes key by key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from . import engine
from .coverage import Role
from .errors import HyperparameterError
from .inputs import MergeInputs, StateDict
from .registry import hparam, register


@dataclass
class TIESHparams(engine.CommonHparams):
    alpha: float = hparam(0.3, "scaling λ of the merged task vector (0.3 with merge_func='sum'; the paper's dis-mean uses 1.0)")
    topk: float = hparam(20.0, "percent of entries kept per task vector, by magnitude over the whole model (paper: 20)")
    merge_func: Literal["sum", "mean", "max"] = hparam("sum", "disjoint merge of the agreeing entries: sum (FusionBench), mean (paper), max")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 < self.topk <= 100.0):
            raise HyperparameterError(f"topk is a percentage in (0, 100], got {self.topk}")
        engine.check_alpha(self.alpha)


def trim_threshold(abs_flat: torch.Tensor, topk: float) -> float:
    """Trim threshold of one flattened |τ_i| [P]: entries ``>=`` it are kept (reference convention, see module doc)."""
    p = abs_flat.numel()
    keep = int(p * topk / 100.0)
    if keep >= p:
        return -math.inf
    # kthvalue is 1-based over ascending values; keep == 0 gives the max (one entry kept, as FusionBench)
    return float(abs_flat.kthvalue(p - keep).values)


def ties_tensor(trimmed: torch.Tensor, majority: float, merge_func: str) -> torch.Tensor:
    """Sign election + disjoint merge of one tensor. ``trimmed``: [T, ...] trimmed task vectors."""
    gamma = torch.sign(trimmed.sum(0))
    gamma = torch.where(gamma == 0, torch.full_like(gamma, majority), gamma)
    agree = torch.where(gamma > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * agree
    if merge_func == "sum":
        return selected.sum(0)
    if merge_func == "mean":
        return selected.sum(0) / agree.sum(0).clamp(min=1)
    if merge_func == "max":
        return selected.abs().amax(0) * gamma
    raise ValueError(f"unknown merge_func {merge_func!r}")


def merge_ties(inputs: MergeInputs, hp: TIESHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "elementwise", hp)
    engine.check_plan_selects(plan, "ties", hp)
    keys = [k for k, r in plan.items() if r is Role.MERGE]
    wide = any(engine.compute_dtype(hp.dtype, inputs.pretrained[k].dtype) == torch.float64 for k in keys)
    flat_dtype = torch.float64 if wide else torch.float32

    def dev(key: str) -> torch.device | str:
        return hp.device if hp.device is not None else inputs.pretrained[key].device

    def tau(i: int, key: str) -> torch.Tensor:
        cdt = engine.compute_dtype(hp.dtype, inputs.pretrained[key].dtype)
        return inputs.experts[i][key].to(dev(key), cdt) - inputs.pretrained[key].to(dev(key), cdt)

    # Pass 1: one global threshold per expert (one flattened |τ_i| alive at a time).
    thresholds = []
    for i in range(inputs.num_experts):
        flat = torch.cat([tau(i, k).abs().reshape(-1).to(flat_dtype) for k in keys])
        thresholds.append(trim_threshold(flat, hp.topk))
        del flat

    def trimmed(taus: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.where(t.abs() >= thr, t, torch.zeros_like(t)) for t, thr in zip(taus, thresholds)])

    # Pass 2: the majority sign that resolves exact ties of the election, over all covered entries.
    sign_total = 0.0
    for k in keys:
        sign_total += float(torch.sign(trimmed([tau(i, k) for i in range(inputs.num_experts)]).sum(0)).sum())
    majority = math.copysign(1.0, sign_total) if sign_total != 0 else 0.0

    # Pass 3: merge key by key.
    return engine.run_per_key(
        inputs, hp, plan, lambda taus, key: ties_tensor(trimmed(list(taus)), majority, hp.merge_func), hp.alpha, progress,
        method="ties", scaling={"alpha": hp.alpha},
    )


register("ties", merge_ties, TIESHparams, "TIES-Merging: global top-k% trim, sign election, disjoint merge")
