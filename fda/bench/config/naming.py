"""The names the Snakefile and the ``fda-bench`` CLI read: the result-cell and file-name
vocabulary, config slices and their hashes, and the list of result cells.

A config slice is the part of the config one job depends on; it is passed to the job as a rule
``params`` (so changing a hyperparameter reruns only the jobs that read it) and its hash is
recorded in every result row (``config_hash``).

The values each file-name wildcard may take are the configured ones, per suite
(``suite_wildcard_values``): the Snakefile constrains its wildcards to them (``configured_values``)
and refuses, listing them, a target that names anything else (``check_wildcards``, ``check_cell``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fda.bench.config.fda_selection import fda_points, validated_anchor_inits, validated_inits
from fda.bench.config.grids import grids, method_points
from fda.bench.config.suite_views import ADAPT_FIELDS, anchor_source, effective_suite, expert_seeds, fda_hparams
from fda.bench.config.vocabulary import (
    ANCHOR_INITS,
    BASELINE_METHODS,
    FDA_INITS,
    METHODS,
    REFERENCE_METHODS,
    SUITES,
    ConfigError,
)

# The vocabulary is defined in ``vocabulary`` (validation reads it too); the Snakefile and the CLI
# read it here with the slices and cells.
__all__ = [
    "ADAPT_FIELDS",
    "ANCHOR_INITS",
    "BASELINE_METHODS",
    "FDA_INITS",
    "METHODS",
    "REFERENCE_METHODS",
    "SUITES",
    "adapt_slice",
    "base_slice",
    "canonical_json",
    "cell_slice",
    "cells",
    "check_cell",
    "check_point",
    "check_wildcards",
    "config_hash",
    "configured_values",
    "construct_slice",
    "data_slice",
    "eval_slice",
    "expert_slice",
    "fda_granularity",
    "fda_hparams",
    "fda_selection_slice",
    "merge_slice",
    "selection_slice",
    "validated_methods",
    "suite_wildcard_values",
    "wildcard_problems",
]


def fda_granularity(config: Mapping[str, Any], stage: str) -> str:
    """``fine`` or ``coarse`` for ``stage`` (``construct`` or ``adapt``)."""
    jobs = config.get("fda_jobs", "coarse")
    return jobs if isinstance(jobs, str) else jobs.get(stage, "coarse")


def config_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# Slices: what each kind of job depends on. Each later slice contains the earlier one, so a
# change upstream changes every hash downstream.


def data_slice(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    s = effective_suite(config, suite)
    return {"suite": suite, "settings": s["settings"], "data_seed": s["data_seed"], "tasks": s["tasks"]}


def base_slice(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    s = effective_suite(config, suite)
    return {**data_slice(config, suite), "family": s["family"], "base": s.get("base", {})}


def expert_slice(config: Mapping[str, Any], suite: str, task: str | None = None) -> dict[str, Any]:
    s = effective_suite(config, suite)
    experts = s.get("experts", {})
    chosen = {t: experts.get(t, {"recipe": "suite-default"}) for t in ([task] if task else s["tasks"])}
    return {**base_slice(config, suite), "expert_source": s["expert_source"], "experts": chosen}


def merge_slice(config: Mapping[str, Any], suite: str, method: str) -> dict[str, Any]:
    s = effective_suite(config, suite)
    return {**expert_slice(config, suite), "method": method, "hparams": s["methods"].get(method, {})}


def construct_slice(config: Mapping[str, Any], suite: str, anchor_init: str, seed: int) -> dict[str, Any]:
    s = effective_suite(config, suite)
    fda = s["fda"]
    return {**expert_slice(config, suite), "anchor_init": anchor_init, "seed": int(seed),
            "n_blocks": fda["n_blocks"], "size": fda["size"], "fda": fda_hparams(s)}


def adapt_slice(config: Mapping[str, Any], suite: str, init: str, anchor_init: str, seed: int) -> dict[str, Any]:
    s = effective_suite(config, suite)
    out = construct_slice(config, suite, anchor_init, seed)
    out["init"] = init
    out["fda"] = fda_hparams(s, init)
    out["init_hparams"] = s["methods"].get(init, {}) if init != "pretrained" else {}
    if anchor_source(s) != "constructed":  # imported anchors: their release (the default adds nothing)
        out["anchors"] = s["fda"]["anchors"]
    return out


def eval_slice(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    s = effective_suite(config, suite)
    return {"eval_limit": s["eval_limit"], "tasks": s["tasks"]}


def validated_methods(section: Mapping[str, Any]) -> list[str]:
    """The methods of a suite section (smoke applied) that have a validated row: a declared grid
    (``selection.grids``) and an entry under ``methods``, in grid order."""
    return [m for m in grids(section) if m in section["methods"]]


def selection_slice(config: Mapping[str, Any], suite: str, method: str) -> dict[str, Any]:
    """What a select job (and the validated row it leads to) depends on: the fixed merge's slice,
    the grid's points in declared order (the tie rule reads the order) and the evaluation settings."""
    s = effective_suite(config, suite)
    return {**merge_slice(config, suite, method), "points": method_points(s, method),
            "eval": eval_slice(config, suite), "split": "validation"}


def fda_selection_slice(config: Mapping[str, Any], suite: str, init: str, anchor_init: str, seed: int) -> dict[str, Any]:
    """What an FDA select job (and the validated row it leads to) depends on: the fixed adaptation's
    slice, the grid's points in declared order and the evaluation settings."""
    s = effective_suite(config, suite)
    return {**adapt_slice(config, suite, init, anchor_init, seed), "points": fda_points(s),
            "eval": eval_slice(config, suite), "split": "validation"}


def cell_slice(config: Mapping[str, Any], suite: str, method: str, init: str | None = None,
               protocol: str = "fixed") -> dict[str, Any]:
    """Everything a result cell depends on (its ``config_hash``); ``protocol`` ``validated``: the
    validated cell of a baseline (its grid too)."""
    s = effective_suite(config, suite)
    if protocol != "fixed" and method == "fda":
        assert init is not None
        return {"eval": eval_slice(config, suite), "experts": expert_slice(config, suite),
                "expert_seeds": expert_seeds(s), "method": f"{init}-fda", "protocol": protocol,
                "fda": {ai: {seed: fda_selection_slice(config, suite, init, ai, seed) for seed in s["seeds"]}
                        for ai in validated_anchor_inits(s)}}
    if protocol != "fixed":
        return {"eval": eval_slice(config, suite), "experts": expert_slice(config, suite),
                "expert_seeds": expert_seeds(s), "method": selection_slice(config, suite, method),
                "protocol": protocol}
    out: dict[str, Any] = {"eval": eval_slice(config, suite), "experts": expert_slice(config, suite),
                           "expert_seeds": expert_seeds(s)}
    if method == "fda":
        assert init is not None
        out["fda"] = {ai: {seed: adapt_slice(config, suite, init, ai, seed) for seed in s["seeds"]}
                      for ai in s["fda"]["anchor_inits"]}
        out["method"] = f"{init}-fda"
    else:
        out["method"] = merge_slice(config, suite, method) if method in BASELINE_METHODS else method
    return out


# -------------------------------------------------------------------------------- cells


def cells(config: Mapping[str, Any]) -> list[str]:
    """Every result cell the config asks for, in a stable order."""
    out: list[str] = []
    for suite in config["suites"]:
        s = effective_suite(config, suite)
        out += [f"results/{suite}_{m}.csv" for m in s["methods"]]
        out += [f"results/{suite}_{m}_validated.csv" for m in validated_methods(s)]
        if s.get("fda"):
            out += [f"results/{suite}_{init}_fda.csv" for init in s["fda"]["inits"]]
            out += [f"results/{suite}_{init}_fda_validated.csv" for init in validated_inits(s)]
    return out


# -------------------------------------------------------------------------------- wildcards

#: the wildcards of the workflow's file names whose values the config lists per suite
CONFIGURED_WILDCARDS = ("method", "baseline", "selected", "reference", "init", "anchorinit", "task", "eseed", "seed",
                        "block", "vinit", "vanchorinit")


def suite_wildcard_values(config: Mapping[str, Any], suite: str) -> dict[str, list[str]]:
    """The values each wildcard may take in ``suite``'s file names, as the config (smoke applied)
    lists them: ``method`` its methods, ``baseline`` its baselines, ``selected`` the baselines with a
    selection grid (``validated_methods``), ``vinit`` / ``vanchorinit`` the FDA inits and anchor
    inits with a validated row (``fda.selection``), ``reference`` ``individual``
    (every cell's ``normalized`` needs it) and ``pretrained`` if listed, ``init`` / ``anchorinit``
    its FDA inits and anchor inits, ``task`` its tasks, ``eseed`` its expert seeds, ``seed`` its
    FDA seeds, ``block`` its blocks."""
    s = effective_suite(config, suite)
    fda = s.get("fda") or {}
    return {
        "method": list(s["methods"]),
        "baseline": [m for m in s["methods"] if m in BASELINE_METHODS],
        "selected": validated_methods(s),
        "reference": [m for m in REFERENCE_METHODS if m in s["methods"] or m == "individual"],
        "init": list(fda.get("inits", [])),
        "anchorinit": list(fda.get("anchor_inits", [])),
        "task": list(s["tasks"]),
        "eseed": [str(x) for x in expert_seeds(s)],
        "seed": [str(x) for x in s["seeds"]],
        "block": [str(b) for b in range(fda["n_blocks"])] if fda else [],
        "vinit": validated_inits(s),
        "vanchorinit": validated_anchor_inits(s),
    }


def configured_values(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per wildcard, the values some configured suite uses (the workflow's global wildcard
    constraints; ``check_wildcards`` then checks them per suite)."""
    out: dict[str, list[str]] = {w: [] for w in CONFIGURED_WILDCARDS}
    for suite in config["suites"]:
        for w, values in suite_wildcard_values(config, suite).items():
            out[w] += [v for v in values if v not in out[w]]
    return out


def _smoke_note(config: Mapping[str, Any], suite: str) -> str:
    """Where the configured values come from when ``smoke`` changes them."""
    smoke = config.get("smoke") and config["suites"][suite].get("smoke_overrides")
    return f"; smoke=true: suites.{suite}.smoke_overrides applied" if smoke else ""


def wildcard_problems(config: Mapping[str, Any], wildcards: Mapping[str, str]) -> list[str]:
    """What in ``wildcards`` (one job's, with ``suite``) the config does not configure for that
    suite; each names the wildcard, its value and the configured values."""
    suite = wildcards.get("suite")
    if suite not in config["suites"]:
        return [f"suite {suite!r} is not configured (configured suites: {', '.join(config['suites'])})"]
    values = suite_wildcard_values(config, suite)
    return [f"{name} {value!r} is not configured for suite '{suite}' "
            f"(configured: {', '.join(values[name]) or 'none'}{_smoke_note(config, suite)})"
            for name, value in wildcards.items() if name in values and str(value) not in values[name]]


def check_wildcards(config: Mapping[str, Any], wildcards: Mapping[str, str]) -> None:
    """``ConfigError`` when ``wildcards`` name something the config does not configure for the suite."""
    problems = wildcard_problems(config, wildcards)
    if problems:
        raise ConfigError("not part of this config: " + "; ".join(problems))


def check_point(config: Mapping[str, Any], suite: str, method: str, point: int | str) -> None:
    """``ConfigError`` when ``point`` is not a grid point of ``method``'s selection grid in ``suite``."""
    n = len(method_points(effective_suite(config, suite), method))
    if not 0 <= int(point) < n:
        raise ConfigError(f"grid point {point} is not configured for '{method}' in suite '{suite}' "
                          f"(its selection grid has points 0..{n - 1}{_smoke_note(config, suite)})")


def check_cell(config: Mapping[str, Any], path: str, wildcards: Mapping[str, str]) -> None:
    """``ConfigError`` listing the configured result cells when ``path`` (a cell file name, parsed
    into ``wildcards``) is not one of them."""
    valid = cells(config)
    if path in valid:
        return
    if path.endswith("_validated.csv"):  # a validated cell needs a selection grid
        renamed = {"method": "selected", "init": "vinit"}
        wildcards = {renamed.get(k, k): v for k, v in wildcards.items()}
    why = "; ".join(wildcard_problems(config, wildcards)) or "not a cell of this config"
    raise ConfigError(f"{path} is not a result cell of this config: {why}.\n"
                      "The configured cells (`fda-bench cells CONFIGFILE [--config smoke=true]` lists them):\n  "
                      + "\n  ".join(valid))
