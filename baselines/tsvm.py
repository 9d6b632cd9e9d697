"""TSV-M, Task Singular Vectors Merging (Gargiulo et al., CVPR 2025).

Per 2-D tensor (m×n, r = min(m, n), T experts): keep each task's top k = floor(r/T) singular
triplets, concatenate the U's and V's, replace each concatenation by its polar factor (the nearest
matrix with orthonormal columns), and recombine U⊥·diag(S)·V⊥ᵀ. The result is invariant to task
order, to singular-vector signs and to transposition, so it is unique up to rounding.

Speed (none of these changes the result): wide matrices are transposed to tall before the SVDs,
all SVDs are reduced, keys whose task vectors are all zero are skipped by the engine, and the
concatenation is not zero-padded to r columns (padding columns carry σ = 0 and cannot change the
product). Experts whose task vector for a key is exactly zero are left out of that key's
concatenation: their singular vectors are arbitrary (whatever LAPACK returns for a zero matrix),
and in the official code they would still perturb the other tasks' polar factors. k stays
floor(r/T) with T the total number of experts, as in the official rank budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import engine
from .inputs import MergeInputs, StateDict
from .registry import hparam, register


@dataclass
class TSVMHparams(engine.CommonHparams):
    alpha: float = hparam(1.0, "scaling α of the merged delta, SVD-merged and averaged tensors alike (FDA vision: 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        engine.check_alpha(self.alpha)


def polar_factor(x: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns to ``x`` [p, c] (p ≥ c): P·Qᵀ from x = P Λ Qᵀ."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def tsvm_bases(taus: Sequence[torch.Tensor], num_tasks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthogonalised bases of one 2-D key: (U⊥ [m, c], S [c], V⊥ [n, c]) with merged = U⊥ diag(S) V⊥ᵀ.

    ``taus``: T task matrices [m, n] (a list, or a lazy sequence iterated once: one τ_i and the
    kept factors are alive at a time). ``num_tasks`` (default T) sets the per-task rank
    k = floor(min(m, n) / num_tasks); c = k · (number of non-zero task matrices).
    U⊥ and V⊥ have orthonormal columns.
    """
    num_tasks = num_tasks if num_tasks is not None else len(taus)
    us, ss, vs = [], [], []
    shape = None
    for t in taus:
        if t.ndim != 2 or (shape is not None and t.shape != shape):
            raise ValueError(f"tsvm_bases needs 2-D task matrices of one shape, got {tuple(t.shape)}")
        shape, opts = t.shape, {"dtype": t.dtype, "device": t.device}
        m, n = shape
        transpose = m < n  # SVDs of tall matrices are cheaper; TSVM(Δᵀ) = TSVM(Δ)ᵀ, so this changes nothing
        k = min(m, n) // num_tasks
        if k == 0 or not bool(t.any()):
            continue
        u, s, vh = torch.linalg.svd(t.T if transpose else t, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
        del t, u, vh
    if shape is None:
        raise ValueError("tsvm_bases needs at least one task matrix")
    m, n = shape
    transpose = m < n
    rows, cols = (n, m) if transpose else (m, n)
    if not us:
        u_p, s_cat, v_p = torch.zeros(rows, 0, **opts), torch.zeros(0, **opts), torch.zeros(cols, 0, **opts)
    else:
        u_p, s_cat, v_p = combine_factors(us, ss, vs)
    return (v_p, s_cat, u_p) if transpose else (u_p, s_cat, v_p)


def combine_factors(
    us: list[torch.Tensor], ss: list[torch.Tensor], vs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate per-task factors (U_i [m, k], σ_i [k], V_i [n, k]) and orthogonalise U and V.

    Returns (U⊥ [m, c], S [c], V⊥ [n, c]), c = Σ k_i. Flipping the sign of a column of U_i together
    with the same column of V_i leaves U⊥ diag(S) V⊥ᵀ unchanged (polar(U D) = polar(U) D).
    """
    return polar_factor(torch.cat(us, dim=1)), torch.cat(ss), polar_factor(torch.cat(vs, dim=1))


def tsvm_matrix(taus: Sequence[torch.Tensor], num_tasks: int | None = None) -> torch.Tensor:
    """The TSV-M merged delta [m, n] of one 2-D key (before α)."""
    u, s, v = tsvm_bases(taus, num_tasks)
    return (u * s) @ v.T


def merge_tsvm(inputs: MergeInputs, hp: TSVMHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "tsvm", hp)
    engine.check_plan_selects(plan, "tsvm", hp)
    num_tasks = inputs.num_experts
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: tsvm_matrix(taus, num_tasks), hp.alpha, progress,
                               method="tsvm", scaling={"alpha": hp.alpha})


register("tsvm", merge_tsvm, TSVMHparams, "TSV-M: per-task top singular triplets, orthogonalised by polar factors")
