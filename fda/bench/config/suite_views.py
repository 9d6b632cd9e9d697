"""The suite's section of the workflow config as jobs see it.

- ``effective_suite``: the section with ``smoke_overrides`` merged in when ``smoke`` is on
  (``deep_update`` is the merge; ``load.load_config`` layers config files with it too) and the
  top-level ``fda_seeds`` / ``expert_seeds`` applied; ``expert_seeds`` reads a section's;
- the translation of the config's checkpoint sources into the settings a paper suite is built
  with (``suite_settings_for`` and its parts: ``suite_takes_sources``, ``checkpoint_spec``,
  ``suite_task_id``, ``suite_task_names``, ``CLIP_FAMILIES``);
- which suites run the streaming LLM rules (``is_streaming``, ``streaming_suites``,
  ``STREAMING_FAMILIES``) and what their jobs read (``result_tasks``, ``job_settings``,
  ``stream_options``), and the q/k/v layout merges run in (``merge_layout``).

Imports only ``vocabulary`` from this package; ``fda.bench.suites`` is imported inside the
functions that build a suite.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from fda.bench.config.vocabulary import ConfigError


def deep_update(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in recursively (mappings merge, the rest replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# -------------------------------------------------------------------------------- views


#: the ``expert_source`` of experts fine-tuned by the workflow itself: the only experts that have
#: more than one expert seed (hub or local checkpoints are one fixed set)
FINETUNED_HERE = "finetuned-here"


def effective_suite(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    """The suite's section as jobs see it: with ``smoke`` on, ``smoke_overrides`` merged in; with
    a top-level ``fda_seeds``, those seeds instead of the suite's; with a top-level
    ``expert_seeds``, those expert seeds instead of the suite's when its experts are fine-tuned
    here (``expert_source: finetuned-here``; hub or local experts keep their one expert seed)."""
    try:
        raw = config["suites"][suite]
    except KeyError:
        raise ConfigError(f"suite '{suite}' is not configured; configured: {', '.join(config['suites'])}") from None
    section = {k: copy.deepcopy(v) for k, v in raw.items() if k != "smoke_overrides"}
    if config.get("smoke") and raw.get("smoke_overrides"):
        section = deep_update(section, raw["smoke_overrides"])
    if config.get("fda_seeds") is not None:
        section["seeds"] = list(config["fda_seeds"])
    if config.get("expert_seeds") is not None and section.get("expert_source") == FINETUNED_HERE:
        section["expert_seeds"] = list(config["expert_seeds"])
    # One source of truth for the task list: a suite whose settings take `tasks` gets the
    # section's tasks (so the suite and the DAG cannot disagree).
    settings = section.setdefault("settings", {})
    if "tasks" in _suite_setting_keys(suite) and "tasks" not in settings and "tasks" in section:
        settings["tasks"] = list(section["tasks"])
    return section


def expert_seeds(section: Mapping[str, Any]) -> list[int]:
    """A suite section's expert seeds (``[0]`` when the section does not set them)."""
    return [int(e) for e in section.get("expert_seeds") or [0]]


@functools.lru_cache(maxsize=None)
def _suite_setting_keys(suite: str) -> frozenset[str]:
    """Keys of the suite's settings dataclass; empty if the suite is not implemented (yet)."""
    try:
        from fda.bench.suites import suite_settings_schema
    except ImportError:
        return frozenset()
    try:
        valid = suite_settings_schema(suite)
    except (KeyError, ValueError, NotImplementedError):
        return frozenset()
    return frozenset(valid.get("properties", valid) if isinstance(valid, Mapping) else valid)


# -------------------------------------------------------------------------------- suite sources
#
# The config names where checkpoints come from in workflow terms (`base`, `experts: {task: entry}`,
# `expert_source`, task names as in the paper's tables); the paper suites take them as settings in
# their own terms (source-spec strings of fda/bench/sources.py, lower-case task ids, a CLIP checkpoint
# family). `suite_settings_for` is the one place that translates; every job gets its result.

#: config `expert_source` -> the CLIP suites' checkpoint family (their `settings.expert_source`).
#: `fda-hf` (SphereLab/vision_models_in_FDA, the FDA authors' copy of the task_vectors checkpoints)
#: is read like `task-vectors` from a local download (`taskvectors_dir`); docs/paper-suites.md
CLIP_FAMILIES = {"task-vectors": "taskvectors", "fusionbench-hf": "fusionbench", "fda-hf": "taskvectors"}


def suite_takes_sources(suite: str) -> bool:
    """True for suites that fetch their own checkpoints (settings take `base`/`experts`: the
    paper suites); the embedded suites build their base and copy `{path}` experts instead."""
    return "experts" in _suite_setting_keys(suite)


def checkpoint_spec(entry: Mapping[str, Any], where: str) -> str | None:
    """A config checkpoint entry as a source spec (fda/bench/sources.py): ``{hub, subfolder?, revision?}``
    -> ``hf:id[/subfolder][@revision]``, ``{path}`` -> ``file:path`` (never mistaken for a hub id),
    ``{recipe: suite-default}`` -> None (the suite's own default for that task)."""
    if "hub" in entry:
        sub = f"/{entry['subfolder'].strip('/')}" if entry.get("subfolder") else ""
        rev = f"@{entry['revision']}" if entry.get("revision") else ""
        return f"hf:{entry['hub']}{sub}{rev}"
    if "path" in entry:
        return f"file:{entry['path']}"
    if "recipe" in entry:
        return None
    raise ConfigError(f"{where}: {dict(entry)!r} is not a source this suite can fetch; use {{hub: owner/name}}, "
                      "{path: DIR} or {recipe: suite-default} ({package: ...} is for the embedded suites)")


@functools.lru_cache(maxsize=None)
def _task_aliases(suite: str) -> dict[str, str]:
    """``{name: suite task id}`` accepting the id and its display name (``SST-2`` -> ``sst2``)."""
    from fda.bench.suites import get_suite

    s = get_suite(suite, {})
    out = {t: t for t in s.tasks}
    out.update({v: k for k, v in getattr(s, "display_names", {}).items()})
    return out


@functools.lru_cache(maxsize=None)
def suite_task_names(suite: str) -> tuple[str, ...]:
    """Every task name the config may use for ``suite``: the tasks its default settings run (all of
    its tasks), and for the suites that fetch their checkpoints also their display names
    (``SST-2`` for ``sst2``). ``ValueError`` for a suite that is not implemented."""
    if suite_takes_sources(suite):
        return tuple(_task_aliases(suite))
    from fda.bench.suites import get_suite

    return tuple(get_suite(suite, {}).tasks)


def suite_task_id(suite: str, task: str) -> str:
    """The suite's id for a workflow task name (itself, or the id whose display name it is)."""
    if not suite_takes_sources(suite):
        return task
    aliases = _task_aliases(suite)
    if task not in aliases:
        raise ConfigError(f"suites.{suite}.tasks: unknown task {task!r}; allowed: {', '.join(aliases)}")
    return aliases[task]


def suite_settings_for(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    """The settings the suite is built with in every job: ``settings`` plus, for suites that
    fetch their checkpoints (the paper suites), the config's sources in the suite's terms:

    - ``tasks`` -> ``settings.tasks`` as suite ids (``SUN397`` -> ``sun397``, ``STS-B`` -> ``stsb``);
    - ``base`` -> ``settings.base`` (``{hub: id}`` -> ``hf:id``, ``{path: p}`` -> ``file:p``);
    - ``experts.{task}`` -> ``settings.experts.{id}``; ``{recipe: suite-default}`` is left to the
      suite (GLUE: ``expert_pattern``, default ``recipe:finetune``; CLIP: its checkpoint family);
    - CLIP ``expert_source``: ``task-vectors`` and ``fda-hf`` -> ``taskvectors``, ``fusionbench-hf``
      -> ``fusionbench`` (others need ``settings.expert_source``).

    A key given both ways is an error (one source of truth). Embedded suites get ``settings`` as is.
    """
    s = effective_suite(config, suite)
    settings = copy.deepcopy(s["settings"])
    if not suite_takes_sources(suite):
        return settings
    where = f"suites.{suite}"
    settings["tasks"] = [suite_task_id(suite, t) for t in s["tasks"]]
    if s.get("base"):
        if "base" in settings:
            raise ConfigError(f"{where}: the base is set twice (base and settings.base); keep {where}.base")
        spec = checkpoint_spec(s["base"], f"{where}.base")
        if spec is not None:
            settings["base"] = spec
    experts = dict(settings.get("experts", {}))
    for task, entry in s.get("experts", {}).items():
        tid = suite_task_id(suite, task)
        if tid in experts:
            raise ConfigError(f"{where}: expert '{task}' is set twice (experts and settings.experts); keep {where}.experts.{task}")
        spec = checkpoint_spec(entry, f"{where}.experts.{task}")
        if spec is not None:
            experts[tid] = spec
    settings["experts"] = experts
    if "expert_source" in _suite_setting_keys(suite):  # the CLIP suites: two checkpoint families
        family = CLIP_FAMILIES.get(s["expert_source"])
        given = settings.get("expert_source")
        if given is not None and family is not None and given != family:
            raise ConfigError(f"{where}: expert_source {s['expert_source']!r} means settings.expert_source {family!r}, "
                              f"not {given!r}; drop settings.expert_source or fix {where}.expert_source")
        if given is None and family is None:
            raise ConfigError(f"{where}.expert_source: {s['expert_source']!r} does not say which CLIP checkpoint family; "
                              f"use {' or '.join(CLIP_FAMILIES)}, or set {where}.settings.expert_source")
        settings["expert_source"] = given or family
    return settings


# -------------------------------------------------------------------------------- streaming suites
#
# One predicate decides which rules run a suite: the in-memory ones (workflow/rules/experts.smk,
# baselines.smk, fda.smk, evaluate.smk) or the streaming LLM ones (workflow/rules/llm.smk).

#: model families whose checkpoints exceed one job's memory: sharded directories merged block by
#: block, FDA one job per (decoder layer, expert) and per layer, evaluation by generation
STREAMING_FAMILIES = frozenset({"llama"})


def is_streaming(config: Mapping[str, Any], suite: str) -> bool:
    """Whether ``suite`` runs the streaming LLM rules: its config ``family`` is a streaming family."""
    return effective_suite(config, suite)["family"] in STREAMING_FAMILIES


def streaming_suites(config: Mapping[str, Any]) -> list[str]:
    """The configured suites that run the streaming LLM rules, in config order."""
    return [s for s in config["suites"] if is_streaming(config, s)]


def result_tasks(config: Mapping[str, Any], suite: str) -> list[str]:
    """Task names of the suite's result rows, in table order: the config's tasks, or for a
    streaming suite the benchmarks scoring them (``math`` -> ``GSM8K``, ``MATH``)."""
    if not is_streaming(config, suite):
        return list(effective_suite(config, suite)["tasks"])
    from fda.bench.suites import get_suite

    return list(get_suite(suite, suite_settings_for(config, suite)).result_tasks)


def job_settings(config: Mapping[str, Any], suite: str, stage: str) -> dict[str, Any]:
    """A streaming suite's settings as one kind of job (``data``, ``fetch``, ``eval``) reads them
    (``fda.bench.suites.llama.JOB_SETTINGS``): editing an evaluation setting reruns evaluations only."""
    from fda.bench.suites.llama import job_settings as settings_of_stage

    return settings_of_stage(suite_settings_for(config, suite), stage)


def stream_options(config: Mapping[str, Any], suite: str) -> dict[str, str]:
    """``shard_size`` and ``vocab_mismatch`` of a streaming suite, defaults filled in: the options
    of its merge and assembly jobs."""
    from fda.bench.suites import get_suite

    cfg = get_suite(suite, suite_settings_for(config, suite)).cfg
    return {"shard_size": cfg.shard_size, "vocab_mismatch": cfg.vocab_mismatch}


def merge_layout(config: Mapping[str, Any], suite: str) -> str:
    """The layout merges run in for ``suite`` (``fused``/``split`` q-k-v), recorded in every row.
    Suites without a merge-layout transform (the embedded ones) merge their HF layout: ``split``."""
    if not suite_takes_sources(suite):
        return "split"
    from fda.bench.suites import get_suite

    return get_suite(suite, suite_settings_for(config, suite)).qkv_layout


# -------------------------------------------------------------------------------- anchor source
#
# `fda.anchors` says where a suite's anchors come from: constructed here (the default) or the FDA
# authors' released files, imported by `fda-bench import-anchors` (fda.bench.official_anchors).

#: the keys of an `fda.anchors` entry that say where the release is
RELEASE_KEYS = ("hub", "subfolder", "revision", "path")


def anchor_source(section: Mapping[str, Any]) -> str:
    """``constructed`` (default) or ``official``: where a suite section's FDA anchors come from."""
    return str(((section.get("fda") or {}).get("anchors") or {}).get("source", "constructed"))


def official_anchor_options(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    """What importing a suite's official anchors needs: ``spec`` (the release folder as a source
    spec, ``hf:id[/subfolder][@revision]`` or ``file:path``), ``family``, ``tasks`` (workflow
    names), ``n_blocks``, ``runs`` (anchor init -> run folder) and ``task_dirs`` (task -> folder)."""
    s = effective_suite(config, suite)
    entry = s["fda"]["anchors"]
    where = f"suites.{suite}.fda.anchors"
    given = [k for k in ("hub", "path") if k in entry]
    if len(given) != 1:
        raise ConfigError(f"{where}: official anchors need exactly one of path (a local folder) or hub (a hub dataset "
                          f"such as SphereLab/FDA_for_Vision, with subfolder ViT-B-32); given: {', '.join(given) or 'neither'}")
    spec = checkpoint_spec({k: entry[k] for k in RELEASE_KEYS if k in entry}, where)
    return {"spec": spec, "family": s["family"], "tasks": list(s["tasks"]), "n_blocks": s["fda"]["n_blocks"],
            "runs": dict(entry.get("runs", {})), "task_dirs": dict(entry.get("tasks", {}))}


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
