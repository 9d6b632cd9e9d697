# Evaluation (raw rows per evaluated model and expert seed) and result cells (tidy rows with
# `normalized` and provenance; one cell gathers every expert seed, and FDA seed, of its rows). Each task is scored with its own head on top of the evaluated encoder.


rule evaluate_reference:
    # `pretrained`: the base encoder on every task; `individual`: each expert on its own task.
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        configured=configured,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
    output:
        csv=EVAL_REF,
        outcomes=npz(EVAL_REF),
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        model=p_reference_model,
        seed=p_data_seed,
        key=p_eval_key,
    log:
        "logs/{suite}/eseed{eseed}/evaluate/{reference}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/evaluate/{reference}.tsv"
    threads: 1
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpu("evaluate"),
        cpus_per_task=cpus("evaluate"),
    conda:
        ENV
    shell:
        "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} {params.model}"
        " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
        " --method {wildcards.reference} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule evaluate_baseline:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        configured=configured,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
        model=MERGED,
    output:
        csv=EVAL_BASELINE,
        outcomes=npz(EVAL_BASELINE),
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        seed=p_data_seed,
        key=p_eval_key,
    log:
        "logs/{suite}/eseed{eseed}/evaluate/{baseline}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/evaluate/{baseline}.tsv"
    threads: 1
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpu("evaluate"),
        cpus_per_task=cpus("evaluate"),
    conda:
        ENV
    shell:
        "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} --model {input.model}"
        " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
        " --method {wildcards.baseline} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule evaluate_fda:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        configured=configured,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
        model=FDA_MERGED,
    output:
        csv=EVAL_FDA,
        outcomes=npz(EVAL_FDA),
    params:
        settings=p_settings,
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        key=p_eval_key,
    log:
        "logs/{suite}/eseed{eseed}/evaluate/fda-seed{seed}-{init}-{anchorinit}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/evaluate/fda-seed{seed}-{init}-{anchorinit}.tsv"
    threads: 1
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpu("evaluate"),
        cpus_per_task=cpus("evaluate"),
    conda:
        ENV
    shell:
        "fda-bench evaluate --suite {wildcards.suite} --settings {params.settings:q} --model {input.model}"
        " --tasks {params.tasks} --base {input.base} --data {input.data} {params.experts} {params.limit}"
        " --method fda --init {wildcards.init} --anchor-init {wildcards.anchorinit} --seed {wildcards.seed}"
        " --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule cell:
    # any `results/X_Y.csv` matches: one the config does not ask for is refused, listing the cells
    wildcard_constraints:
        suite=ANY_NAME,
        method=ANY_NAME,
    input:
        configured=configured_cell(CELL),
        raw=cell_evals,  # one per expert seed
        raw_outcomes=lambda w: [npz(p) for p in cell_evals(w)],
        individual=individual_evals,
    output:
        csv=CELL,
        outcomes=npz(CELL),
    params:
        raw=p_raw_args,
        individual=p_individual_args,
        source=p_expert_source_name,
        qkv_layout=p_qkv_layout,
        config_hash=p_cell_hash,
    log:
        "logs/{suite}/cell/{method}.log",
    benchmark:
        "logs/benchmarks/{suite}/cell/{method}.tsv"
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


rule cell_fda:
    # any `results/X_Y_fda.csv` matches: one the config does not ask for is refused, listing the cells
    wildcard_constraints:
        suite=ANY_NAME,
        init=ANY_NAME,
    input:
        configured=configured_cell(CELL_FDA),
        raw=fda_evals,  # every anchor init, expert seed and FDA seed
        raw_outcomes=lambda w: [npz(p) for p in fda_evals(w)],
        individual=individual_evals,
    output:
        csv=CELL_FDA,
        outcomes=npz(CELL_FDA),
    params:
        raw=p_raw_args,
        individual=p_individual_args,
        anchor_source=p_anchor_source,  # constructed or official, recorded on the FDA rows
        source=p_expert_source_name,
        qkv_layout=p_qkv_layout,
        config_hash=p_cell_fda_hash,
    log:
        "logs/{suite}/cell/{init}-fda.log",
    benchmark:
        "logs/benchmarks/{suite}/cell/{init}-fda.tsv"
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
