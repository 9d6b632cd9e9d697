"""Isotropic merging (Marczak et al., "No Task Left Behind", ICML 2025, arXiv 2502.04959).

Both methods flatten the singular-value spectrum of a merged 2-D task matrix: every direction kept
gets the same singular value, the mean of the spectrum it replaces.

- **Iso-C** (``isoc``), per 2-D tensor: Δ = Σ_i τ_i = U diag(σ) Vᵀ (thin SVD, r = min(m, n)
  triplets), merged delta σ̄·U Vᵀ with σ̄ = mean of all r singular values.
- **Iso-CTS** (``isocts``), per 2-D tensor: the top c singular triplets of Δ span the common
  subspace; each task adds the top k triplets of its own residual τ_i − U_c U_cᵀ τ_i (the part of
  τ_i outside the common *column* space); the c + T·k = r left and right vectors are replaced by
  their polar factors (nearest orthonormal columns, as TSV-M does) and every singular value by the
  mean of the c + T·k values gathered. Sizes as in the official code: c = ⌊r·f⌋ with f the
  common-space fraction, then k = round((r − c) / T) (Python's round: halves to even) and
  c = r − T·k, so that the task-specific part divides evenly among the tasks.

Tensors that are not 2-D get the mean task vector (both official functions do this; coverage
presets and ``exclude`` apply as for TSV-M). Everything is scaled by α.

Properties (tests/layer_baselines/test_iso.py): both are invariant to task order and odd
(τ → −τ negates the result); Iso-CTS is invariant to the signs of the per-task singular-vector
pairs (the spectrum is flat, so the polar factors' column order and signs cancel); Iso-C is
transpose-equivariant, Iso-CTS is not (the residual is taken in the column space, as in the
official code, so the [out, in] layout matters). With one expert both return σ̄·polar(τ_1), and
Iso-CTS with f = 1 is Iso-C. The merged delta has r equal singular values (Iso-CTS: c + T·k).

Where the references are ill-defined, our choices (docs/baselines.md):

- an expert whose τ_i is exactly zero for a key is left out of Iso-CTS's task-specific part for
  that key (the SVD of a zero matrix returns arbitrary vectors, which the flat spectrum would give
  full weight); k stays computed with the full T, as TSV-M's rank budget;
- a key whose summed task vector Σ_i τ_i is exactly zero gets a zero delta from both methods
  (for Iso-C that is what the SVD gives; for Iso-CTS the common subspace would be arbitrary);
- the official size rule can make c negative when f is small and T does not divide r (e.g.
  f = 0, r = 12, T = 8: k = round(1.5) = 2, c = −4, which breaks the official code); k is capped at
  ⌊r/T⌋, which changes nothing wherever the official rule is well defined (c ≥ 0).

Speed (no change to the result): Iso-C takes the SVD of wide matrices through their transpose
(it is transpose-equivariant); Iso-CTS, which is not, does the same inside each SVD by swapping
the factors of the transpose's SVD. Cost per m×n key: Iso-C one SVD; Iso-CTS T + 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import engine
from .errors import HyperparameterError
from .inputs import MergeInputs, StateDict
from .registry import hparam, register
from .tsvm import polar_factor

#: The paper's α per CLIP backbone (8 tasks), chosen on validation data (arXiv 2502.04959 Table 5,
#: as the team's shared reference peer_numbers.csv records it). The registry default is the ViT-B/32 one.
PAPER_ALPHA = {
    "isoc": {"ViT-B/32": 1.3, "ViT-B/16": 1.4, "ViT-L/14": 1.5},
    "isocts": {"ViT-B/32": 1.5, "ViT-B/16": 1.6, "ViT-L/14": 1.9},
}
COMMON_SPACE_FRACTION = 0.8  # the paper's and the official README's value (config/method/iso_cts.yaml)


@dataclass
class IsoCHparams(engine.CommonHparams):
    alpha: float = hparam(
        1.3, "scaling α of the merged delta; the paper tunes it on validation data (8 tasks: ViT-B/32 1.3, B/16 1.4, L/14 1.5)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        engine.check_alpha(self.alpha)


@dataclass
class IsoCTSHparams(engine.CommonHparams):
    alpha: float = hparam(
        1.5, "scaling α of the merged delta; the paper tunes it on validation data (8 tasks: ViT-B/32 1.5, B/16 1.6, L/14 1.9)"
    )
    common_space_fraction: float = hparam(
        COMMON_SPACE_FRACTION, "share f of the rank r given to the common subspace, in [0, 1] (paper and official code: 0.8; 1 = Iso-C)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        engine.check_alpha(self.alpha)
        f = self.common_space_fraction
        if not (math.isfinite(f) and 0.0 <= f <= 1.0):
            raise HyperparameterError(f"common_space_fraction must be a number in [0, 1], got {f}")


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``x = U diag(S) Vh`` of a 2-D tensor, computed on the tall orientation (faster)."""
    if x.shape[0] < x.shape[1]:
        v, s, uh = torch.linalg.svd(x.T, full_matrices=False)
        return uh.T, s, v.T
    return torch.linalg.svd(x, full_matrices=False)


def isoc_matrix(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Iso-C merged delta [m, n] of one 2-D key (before α): σ̄·U Vᵀ of Σ_i τ_i.

    ``taus`` may be a lazy sequence: it is iterated once, one τ_i alive at a time.
    """
    total = engine.sum_task_vectors(taus)
    if total.ndim != 2:
        raise ValueError(f"isoc_matrix needs 2-D task matrices, got shape {tuple(total.shape)}")
    if not bool(total.any()):
        return total
    u, s, vh = _svd(total)
    return s.mean() * (u @ vh)


def isocts_sizes(rank: int, num_tasks: int, common_space_fraction: float = COMMON_SPACE_FRACTION) -> tuple[int, int]:
    """(c, k): common-subspace size and per-task size for a key of rank ``rank``; c + T·k = r.

    The official rule (c = ⌊r·f⌋, k = round((r − c)/T) with Python's round, c = r − T·k), with k
    capped at ⌊r/T⌋ so that c never goes negative (the only case where the cap changes anything).
    """
    if rank < 0 or num_tasks < 1:
        raise ValueError(f"isocts_sizes needs rank >= 0 and num_tasks >= 1, got {rank}, {num_tasks}")
    c = int(rank * common_space_fraction)
    k = min(round((rank - c) / num_tasks), rank // num_tasks)
    return rank - num_tasks * k, k


def isocts_bases(
    taus: Sequence[torch.Tensor], num_tasks: int | None = None, common_space_fraction: float = COMMON_SPACE_FRACTION
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Iso-CTS bases of one 2-D key: (U⊥ [m, p], S [p], V⊥ [n, p]) before the spectrum is flattened.

    ``S`` holds the gathered singular values (task-specific blocks in task order, then the common
    ones); the merged delta is ``mean(S)·U⊥ V⊥ᵀ``. p = c + k·(number of non-zero τ_i); p = 0 when
    Σ_i τ_i is exactly zero (its singular vectors, hence the common subspace, would be arbitrary).
    ``taus`` is iterated twice (the sum, then the residuals), one τ_i alive at a time.
    """
    num_tasks = num_tasks if num_tasks is not None else len(taus)
    total = engine.sum_task_vectors(taus)
    if total.ndim != 2:
        raise ValueError(f"isocts_bases needs 2-D task matrices, got shape {tuple(total.shape)}")
    m, n = total.shape
    if not bool(total.any()):  # all τ_i zero (or cancelling): no common subspace, nothing to add
        opts = {"dtype": total.dtype, "device": total.device}
        return torch.zeros(m, 0, **opts), torch.zeros(0, **opts), torch.zeros(n, 0, **opts)
    c, k = isocts_sizes(min(m, n), num_tasks, common_space_fraction)
    u, s, vh = _svd(total)
    del total
    u_c, s_c, v_c = u[:, :c], s[:c], vh[:c].T
    del u, s, vh
    us, ss, vs = [], [], []
    if k > 0:
        for t in taus:
            if not bool(t.any()):
                continue  # an expert that left this tensor alone: no task-specific directions
            residual = t - u_c @ (u_c.T @ t)
            del t
            u_t, s_t, vh_t = _svd(residual)
            us.append(u_t[:, :k])
            ss.append(s_t[:k])
            vs.append(vh_t[:k].T)
            del residual, u_t, s_t, vh_t
    us.append(u_c)
    ss.append(s_c)
    vs.append(v_c)
    return polar_factor(torch.cat(us, dim=1)), torch.cat(ss), polar_factor(torch.cat(vs, dim=1))


def isocts_matrix(
    taus: Sequence[torch.Tensor], num_tasks: int | None = None, common_space_fraction: float = COMMON_SPACE_FRACTION
) -> torch.Tensor:
    """The Iso-CTS merged delta [m, n] of one 2-D key (before α); zero where Σ_i τ_i is exactly zero."""
    u, s, v = isocts_bases(taus, num_tasks, common_space_fraction)
    if s.numel() == 0:
        return u @ v.T  # [m, 0] @ [0, n]: the zero matrix
    return s.mean() * (u @ v.T)


def merge_isoc(inputs: MergeInputs, hp: IsoCHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "tsvm", hp)  # the SVD family's coverage: 2-D merged, the rest averaged
    engine.check_plan_selects(plan, "isoc", hp)
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: isoc_matrix(taus), hp.alpha, progress,
                               method="isoc", scaling={"alpha": hp.alpha})


def merge_isocts(inputs: MergeInputs, hp: IsoCTSHparams, progress: engine.Progress | None = None) -> StateDict:
    plan = engine.plan(inputs, "tsvm", hp)
    engine.check_plan_selects(plan, "isocts", hp)
    num_tasks, f = inputs.num_experts, hp.common_space_fraction
    return engine.run_per_key(inputs, hp, plan, lambda taus, key: isocts_matrix(taus, num_tasks, f), hp.alpha, progress,
                               method="isocts", scaling={"alpha": hp.alpha})


register("isoc", merge_isoc, IsoCHparams, "Iso-C: SVD of the summed task vectors with a flat (mean) spectrum")
register("isocts", merge_isocts, IsoCTSHparams,
         "Iso-CTS: common subspace of the sum plus per-task residual subspaces, orthogonalised, flat spectrum")
