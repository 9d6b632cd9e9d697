# Helpers for the workflow: config loading and validation, wildcard constraints, file names,
# the config slices that jobs get as params, resources. The logic lives in fda.workflow_config;
# this file only maps wildcards onto it.

import json
import shlex
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

import fda.workflow_config as wc_

min_version("9.0")


# ---------------------------------------------------------------- config
# No `configfile:` directive: snakemake would *extend* it with `--configfile config/paper.yaml`
# (paper suites plus the embedded ones). The default file is used only when no --configfile gave
# any suites; `--config KEY=VALUE` overrides still apply on top of it.
if "suites" not in config:
    _default = yaml.safe_load((Path(workflow.basedir) / "config" / "config.yaml").read_text())
    _merged = wc_.deep_update(_default, config)
    config.clear()
    config.update(_merged)

# Our validator first (its messages name the key and the allowed values), then snakemake's own
# with the same schema; both fill in the schema's defaults.
config.update(wc_.validate_config(config))
validate(config, "../schemas/config.schema.yaml")

SUITES = list(config["suites"])


def S(suite):
    """The suite's config section as jobs see it (smoke overrides applied)."""
    return wc_.effective_suite(config, suite)


def _alt(names):
    return "|".join(sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    suite=_alt(SUITES),
    method=_alt(wc_.METHODS),
    baseline=_alt(wc_.BASELINE_METHODS),
    reference=_alt(wc_.REFERENCE_METHODS),
    init=_alt(wc_.FDA_INITS),
    anchorinit=_alt(wc_.ANCHOR_INITS),
    task=r"[A-Za-z0-9][A-Za-z0-9.+-]*",
    block=r"[0-9]+",
    seed=r"[0-9]+",


# ---------------------------------------------------------------- file names
DATA = "work/{suite}/data"
BASE = "work/{suite}/base"
EXPERT = "work/{suite}/experts/{task}"
MERGED = "work/{suite}/merged/{baseline}.safetensors"
ANCHORS = "work/{suite}/fda/seed{seed}/anchors/{anchorinit}/block{block}/{task}.safetensors"
ANCHOR_LOG = "work/{suite}/fda/seed{seed}/anchors/{anchorinit}/block{block}/{task}.json"
ADAPTED = "work/{suite}/fda/seed{seed}/{init}-{anchorinit}/blocks/block{block}.safetensors"
FDA_MERGED = "work/{suite}/fda/seed{seed}/{init}-{anchorinit}/merged.safetensors"
EVAL_REF = "work/{suite}/eval/{reference}.csv"
EVAL_BASELINE = "work/{suite}/eval/{baseline}.csv"
EVAL_FDA = "work/{suite}/eval/fda/seed{seed}/{init}-{anchorinit}.csv"
CELL = "results/{suite}_{method}.csv"
CELL_FDA = "results/{suite}_{init}_fda.csv"
LOGS = "logs/{suite}"
BENCH = "logs/benchmarks/{suite}"
ENV = "../envs/fda-bench.yaml"


def tasks_of(suite):
    return S(suite)["tasks"]


def expert_dirs(wildcards):
    return [EXPERT.format(suite=wildcards.suite, task=t) for t in tasks_of(wildcards.suite)]


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
    """The suite's settings with the config's sources translated (wc_.suite_settings_for)."""
    return wc_.canonical_json(wc_.suite_settings_for(config, wildcards.suite))


def p_data_seed(wildcards):
    return S(wildcards.suite)["data_seed"]


def p_family(wildcards):
    return S(wildcards.suite)["family"]


def p_data_key(wildcards):
    return wc_.canonical_json(wc_.data_slice(config, wildcards.suite))


def p_base_key(wildcards):
    return wc_.canonical_json(wc_.base_slice(config, wildcards.suite))


def p_expert_key(wildcards):
    return wc_.canonical_json(wc_.expert_slice(config, wildcards.suite, wildcards.task))


def p_expert_source(wildcards):
    return wc_.canonical_json(S(wildcards.suite).get("experts", {}).get(wildcards.task, {}))


def p_hparams(wildcards):
    return wc_.canonical_json(S(wildcards.suite)["methods"].get(wildcards.baseline, {}))


def p_fda(wildcards):
    """FDAConfig overrides; adaptation jobs (with an `init` wildcard) add fda.per_init[init]."""
    init = getattr(wildcards, "init", None)
    return wc_.canonical_json(wc_.fda_hparams(S(wildcards.suite), init))


def p_size(wildcards):
    return S(wildcards.suite)["fda"]["size"]


def p_construct_key(wildcards):
    return wc_.canonical_json(wc_.construct_slice(config, wildcards.suite, wildcards.anchorinit, wildcards.seed))


def p_adapt_key(wildcards):
    return wc_.canonical_json(
        wc_.adapt_slice(config, wildcards.suite, wildcards.init, wildcards.anchorinit, wildcards.seed)
    )


def p_n_blocks(wildcards):
    return S(wildcards.suite)["fda"]["n_blocks"]


def p_blocks(wildcards):
    return block_args(wildcards.suite)


def p_tasks(wildcards):
    return " ".join(shlex.quote(t) for t in tasks_of(wildcards.suite))


def p_limit(wildcards):
    limit = S(wildcards.suite)["eval_limit"]
    return f"--limit {limit}" if limit else ""


def p_eval_key(wildcards):
    return wc_.canonical_json(wc_.eval_slice(config, wildcards.suite))


def p_expert_source_name(wildcards):
    return S(wildcards.suite)["expert_source"]


def p_qkv_layout(wildcards):
    return wc_.merge_layout(config, wildcards.suite)


def p_cell_hash(wildcards):
    return wc_.config_hash(wc_.cell_slice(config, wildcards.suite, wildcards.method))


def p_cell_fda_hash(wildcards):
    return wc_.config_hash(wc_.cell_slice(config, wildcards.suite, "fda", wildcards.init))


def p_init_model(wildcards, input):
    return f"--init-model {shlex.quote(input.init_model)}" if wildcards.init != "pretrained" else ""


# ---------------------------------------------------------------- inputs


def init_model(wildcards):
    """The init's merged baseline (FDA from ta/tsvm/wudi); nothing for `pretrained`."""
    if wildcards.init == "pretrained":
        return []
    return MERGED.format(suite=wildcards.suite, baseline=wildcards.init)


def block_anchors(wildcards):
    """Anchors of every expert for one block (fine-grained adaptation)."""
    return [
        ANCHORS.format(suite=wildcards.suite, seed=wildcards.seed, anchorinit=wildcards.anchorinit,
                       block=wildcards.block, task=t)
        for t in tasks_of(wildcards.suite)
    ]


def all_anchors(wildcards):
    """Anchors of every expert and block (coarse adaptation)."""
    return [
        ANCHORS.format(suite=wildcards.suite, seed=wildcards.seed, anchorinit=wildcards.anchorinit, block=b, task=t)
        for b in blocks_of(wildcards.suite)
        for t in tasks_of(wildcards.suite)
    ]


def adapted_blocks(wildcards):
    return [
        ADAPTED.format(suite=wildcards.suite, seed=wildcards.seed, init=wildcards.init,
                       anchorinit=wildcards.anchorinit, block=b)
        for b in blocks_of(wildcards.suite)
    ]


def fda_evals(wildcards):
    s = S(wildcards.suite)
    return [
        EVAL_FDA.format(suite=wildcards.suite, seed=seed, init=wildcards.init, anchorinit=ai)
        for ai in s["fda"]["anchor_inits"]
        for seed in s["seeds"]
    ]


def construction_logs(wildcards):
    """Logs of the first seed, every block and expert, for one anchor init (figures)."""
    s = S(wildcards.suite)
    return [
        ANCHOR_LOG.format(suite=wildcards.suite, seed=s["seeds"][0], anchorinit=wildcards.anchorinit, block=b, task=t)
        for b in blocks_of(wildcards.suite)
        for t in s["tasks"]
    ]


def suite_cells(wildcards):
    return [c for c in wc_.cells(config) if Path(c).name.startswith(f"{wildcards.suite}_")]


# ---------------------------------------------------------------- targets


def table_files(suite):
    stems = [suite, f"{suite}-normalized", f"{suite}-paper"]
    return [f"results/tables/{s}.{ext}" for s in stems for ext in ("csv", "md", "tex")]


def figure_files(suite):
    s = S(suite)
    out = [f"results/figures/{suite}-{k}.{e}" for k in ("methods", "heatmap") for e in ("png", "pdf")]
    if s.get("fda"):
        out += [
            f"results/figures/{suite}-{k}-{ai}.{e}"
            for ai in s["fda"]["anchor_inits"]
            for k in ("construction", "spectra")
            for e in ("png", "pdf")
        ]
    return out


def all_targets():
    out = list(wc_.cells(config))
    for suite in SUITES:
        out += table_files(suite) + figure_files(suite)
    return out


# ---------------------------------------------------------------- resources
# Defaults per stage for embedded suites (CPU, small) and paper suites (one GPU). Runtime settings
# belong to profiles: override with `set-resources` / `set-threads` (workflow/profiles/*).
_EMBEDDED = {"minitext", "minivision"}
_RES = {
    # stage: (embedded mem_mb, embedded runtime min, paper mem_mb, paper runtime min, paper gpu)
    "data": (2000, 10, 16000, 120, 0),
    "base": (2000, 15, 16000, 60, 0),
    "expert": (3000, 15, 32000, 600, 1),
    "merge": (3000, 15, 64000, 120, 1),
    "construct": (3000, 60, 32000, 240, 1),
    "adapt": (3000, 60, 32000, 240, 1),
    "assemble": (3000, 10, 64000, 30, 0),
    "evaluate": (3000, 20, 48000, 240, 1),
    "aggregate": (1000, 5, 4000, 10, 0),
}
_LLAMA_MEM = 160000  # 13B in fp32 is ~52 GB per copy; merges hold several


def _res(stage, index):
    def fn(wildcards):
        emb_mem, emb_rt, mem, rt, gpu = _RES[stage]
        embedded = wildcards.suite in _EMBEDDED
        if index == "mem_mb":
            if embedded:
                return emb_mem
            return _LLAMA_MEM if wildcards.suite == "llama13b" and stage in ("merge", "assemble", "evaluate") else mem
        if index == "runtime":
            return emb_rt if embedded else rt
        return 0 if embedded else gpu

    return fn


def mem(stage):
    return _res(stage, "mem_mb")


def runtime(stage):
    return _res(stage, "runtime")


def gpu(stage):
    return _res(stage, "gpu")


def p_expert_key_all(wildcards):
    return wc_.canonical_json(wc_.expert_slice(config, wildcards.suite))


def p_reference_model(wildcards, input):
    """`pretrained` evaluates the base encoder; `individual` evaluates each expert (no --model)."""
    return f"--model {shlex.quote(input.base)}" if wildcards.reference == "pretrained" else ""


def p_raw_args(wildcards, input):
    return " ".join(f"--raw {shlex.quote(p)}" for p in input.raw)
