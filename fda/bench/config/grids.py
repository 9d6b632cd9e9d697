"""Selection grids: the per-suite ``selection`` key of the workflow config as jobs see it.

``selection: {grids: {METHOD: {HPARAM: [v1, v2, ...], ...}}}`` declares, per baseline, the values
the *validated* protocol chooses from on the suite's validation split (docs/selection.md). A grid
of several hyperparameters is their Cartesian product; points are numbered in declared order (the
first hyperparameter varies slowest, each list in its own order), and that order is the tie rule's:
the first best point wins. A grid set to ``null`` (e.g. in ``smoke_overrides``) is no grid.

A point's hyperparameters are the method's configured ones (``methods.METHOD``) with the point's
values over them. Imports nothing from the package but the vocabulary.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from fda.bench.config.vocabulary import BASELINE_METHODS

#: the protocols of a result row: ``fixed`` (the config's values; every cell before protocols) and
#: ``validated`` (chosen on the validation split from a declared grid, reported on test)
PROTOCOLS = ("fixed", "validated")
#: the protocol of a row or file that names none
DEFAULT_PROTOCOL = "fixed"
#: how the select job breaks ties between grid points with the same validation score
TIE_RULE = "first best in declared order"
#: what the select job maximises
CRITERION = "mean over tasks of the headline metric on the validation split"


def grids(section: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The suite section's declared grids (``null`` grids dropped), in declared order, for baselines only."""
    declared = (section.get("selection") or {}).get("grids") or {}
    return {m: dict(g) for m, g in declared.items() if g and m in BASELINE_METHODS}


def grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """``[{hparam: value}]``: the Cartesian product of ``grid`` in declared order (first key slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


def method_points(section: Mapping[str, Any], method: str) -> list[dict[str, Any]]:
    """The grid points of ``method`` in ``section`` (empty when it has no grid)."""
    grid = grids(section).get(method)
    return grid_points(grid) if grid else []


#: grid keys that scale a configured hyperparameter instead of replacing it (FDA's lr: one grid for
#: inits whose learning rates differ; fda.bench.config.fda_selection)
SCALING_KEYS = {"adapt_lr_scale": "adapt_lr"}


def apply_values(hparams: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with a grid point's ``values`` over them; a scaling key (:data:`SCALING_KEYS`)
    multiplies the hyperparameter it names, which ``hparams`` must hold."""
    out = dict(hparams)
    for key, v in values.items():
        if key in SCALING_KEYS:
            target = SCALING_KEYS[key]
            if target not in hparams:
                raise KeyError(f"grid key {key!r} scales {target!r}, which the hyperparameters {dict(hparams)} do not hold")
            out[target] = hparams[target] * v
        else:
            out[key] = v
    return out


def point_hparams(section: Mapping[str, Any], method: str, point: int) -> dict[str, Any]:
    """The hyperparameters a grid point merges with: ``methods.METHOD`` with the point's values over them."""
    return {**(section["methods"].get(method) or {}), **method_points(section, method)[int(point)]}


def fixed_point(section: Mapping[str, Any], method: str, defaults: Mapping[str, Any] | None = None) -> int | None:
    """The index of the first grid point whose values are the fixed protocol's (``methods.METHOD``,
    else ``defaults``: the method's dataclass defaults), or None: that point's merge *is* the fixed
    merge, so the workflow reuses it instead of merging again."""
    fixed = {**(defaults or {}), **(section["methods"].get(method) or {})}
    for i, p in enumerate(method_points(section, method)):
        if all(k in fixed and _same(fixed[k], v) for k, v in p.items()):
            return i
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal as config values (1 and 1.0 are the same α; True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b
