# Helpers for the workflow: config loading and validation, wildcard constraints, file names,
# the config slices that jobs get as params, resources. The logic lives in fda.bench.config
# (cfg_load: loading and validation; cfg_views: a suite's section as jobs see it, streaming
# suites; cfg_names: the vocabulary, config slices, hashes and result cells); this file only maps
# wildcards onto it.

import json
import re
import shlex
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

import fda.bench.config.fda_selection as cfg_fda_sel
import fda.bench.config.grids as cfg_grids
import fda.bench.config.load as cfg_load
import fda.bench.config.naming as cfg_names
import fda.bench.config.suite_views as cfg_views
import fda.bench.report.cost_jobs as cost_jobs
from fda.bench.provenance import method_code_version

min_version("9.0")

# The code that computes merges, anchors and adapted blocks (package version + hash of the method's
# source): a param of those rules, so snakemake's params trigger reruns them after the method
# changes (the jobs' own block caches are keyed by it too).
METHOD_CODE = method_code_version()


# ---------------------------------------------------------------- config
# No `configfile:` directive: snakemake would *extend* it with `--configfile config/paper.yaml`
# (paper suites plus the embedded ones). The default file is used only when no --configfile is
# given; `--config KEY=VALUE` overrides still apply on top of it. A --configfile without `suites`
# is an error naming it (an empty one snakemake itself refuses before this file runs).
if "suites" not in config and workflow.overwrite_configfiles:
    raise cfg_load.ConfigError(cfg_load.no_suites_message(workflow.overwrite_configfiles))
_CONFIG_FILES = [str(f) for f in workflow.overwrite_configfiles]
if "suites" not in config:
    _CONFIG_FILES = [str(Path(workflow.basedir) / "config" / "config.yaml")]
    _default = yaml.safe_load(Path(_CONFIG_FILES[0]).read_text())
    _merged = cfg_views.deep_update(_default, config)
    config.clear()
    config.update(_merged)

# Our validator first (its messages name the file, the key and the allowed values), then
# snakemake's own with the same schema; both fill in the schema's defaults.
config.update(cfg_load.validate_config(config, source=cfg_load.config_source(_CONFIG_FILES)))
validate(config, "../schemas/config.schema.yaml")

SUITES = list(config["suites"])
# The in-memory rules (experts/baselines/fda/evaluate.smk) and the streaming LLM ones (llm.smk)
# write the same file patterns for different suites, told apart by a per-rule suite constraint.
STREAMING_SUITES = cfg_views.streaming_suites(config)
IN_MEMORY_SUITES = [s for s in SUITES if s not in STREAMING_SUITES]


def S(suite):
    """The suite's config section as jobs see it (smoke overrides applied)."""
    return cfg_views.effective_suite(config, suite)


def _alt(names):
    """A constraint matching exactly these names (longest first); one that matches nothing when
    there are none."""
    names = sorted(set(map(str, names)), key=len, reverse=True)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


IN_MEMORY = _alt(IN_MEMORY_SUITES)
STREAMING = _alt(STREAMING_SUITES)
#: any name (no underscore): the cell rules match every `results/X_Y.csv` and refuse, listing the
#: configured cells, one the config does not ask for (configured_cell)
ANY_NAME = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
#: per wildcard, the values some configured suite uses; `configured` checks them per suite
CONFIGURED = cfg_names.configured_values(config)


# Wildcards take only configured names: a file for a method, init, anchor init, task or seed the
# config does not list matches no rule (the cell rules list the valid cells instead), and the
# `configured` input of each rule refuses a value configured for another suite only.
wildcard_constraints:
    suite=_alt(SUITES),
    method=_alt(CONFIGURED["method"]),
    baseline=_alt(CONFIGURED["baseline"]),
    selected=_alt(CONFIGURED["selected"]),
    point=r"[0-9]+",
    scale=r"[0-9]+",
    reference=_alt(cfg_names.REFERENCE_METHODS),
    init=_alt(CONFIGURED["init"]),
    anchorinit=_alt(CONFIGURED["anchorinit"]),
    task=_alt(CONFIGURED["task"]),
    block=r"[0-9]+",
    eseed=_alt(CONFIGURED["eseed"]),
    seed=_alt(CONFIGURED["seed"]),


# ---------------------------------------------------------------- file names
# Data and base do not depend on the expert seed; everything built from the experts lives under
# the expert seed's folder, eseed{eseed} (its logs and benchmarks too: logs/{suite}/eseed{eseed}/).
DATA = "work/{suite}/data"
BASE = "work/{suite}/base"
EXPERT = "work/{suite}/eseed{eseed}/experts/{task}"
MERGED = "work/{suite}/eseed{eseed}/merged/{baseline}.safetensors"
ANCHORS = "work/{suite}/eseed{eseed}/fda/seed{seed}/anchors/{anchorinit}/block{block}/{task}.safetensors"
ANCHOR_LOG = "work/{suite}/eseed{eseed}/fda/seed{seed}/anchors/{anchorinit}/block{block}/{task}.json"
# fda.anchors.source official: the released anchors, imported once and shared by every seed and init
OFFICIAL_ANCHORS = "work/{suite}/fda/official/anchors/{anchorinit}/block{block}/{task}.safetensors"
ADAPTED = "work/{suite}/eseed{eseed}/fda/seed{seed}/{init}-{anchorinit}/blocks/block{block}.safetensors"
FDA_MERGED = "work/{suite}/eseed{eseed}/fda/seed{seed}/{init}-{anchorinit}/merged.safetensors"
EVAL = "work/{suite}/eseed{eseed}/eval/{method}.csv"  # a reference row's or a baseline's (EVAL_REF, EVAL_BASELINE)
EVAL_REF = "work/{suite}/eseed{eseed}/eval/{reference}.csv"
EVAL_BASELINE = "work/{suite}/eseed{eseed}/eval/{baseline}.csv"
EVAL_FDA = "work/{suite}/eseed{eseed}/eval/fda/seed{seed}/{init}-{anchorinit}.csv"
CELL = "results/{suite}_{method}.csv"
CELL_FDA = "results/{suite}_{init}_fda.csv"
# the validated protocol (workflow/rules/select.smk, docs/selection.md): per grid point a merge and a
# validation evaluation, one choice per (suite, expert seed, method), the chosen model on test
GRID_MERGED = "work/{suite}/eseed{eseed}/select/{selected}/point{point}.safetensors"
EVAL_GRID = "work/{suite}/eseed{eseed}/select/{selected}/point{point}-validation.csv"
CHOICE = "work/{suite}/eseed{eseed}/select/{selected}/choice.json"
EVAL_VALIDATED = "work/{suite}/eseed{eseed}/eval/validated/{selected}.csv"
CELL_VALIDATED = "results/{suite}_{method}_validated.csv"
# FDA's validated protocol (workflow/rules/fda_select.smk): per lr scale one adaptation run whose
# snapshot models (epochs{E}.safetensors) are the grid's epochs, one validation evaluation of every
# point, one choice, the chosen model on test, per (expert seed, FDA seed, init, anchor init)
FDA_GRID_RUN = "work/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/scale{scale}"
FDA_GRID_MODEL = "work/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/scale{scale}/epochs{epochs}.safetensors"
FDA_EVAL_GRID = "work/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/point{point}-validation.csv"
FDA_CHOICE = "work/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/choice.json"
EVAL_FDA_VALIDATED = "work/{suite}/eseed{eseed}/eval/fda-validated/seed{seed}/{init}-{anchorinit}.csv"
CELL_FDA_VALIDATED = "results/{suite}_{init}_fda_validated.csv"


def npz(csv_pattern):
    """The per-example outcomes beside an evaluation or cell CSV (fda.bench.eval.outcomes)."""
    return csv_pattern[: -len(".csv")] + ".npz"


# streaming LLM suites (llm.smk): models are sharded HF directories
LLM_MERGED = "work/{suite}/eseed{eseed}/merged/{baseline}"
LLM_FDA_MERGED = "work/{suite}/eseed{eseed}/fda/seed{seed}/{init}-{anchorinit}/merged"
LOGS = "logs/{suite}"
BENCH = "logs/benchmarks/{suite}"
ENV = "../envs/fda-bench.yaml"


def tasks_of(suite):
    return S(suite)["tasks"]


def expert_seeds_of(suite):
    """The suite's expert seeds (effective: smoke and the top-level `expert_seeds` applied); [0]
    for a name that is not a configured suite (the cell rules refuse it with the valid cells)."""
    return cfg_views.expert_seeds(S(suite)) if suite in config["suites"] else [0]


def expert_dirs(wildcards):
    """Every task's expert of the job's expert seed, in task order."""
    return [EXPERT.format(suite=wildcards.suite, eseed=wildcards.eseed, task=t) for t in tasks_of(wildcards.suite)]


def expert_args(wildcards, input):
    """`--expert TASK=DIR` for every expert, in task order."""
    pairs = zip(tasks_of(wildcards.suite), input.experts)
    return " ".join(f"--expert {shlex.quote(f'{t}={d}')}" for t, d in pairs)


def blocks_of(suite):
    return list(range(S(suite)["fda"]["n_blocks"]))


def block_args(suite):
    return " ".join(f"--block {b}" for b in blocks_of(suite))


# ---------------------------------------------------------------- params (config slices)
# Each is a JSON string; the params rerun trigger compares them, so editing one hyperparameter
# reruns only the jobs whose slice contains it.


def p_settings(wildcards):
    """The suite's settings with the config's sources translated (cfg_views.suite_settings_for)."""
    return cfg_names.canonical_json(cfg_views.suite_settings_for(config, wildcards.suite))


def p_data_seed(wildcards):
    return S(wildcards.suite)["data_seed"]


def p_family(wildcards):
    return S(wildcards.suite)["family"]


def p_data_key(wildcards):
    return cfg_names.canonical_json(cfg_names.data_slice(config, wildcards.suite))


def p_base_key(wildcards):
    return cfg_names.canonical_json(cfg_names.base_slice(config, wildcards.suite))


def p_expert_key(wildcards):
    return cfg_names.canonical_json(cfg_names.expert_slice(config, wildcards.suite, wildcards.task))


def p_expert_source(wildcards):
    return cfg_names.canonical_json(S(wildcards.suite).get("experts", {}).get(wildcards.task, {}))


def p_hparams(wildcards):
    return cfg_names.canonical_json(S(wildcards.suite)["methods"].get(wildcards.baseline, {}))


def p_fda(wildcards):
    """FDAConfig overrides; adaptation jobs (with an `init` wildcard) add fda.per_init[init]."""
    init = getattr(wildcards, "init", None)
    return cfg_names.canonical_json(cfg_names.fda_hparams(S(wildcards.suite), init))


def p_size(wildcards):
    return S(wildcards.suite)["fda"]["size"]


def p_construct_key(wildcards):
    return cfg_names.canonical_json(
        cfg_names.construct_slice(config, wildcards.suite, wildcards.anchorinit, wildcards.seed)
    )


def p_adapt_key(wildcards):
    return cfg_names.canonical_json(
        cfg_names.adapt_slice(config, wildcards.suite, wildcards.init, wildcards.anchorinit, wildcards.seed)
    )


def p_n_blocks(wildcards):
    return S(wildcards.suite)["fda"]["n_blocks"]


def p_blocks(wildcards):
    return block_args(wildcards.suite)


def p_tasks(wildcards):
    return " ".join(shlex.quote(t) for t in tasks_of(wildcards.suite))


def p_result_tasks(wildcards):
    """Table columns: the tasks of the result rows (an LLM suite's benchmarks, cfg_views.result_tasks)."""
    return " ".join(shlex.quote(t) for t in cfg_views.result_tasks(config, wildcards.suite))


def p_limit(wildcards):
    limit = S(wildcards.suite)["eval_limit"]
    return f"--limit {limit}" if limit else ""


def p_eval_key(wildcards):
    return cfg_names.canonical_json(cfg_names.eval_slice(config, wildcards.suite))


def p_expert_source_name(wildcards):
    return S(wildcards.suite)["expert_source"]


def p_qkv_layout(wildcards):
    return cfg_views.merge_layout(config, wildcards.suite)


def p_cell_hash(wildcards):
    return cfg_names.config_hash(cfg_names.cell_slice(config, wildcards.suite, wildcards.method))


def p_cell_validated_hash(wildcards):
    return cfg_names.config_hash(cfg_names.cell_slice(config, wildcards.suite, wildcards.method, protocol="validated"))


def p_cell_fda_hash(wildcards):
    return cfg_names.config_hash(cfg_names.cell_slice(config, wildcards.suite, "fda", wildcards.init))


def p_init_model(wildcards, input):
    return f"--init-model {shlex.quote(input.init_model)}" if wildcards.init != "pretrained" else ""


def p_job_settings(stage):
    """The suite's settings a `stage` job reads (data, fetch, eval), as JSON."""

    def fn(wildcards):
        return cfg_names.canonical_json(cfg_views.job_settings(config, wildcards.suite, stage))

    return fn


def p_shard_size(wildcards):
    return cfg_views.stream_options(config, wildcards.suite)["shard_size"]


def p_vocab_mismatch(wildcards):
    return cfg_views.stream_options(config, wildcards.suite)["vocab_mismatch"]


def p_anchor_args(wildcards, input):
    """`--anchors TASK=FILE` for every expert of the layer, in task order."""
    pairs = zip(tasks_of(wildcards.suite), input.anchors)
    return " ".join(f"--anchors {shlex.quote(f'{t}={f}')}" for t, f in pairs)


# ---------------------------------------------------------------- inputs


def configured(wildcards):
    """No files: refuses a job whose wildcards name a method, init, anchor init, task, expert seed,
    seed or block the config does not configure for its suite (a WorkflowError listing the configured
    values, shown by `snakemake -n TARGET`). Every rule with such wildcards takes it as input."""
    try:
        cfg_names.check_wildcards(config, dict(wildcards.items()))
    except cfg_load.ConfigError as err:
        raise WorkflowError(str(err)) from None
    return []


def configured_cell(pattern):
    """An input function for the cell rules (``pattern``: CELL or CELL_FDA): no files, or a
    WorkflowError listing the configured cells when the requested cell is not one of them."""

    def fn(wildcards):
        values = dict(wildcards.items())
        try:
            cfg_names.check_cell(config, pattern.format(**values), values)
        except cfg_load.ConfigError as err:
            raise WorkflowError(str(err)) from None
        return []

    return fn


def init_model(wildcards):
    """The init's merged baseline of the same expert seed (FDA from ta/tsvm/wudi); nothing for `pretrained`."""
    if wildcards.init == "pretrained":
        return []
    return MERGED.format(suite=wildcards.suite, eseed=wildcards.eseed, baseline=wildcards.init)


def llm_init_model(wildcards):
    """The init's merged directory (FDA from ta/tsvm/wudi); nothing for `pretrained`."""
    if wildcards.init == "pretrained":
        return []
    return LLM_MERGED.format(suite=wildcards.suite, eseed=wildcards.eseed, baseline=wildcards.init)


def official_anchors(suite):
    """Whether the suite adapts from the FDA authors' released anchors (fda.anchors.source: official)."""
    return cfg_views.anchor_source(S(suite)) == "official"


def anchor_file(suite, eseed, seed, anchorinit, block, task):
    """One anchor file: constructed for the (expert seed, FDA seed), or the imported official one
    (the same for every expert seed and seed)."""
    pattern = OFFICIAL_ANCHORS if official_anchors(suite) else ANCHORS
    return pattern.format(suite=suite, eseed=eseed, seed=seed, anchorinit=anchorinit, block=block, task=task)


def anchors_dir(suite, eseed, seed, anchorinit):
    """The folder adaptation reads a (suite, expert seed, seed, anchor init)'s anchors from."""
    return str(Path(anchor_file(suite, eseed, seed, anchorinit, 0, "t")).parent.parent)


def p_anchors_dir(wildcards):
    return anchors_dir(wildcards.suite, wildcards.eseed, wildcards.seed, wildcards.anchorinit)


def p_anchor_source(wildcards):
    """`constructed` or `official`, recorded on the FDA rows of a cell."""
    return cfg_views.anchor_source(S(wildcards.suite))


def block_anchors(wildcards):
    """Anchors of every expert for one block (fine-grained adaptation)."""
    return [anchor_file(wildcards.suite, wildcards.eseed, wildcards.seed, wildcards.anchorinit, wildcards.block, t)
            for t in tasks_of(wildcards.suite)]


def all_anchors(wildcards):
    """Anchors of every expert and block (coarse adaptation)."""
    return [anchor_file(wildcards.suite, wildcards.eseed, wildcards.seed, wildcards.anchorinit, b, t)
            for b in blocks_of(wildcards.suite)
            for t in tasks_of(wildcards.suite)]


def adapted_blocks(wildcards):
    return [
        ADAPTED.format(suite=wildcards.suite, eseed=wildcards.eseed, seed=wildcards.seed, init=wildcards.init,
                       anchorinit=wildcards.anchorinit, block=b)
        for b in blocks_of(wildcards.suite)
    ]


def cell_evals(wildcards):
    """A baseline or reference cell's evaluations: one per expert seed."""
    return [EVAL.format(suite=wildcards.suite, eseed=e, method=wildcards.method) for e in expert_seeds_of(wildcards.suite)]


def individual_evals(wildcards):
    """The individual experts' evaluations of every expert seed (each row's `normalized` divides
    by the expert of its own expert seed)."""
    return [EVAL.format(suite=wildcards.suite, eseed=e, method="individual") for e in expert_seeds_of(wildcards.suite)]


def fda_evals(wildcards):
    """An FDA cell's evaluations: every anchor init, expert seed and FDA seed."""
    s = S(wildcards.suite)
    return [
        EVAL_FDA.format(suite=wildcards.suite, eseed=e, seed=seed, init=wildcards.init, anchorinit=ai)
        for ai in s["fda"]["anchor_inits"]
        for e in cfg_views.expert_seeds(s)
        for seed in s["seeds"]
    ]


def construction_logs(wildcards):
    """Logs of the first expert seed and FDA seed, every block and expert, for one anchor init (figures)."""
    s = S(wildcards.suite)
    return [
        ANCHOR_LOG.format(suite=wildcards.suite, eseed=cfg_views.expert_seeds(s)[0], seed=s["seeds"][0],
                          anchorinit=wildcards.anchorinit, block=b, task=t)
        for b in blocks_of(wildcards.suite)
        for t in s["tasks"]
    ]


def _hparam_defaults(method):
    """The method's dataclass defaults (baselines.METHODS[m].hparams), for finding the fixed point."""
    import dataclasses

    import baselines

    cls = baselines.method_spec(method).hparams
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def grid_points_of(suite, method):
    return cfg_grids.method_points(S(suite), method)


def grid_model(suite, eseed, method, point):
    """The model of one grid point: the fixed merge itself when the point's values are the fixed
    ones (no second merge), else its own grid merge."""
    if cfg_grids.fixed_point(S(suite), method, _hparam_defaults(method)) == int(point):
        return MERGED.format(suite=suite, eseed=eseed, baseline=method)
    return GRID_MERGED.format(suite=suite, eseed=eseed, selected=method, point=point)


def configured_point(wildcards):
    """No files: refuses a grid point the method's selection grid does not have."""
    try:
        cfg_names.check_point(config, wildcards.suite, wildcards.selected, wildcards.point)
    except cfg_load.ConfigError as err:
        raise WorkflowError(str(err)) from None
    return []


def point_model(wildcards):
    return grid_model(wildcards.suite, wildcards.eseed, wildcards.selected, wildcards.point)


def grid_models(wildcards):
    """Every grid point's model of the job's (suite, expert seed, method), in grid order."""
    n = len(grid_points_of(wildcards.suite, wildcards.selected))
    return [grid_model(wildcards.suite, wildcards.eseed, wildcards.selected, i) for i in range(n)]


def grid_evals(wildcards):
    """Every grid point's validation rows, in grid order."""
    n = len(grid_points_of(wildcards.suite, wildcards.selected))
    return [EVAL_GRID.format(suite=wildcards.suite, eseed=wildcards.eseed, selected=wildcards.selected, point=i)
            for i in range(n)]


def validated_evals(wildcards):
    """A validated cell's test evaluations: one per expert seed."""
    return [EVAL_VALIDATED.format(suite=wildcards.suite, eseed=e, selected=wildcards.method)
            for e in expert_seeds_of(wildcards.suite)]


def p_point_hparams(wildcards):
    """The method's configured hyperparameters with the grid point's values over them."""
    return cfg_names.canonical_json(cfg_grids.point_hparams(S(wildcards.suite), wildcards.selected, wildcards.point))


def p_selected_hparams(wildcards):
    return cfg_names.canonical_json(S(wildcards.suite)["methods"].get(wildcards.selected) or {})


def grid_json(grid):
    """A grid as the select job reads it: JSON in *declared* key order (the order of its points and
    of the tie rule; canonical_json would sort the keys and so reorder a multi-key grid's points)."""
    return json.dumps(grid, separators=(",", ":"))


def p_grid(wildcards):
    return grid_json(cfg_grids.grids(S(wildcards.suite))[wildcards.selected])


def p_selection_key(wildcards):
    return cfg_names.canonical_json(cfg_names.selection_slice(config, wildcards.suite, wildcards.selected))


def p_point_args(wildcards, input):
    """`--point SCORES=MODEL` per grid point, in grid order."""
    pairs = zip(input.scores, grid_models(wildcards))
    return " ".join(f"--point {shlex.quote(f'{c}={m}')}" for c, m in pairs)


# ---------------------------------------------------------------- FDA's validated protocol


def configured_fda_selection(wildcards):
    """No files: refuses an (init, anchor init) without a validated FDA row (fda.selection)."""
    try:
        cfg_names.check_wildcards(config, {"suite": wildcards.suite, "vinit": wildcards.init,
                                           "vanchorinit": wildcards.anchorinit})
    except cfg_load.ConfigError as err:
        raise WorkflowError(str(err)) from None
    return []


def _fda_run_keys(wildcards):
    """The wildcards that name one FDA run: (suite, expert seed, seed, init, anchor init)."""
    return {k: getattr(wildcards, k) for k in ("suite", "eseed", "seed", "init", "anchorinit")}


def fda_fixed_adaptation(wildcards):
    """``(hparams, adapt_lr, adapt_epochs)`` of the init's fixed FDA row: its FDAConfig overrides and
    the learning rate and epochs they resolve to."""
    s = S(wildcards.suite)
    hparams = cfg_names.fda_hparams(s, wildcards.init)
    return (hparams, *cfg_fda_sel.resolved_adaptation(s, hparams, wildcards.init))


def fda_run_epochs(wildcards):
    """Per lr scale index: the epochs its grid run snapshots."""
    return cfg_fda_sel.run_epochs(S(wildcards.suite), fda_fixed_adaptation(wildcards)[2])


def fda_point_models(wildcards):
    """Every FDA grid point's model of the job's (expert seed, seed, init, anchor init), in grid
    order: a snapshot of its lr scale's run, or the fixed FDA model for the fixed point."""
    s = S(wildcards.suite)
    epochs = fda_fixed_adaptation(wildcards)[2]
    keys = _fda_run_keys(wildcards)
    out = []
    for values in cfg_fda_sel.fda_points(s):
        run = cfg_fda_sel.point_run(s, values, epochs)
        out.append(FDA_MERGED.format(**keys) if run is None else FDA_GRID_MODEL.format(**keys, scale=run[0], epochs=run[1]))
    return out


def fda_grid_runs(wildcards):
    """The grid run directories the job's point models lie in."""
    keys = _fda_run_keys(wildcards)
    return [FDA_GRID_RUN.format(**keys, scale=k) for k in fda_run_epochs(wildcards)]


def fda_point_inputs(wildcards):
    """What the point models need: the grid runs (directories) and the fixed FDA model if it is a point."""
    fixed = FDA_MERGED.format(**_fda_run_keys(wildcards))
    return fda_grid_runs(wildcards) + [m for m in fda_point_models(wildcards) if m == fixed]


def p_fda_grid_run(wildcards):
    """The grid run's FDAConfig overrides (the scaled lr, the largest epoch it snapshots) and
    `--snapshot-epochs`; a scale index with no run is refused."""
    hparams, lr, _ = fda_fixed_adaptation(wildcards)
    runs = fda_run_epochs(wildcards)
    scale = int(wildcards.scale)
    if scale not in runs:
        raise WorkflowError(f"lr scale {scale} of suite '{wildcards.suite}' needs no grid run for init "
                            f"'{wildcards.init}' (runs: {sorted(runs)})")
    epochs = runs[scale]
    point = {"adapt_lr_scale": cfg_fda_sel.scales(S(wildcards.suite))[scale], "adapt_epochs": epochs[-1]}
    fda = cfg_grids.apply_values({**hparams, "adapt_lr": lr}, point)  # the same rule select records
    return f"--fda {shlex.quote(cfg_names.canonical_json(fda))} --snapshot-epochs {' '.join(map(str, epochs))}"


def fda_grid_evals(wildcards):
    """Every FDA grid point's validation rows, in grid order."""
    n = len(cfg_fda_sel.fda_points(S(wildcards.suite)))
    keys = _fda_run_keys(wildcards)
    return [FDA_EVAL_GRID.format(**keys, point=i) for i in range(n)]


def p_fda_grid_eval_args(wildcards):
    """`--model MODEL --out CSV` per grid point, in grid order (one process scores them all)."""
    pairs = zip(fda_point_models(wildcards), fda_grid_evals(wildcards))
    return " ".join(f"--model {shlex.quote(m)} --out {shlex.quote(o)}" for m, o in pairs)


def p_fda_grid(wildcards):
    return grid_json(cfg_fda_sel.fda_grid(S(wildcards.suite)))


def p_fda_resolved(wildcards):
    """The init's FDA overrides with the lr and epochs they resolve to (what adapt_lr_scale multiplies)."""
    hparams, lr, epochs = fda_fixed_adaptation(wildcards)
    return cfg_names.canonical_json({**hparams, "adapt_lr": lr, "adapt_epochs": epochs})


def p_fda_point_args(wildcards, input):
    """`--point SCORES=MODEL` per FDA grid point, in grid order."""
    pairs = zip(input.scores, fda_point_models(wildcards))
    return " ".join(f"--point {shlex.quote(f'{c}={m}')}" for c, m in pairs)


def p_fda_selection_key(wildcards):
    return cfg_names.canonical_json(cfg_names.fda_selection_slice(config, wildcards.suite, wildcards.init,
                                                                  wildcards.anchorinit, wildcards.seed))


def fda_validated_evals(wildcards):
    """A validated FDA cell's test evaluations: every validated anchor init, expert seed and FDA seed."""
    s = S(wildcards.suite)
    return [EVAL_FDA_VALIDATED.format(suite=wildcards.suite, eseed=e, seed=seed, init=wildcards.init, anchorinit=ai)
            for ai in cfg_fda_sel.validated_anchor_inits(s)
            for e in cfg_views.expert_seeds(s)
            for seed in s["seeds"]]


def p_cell_fda_validated_hash(wildcards):
    return cfg_names.config_hash(cfg_names.cell_slice(config, wildcards.suite, "fda", wildcards.init, protocol="validated"))


def suite_cells(wildcards):
    return [c for c in cfg_names.cells(config) if Path(c).name.startswith(f"{wildcards.suite}_")]


# ---------------------------------------------------------------- costs (rule costs, docs/cost.md)


def cost_plan(suite):
    """What the suite's cost table counts (fda.bench.report.cost_jobs.CostPlan)."""
    s = S(suite)
    fda = s.get("fda") or {}
    streaming = suite in STREAMING_SUITES  # llm.smk: always per layer

    def cut(stage):
        return "fine" if streaming else cfg_names.fda_granularity(config, stage)

    return cost_jobs.CostPlan(
        baselines=tuple(m for m in s["methods"] if m in cfg_names.BASELINE_METHODS),
        methods=tuple(s["methods"]),
        seeds=tuple(s["seeds"]) if fda else (),
        expert_seeds=tuple(cfg_views.expert_seeds(s)),
        inits=tuple(fda.get("inits", ())),
        anchor_inits=tuple(fda.get("anchor_inits", ())),
        blocks=fda.get("n_blocks", 0),
        tasks=tuple(tasks_of(suite)),
        construct="none" if fda and official_anchors(suite) else cut("construct"),  # imported: no construction job
        adapt=cut("adapt"),
    )


def cost_benchmarks(wildcards):
    """Benchmark files of the jobs the cost table reads (merges, construction, adaptation,
    evaluation). They are products of their jobs: a missing one reruns its job."""
    return [f"{BENCH.format(suite=wildcards.suite)}/{p}" for p in cost_jobs.benchmark_files(cost_plan(wildcards.suite))]


def cost_anchor_logs(wildcards):
    """Construction logs of every expert seed, seed, anchor init, block and expert (FLOPs); none for imported anchors."""
    return [f"work/{wildcards.suite}/{p}" for p in cost_jobs.anchor_log_files(cost_plan(wildcards.suite))]


def p_cost_plan(wildcards):
    return cost_plan(wildcards.suite).to_json()


def cost_wudi_model(wildcards):
    """WUDI's merged model of the first expert seed (its header gives the merged shapes, the same
    for every expert seed, for WUDI's FLOPs); none without WUDI."""
    if "wudi" not in S(wildcards.suite)["methods"]:
        return []
    pattern = LLM_MERGED if wildcards.suite in STREAMING_SUITES else MERGED
    return pattern.format(suite=wildcards.suite, eseed=expert_seeds_of(wildcards.suite)[0], baseline="wudi")


def p_cost_args(wildcards, input):
    """The cost command's FLOPs inputs: experts, adaptation epochs per FDA init (the resolved
    FDAConfig), WUDI's merged model and hyperparameters."""
    s = S(wildcards.suite)
    args = [f"--experts {len(tasks_of(wildcards.suite))}"]
    if s.get("fda"):
        from fda.config import FDAConfig

        for init in s["fda"]["inits"]:
            cfg = FDAConfig.for_family(s["family"], init=init, size=s["fda"]["size"], **cfg_names.fda_hparams(s, init))
            args.append(f"--adapt-epochs {init}={cfg.adapt_epochs}")
    if input.wudi:
        hparams = cfg_names.canonical_json(s["methods"]["wudi"] or {})
        args.append(f"--wudi-model {shlex.quote(str(input.wudi))} --wudi-hparams {shlex.quote(hparams)}")
    return " ".join(args)


# ---------------------------------------------------------------- targets


def table_files(suite):
    stems = [suite, f"{suite}-normalized", f"{suite}-paper"]
    return [f"results/tables/{s}.{ext}" for s in stems for ext in ("csv", "md", "tex")]


def figure_files(suite):
    s = S(suite)
    out = [f"results/figures/{suite}-{k}.{e}" for k in ("methods", "heatmap") for e in ("png", "pdf")]
    if s.get("fda") and not official_anchors(suite):  # imported anchors have no construction logs
        out += [
            f"results/figures/{suite}-{k}-{ai}.{e}"
            for ai in s["fda"]["anchor_inits"]
            for k in ("construction", "spectra")
            for e in ("png", "pdf")
        ]
    return out


def cost_files(suite):
    """The files the costs rule writes for ``suite`` (per-job costs, the cost table, the accuracy-vs-cost figure)."""
    return ([f"results/costs/{suite}.csv"] + [f"results/tables/{suite}-cost.{e}" for e in ("csv", "md", "tex")]
            + [f"results/figures/{suite}-cost.{e}" for e in ("png", "pdf")])


def all_targets():
    out = list(cfg_names.cells(config))
    for suite in SUITES:
        out += table_files(suite) + figure_files(suite) + cost_files(suite)
    return out


# ---------------------------------------------------------------- resources
# Defaults per stage and kind of suite: embedded (CPU, small), paper (one GPU), streaming LLM
# (Llama-2-13B, one GPU). They are what a job needs whatever runs it; the SLURM executor maps
# mem_mb to --mem, runtime to --time, gpu to --gpus and cpus_per_task to --cpus-per-task. Site and
# runtime settings belong to profiles: override with `set-resources` / `set-threads`
# (workflow/profiles/*).
_EMBEDDED = {"minitext", "minivision"}
_RES = {
    # stage: (mem_mb, runtime min, gpu) for embedded, paper and streaming suites
    "data": ((2000, 10, 0), (16000, 120, 0), (4000, 60, 0)),
    # streaming: links cost nothing; a .bin conversion holds one input shard (mmap) + one 5 GB output shard
    "base": ((2000, 15, 0), (16000, 60, 0), (16000, 240, 0)),
    "expert": ((3000, 15, 0), (32000, 600, 1), (16000, 240, 0)),
    # streaming: (m + 2) blocks + shard cap + temporaries ≈ 10 GB fp32 with 2 GB shards (docs/llm.md §1)
    "merge": ((3000, 15, 0), (64000, 120, 1), (16000, 240, 1)),
    # streaming: one layer's MLP of base + one expert (1.7 GB fp32) + anchors; the rest is on the GPU
    "construct": ((3000, 60, 0), (32000, 240, 1), (8000, 120, 1)),
    # streaming: one layer of base + 2 experts + the init (3.4 GB fp32 MLPs) + anchors
    "adapt": ((3000, 60, 0), (32000, 240, 1), (12000, 120, 1)),
    # streaming: one source block + its adapted tensors + the 2 GB shard cap
    "assemble": ((3000, 10, 0), (64000, 30, 0), (8000, 60, 0)),
    # streaming: the 13B model loaded for generation (26 GB in bf16) before it moves to the GPU
    "evaluate": ((3000, 20, 0), (48000, 240, 1), (40000, 720, 1)),
    "aggregate": ((1000, 5, 0), (4000, 10, 0), (4000, 10, 0)),
    # official anchors: one .npy file in memory at a time (ViT-L/14: 67 MB); reading a release
    # (26 GB for ViT-L/14, both inits) is the time
    "import": ((1000, 10, 0), (4000, 60, 0), (4000, 60, 0)),
}


def _res(stage, index):
    def fn(wildcards):
        kind = 0 if wildcards.suite in _EMBEDDED else 2 if wildcards.suite in STREAMING_SUITES else 1
        return _RES[stage][kind][index]

    return fn


def mem(stage):
    return _res(stage, 0)


def runtime(stage):
    return _res(stage, 1)


def gpu(stage):
    return _res(stage, 2)


#: CPUs a job that drives one GPU (paper and streaming suites) asks SLURM for: the main process
#: plus what feeds the GPU (DataLoader workers, tokenisation, checkpoint I/O).
_CPUS_PER_GPU_JOB = 4


def cpus(stage):
    """`cpus_per_task`, what the SLURM executor requests (`--cpus-per-task`; local runs count
    `threads` instead): a CPU job asks for the rule's threads, which is all it uses (snakemake
    exports OMP_NUM_THREADS=threads to it), so an embedded suite's jobs fit a small node and run
    side by side; a GPU job asks for _CPUS_PER_GPU_JOB."""
    uses_gpu = gpu(stage)

    def fn(wildcards, threads):
        return _CPUS_PER_GPU_JOB if uses_gpu(wildcards) else threads

    return fn


def p_expert_key_all(wildcards):
    return cfg_names.canonical_json(cfg_names.expert_slice(config, wildcards.suite))


def p_reference_model(wildcards, input):
    """`pretrained` evaluates the base encoder; `individual` evaluates each expert (no --model)."""
    return f"--model {shlex.quote(input.base)}" if wildcards.reference == "pretrained" else ""


def p_raw_args(wildcards, input):
    return " ".join(f"--raw {shlex.quote(p)}" for p in input.raw)


def p_individual_args(wildcards, input):
    return " ".join(f"--individual {shlex.quote(p)}" for p in input.individual)
