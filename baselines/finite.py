"""Non-finite (NaN/inf) checks shared by every merge path: the baselines, FDA and the streaming merges.

Inputs: :func:`check_finite` raises ``MergeInputError`` naming who (expert, file...) and the key.
Outputs: :func:`check_result` raises ``NonFiniteError`` naming the tensor and the hyperparameters
that scale it, with their values, so that an overflow (``alpha=1e300``) or a diverged training
(``adapt_lr=1e30``) is an error that says what to lower, never a NaN model on disk.

Each check is one ``torch.isfinite(t).all()`` per tensor (a read, no copy of the tensor); the
counts in the messages are computed only when a check fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import MergeInputError, NonFiniteError

CORRUPT_FIX = "the checkpoint is corrupt or training diverged; re-export or re-download it"


def is_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (always true for integer and bool tensors).

    Through ``aminmax``: a NaN anywhere makes both extremes NaN and an inf is an extreme, so the
    answer is the same as ``isfinite(t).all()``, which allocates a mask and costs ~15x more on CPU
    (0.17 s vs 0.01 s for 23M values, one thread): it runs on every tensor of every job's inputs.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def nonfinite_kind(t: torch.Tensor) -> str:
    """What is wrong with ``t``, for messages: ``'inf: 12 of 64 values'``, ``'NaN: 3 of 4 values'``,
    ``'NaN and inf: 2 NaN, 1 inf of 10 values'``."""
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    if nan and inf:
        return f"NaN and inf: {nan} NaN, {inf} inf of {t.numel()} values"
    if nan or inf:
        return f"{'NaN' if nan else 'inf'}: {nan or inf} of {t.numel()} values"
    return "finite"


def check_finite(who: str, key: str, t: torch.Tensor, fix: str = CORRUPT_FIX) -> None:
    """An INPUT tensor must be finite: ``MergeInputError`` naming ``who`` (expert, file) and ``key``."""
    if not is_finite(t):
        n_bad = int((~torch.isfinite(t)).sum())
        raise MergeInputError(f"{who}: tensor {key!r} has {n_bad} non-finite value(s) (NaN/inf): {fix}")


def format_hparams(hparams: Mapping[str, Any]) -> str:
    """``alpha=1e+300, lr=1e-05`` (values by ``repr``, so floats show exactly what was given)."""
    return ", ".join(f"{k}={v!r}" for k, v in hparams.items())


def result_message(where: str, what: str, t: torch.Tensor, scaling: Mapping[str, Any], fix: str | None = None) -> str:
    """The message of a non-finite result: where, what, the kind of values, the hyperparameters, the fix."""
    msg = f"{where}: {what} is non-finite ({nonfinite_kind(t)}"
    if t.dtype in (torch.float16, torch.bfloat16):
        msg += f", stored as {str(t.dtype).removeprefix('torch.')}"
    msg += ")"
    if scaling:
        msg += f" with {format_hparams(scaling)}"
    if fix is None:
        fix = f"lower {' or '.join(scaling)}" if scaling else "check the inputs' magnitudes"
    return f"{msg}: {fix}"


def check_result(where: str, what: str, t: torch.Tensor, scaling: Mapping[str, Any], fix: str | None = None) -> None:
    """An OUTPUT tensor must be finite: ``NonFiniteError`` naming it and the hyperparameters ``scaling``
    (name -> value) that scale it. ``where`` is the method (``ta``) or stage (``FDA adaptation of
    block 3``), ``what`` the tensor (``the merged tensor 'encoder.layer.0.weight'``)."""
    if not is_finite(t):
        raise NonFiniteError(result_message(where, what, t, scaling, fix))
