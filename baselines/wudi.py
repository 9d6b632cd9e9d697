"""WUDI merging (Cheng et al., ICML 2025): data-free interference minimisation per linear weight.

For a 2-D key with task matrices τ_i [m, n] (PyTorch [out, in] layout), start from τ_m = Σ_i τ_i
and run ``steps`` full-batch Adam steps (betas 0.9/0.999, eps 1e-8, no weight decay) on

    L(τ_m) = Σ_i w_i ‖(τ_m − τ_i) τ_iᵀ‖_F²,   w_i = 1/‖τ_i‖_F²   (sum, not mean).

The fixed short schedule *is* the method (it is far from the minimiser B A⁺), so steps and lr are
part of its definition: 300 and 1e-5 (vision), 2e-5 in the official RoBERTa script.

Two exact forms of the same gradient:
- ``gram`` (default): ∇L = 2(τ_m A − B) with A = Σ w_i τ_iᵀτ_i [n, n], B = Σ w_i τ_i τ_iᵀτ_i [m, n]
  precomputed once (4Tmn² FLOPs); one [m, n]×[n, n] matmul per step (2mn² FLOPs) instead of the
  direct form's ≈4Tm²n (forward + backward): ≈2Tm/n times fewer, e.g. 64× for c_fc, 4× for c_proj.
- ``direct``: autograd through the loss as written (the official code's shape), for checks.
They agree to rounding (≈1e-15 relative in float64). In float32 the different rounding can flip
Adam's step on entries whose gradient is ~0, moving them by up to ~lr per step.

An expert whose τ_i is exactly zero for a key has no defined weight (1/0; the official code turns
the whole key into NaN); its term is dropped (it contributes nothing to Σ τ_i either).
"""

from __future__ import annotations

import math
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
        if not self.alpha == self.alpha:
            raise HyperparameterError("alpha must be a number, got NaN")


@dataclass
class WudiResult:
    """``tau``: merged task matrix [m, n]; ``losses``: L after 0..steps steps (empty unless recorded)."""

    tau: torch.Tensor
    losses: list[float]


def wudi_loss(tau_m: torch.Tensor, taus: list[torch.Tensor]) -> torch.Tensor:
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
    taus: list[torch.Tensor], *, steps: int = 300, lr: float = 1e-5, form: str = "gram", record_loss: bool = False
) -> WudiResult:
    """Run WUDI on one 2-D key. ``taus``: T task matrices [m, n]; returns τ_WUDI [m, n] (before α)."""
    if not taus or any(t.ndim != 2 for t in taus):
        raise ValueError("wudi_solve needs a non-empty list of 2-D task matrices")
    active = [t for t in taus if bool(t.any())]
    init = taus[0].clone()
    for t in taus[1:]:
        init += t
    if not active or steps == 0:
        losses = [float(wudi_loss(init, active))] if record_loss else []
        return WudiResult(init, losses)
    if form == "gram":
        return _solve_gram(init, active, steps, lr, record_loss)
    if form == "direct":
        return _solve_direct(init, active, steps, lr, record_loss)
    raise ValueError(f"unknown WUDI form {form!r}; expected 'gram' or 'direct'")


def gram_terms(taus: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Σ w_i τ_iᵀτ_i [n, n] and B = Σ w_i τ_i τ_iᵀτ_i [m, n], w_i = 1/‖τ_i‖_F², so ∇L(τ) = 2(τA − B).

    B is accumulated as Σ τ_i·(w_i τ_iᵀτ_i) so that with one expert B and τ_1·A are the same
    floating-point product and the gradient at τ_1 is exactly zero (Adam would otherwise turn
    rounding noise into steps of size lr).
    """
    m, n = taus[0].shape
    a = taus[0].new_zeros(n, n)
    b = taus[0].new_zeros(m, n)
    for t in taus:
        wg = (t.T @ t) / t.pow(2).sum()
        a += wg
        b += t @ wg
    return a, b


def _solve_gram(init: torch.Tensor, taus: list[torch.Tensor], steps: int, lr: float, record: bool) -> WudiResult:
    a, b = gram_terms(taus)
    # ∇L(init + Δ) = 2(Δ·A + c0) with c0 = init·A − B fixed: the per-step product acts on the small
    # Δ (≈ steps·lr), which avoids re-subtracting two large terms every step.
    c0 = init @ a - b
    del b
    param = init.clone()
    opt = _adam(param, lr)
    loss0 = float(wudi_loss(init, taus)) if record else 0.0
    losses: list[float] = []
    with torch.no_grad():
        for _ in range(steps):
            d_a = (param - init) @ a
            if record:  # L(init + Δ) = L0 + 2⟨c0, Δ⟩ + ⟨ΔA, Δ⟩ (exact quadratic expansion)
                delta = param - init
                losses.append(loss0 + float(2 * (c0 * delta).sum() + (d_a * delta).sum()))
            param.grad = 2 * (d_a + c0)
            opt.step()
        if record:
            delta = param - init
            losses.append(loss0 + float(2 * (c0 * delta).sum() + ((delta @ a) * delta).sum()))
    param.grad = None
    return WudiResult(param, losses)


def _solve_direct(init: torch.Tensor, taus: list[torch.Tensor], steps: int, lr: float, record: bool) -> WudiResult:
    param = init.clone().requires_grad_(True)
    opt = _adam(param, lr)
    losses: list[float] = []
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


def merge_wudi(inputs: MergeInputs, hp: WUDIHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "wudi", hp)
    engine.check_plan_selects(plan, "wudi", hp)

    def merge_key(taus: list[torch.Tensor], key: str) -> torch.Tensor:
        return wudi_solve(taus, steps=hp.steps, lr=hp.lr, form=hp.form).tau

    return engine.run_per_key(inputs, hp, plan, merge_key, hp.alpha, progress)


register("wudi", merge_wudi, WUDIHparams, "WUDI: Adam from Σ τ_i on the data-free interference loss per linear weight")
