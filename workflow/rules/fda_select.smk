# FDA's validated protocol (docs/selection.md, fda.bench.config.fda_selection): per (suite, expert
# seed, FDA seed, init, anchor init) listed in `fda.selection`, one adaptation run per lr scale of
# the grid, kept at every grid epoch (snapshots: the same as shorter runs); every point's model
# scored on the validation split in one job; a select job writes the choice; the chosen model is
# evaluated on test, and its rows make the cell results/{suite}_{init}_fda_validated.csv beside
# the fixed cell. The fixed point (lr scale 1, the configured epochs) is the fixed FDA model.


rule fda_adapt_grid:
    # Blocks are cached in scale{k}-blocks/ (not declared: a killed job resumes there); the
    # declared output is the directory of the run's models, epochs{E}.safetensors.
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        selection=configured_fda_selection,
        base=BASE,
        experts=expert_dirs,
        anchors=all_anchors,
        init_model=init_model,
    output:
        directory(FDA_GRID_RUN),
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        settings=p_settings,
        family=p_family,
        run=p_fda_grid_run,  # --fda (scaled lr, the largest epoch) --snapshot-epochs ...
        size=p_size,
        n_blocks=p_n_blocks,
        blocks=p_blocks,
        experts=expert_args,
        init_model=p_init_model,
        key=p_fda_selection_key,
        anchors_dir=p_anchors_dir,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/adapt-scale{scale}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/adapt-scale{scale}.tsv"
    threads: 1
    resources:
        mem_mb=mem("adapt"),
        runtime=runtime("adapt"),
        gpu=gpu("adapt"),
        cpus_per_task=cpus("adapt"),
    conda:
        ENV
    shell:
        "fda-bench fda-adapt --suite {wildcards.suite} --settings {params.settings:q}"
        " --family {params.family} --size {params.size} {params.run} --anchor-init {wildcards.anchorinit}"
        " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
        " --init {wildcards.init} {params.init_model} {params.blocks}"
        " --anchors-dir {params.anchors_dir} --blocks-dir {output}-blocks --snapshot-dir {output}"
        " --progress-fd 3 3>&2 > {log} 2>&1"


# One job scores every grid point on validation (the imports and data load once); its outputs
# list the suite's points, so there is one such rule per suite.
for _suite in IN_MEMORY_SUITES:
    if not cfg_fda_sel.validated_inits(S(_suite)):
        continue

    rule:
        name:
            f"evaluate_fda_grid_{_suite}"
        wildcard_constraints:
            suite=_suite,
        input:
            configured=configured,
            selection=configured_fda_selection,
            data=DATA,
            base=BASE,
            experts=expert_dirs,
            models=fda_point_inputs,
        output:
            expand(FDA_EVAL_GRID, point=range(len(cfg_fda_sel.fda_points(S(_suite)))), allow_missing=True),
        params:
            settings=p_settings,
            tasks=p_tasks,
            limit=p_limit,
            experts=expert_args,
            points=p_fda_grid_eval_args,
            key=p_fda_selection_key,
        log:
            "logs/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/evaluate-points.log",
        benchmark:
            "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/evaluate-points.tsv"
        threads: 1
        resources:
            mem_mb=mem("evaluate"),
            runtime=runtime("evaluate"),
            gpu=gpu("evaluate"),
            cpus_per_task=cpus("evaluate"),
        conda:
            ENV
        shell:
            "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} {params.points} --split validation"
            " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
            " --method fda --init {wildcards.init} --anchor-init {wildcards.anchorinit} --seed {wildcards.seed}"
            " --expert-seed {wildcards.eseed} > {log} 2>&1"


rule select_fda:
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        selection=configured_fda_selection,
        scores=fda_grid_evals,  # one per grid point, in grid order
    output:
        FDA_CHOICE,
    params:
        grid=p_fda_grid,
        hparams=p_fda_resolved,
        points=p_fda_point_args,
        tasks=p_tasks,
        key=p_fda_selection_key,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/select.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/select.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench select --suite {wildcards.suite} --method fda --init {wildcards.init} --anchor-init {wildcards.anchorinit}"
        " --seed {wildcards.seed} --expert-seed {wildcards.eseed} --tasks {params.tasks} --grid {params.grid:q}"
        " --hparams {params.hparams:q} {params.points} --out {output} > {log} 2>&1"


rule evaluate_fda_validated:
    # the chosen model (named in the choice file; every point's model is an input) on test
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        selection=configured_fda_selection,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
        choice=FDA_CHOICE,
        models=fda_point_inputs,
    output:
        csv=EVAL_FDA_VALIDATED,
        outcomes=npz(EVAL_FDA_VALIDATED),
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        key=p_eval_key,
        selection=p_fda_selection_key,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/evaluate-test.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/select/{init}-{anchorinit}/evaluate-test.tsv"
    threads: 1
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpu("evaluate"),
        cpus_per_task=cpus("evaluate"),
    conda:
        ENV
    shell:
        "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} --choice {input.choice}"
        " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
        " --method fda --init {wildcards.init} --anchor-init {wildcards.anchorinit} --seed {wildcards.seed}"
        " --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule cell_fda_validated:
    # any `results/X_Y_fda_validated.csv` matches: one the config does not ask for is refused, listing the cells
    wildcard_constraints:
        suite=ANY_NAME,
        init=ANY_NAME,
    input:
        configured=configured_cell(CELL_FDA_VALIDATED),
        raw=fda_validated_evals,  # every validated anchor init, expert seed and FDA seed
        raw_outcomes=lambda w: [npz(p) for p in fda_validated_evals(w)],
        individual=individual_evals,
    output:
        csv=CELL_FDA_VALIDATED,
        outcomes=npz(CELL_FDA_VALIDATED),
    params:
        raw=p_raw_args,
        individual=p_individual_args,
        anchor_source=p_anchor_source,
        source=p_expert_source_name,
        qkv_layout=p_qkv_layout,
        config_hash=p_cell_fda_validated_hash,
    log:
        "logs/{suite}/cell/{init}-fda-validated.log",
    benchmark:
        "logs/benchmarks/{suite}/cell/{init}-fda-validated.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench cell --suite {wildcards.suite} {params.raw} {params.individual} --anchor-source {params.anchor_source}"
        " --expert-source {params.source} --qkv-layout {params.qkv_layout} --config-hash {params.config_hash} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"
