# Data, base model and experts of each suite (download, copy or fine-tune: the suite decides).
# Experts are per expert seed (work/{suite}/eseed{eseed}/experts/): the fine-tuning's randomness
# (data order, head init), not the data split; hub or local experts have expert seed 0 only.
# Task vectors are not cached as files: every merge computes them on the fly from the base and
# the experts (one pass, cheaper than writing and reading them back).


rule prepare_data:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    output:
        directory(DATA),
    params:
        settings=p_settings,
        seed=p_data_seed,
        key=p_data_key,
    log:
        "logs/{suite}/prepare_data.log",
    benchmark:
        "logs/benchmarks/{suite}/prepare_data.tsv"
    threads: 1
    resources:
        mem_mb=mem("data"),
        runtime=runtime("data"),
        gpu=gpu("data"),
        cpus_per_task=cpus("data"),
    conda:
        ENV
    shell:
        "fda-bench prepare-data --suite {wildcards.suite} --settings {params.settings:q}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule prepare_base:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        data=DATA,
    output:
        directory(BASE),
    params:
        settings=p_settings,
        seed=p_data_seed,
        key=p_base_key,
    log:
        "logs/{suite}/prepare_base.log",
    benchmark:
        "logs/benchmarks/{suite}/prepare_base.tsv"
    threads: 1
    resources:
        mem_mb=mem("base"),
        runtime=runtime("base"),
        gpu=gpu("base"),
        cpus_per_task=cpus("base"),
    conda:
        ENV
    shell:
        "fda-bench prepare-base --suite {wildcards.suite} --settings {params.settings:q}"
        " --data {input.data} --seed {params.seed} --out {output} > {log} 2>&1"


rule prepare_expert:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        configured=configured,
        data=DATA,
        base=BASE,
    output:
        directory(EXPERT),
    params:
        settings=p_settings,
        seed=p_data_seed,
        source=p_expert_source,
        key=p_expert_key,
    log:
        "logs/{suite}/eseed{eseed}/prepare_expert/{task}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/prepare_expert/{task}.tsv"
    threads: 1
    retries: 1  # hub downloads are flaky; a fine-tune that fails twice is a real error
    resources:
        mem_mb=mem("expert"),
        runtime=runtime("expert"),
        gpu=gpu("expert"),
        cpus_per_task=cpus("expert"),
    conda:
        ENV
    shell:
        "fda-bench prepare-expert --suite {wildcards.suite} --settings {params.settings:q}"
        " --task {wildcards.task} --source {params.source:q} --base {input.base} --data {input.data}"
        " --seed {params.seed} --expert-seed {wildcards.eseed} --out {output} > {log} 2>&1"
