"""Loading and validating the workflow config: YAML files, ``KEY=VALUE`` overrides, the JSON
schema (defaults filled in, errors that name the key and the allowed values) and the checks a
schema cannot make (``semantic_problems``).

The Snakefile and the ``fda-bench`` CLI both load the config through here, so both accept and
reject exactly the same configs and both see the same defaults.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fda.bench.config.suite_views import (
    STREAMING_FAMILIES,
    _suite_setting_keys,
    deep_update,
    effective_suite,
    suite_settings_for,
    suite_takes_sources,
)
from fda.bench.config.vocabulary import REFERENCE_METHODS, ConfigError

SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"


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
