"""WUDI merging (Cheng et al., ICML 2025): data-free interference minimisation per linear weight.

For a 2-D key with task matrices τ_i [m, n] (PyTorch [out, in] layout), start from τ_m = Σ_i τ_i
and run ``steps`` full-batch Adam steps (betas 0.9/0.999, eps 1e-8, no weight decay) on

    L(τ_m) = Σ_i w_i ‖(τ_m − τ_i) τ_iᵀ‖_F²,   w_i = 1/‖τ_i‖_F²   (sum, not mean).

The fixed short schedule *is* the method (it is far from the minimiser B A⁺), so steps and lr are
part of its definition: 300 and 1e-5 (vision), 2e-5 in the official RoBERTa script.

Two exact forms of the same gradient:
- ``gram`` (default): ∇L = 2(τ_m A − B) with A = Σ w_i τ_iᵀτ_i [n, n] and B = Σ w_i τ_i τ_iᵀτ_i.
  We precompute A and c0 = ∇L(Σ τ)/2 once (``gram_terms``) and step with ∇L = 2(Δ·A + c0),
  Δ = τ_m − Σ τ: one [m, n]×[n, n] matmul per step (2mn² FLOPs) instead of the direct form's
  ≈4Tm²n (forward + backward), ≈2Tm/n times fewer: 64× for c_fc, 4× for c_proj at T = 8.
- ``direct``: autograd through the loss as written (the official code's shape), for checks.
They agree to rounding (≈1e-15 relative in float64). In float32 the different rounding can flip
Adam's step on entries whose gradient is ~0, moving them by up to ~lr per step.

An expert whose τ_i is exactly zero for a key has no defined weight (1/0; the official code turns
the whole key into NaN); its term is dropped (it contributes nothing to Σ τ_i either).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from . import engine
from .errors import HyperparameterError
from .inputs import MergeInputs, StateDict
from .registry import hparam, register

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class WUDIHparams(engine.CommonHparams):
    alpha: float = hparam(1.0, "scaling α of the merged delta (official/FDA vision: 1.0; FDA NLU passes --alpha)")
    steps: int = hparam(300, "Adam steps per tensor (official and FDA: 300; FusionBench config: 400)")
    lr: float = hparam(1e-5, "Adam learning rate (vision 1e-5; official RoBERTa script 2e-5)")
    form: Literal["gram", "direct"] = hparam("gram", "gradient form: 'gram' (fast, precomputed A, B) or 'direct' (autograd)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0:
            raise HyperparameterError(f"steps must be ≥ 0, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HyperparameterError(f"lr must be a positive finite number, got {self.lr}")
        engine.check_alpha(self.alpha)


@dataclass
class WudiResult:
    """``tau``: merged task matrix [m, n]; ``losses``: L after 0..steps steps (empty unless recorded)."""

    tau: torch.Tensor
    losses: list[float]


def wudi_loss(tau_m: torch.Tensor, taus: Iterable[torch.Tensor]) -> torch.Tensor:
    """L(τ_m) in the direct form (scalar tensor); zero task matrices are skipped."""
    total = tau_m.new_zeros(())
    for t in taus:
        sq = t.pow(2).sum()
        if sq > 0:
            total = total + ((tau_m - t) @ t.T).pow(2).sum() / sq
    return total


def _adam(param: torch.Tensor, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([param], lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)


def wudi_solve(
    taus: Sequence[torch.Tensor], *, steps: int = 300, lr: float = 1e-5, form: str = "gram", record_loss: bool = False
) -> WudiResult:
    """Run WUDI on one 2-D key; returns τ_WUDI [m, n] (before α).

    ``taus``: T task matrices [m, n], a list or a lazy sequence. The Gram form iterates it twice
    (Σ τ_i, then A and c0) holding one τ_i at a time; the direct form holds all of them.
    """
    if len(taus) == 0:
        raise ValueError("wudi_solve needs at least one task matrix")
    init = None
    active = []  # experts with a non-zero τ_i (the others have no defined weight: term dropped)
    for i, t in enumerate(taus):
        if t.ndim != 2 or (init is not None and t.shape != init.shape):
            raise ValueError(f"wudi_solve needs 2-D task matrices of one shape, got {tuple(t.shape)}")
        init = t.clone() if init is None else init.add_(t)
        if bool(t.any()):
            active.append(i)
    terms = _Subset(taus, active)
    if not active or steps == 0:
        return WudiResult(init, [float(wudi_loss(init, terms))] if record_loss else [])
    if form == "gram":
        a, c0 = gram_terms(init, terms)
        return gram_adam(init, a, c0, steps, lr, float(wudi_loss(init, terms)) if record_loss else None)
    if form == "direct":
        return _solve_direct(init, list(terms), steps, lr, record_loss)
    raise ValueError(f"unknown WUDI form {form!r}; expected 'gram' or 'direct'")


class _Subset(Sequence):
    """The items ``indices`` of ``seq``, fetched on access (keeps lazy task vectors lazy)."""

    def __init__(self, seq: Sequence, indices: list[int]):
        self._seq, self._idx = seq, indices

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i):  # type: ignore[override]
        return self._seq[self._idx[i]]

    def __iter__(self):
        return (self._seq[i] for i in self._idx)


def gram_terms(init: torch.Tensor, taus: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Σ w_i τ_iᵀτ_i [n, n] and c0 = ∇L(init)/2 = Σ w_i (init − τ_i) τ_iᵀτ_i [m, n], w_i = 1/‖τ_i‖_F².

    Then ∇L(init + Δ) = 2(Δ·A + c0): the per-step product acts on the small Δ (≈ steps·lr) and
    c0 is computed without the cancellation of τ·A − B. With one expert, init − τ_1 is exactly
    zero, so c0 is exactly zero and no Adam step is taken (Adam would turn rounding noise into
    steps of size lr). Cost: 2Tmn² for A plus min(2Tmn², 4Tm²n) for c0.
    """
    m, n = init.shape
    a = init.new_zeros(n, n)
    c0 = init.new_zeros(m, n)
    for t in taus:
        w = float(1.0 / t.pow(2).sum())
        g = t.T @ t
        a.add_(g, alpha=w)
        d = init - t
        # associate the cheaper way: d·(τᵀτ) costs 2mn², (d·τᵀ)·τ costs 4m²n (wide matrices)
        c0.add_((d @ t.T) @ t if 2 * m < n else d @ g, alpha=w)
    return a, c0


def gram_adam(
    init: torch.Tensor, a: torch.Tensor, c0: torch.Tensor, steps: int, lr: float, loss0: float | None = None
) -> WudiResult:
    """Adam on L from ``init`` using the Gram terms of ``gram_terms``; one [m, n]×[n, n] matmul per step.

    With ``loss0`` = L(init) given, also records L after 0..steps steps via the exact quadratic
    expansion L(init + Δ) = L0 + 2⟨c0, Δ⟩ + ⟨ΔA, Δ⟩.
    """
    param = init.clone()
    opt = _adam(param, lr)
    losses: list[float] = []
    with torch.no_grad():
        for _ in range(steps):
            delta = param - init
            d_a = delta @ a
            if loss0 is not None:
                losses.append(loss0 + float(2 * (c0 * delta).sum() + (d_a * delta).sum()))
            param.grad = d_a.add_(c0).mul_(2)
            opt.step()
        if loss0 is not None:
            delta = param - init
            losses.append(loss0 + float(2 * (c0 * delta).sum() + ((delta @ a) * delta).sum()))
    param.grad = None
    return WudiResult(param, losses)


def _solve_direct(init: torch.Tensor, taus: list[torch.Tensor], steps: int, lr: float, record: bool) -> WudiResult:
    param = init.clone().requires_grad_(True)
    opt = _adam(param, lr)
    losses: list[float] = []
    with torch.enable_grad():  # merge() runs methods under no_grad
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = wudi_loss(param, taus)
            if record:
                losses.append(float(loss.detach()))
            loss.backward()
            opt.step()
    if record:
        with torch.no_grad():
            losses.append(float(wudi_loss(param, taus)))
    return WudiResult(param.detach(), losses)


def wudi_scaling(hp: WUDIHparams) -> dict[str, object]:
    """The hyperparameters that scale a WUDI result (named in non-finite errors): α, and the Adam
    schedule that moves τ_m (up to ≈ steps·lr per entry)."""
    return {"alpha": hp.alpha, "lr": hp.lr, "steps": hp.steps}


def merge_wudi(inputs: MergeInputs, hp: WUDIHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "wudi", hp)
    engine.check_plan_selects(plan, "wudi", hp)

    def merge_key(taus: Sequence[torch.Tensor], key: str) -> torch.Tensor:
        return wudi_solve(taus, steps=hp.steps, lr=hp.lr, form=hp.form).tau

    return engine.run_per_key(inputs, hp, plan, merge_key, hp.alpha, progress, method="wudi", scaling=wudi_scaling(hp))


register("wudi", merge_wudi, WUDIHparams, "WUDI: Adam from Σ τ_i on the data-free interference loss per linear weight")
