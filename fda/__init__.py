"""fda-bench: Functional Dual Anchors (FDA) model merging and its benchmark harness."""

__version__ = "0.1.0"
