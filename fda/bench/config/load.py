"""Loading and validating the workflow config: YAML files, ``KEY=VALUE`` overrides, the JSON
schema (defaults filled in, errors that name the key and the allowed values) and the checks a
schema cannot make (``semantic_problems``): task names, the family, and the values of every
hyperparameter and suite setting against the dataclass that states their range
(``baselines.METHODS[m].hparams``, ``fda.FDAConfig``, the suite's settings dataclass).

Each problem is reported once, at the key where it is: a suite's section is checked as is and
with its ``smoke_overrides`` merged in, and a problem of the merged section is reported under
``smoke_overrides`` when the offending key is there, and not again when it comes from the section.

The Snakefile and the ``fda-bench`` CLI both load the config through here, so both accept and
reject exactly the same configs and both see the same defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fda.bench.config.grids import grids
from fda.bench.config.suite_views import (
    FINETUNED_HERE,
    STREAMING_FAMILIES,
    _suite_setting_keys,
    anchor_source,
    deep_update,
    effective_suite,
    expert_seeds,
    official_anchor_options,
    suite_settings_for,
    suite_takes_sources,
    suite_task_names,
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


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """One config file as a mapping; ``ConfigError`` naming the file when it is missing, is not
    YAML, is empty or is not a mapping."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the config file ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from err
    if data is None:
        raise ConfigError(f"{p}: the config file is empty; a workflow config needs a `suites:` section "
                          "(see config/config.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, found {type(data).__name__}")
    return data


def no_suites_message(paths: Sequence[str | os.PathLike]) -> str:
    """The error for config files none of which defines ``suites``."""
    names = ", ".join(str(p) for p in paths)
    return (f"{names}: no `suites:` section; a workflow config file must define the suites to run (see "
            "config/config.yaml). With snakemake, a --configfile replaces config/config.yaml: to change only "
            "a top-level option of the default config, drop --configfile and pass --config KEY=VALUE "
            "(e.g. --config smoke=true)")


def load_config(paths: Iterable[str | os.PathLike], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read YAML config files (later ones update earlier ones key by key, as ``--configfile``
    does), apply ``KEY=VALUE`` overrides and return the validated config with defaults filled.
    An empty file, or files none of which defines ``suites``, is a ``ConfigError`` naming them."""
    paths, overrides = list(paths), list(overrides)
    config: dict[str, Any] = {}
    for p in paths:
        config = deep_update(config, read_config_file(p))
    for item in overrides:
        keys, value = parse_override(item)
        node = config
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    if paths and "suites" not in config:
        raise ConfigError(no_suites_message(paths))
    return validate_config(config, source=config_source(paths, overrides))


def config_source(paths: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> str:
    """Where a config comes from, for messages: ``a.yaml, b.yaml with --config smoke=true``."""
    text = ", ".join(str(p) for p in paths) or "no config file"
    return text + (f" with --config {' '.join(overrides)}" if overrides else "")


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


def _messages(err: Any, root: Mapping[str, Any]) -> list[str]:
    """The lines of one schema error: one per unknown key (at the key's own path), else one."""
    if err.validator == "additionalProperties" and err.validator_value is False:
        known = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        return [f"{_path([*err.absolute_path, e])}: unknown key {e!r}; allowed keys: {', '.join(known)}" for e in extra]
    return [_message(err, root)]


def _message(err: Any, root: Mapping[str, Any]) -> str:
    where = _path(err.absolute_path)
    v = err.validator
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


def validate_config(config: Mapping[str, Any], *, semantic: bool = True, source: str | None = None) -> dict[str, Any]:
    """Validate ``config`` against the schema (defaults filled in) and, with ``semantic``, check
    what a schema cannot (``semantic_problems``): task names and the family fit the suite, FDA
    inits need their baseline, hyperparameters and suite settings exist and are in range, expert
    tasks are configured tasks.

    Returns the completed config; raises ``ConfigError`` listing every problem (after
    ``source``, where the config comes from: its files and overrides, when given).
    """
    schema = load_schema()
    data = copy.deepcopy(dict(config))
    # `--config smoke=true` arrives as a bool from YAML; accept the strings snakemake may pass.
    if isinstance(data.get("smoke"), str) and data["smoke"].lower() in ("true", "false"):
        data["smoke"] = data["smoke"].lower() == "true"
    # `--config fda_seeds=[0,1,2]` arrives as a list of strings (snakemake parses lists as YAML
    # strings): numbers are numbers, anything else is left for the schema to name.
    # `--config expert_seeds=[0,1,2]` the same.
    for key in ("fda_seeds", "expert_seeds"):
        if isinstance(data.get(key), list):
            data[key] = [int(v) if isinstance(v, str) and v.isdigit() else v for v in data[key]]
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    problems = [line for e in errors for line in _messages(e, schema)]
    if not problems and semantic:
        problems = semantic_problems(data)
    if problems:
        uniq = list(dict.fromkeys(problems))
        where = f" ({source})" if source else ""
        raise ConfigError(f"invalid workflow config{where}:\n  - " + "\n  - ".join(uniq))
    return data


@dataclass(frozen=True)
class Problem:
    """One problem of a suite's section: ``path`` is the offending key inside the section (``()``:
    the section itself; ``None``: ``text`` already names its full path) and ``text`` says what is
    wrong and what is allowed."""

    path: tuple[str, ...] | None
    text: str

    def render(self, prefix: str) -> str:
        """``prefix.path: text`` (``text`` alone when it names its own path)."""
        if self.path is None:
            return self.text
        return f"{'.'.join((prefix, *self.path))}: {self.text}"


def semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Checks beyond the schema, each problem once, at the key where it is; each names the key,
    what is wrong and what is allowed."""
    problems: list[str] = []
    for name, raw in config["suites"].items():
        where = f"suites.{name}"
        plain = _suite_problems(name, effective_suite({"smoke": False, "suites": config["suites"]}, name))
        problems += [p.render(where) for p in plain]
        overrides = raw.get("smoke_overrides")
        if overrides:
            smoke = _suite_problems(name, effective_suite({"smoke": True, "suites": config["suites"]}, name))
            problems += _smoke_problems(where, overrides, plain, smoke)
    return list(dict.fromkeys(problems))


def _smoke_problems(where: str, overrides: Mapping[str, Any], plain: Sequence[Problem],
                    smoke: Sequence[Problem]) -> list[str]:
    """The problems of the section with ``smoke_overrides`` merged in, each where it is: under
    ``smoke_overrides`` when the offending value is set there; dropped when the section alone has
    the same problem (it is reported there); else named as arising from the merge."""
    out: list[str] = []
    for p in smoke:
        if p.path is not None and _sets(overrides, p.path, leaf=True):
            out.append(p.render(f"{where}.smoke_overrides"))
        elif p in plain:
            continue
        elif p.path is not None and _sets(overrides, p.path, leaf=False):
            out.append(p.render(f"{where}.smoke_overrides"))
        else:
            out.append(f"{p.render(where)} (with {where}.smoke_overrides merged in: smoke=true)")
    return out


def _sets(mapping: Mapping[str, Any], path: Sequence[str], *, leaf: bool) -> bool:
    """Whether ``mapping`` sets ``path``; with ``leaf``, to a value that is not a mapping (a value
    it replaces, rather than a mapping it merges into)."""
    node: Any = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return not (leaf and isinstance(node, Mapping))


def _suite_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """Every problem of one suite section (smoke overrides already merged in or not)."""
    out = _family_problems(name, s)
    tasks = _task_problems(name, s)
    out += tasks
    out += _expert_problems(s)
    out += _expert_seed_problems(s)
    out += _init_problems(s)
    out += _baseline_problems(s)
    out += _fda_problems(s)
    out += _selection_problems(name, s)
    out += _fda_selection_problems(name, s)
    out += _settings_problems(name, s, build=not tasks)
    if not out:
        out += _source_problems(name, s)
    if not out:
        out += _anchor_problems(name, s)
    return out


# ---------------------------------------------------------------- family, tasks, experts, inits

#: a suite's model family -> the config families that fit it (default: the suite's family only).
#: The CLIP suites load the paper's open_clip checkpoints as HF CLIP; `openclip` selects the
#: official open_clip FDA values (FDAConfig.for_family) for them.
FITTING_FAMILIES: dict[str, tuple[str, ...]] = {"clip-vision": ("clip-vision", "openclip")}


def _family_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """The config ``family`` fits the suite's model (a streaming family only a streaming suite)."""
    try:
        from fda.bench.suites import suite_family
    except ImportError:
        return []
    try:
        family = suite_family(name)
    except ValueError:  # a suite that is not implemented (yet): nothing to check against
        return []
    fitting = FITTING_FAMILIES.get(family, (family,))
    if s["family"] in fitting:
        return []
    text = f"{s['family']!r} does not fit suite '{name}' (a '{family}' suite); use family: {' or '.join(fitting)}"
    if (s["family"] in STREAMING_FAMILIES) != (family in STREAMING_FAMILIES):
        text += (f" (the streaming families {sorted(STREAMING_FAMILIES)} run the LLM rules, which only their "
                 "own suites implement)")
    return [Problem(("family",), text)]


def _task_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """Every task is one of the suite's (its ids, and for the paper suites their display names)."""
    try:
        valid = suite_task_names(name)
    except (ImportError, ValueError):  # a suite that is not implemented (yet)
        return []
    unknown = [t for t in s["tasks"] if t not in valid]
    if not unknown:
        return []
    return [Problem(("tasks",), f"unknown task {', '.join(map(repr, unknown))}; allowed: {', '.join(valid)} "
                                f"(the tasks of suite '{name}')")]


def _expert_problems(s: Mapping[str, Any]) -> list[Problem]:
    tasks = list(s["tasks"])
    return [Problem(("experts", t), f"task {t!r} is not in tasks; configured tasks: {', '.join(tasks)}")
            for t in s.get("experts", {}) if t not in tasks]


def _expert_seed_problems(s: Mapping[str, Any]) -> list[Problem]:
    """Only experts fine-tuned here (``expert_source: finetuned-here``) have several expert seeds:
    hub or local experts are one fixed set, expert seed 0."""
    if s.get("expert_source") == FINETUNED_HERE or expert_seeds(s) == [0]:
        return []
    return [Problem(("expert_seeds",), f"{expert_seeds(s)}: hub or local experts have one expert seed "
                                       f"(expert_source {s.get('expert_source')!r}); use expert_seeds: [0], or "
                                       f"expert_source: {FINETUNED_HERE} to fine-tune the experts here")]


def _init_problems(s: Mapping[str, Any]) -> list[Problem]:
    """Each FDA init other than ``pretrained`` starts from its baseline's merge: it must be configured."""
    fda = s.get("fda")
    if not fda:
        return []
    return [Problem(("fda", "inits"), f"init '{init}' needs the baseline '{init}' under methods "
                                      f"(configured methods: {', '.join(s['methods'])})")
            for init in fda["inits"] if init != "pretrained" and init not in s["methods"]]


# ---------------------------------------------------------------- hyperparameters


def _dataclass_fields(cls: Any) -> list[str] | None:
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else None


def _baseline_registry() -> Mapping[str, Any] | None:
    """``baselines.METHODS`` when importable (the workflow config must validate before every part
    of the code exists)."""
    try:
        import baselines  # type: ignore[import-not-found]
    except ImportError:
        return None
    return getattr(baselines, "METHODS", None) or None


def _baseline_problems(s: Mapping[str, Any]) -> list[Problem]:
    """Each baseline hyperparameter exists and has a valid value, as the method's dataclass
    (``baselines.METHODS[m].hparams``: types, and ranges in its ``__post_init__``) decides."""
    registry = _baseline_registry()
    if registry is None:
        return []
    try:
        from baselines.registry import build_hparams  # type: ignore[import-not-found]
    except ImportError:
        return []
    out: list[Problem] = []
    for method, hp in s["methods"].items():
        if method in REFERENCE_METHODS or method not in registry:
            continue
        spec = registry[method]
        valid = _dataclass_fields(getattr(spec, "hparams", None))
        if valid is None:
            continue
        mine: list[Problem] = []
        for key, value in hp.items():
            if key not in valid:
                mine.append(Problem(("methods", method, key), f"unknown hyperparameter {key!r} of '{method}'; "
                                                              f"allowed: {', '.join(valid)}"))
                continue
            err = _build_error(build_hparams, spec, {key: value})
            if err:
                mine.append(Problem(("methods", method, key), err))
        if not mine and hp:  # each value alone is fine: check them together
            err = _build_error(build_hparams, spec, dict(hp))
            if err:
                mine.append(Problem(("methods", method), err))
        out += mine
    return out


def _build_error(build: Any, *args: Any, **kwargs: Any) -> str | None:
    """The message of the ``TypeError``/``ValueError`` that ``build(*args, **kwargs)`` raises, or None."""
    try:
        build(*args, **kwargs)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def _selection_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """``selection``: only a suite with a selection split takes it (as configured: GLUE with experts
    fine-tuned here); each grid belongs to a
    configured baseline, and each of its hyperparameters exists and takes every listed value (the
    method's dataclass decides, with the method's other configured values)."""
    declared = grids(s)
    if not declared:
        return []
    why = _selection_unavailable(name, s)
    if why:
        return [Problem(("selection",), f"suite '{name}' has no validation split to select on: {why}; "
                                        "remove `selection` for this suite")]
    registry = _baseline_registry()
    out: list[Problem] = []
    for method, grid in declared.items():
        if method not in s["methods"]:
            out.append(Problem(("selection", "grids", method), f"'{method}' has a grid but is not under methods "
                                                               f"(configured methods: {', '.join(s['methods'])})"))
            continue
        if registry is None or method not in registry:
            continue
        from baselines.registry import build_hparams  # type: ignore[import-not-found]

        spec = registry[method]
        valid = _dataclass_fields(getattr(spec, "hparams", None)) or []
        fixed = dict(s["methods"].get(method) or {})
        if _build_error(build_hparams, spec, fixed):
            continue  # reported once, under methods
        for key, values in grid.items():
            if key not in valid:
                out.append(Problem(("selection", "grids", method, key),
                                   f"unknown hyperparameter {key!r} of '{method}'; allowed: {', '.join(valid)}"))
                continue
            for v in values:
                err = _build_error(build_hparams, spec, {**fixed, key: v})
                if err:
                    out.append(Problem(("selection", "grids", method, key), f"{v!r}: {err}"))
    return out


def _fda_selection_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """``fda.selection``: a suite with a validation split; its inits and anchor inits among the
    suite's FDA ones; every scaled learning rate one that ``FDAConfig`` accepts for each init."""
    fda = s.get("fda") or {}
    sel = fda.get("selection")
    if not sel:
        return []
    path = ("fda", "selection")
    why = _selection_unavailable(name, s)
    if why:
        return [Problem(path, f"suite '{name}' has no validation split to select on: {why}; remove fda.selection")]
    out: list[Problem] = []
    for key, configured in (("inits", fda.get("inits", [])), ("anchor_inits", fda.get("anchor_inits", []))):
        extra = [v for v in sel.get(key) or [] if v not in configured]
        if extra:
            out.append(Problem(path + (key,), f"{extra} not among fda.{key} ({', '.join(configured)}): "
                                              "a validated row needs its fixed FDA row's anchors and init"))
    if out:
        return out
    from fda.bench.config.fda_selection import fda_selection, resolved_adaptation
    from fda.bench.config.suite_views import fda_hparams

    resolved = fda_selection(s)
    for init in resolved["inits"] if resolved else []:
        try:
            lr, _ = resolved_adaptation(s, fda_hparams(s, init), init)
        except (TypeError, ValueError):
            continue  # reported under fda.hparams / fda.per_init
        for scale in resolved["grid"].get("adapt_lr_scale", []):
            if not math.isfinite(lr * scale):
                out.append(Problem(path + ("grid", "adapt_lr_scale"), f"{scale!r} x adapt_lr {lr!r} of init '{init}' "
                                                                      "is not a finite learning rate; use a smaller scale"))
    return out


def _selection_unavailable(name: str, s: Mapping[str, Any]) -> str | None:
    """Why suite ``name`` as configured in ``s`` has no selection split (None: it has one). A suite
    that takes sources is built from them (GLUE: only experts fine-tuned here give one); a suite that
    cannot be built is left to the source checks."""
    try:
        from fda.bench.suites import get_suite, suite_no_validation
    except ImportError:
        return None
    if not suite_takes_sources(name):
        try:
            return suite_no_validation(name)
        except ValueError:  # a suite that is not implemented (yet)
            return None
    try:
        suite = get_suite(name, suite_settings_for({"smoke": False, "suites": {name: s}}, name))
    except (ConfigError, ValueError):  # reported by _source_problems
        return None
    return suite.selection_unavailable()


def _fda_problems(s: Mapping[str, Any]) -> list[Problem]:
    """Each ``fda.hparams`` and ``fda.per_init.{init}`` field exists in ``fda.FDAConfig`` and has
    a value it accepts (``FDAConfig`` checks types and ranges when it is built), field by field,
    over ``FDAConfig.for_family(family, init, size)``."""
    fda = s.get("fda")
    if not fda:
        return []
    try:
        from fda import FDAConfig  # type: ignore[attr-defined]
    except ImportError:
        return []  # FDA not built yet: the schema check stands alone
    valid = _dataclass_fields(FDAConfig) or []
    family, size = s["family"], fda.get("size", "base")
    given = [(("fda", "hparams", k), "pretrained", k, v) for k, v in fda.get("hparams", {}).items()]
    given += [(("fda", "per_init", init, k), init, k, v)
              for init, fields in fda.get("per_init", {}).items() for k, v in fields.items()]
    out: list[Problem] = []
    for path, init, key, value in given:
        if key not in valid:
            out.append(Problem(path, f"unknown FDAConfig field {key!r}; allowed: {', '.join(valid)}"))
            continue
        err = _build_error(FDAConfig.for_family, family, init=init, size=size, **{key: value})
        if err:
            out.append(Problem(path, err))
    return out


# ---------------------------------------------------------------- suite settings and sources


def _settings_problems(name: str, section: Mapping[str, Any], *, build: bool) -> list[Problem]:
    """Settings keys exist in the suite's settings dataclass and each value has its type and
    range; with ``build`` (the tasks are valid) an embedded suite is built from them, for the
    checks that involve several settings. Paper suites are built by ``_source_problems``."""
    keys = _suite_setting_keys(name)
    if not keys:
        return []  # a paper suite that is not implemented yet: nothing to check against
    from fda.bench.settings import coerce
    from fda.bench.suites import get_suite, suite_settings_class

    settings = section.get("settings", {})
    allowed = ", ".join(sorted(keys))
    out = [Problem(("settings", k), f"unknown key {k!r}; allowed keys: {allowed}")
           for k in sorted(set(settings) - keys)]
    if "tasks" in settings and list(settings["tasks"]) != list(section["tasks"]):
        out.append(Problem(("settings", "tasks"), f"{list(settings['tasks'])} differs from tasks "
                                                  f"{list(section['tasks'])}; set the tasks once, under tasks"))
    cls = suite_settings_class(name)
    fields = set(_dataclass_fields(cls) or ())
    for key, value in settings.items():
        if key in fields and key != "tasks":
            err = _build_error(coerce, cls, {key: value}, suite=name)
            if err:
                out.append(Problem(("settings", key), err))
    if not out and build and not suite_takes_sources(name):
        err = _build_error(get_suite, name, dict(settings))
        if err:
            out.append(Problem(("settings",), err))
    return out


def _source_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """The paper suites' sources translate and the suite accepts them (task ids, checkpoint family)."""
    if not suite_takes_sources(name):
        return []
    from fda.bench.suites import get_suite

    try:
        get_suite(name, suite_settings_for({"smoke": False, "suites": {name: s}}, name))
    except ConfigError as err:  # names its own path
        return [Problem(None, str(err))]
    except ValueError as err:  # the suite's own checks (SettingsError, unknown task, missing taskvectors_dir)
        return [Problem((), str(err))]
    return []


# ---------------------------------------------------------------- anchor source


def _anchor_problems(name: str, s: Mapping[str, Any]) -> list[Problem]:
    """``fda.anchors``: with ``source: official``, the anchor inits are ones the releases have,
    the release resolves (a local folder, or a hub dataset in the cache when offline) and holds a
    file for every anchor init, block and task; without it, no release keys."""
    fda = s.get("fda")
    if not fda or "anchors" not in fda:
        return []
    entry = fda["anchors"]
    if anchor_source(s) != "official":
        extra = sorted(set(entry) - {"source"})
        return [Problem(("fda", "anchors"), f"{', '.join(extra)} only apply to source: official "
                                            f"(source is {anchor_source(s)!r})")] if extra else []
    # imported only when a suite imports official anchors (resolving a release brings torch and the hub
    # client); CheckpointError covers SourceError: a release that is not cached or not found
    from fda.bench.official_anchors import (
        OFFICIAL_KINDS,
        RUN_PREFIXES,
        OfficialAnchorsError,
        configured_release,
        resolve_release,
    )
    from fda.io.checkpoints import CheckpointError

    out: list[Problem] = []
    bad = [a for a in fda["anchor_inits"] if a not in RUN_PREFIXES]
    if bad:
        out.append(Problem(("fda", "anchor_inits"), f"{', '.join(bad)}: no official anchors exist for this anchor init; "
                                                    f"with fda.anchors.source official use {' and/or '.join(RUN_PREFIXES)} "
                                                    "(the released runs)"))
    if s["family"] not in OFFICIAL_KINDS:
        out.append(Problem(("family",), f"{s['family']!r} has no official anchors (families: {', '.join(OFFICIAL_KINDS)})"))
    out += [Problem(("fda", "anchors", "tasks", t), f"task {t!r} is not in tasks; configured tasks: {', '.join(s['tasks'])}")
            for t in entry.get("tasks", {}) if t not in s["tasks"]]
    if out:
        return out
    try:
        options = official_anchor_options({"smoke": False, "suites": {name: s}}, name)
    except ConfigError as err:
        return [Problem(None, str(err))]
    try:
        resolve_release(options["spec"])
    except CheckpointError as err:  # not found, or a hub dataset that is not cached (offline)
        return [Problem(("fda", "anchors"), str(err))]
    for anchor_init in fda["anchor_inits"]:
        try:
            configured_release(options, anchor_init)
        except (OfficialAnchorsError, CheckpointError) as err:
            out.append(Problem(("fda", "anchors"), f"{anchor_init} anchors: {err}"))
    return out
