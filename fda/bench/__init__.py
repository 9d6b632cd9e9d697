"""The harness around the FDA method: the ``fda-bench`` CLI, the workflow config, suites, model
and data sources, evaluation, result cells, tables and figures.

It builds on ``fda`` (the method), ``fda.io`` and ``baselines``; none of those imports it.
"""
