# Official anchors (a suite's fda.anchors.source: official): the FDA authors' released .npy files
# are imported once per (suite, anchor init) into OFFICIAL_ANCHORS, which adaptation reads for
# every seed and init (common.smk: anchor_file); nothing is constructed. The config check has
# already found every file (fda.bench.config.load); the files are this rule's inputs, so an
# edited release reruns the import.


def official_release_files(wildcards):
    """The release's .npy files of this anchor init, for every configured block and task."""
    from fda.bench.official_anchors import configured_release

    options = cfg_views.official_anchor_options(config, wildcards.suite)
    release = configured_release(options, wildcards.anchorinit)
    return [str(p) for _, p in sorted(release.files.items())]


def p_official_src(wildcards):
    return cfg_views.official_anchor_options(config, wildcards.suite)["spec"]


def p_official_tasks(wildcards):
    """`--task TASK` (or TASK=FOLDER where fda.anchors.tasks names the release's folder), in task order."""
    folders = cfg_views.official_anchor_options(config, wildcards.suite)["task_dirs"]
    items = [f"{t}={folders[t]}" if t in folders else t for t in tasks_of(wildcards.suite)]
    return " ".join(f"--task {shlex.quote(i)}" for i in items)


def p_official_run(wildcards):
    run = cfg_views.official_anchor_options(config, wildcards.suite)["runs"].get(wildcards.anchorinit)
    return f"--run {shlex.quote(run)}" if run else ""


for _suite in SUITES:
    if not (S(_suite).get("fda") and official_anchors(_suite)):
        continue

    rule:
        name:
            f"fda_import_anchors_{_suite}"
        wildcard_constraints:
            suite=_suite,
            anchorinit=_alt(S(_suite)["fda"]["anchor_inits"]),
        input:
            configured=configured,
            release=official_release_files,
        output:
            anchors=expand(OFFICIAL_ANCHORS, task=tasks_of(_suite), block=blocks_of(_suite), allow_missing=True),
        params:
            src=p_official_src,
            family=p_family,
            n_blocks=p_n_blocks,
            tasks=p_official_tasks,
            run=p_official_run,
        log:
            "logs/{suite}/fda/import-{anchorinit}.log",
        benchmark:
            "logs/benchmarks/{suite}/fda/import-{anchorinit}.tsv"
        threads: 1
        resources:
            mem_mb=mem("import"),
            runtime=runtime("import"),
            gpu=gpu("import"),
            cpus_per_task=cpus("import"),
        conda:
            ENV
        shell:
            "fda-bench import-anchors --suite {wildcards.suite} --src {params.src:q} --family {params.family}"
            " --anchor-init {wildcards.anchorinit} {params.tasks} --n-blocks {params.n_blocks} {params.run}"
            " --out-dir work/{wildcards.suite}/fda/official/anchors/{wildcards.anchorinit} > {log} 2>&1"
