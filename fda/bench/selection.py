"""Selection on the validation split: score every grid point, choose one, record the choice.

The ``select`` job of the validated protocol (docs/selection.md) reads one raw evaluation file per
grid point (``fda-bench evaluate --split validation``), scores each point by :data:`CRITERION`, and
writes a *choice file* (JSON) that says what was chosen and why::

    {"format": "fda-bench-choice/1", "suite": "minitext", "method": "ta", "init": "", "anchor_init": "",
     "expert_seed": 0, "seed": 0, "protocol": "validated", "split": "validation",
     "criterion": "...", "tie_rule": "first best in declared order",
     "grid": {"alpha": [0.1, 0.3, 0.5]},
     "points": [{"point": 0, "values": {"alpha": 0.1}, "hparams": {...}, "model": "...", "score": 0.61,
                 "tasks": {"tech": 0.7, ...}}, ...],
     "chosen": {"point": 1, "values": {"alpha": 0.3}, "hparams": {...}, "model": "...", "score": 0.64},
     "at_edge": []}

``values`` are the grid's (what the cell rows record), ``hparams`` everything the point ran with,
``model`` the file that is then evaluated on test. ``at_edge`` lists the hyperparameters (of three
or more values) whose chosen value is the first or last of its list: the optimum may lie outside
the grid, so widen it. ``init``/``anchor_init``/``seed`` are empty/0 for
baselines; an FDA selection (adaptation lr and epochs per init, anchor init and seed) fills them and
uses the same file and the same rule.

A non-finite validation score (a diverged merge) is refused, naming the point: it cannot be ranked,
and dropping it silently would hide the divergence.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fda.bench.config.grids import CRITERION, TIE_RULE
from fda.io.atomic import atomic_path

FORMAT = "fda-bench-choice/1"


class SelectionError(ValueError):
    """A grid point cannot be scored or ranked, or a choice file is malformed."""


def point_score(raw: pd.DataFrame, tasks: Sequence[str], where: str = "") -> tuple[float, dict[str, float]]:
    """``(score, {task: headline value})`` of one point's raw validation rows (:data:`CRITERION`);
    every task must be there, on the validation split."""
    if "split" in raw.columns and set(raw["split"].astype(str)) != {"validation"}:
        raise SelectionError(f"{where}: rows of split(s) {sorted(set(raw['split'].astype(str)))}; selection reads "
                             "validation rows only (fda-bench evaluate --split validation)")
    head = raw[raw["headline"].astype(bool)]
    per_task = {str(t): float(v) for t, v in zip(head["task"], head["value"])}
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise SelectionError(f"{where}: no validation score for task(s) {missing}")
    values = [per_task[t] for t in tasks]
    return (float(sum(values) / len(values)) if all(math.isfinite(v) for v in values) else math.nan,
            {t: per_task[t] for t in tasks})


def choose(scores: Sequence[float], labels: Sequence[str] | None = None) -> int:
    """The index of the first highest score (:data:`TIE_RULE`); ``SelectionError`` naming the point
    when a score is not finite, or when there is none."""
    if not scores:
        raise SelectionError("no grid points to choose from")
    for i, s in enumerate(scores):
        if not math.isfinite(s):
            name = labels[i] if labels else f"point {i}"
            raise SelectionError(f"grid point {i} ({name}) has a non-finite validation score ({s}): it cannot be "
                                 "ranked; fix or drop that grid value (a diverged merge?)")
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s == best)


def choice_record(*, suite: str, method: str, grid: Mapping[str, Sequence[Any]], points: Sequence[Mapping[str, Any]],
                  hparams: Sequence[Mapping[str, Any]], models: Sequence[str], scores: Sequence[float],
                  task_scores: Sequence[Mapping[str, float]], init: str = "", anchor_init: str = "",
                  expert_seed: int = 0, seed: int = 0) -> dict[str, Any]:
    """The choice file's content (module docstring): every point's values, hyperparameters, model and
    validation scores, and the chosen point by :func:`choose`."""
    n = len(points)
    if not (len(hparams) == len(models) == len(scores) == len(task_scores) == n):
        raise SelectionError(f"{n} grid points but {len(models)} models and {len(scores)} scores")
    labels = [values_label(p) for p in points]
    best = choose(scores, labels)
    rows = [{"point": i, "values": dict(points[i]), "hparams": dict(hparams[i]), "model": str(models[i]),
             "score": float(scores[i]), "tasks": dict(task_scores[i])} for i in range(n)]
    chosen = {k: rows[best][k] for k in ("point", "values", "hparams", "model", "score")}
    return {"at_edge": at_edge(grid, points[best]), "format": FORMAT, "suite": suite, "method": method, "init": init, "anchor_init": anchor_init,
            "expert_seed": int(expert_seed), "seed": int(seed), "protocol": "validated", "split": "validation",
            "criterion": CRITERION, "tie_rule": TIE_RULE, "grid": {k: list(v) for k, v in grid.items()},
            "points": rows, "chosen": chosen}


def at_edge(grid: Mapping[str, Sequence[Any]], values: Mapping[str, Any]) -> list[str]:
    """The hyperparameters of ``grid`` with three or more values whose chosen value (``values``) is
    the first or the last of its list, in grid order."""
    return [k for k, vs in grid.items() if len(vs) >= 3 and values[k] in (vs[0], vs[-1])]


def write_choice(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a choice file (sorted keys, atomic: the same choice gives the same bytes)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")
    return Path(path)


def read_choice(path: str | os.PathLike) -> dict[str, Any]:
    """A choice file written by :func:`write_choice`; ``SelectionError`` naming the file if it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SelectionError(f"{path}: not a readable choice file ({err}); rerun its select job") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or "chosen" not in record:
        raise SelectionError(f"{path}: not a choice file (format {FORMAT}); rerun its select job")
    return record


def values_json(values: Mapping[str, Any]) -> str:
    """The chosen values as the cells' ``hparams`` column holds them (canonical JSON)."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


#: short names of hyperparameters in table labels
SYMBOLS = {"alpha": "α", "adapt_lr_scale": "lr×", "adapt_epochs": "epochs"}


def values_label(values: Mapping[str, Any]) -> str:
    """``α=0.2, topk=20`` for a table label or a message."""
    return ", ".join(f"{SYMBOLS.get(k, k)}={_short(v)}" for k, v in values.items())


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
