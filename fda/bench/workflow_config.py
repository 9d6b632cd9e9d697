"""Workflow configuration: loading, schema validation with readable errors, smoke overrides,
config slices and their hashes.

The Snakefile and the ``fda-bench`` CLI share this module, so both accept and reject exactly the
same configs and both see the same defaults. A config slice is the part of the config one job
depends on; it is passed to the job as a rule ``params`` (so changing a hyperparameter reruns only
the jobs that read it) and its hash is recorded in every result row (``config_hash``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

#: result-cell and file-name vocabulary (see docs/ARCHITECTURE.md); no underscores anywhere
REFERENCE_METHODS = ("pretrained", "individual")
BASELINE_METHODS = ("ta", "tsvm", "wudi", "average", "ties")
METHODS = REFERENCE_METHODS + BASELINE_METHODS
FDA_INITS = ("pretrained", "ta", "tsvm", "wudi")
ANCHOR_INITS = ("gauss", "weight")
SUITES = ("minitext", "minivision", "vitb32", "vitb16", "vitl14", "robertab", "robertal", "llama13b")

SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The workflow config is invalid; the message names every offending key and what is allowed."""


# -------------------------------------------------------------------------------- loading


def schema_path() -> Path:
    """The config JSON schema: ``$FDA_BENCH_SCHEMA``, else the repository's
    ``workflow/schemas/config.schema.yaml`` next to the package (editable install), else the one
    under the current directory."""
    env = os.environ.get("FDA_BENCH_SCHEMA")
    candidates = [Path(env)] if env else []
    import fda  # the repository root holds the fda package (editable install)

    candidates += [Path(fda.__file__).resolve().parents[1] / SCHEMA_RELPATH, Path.cwd() / SCHEMA_RELPATH]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config schema not found (looked at {', '.join(map(str, candidates))}); "
                      "run from the repository root or set FDA_BENCH_SCHEMA")


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], yaml-parsed value), like ``snakemake --config a=value``."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like KEY=VALUE (e.g. smoke=true)")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_config(paths: Iterable[str | os.PathLike], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read YAML config files (later ones update earlier ones key by key, as ``--configfile``
    does), apply ``KEY=VALUE`` overrides and return the validated config with defaults filled."""
    config: dict[str, Any] = {}
    for p in paths:
        data = yaml.safe_load(Path(p).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping, found {type(data).__name__}")
        config = deep_update(config, data)
    for item in overrides:
        keys, value = parse_override(item)
        node = config
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return validate_config(config)


def deep_update(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in recursively (mappings merge, the rest replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# -------------------------------------------------------------------------------- validation


def _path(error_path: Iterable[Any]) -> str:
    parts = [str(p) for p in error_path]
    return ".".join(parts) if parts else "<top level>"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _allowed(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """Names/values a subschema accepts, for error messages."""
    schema = _resolve(schema, root)
    if "enum" in schema:
        return [str(v) for v in schema["enum"]]
    out: list[str] = []
    for key in ("oneOf", "anyOf"):
        for sub in schema.get(key, []):
            sub = _resolve(sub, root)
            out += _allowed(sub, root) or [f"<{sub.get('type', 'value')}>"]
    return out


def _message(err: Any, root: Mapping[str, Any]) -> str:
    where = _path(err.absolute_path)
    v = err.validator
    if v == "additionalProperties" and err.validator_value is False:
        known = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        return f"{where}: unknown key(s) {', '.join(repr(e) for e in extra)}; allowed keys: {', '.join(known)}"
    if v == "enum":
        return f"{where}: {err.instance!r} is not allowed; allowed values: {', '.join(map(str, err.validator_value))}"
    if v == "propertyNames":
        allowed = _allowed(err.validator_value, root)
        return f"{where}: key {err.instance!r} is not allowed; allowed keys: {', '.join(allowed)}"
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        return f"{where}: expected {want}, got {type(err.instance).__name__} {err.instance!r}"
    if v in ("oneOf", "anyOf"):
        allowed = _allowed(err.schema, root)
        return f"{where}: {err.instance!r} is not valid; allowed: {', '.join(allowed)}"
    if v == "required":
        return f"{where}: {err.message}"
    if v == "pattern":
        return f"{where}: {err.instance!r} is not a valid name (letters, digits, '.', '+', '-'; no underscores)"
    return f"{where}: {err.message}"


def _validator(schema: Mapping[str, Any]):
    """A Draft 2020-12 validator that fills ``default`` values, as snakemake.utils.validate does."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                sub_r = _resolve(sub, schema_root)
                if "default" in sub_r and prop not in instance:
                    instance[prop] = copy.deepcopy(sub_r["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    schema_root = schema
    cls = validators.extend(base, {"properties": set_defaults})
    return cls(schema)


def validate_config(config: Mapping[str, Any], *, semantic: bool = True) -> dict[str, Any]:
    """Validate ``config`` against the schema (defaults filled in) and, with ``semantic``, check
    what a schema cannot: FDA inits need their baseline, hyperparameter names exist in the
    method's dataclass, suite settings keys exist, expert tasks are configured tasks.

    Returns the completed config; raises ``ConfigError`` listing every problem.
    """
    schema = load_schema()
    data = copy.deepcopy(dict(config))
    # `--config smoke=true` arrives as a bool from YAML; accept the strings snakemake may pass.
    if isinstance(data.get("smoke"), str) and data["smoke"].lower() in ("true", "false"):
        data["smoke"] = data["smoke"].lower() == "true"
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    problems = [_message(e, schema) for e in errors]
    if not problems and semantic:
        problems = semantic_problems(data)
    if problems:
        uniq = list(dict.fromkeys(problems))
        raise ConfigError("invalid workflow config:\n  - " + "\n  - ".join(uniq))
    return data


def semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Checks beyond the schema; each problem names the key and the allowed values."""
    problems: list[str] = []
    for name, raw in config["suites"].items():
        for smoke in (False, True):
            if smoke and "smoke_overrides" not in raw:
                continue
            section = effective_suite({"smoke": smoke, "suites": config["suites"]}, name)
            where = f"suites.{name}" + (".smoke_overrides" if smoke else "")
            problems += _suite_problems(name, section, where)
    return problems


def _suite_problems(name: str, s: Mapping[str, Any], where: str) -> list[str]:
    out: list[str] = []
    tasks = list(s["tasks"])
    extra = sorted(set(s.get("experts", {})) - set(tasks))
    if extra:
        out.append(f"{where}.experts: task(s) {extra} are not in tasks; allowed: {', '.join(tasks)}")
    fda = s.get("fda")
    if fda:
        for init in fda["inits"]:
            if init != "pretrained" and init not in s["methods"]:
                out.append(f"{where}.fda.inits: init '{init}' needs the baseline '{init}' under "
                           f"{where}.methods (configured methods: {', '.join(s['methods'])})")
    out += _hparam_problems(s, where)
    out += _settings_problems(name, s, where)
    out += _streaming_problems(name, s, where)
    if not out:
        out += _source_problems(name, s, where)
    return out


def _source_problems(name: str, s: Mapping[str, Any], where: str) -> list[str]:
    """The paper suites' sources translate and the suite accepts them (task ids, checkpoint family)."""
    if not suite_takes_sources(name):
        return []
    from fda.bench.suites import get_suite

    try:
        get_suite(name, suite_settings_for({"smoke": False, "suites": {name: s}}, name))
    except ConfigError as err:
        return [str(err)]
    except ValueError as err:  # the suite's own checks (SettingsError, unknown task, missing taskvectors_dir)
        return [f"{where}: {err}"]
    return []


def _dataclass_fields(cls: Any) -> list[str] | None:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else None


def _hparam_problems(s: Mapping[str, Any], where: str) -> list[str]:
    """Hyperparameter names against baselines.METHODS[m].hparams and fda.FDAConfig, when those
    are importable (the workflow config must validate before every part of the code exists)."""
    out: list[str] = []
    try:
        import baselines  # type: ignore[import-not-found]

        registry = getattr(baselines, "METHODS", None)
    except ImportError:
        registry = None
    if registry:
        for method, hp in s["methods"].items():
            if method in REFERENCE_METHODS or method not in registry:
                continue
            valid = _dataclass_fields(getattr(registry[method], "hparams", None))
            if valid is None:
                continue
            bad = sorted(set(hp) - set(valid))
            if bad:
                out.append(f"{where}.methods.{method}: unknown hyperparameter(s) {bad}; allowed: {', '.join(valid)}")
            elif hp:
                out += _hparam_type_problems(registry[method], hp, f"{where}.methods.{method}")
    fda = s.get("fda")
    if fda and fda.get("hparams"):
        try:
            from fda import FDAConfig  # type: ignore[attr-defined]
        except ImportError:
            FDAConfig = None  # noqa: N806 - FDA not built yet: the schema check stands alone
        valid = _dataclass_fields(FDAConfig) if FDAConfig is not None else None
        if valid is not None:
            bad = sorted(set(fda["hparams"]) - set(valid))
            if bad:
                out.append(f"{where}.fda.hparams: unknown FDAConfig field(s) {bad}; allowed: {', '.join(valid)}")
    return out


def _hparam_type_problems(spec: Any, given: Mapping[str, Any], where: str) -> list[str]:
    """Types and ranges through the registry's own check (``baselines.registry.build_hparams``)."""
    try:
        from baselines.registry import build_hparams  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        build_hparams(spec, dict(given))
    except (TypeError, ValueError) as err:
        return [f"{where}: {err}"]
    return []


def _settings_problems(name: str, section: Mapping[str, Any], where: str) -> list[str]:
    keys = _suite_setting_keys(name)
    if not keys:
        return []  # a paper suite that is not implemented yet: nothing to check against
    settings = section.get("settings", {})
    bad = sorted(set(settings) - keys)
    if bad:
        return [f"{where}.settings: unknown key(s) {bad}; allowed keys: {', '.join(sorted(keys))}"]
    if "tasks" in settings and list(settings["tasks"]) != list(section["tasks"]):
        return [f"{where}.settings.tasks {list(settings['tasks'])} differs from {where}.tasks "
                f"{list(section['tasks'])}; set the tasks once, under {where}.tasks"]
    return []


# -------------------------------------------------------------------------------- views


def effective_suite(config: Mapping[str, Any], suite: str) -> dict[str, Any]:
    """The suite's section as jobs see it: with ``smoke`` on, ``smoke_overrides`` merged in."""
    try:
        raw = config["suites"][suite]
    except KeyError:
        raise ConfigError(f"suite '{suite}' is not configured; configured: {', '.join(config['suites'])}") from None
    section = {k: copy.deepcopy(v) for k, v in raw.items() if k != "smoke_overrides"}
    if config.get("smoke") and raw.get("smoke_overrides"):
        section = deep_update(section, raw["smoke_overrides"])
    # One source of truth for the task list: a suite whose settings take `tasks` gets the
    # section's tasks (so the suite and the DAG cannot disagree).
    settings = section.setdefault("settings", {})
    if "tasks" in _suite_setting_keys(suite) and "tasks" not in settings and "tasks" in section:
        settings["tasks"] = list(section["tasks"])
    return section


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

#: config `expert_source` -> the CLIP suites' checkpoint family (their `settings.expert_source`)
CLIP_FAMILIES = {"task-vectors": "taskvectors", "fusionbench-hf": "fusionbench"}


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
    - CLIP ``expert_source``: ``task-vectors`` -> ``taskvectors``, ``fusionbench-hf`` ->
      ``fusionbench`` (others need ``settings.expert_source``).

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


def _streaming_problems(name: str, s: Mapping[str, Any], where: str) -> list[str]:
    """A streaming family needs a suite that streams (and the other way round)."""
    try:
        from fda.bench.suites import suite_family
    except ImportError:
        return []
    try:
        family = suite_family(name)
    except ValueError:  # a suite that is not implemented (yet): nothing to check against
        return []
    if (s["family"] in STREAMING_FAMILIES) == (family in STREAMING_FAMILIES):
        return []
    return [f"{where}.family: {s['family']!r} does not fit suite '{name}' (a {family!r} suite): the streaming "
            f"families {sorted(STREAMING_FAMILIES)} run the LLM rules, which only their own suites implement"]


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
