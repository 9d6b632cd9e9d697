"""The words of the workflow config that every other module of the package reads: the
result-cell and file-name vocabulary, and ``ConfigError``. Imports nothing from the package."""

from __future__ import annotations

#: result-cell and file-name vocabulary (see docs/ARCHITECTURE.md); no underscores anywhere
REFERENCE_METHODS = ("pretrained", "individual")
# isoc, isocts: BEYOND the paper (isotropic merging, Marczak et al. 2025; docs/baselines.md)
BASELINE_METHODS = ("ta", "tsvm", "wudi", "average", "ties", "isoc", "isocts")
METHODS = REFERENCE_METHODS + BASELINE_METHODS
FDA_INITS = ("pretrained", "ta", "tsvm", "wudi", "isoc", "isocts")  # isoc, isocts: BEYOND the paper
ANCHOR_INITS = ("gauss", "weight", "taskspan")  # taskspan: BEYOND the paper
#: where a suite's FDA anchors come from (``fda.anchors.source``; the cells' ``anchor_source``):
#: built here, or the FDA authors' released files (fda.bench.official_anchors; only gauss and weight)
ANCHOR_SOURCES = ("constructed", "official")
SUITES = ("minitext", "minivision", "vitb32", "vitb16", "vitl14", "robertab", "robertal", "llama13b")


class ConfigError(ValueError):
    """The workflow config is invalid; the message names every offending key and what is allowed."""
