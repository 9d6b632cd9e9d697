"""The workflow config, shared by the Snakefile (``workflow/rules/common.smk``) and the
``fda-bench`` CLI so that both accept the same configs and name the same files.

- ``vocabulary``: ``ConfigError`` and the result-cell and file-name vocabulary (methods, FDA
  inits, anchor inits, suites).
- ``suite_views``: a suite's section as jobs see it (``effective_suite``: smoke overrides
  merged in), the config's checkpoint sources translated into a suite's settings
  (``suite_settings_for``), which suites stream (``is_streaming``) and what their jobs read.
- ``load``: loading config files and ``KEY=VALUE`` overrides, schema validation with readable
  errors, the semantic checks (``load_config``, ``validate_config``).
- ``grids`` / ``fda_selection``: the validated protocol's grids (baselines' ``selection.grids``;
  FDA's ``fda.selection``: its points and the adaptation run each lr scale needs).
- ``naming``: what the Snakefile and the CLI name things by: the vocabulary again, the config
  slices each kind of job depends on and their hashes (``config_hash``), the result cells
  (``cells``).

Dependency order (an arrow points at the importer; no cycles)::

    vocabulary  <-  suite_views  <-  load
                                 <-  naming
    vocabulary  <-  grids  <-  fda_selection  <-  naming

``load`` and ``naming`` also read ``vocabulary`` directly and do not import each other.
Import the submodule you need; this file imports none of them.
"""
