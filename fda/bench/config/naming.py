"""The names the Snakefile and the ``fda-bench`` CLI read: the result-cell and file-name
vocabulary, config slices and their hashes, and the list of result cells.

A config slice is the part of the config one job depends on; it is passed to the job as a rule
``params`` (so changing a hyperparameter reruns only the jobs that read it) and its hash is
recorded in every result row (``config_hash``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fda.bench.config.suite_views import effective_suite
from fda.bench.config.vocabulary import (
    ANCHOR_INITS,
    BASELINE_METHODS,
    FDA_INITS,
    METHODS,
    REFERENCE_METHODS,
    SUITES,
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
    "config_hash",
    "construct_slice",
    "data_slice",
    "eval_slice",
    "expert_slice",
    "fda_granularity",
    "fda_hparams",
    "merge_slice",
]


#: FDAConfig fields that only adaptation reads (construction jobs neither get nor depend on them)
ADAPT_FIELDS = frozenset({"adapt_epochs", "adapt_lr", "adapt_batch", "adapt_loss", "ta_lambda", "train_mode", "non_block"})


def fda_hparams(section: Mapping[str, Any], init: str | None = None) -> dict[str, Any]:
    """FDAConfig overrides. Without ``init`` (construction): the suite's ``fda.hparams`` minus the
    adaptation-only fields, so editing those does not rebuild the anchors. With ``init``
    (adaptation): all of ``fda.hparams`` plus ``fda.per_init[init]``."""
    fda = section["fda"]
    out = dict(fda.get("hparams", {}))
    if init is None:
        return {k: v for k, v in out.items() if k not in ADAPT_FIELDS}
    out.update(fda.get("per_init", {}).get(init, {}))
    return out


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
    return out


def eval_slice(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    s = effective_suite(config, suite)
    return {"eval_limit": s["eval_limit"], "tasks": s["tasks"]}


def cell_slice(config: Mapping[str, Any], suite: str, method: str, init: str | None = None) -> dict[str, Any]:
    """Everything a result cell depends on (its ``config_hash``)."""
    s = effective_suite(config, suite)
    out: dict[str, Any] = {"eval": eval_slice(config, suite), "experts": expert_slice(config, suite)}
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
        if s.get("fda"):
            out += [f"results/{suite}_{init}_fda.csv" for init in s["fda"]["inits"]]
    return out
