# The validated protocol of the baselines (docs/selection.md): each point of a method's selection
# grid (`selection.grids`) is merged and scored on the validation split, one job each (clusters fan
# out); a select job per (suite, expert seed, method) writes the choice (chosen values, every
# point's validation score, the tie rule: first best in declared order); the chosen model is
# evaluated on test, and its rows make the cell results/{suite}_{method}_validated.csv beside the
# fixed cell. A point whose values are the fixed ones reuses the fixed merge (grid_model).


rule merge_grid:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites have no selection split
    input:
        configured=configured,
        point=configured_point,
        base=BASE,
        experts=expert_dirs,
    output:
        GRID_MERGED,
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        settings=p_settings,
        hparams=p_point_hparams,
        experts=expert_args,
        key=p_expert_key_all,
    log:
        "logs/{suite}/eseed{eseed}/select/{selected}/merge-point{point}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/select/{selected}/merge-point{point}.tsv"
    threads: 1
    resources:
        mem_mb=mem("merge"),
        runtime=runtime("merge"),
        gpu=gpu("merge"),
        cpus_per_task=cpus("merge"),
    conda:
        ENV
    shell:
        "fda-bench merge --suite {wildcards.suite} --settings {params.settings:q}"
        " --method {wildcards.selected} --hparams {params.hparams:q}"
        " --base {input.base} {params.experts} --out {output} > {log} 2>&1"


rule evaluate_grid:
    # one grid point's model on the validation split (no outcomes: these numbers never enter a cell)
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        point=configured_point,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
        model=point_model,
    output:
        csv=EVAL_GRID,
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        seed=p_data_seed,
        hparams=p_point_hparams,
        key=p_eval_key,
    log:
        "logs/{suite}/eseed{eseed}/select/{selected}/evaluate-point{point}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/select/{selected}/evaluate-point{point}.tsv"
    threads: 1
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpu("evaluate"),
        cpus_per_task=cpus("evaluate"),
    conda:
        ENV
    shell:
        "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} --model {input.model} --split validation"
        " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
        " --method {wildcards.selected} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} > {log} 2>&1"


rule select:
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        scores=grid_evals,  # one per grid point, in grid order
    output:
        CHOICE,
    params:
        grid=p_grid,
        hparams=p_selected_hparams,
        points=p_point_args,
        tasks=p_tasks,
        key=p_selection_key,
    log:
        "logs/{suite}/eseed{eseed}/select/{selected}/select.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/select/{selected}/select.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench select --suite {wildcards.suite} --method {wildcards.selected} --expert-seed {wildcards.eseed}"
        " --tasks {params.tasks} --grid {params.grid:q} --hparams {params.hparams:q} {params.points} --out {output} > {log} 2>&1"


rule evaluate_validated:
    # the chosen model (named in the choice file; every grid model is an input) on test
    wildcard_constraints:
        suite=IN_MEMORY,
    input:
        configured=configured,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
        choice=CHOICE,
        models=grid_models,
    output:
        csv=EVAL_VALIDATED,
        outcomes=npz(EVAL_VALIDATED),
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        seed=p_data_seed,
        key=p_eval_key,
        selection=p_selection_key,
    log:
        "logs/{suite}/eseed{eseed}/select/{selected}/evaluate-test.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/select/{selected}/evaluate-test.tsv"
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
        " --method {wildcards.selected} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule cell_validated:
    # any `results/X_Y_validated.csv` matches: one the config does not ask for is refused, listing the cells
    wildcard_constraints:
        suite=ANY_NAME,
        method=ANY_NAME,
    input:
        configured=configured_cell(CELL_VALIDATED),
        raw=validated_evals,  # one per expert seed
        raw_outcomes=lambda w: [npz(p) for p in validated_evals(w)],
        individual=individual_evals,
    output:
        csv=CELL_VALIDATED,
        outcomes=npz(CELL_VALIDATED),
    params:
        raw=p_raw_args,
        individual=p_individual_args,
        source=p_expert_source_name,
        qkv_layout=p_qkv_layout,
        config_hash=p_cell_validated_hash,
    log:
        "logs/{suite}/cell/{method}-validated.log",
    benchmark:
        "logs/benchmarks/{suite}/cell/{method}-validated.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench cell --suite {wildcards.suite} {params.raw} {params.individual}"
        " --expert-source {params.source} --qkv-layout {params.qkv_layout} --config-hash {params.config_hash} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"
