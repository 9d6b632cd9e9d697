"""FDA's validated protocol as jobs see it: the per-suite ``fda.selection`` key of the workflow config.

``fda: {selection: {inits: [...], anchor_inits: [...], grid: {adapt_lr_scale: [...], adapt_epochs: [...]}}}``
declares, for the listed FDA inits and anchor inits (default: every configured one), the
adaptation settings the *validated* protocol chooses from on the suite's validation split, per
(expert seed, FDA seed, init, anchor init) (docs/selection.md). ``adapt_lr_scale`` multiplies the
init's configured adaptation learning rate (``fda.hparams`` / ``fda.per_init``, else the family's
default), so one grid fits inits whose learning rates differ a hundredfold; ``adapt_epochs``
replaces the epochs. Points are the Cartesian product in declared order (the first key slowest),
and the first best point wins ties, as for the baselines' grids (:mod:`fda.bench.config.grids`).

One adaptation per learning-rate scale gives every epoch of the grid: it runs to the largest epoch
it needs and keeps a snapshot of each block at every grid epoch (``fda.adapt_block(...,
snapshot_epochs=...)``, bit-identical to shorter runs). The point whose values are the fixed
protocol's (scale 1, the configured epochs) is the fixed FDA model itself and is not adapted again.
The validated row starts from the same init model as the fixed one (the init's fixed merge), so its
Δ is against that init's fixed row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fda.bench.config.grids import grid_points

#: the hyperparameters an FDA grid may declare: a factor on the adaptation lr, and the epochs
FDA_GRID_KEYS = ("adapt_lr_scale", "adapt_epochs")


def fda_selection(section: Mapping[str, Any]) -> dict[str, Any] | None:
    """The suite section's ``fda.selection`` (None when it has none, or is null), with ``inits``
    and ``anchor_inits`` defaulted to the suite's FDA ones."""
    fda = section.get("fda") or {}
    sel = fda.get("selection")
    if not sel or not sel.get("grid"):
        return None
    return {"inits": list(sel.get("inits") or fda.get("inits", [])),
            "anchor_inits": list(sel.get("anchor_inits") or fda.get("anchor_inits", [])),
            "grid": {k: list(v) for k, v in sel["grid"].items()}}


def fda_grid(section: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The declared FDA grid (empty without a selection)."""
    sel = fda_selection(section)
    return sel["grid"] if sel else {}


def fda_points(section: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{adapt_lr_scale: s, adapt_epochs: e}]`` (each key only where the grid declares it), in declared order."""
    grid = fda_grid(section)
    return grid_points(grid) if grid else []


def validated_inits(section: Mapping[str, Any]) -> list[str]:
    """The FDA inits with a validated cell (``results/{suite}_{init}_fda_validated.csv``)."""
    sel = fda_selection(section)
    return sel["inits"] if sel else []


def validated_anchor_inits(section: Mapping[str, Any]) -> list[str]:
    sel = fda_selection(section)
    return sel["anchor_inits"] if sel else []


def resolved_adaptation(section: Mapping[str, Any], hparams: Mapping[str, Any], init: str) -> tuple[float, int]:
    """``(adapt_lr, adapt_epochs)`` that ``hparams`` (the init's FDAConfig overrides) give for the
    suite's family and size: the configured values, else ``FDAConfig.for_family``'s defaults."""
    from fda.config import FDAConfig

    cfg = FDAConfig.for_family(section["family"], init=init, size=section["fda"].get("size", "base"), **hparams)
    return float(cfg.adapt_lr), int(cfg.adapt_epochs)


def is_fixed(values: Mapping[str, Any], adapt_epochs: int) -> bool:
    """Whether a point's values are the fixed protocol's (scale 1, the configured epochs)."""
    return float(values.get("adapt_lr_scale", 1.0)) == 1.0 and int(values.get("adapt_epochs", adapt_epochs)) == adapt_epochs


def scales(section: Mapping[str, Any]) -> list[float]:
    """The grid's learning-rate scales in declared order ([1.0] when the grid declares none)."""
    return [float(s) for s in fda_grid(section).get("adapt_lr_scale", [1.0])]


def point_run(section: Mapping[str, Any], values: Mapping[str, Any], adapt_epochs: int) -> tuple[int, int] | None:
    """``(scale index, epochs)``: the adaptation run and snapshot a point's model comes from, or
    None for the fixed point (the fixed FDA model)."""
    if is_fixed(values, adapt_epochs):
        return None
    return scales(section).index(float(values.get("adapt_lr_scale", 1.0))), int(values.get("adapt_epochs", adapt_epochs))


def run_epochs(section: Mapping[str, Any], adapt_epochs: int) -> dict[int, list[int]]:
    """Per learning-rate scale index: the epochs its adaptation run snapshots (ascending; the
    fixed point's is left out). A scale with none needs no run and is absent."""
    out: dict[int, list[int]] = {}
    for values in fda_points(section):
        run = point_run(section, values, adapt_epochs)
        if run is not None:
            out.setdefault(run[0], []).append(run[1])
    return {k: sorted(set(v)) for k, v in sorted(out.items())}
