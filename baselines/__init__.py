"""Data-free merging baselines behind one contract.

    import baselines
    merged = baselines.merge("tsvm", pretrained, experts, alpha=1.0, coverage="fda-vision")

``pretrained`` is a state dict, ``experts`` a list of state dicts with the same keys, shapes and
dtypes; the result holds the merged **full** parameters θ0 + Δ for every key of ``pretrained``
(same dtypes and devices). Methods: ``ta``, ``tsvm``, ``wudi``, ``average``, ``ties``, ``isoc``,
``isocts``; see
``list_methods()``, ``method_spec(name).describe()`` and docs/baselines.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import coverage
from .coverage import PRESETS as COVERAGE_PRESETS
from .coverage import Role
from .engine import Progress
from .errors import (
    BaselinesError,
    HyperparameterError,
    MergeInputError,
    NonFiniteError,
    RegistrationError,
    UnknownMethodError,
)
from .inputs import StateDict, validate
from .registry import METHODS, MethodSpec, build_hparams, list_methods, method_spec

# Importing the method modules registers them (each calls registry.register once).
from . import average, iso, ta, ties, tsvm, wudi  # noqa: E402,F401  isort: skip
from .iso import isoc_matrix, isocts_bases, isocts_matrix, isocts_sizes  # noqa: E402
from .tsvm import combine_factors, polar_factor, tsvm_bases, tsvm_matrix  # noqa: E402
from .wudi import gram_adam, gram_terms, wudi_loss, wudi_solve  # noqa: E402

# coverage family per method: the SVD methods share TSV-M's rules; every other method is elementwise
_FAMILY = {"tsvm": "tsvm", "isoc": "tsvm", "isocts": "tsvm", "wudi": "wudi"}

__all__ = [
    "METHODS",
    "COVERAGE_PRESETS",
    "BaselinesError",
    "HyperparameterError",
    "MergeInputError",
    "MethodSpec",
    "NonFiniteError",
    "RegistrationError",
    "Role",
    "StateDict",
    "build_hparams",
    "UnknownMethodError",
    "combine_factors",
    "coverage",
    "coverage_plan",
    "gram_adam",
    "gram_terms",
    "isoc_matrix",
    "isocts_bases",
    "isocts_matrix",
    "isocts_sizes",
    "list_methods",
    "merge",
    "method_spec",
    "polar_factor",
    "tsvm_bases",
    "tsvm_matrix",
    "wudi_loss",
    "wudi_solve",
]


def merge(
    method: str,
    pretrained: Mapping[str, torch.Tensor],
    experts: Sequence[Mapping[str, torch.Tensor]],
    *,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
    **hparams: Any,
) -> StateDict:
    """Merge ``experts`` into ``pretrained`` with ``method``.

    Args:
        method: a registered name (``list_methods()``).
        pretrained: θ0, ``{key: tensor}``.
        experts: T ≥ 1 state dicts θ_i with exactly the keys, shapes and dtypes of ``pretrained``.
        names: optional expert names, used in error messages.
        progress: optional callback ``(done, total, key)`` called after each key (e.g. to drive tqdm).
        **hparams: the method's hyperparameters (``method_spec(method).describe()``).

    Returns:
        ``{key: θ0[key] + Δ[key]}`` for every key of ``pretrained``, same dtype and device; new tensors
        (mutating the result never touches the inputs). Integer/bool buffers are copied from θ0.

    Raises:
        UnknownMethodError, HyperparameterError: bad method or hyperparameters (lists valid ones).
        MergeInputError: bad inputs; names the expert and the tensor key and says the fix.
        NonFiniteError: a merged tensor is NaN/inf (e.g. an overflow with a huge ``alpha``); names the
            key and the hyperparameters that scale it. Nothing non-finite is ever returned.
    """
    spec = method_spec(method)
    hp = build_hparams(spec, hparams)  # hyperparameters first: cheap, and a typo should not wait for input checks
    inputs = validate(pretrained, experts, names)
    with torch.no_grad():  # inputs may be nn.Parameters; the result must not carry autograd history
        return spec.fn(inputs, hp, progress)


def coverage_plan(method: str, pretrained: Mapping[str, torch.Tensor], **hparams: Any) -> dict[str, Role]:
    """What ``merge`` would do to each key, without merging: ``{key: Role.MERGE | MEAN | KEEP}``.

    Integer/bool buffers are reported as KEEP (copied from θ0).
    """
    spec = method_spec(method)
    hp = build_hparams(spec, hparams)
    family = _FAMILY.get(method, "elementwise")
    out = {}
    for key, t in pretrained.items():
        if not t.is_floating_point():
            out[key] = Role.KEEP
        else:
            out[key] = coverage.role(hp.coverage, family, key, tuple(t.shape), hp.exclude_patterns)
    return out
