# The streaming LLM suites (family llama: llama13b; cfg_views.is_streaming). Models are sharded HF
# directories that no job loads whole: base and experts are linked (or converted from .bin),
# baselines merge block by block (`stream-merge`), FDA runs one job per (decoder layer, expert)
# construction and one per layer adaptation whatever `fda_jobs` says (a whole-model job cannot hold
# 13B), the FDA model is assembled streamed over the init's merge, and evaluation generates on the
# benchmarks of each task. Result cells, tables and figures are the shared rules (evaluate.smk,
# aggregate.smk): the raw rows have the same format.
#
# Jobs get as params only the settings they read (cfg_views.job_settings), so editing an evaluation
# setting never refetches or remerges a 13B model. Evaluations also write every prompt,
# completion and score under work/{suite}/eseed0/eval/generations/ (for reading; not declared).
# Linked experts have one expert seed: the `eseed` wildcard of these rules is always 0.


rule llm_prepare_data:
    wildcard_constraints:
        suite=STREAMING,
    output:
        directory(DATA),
    params:
        settings=p_job_settings("data"),
        seed=p_data_seed,
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


rule llm_prepare_base:
    # hub snapshot (offline: the cache only, failing fast) or local directory, linked file by file
    wildcard_constraints:
        suite=STREAMING,
    input:
        data=DATA,
    output:
        directory(BASE),
    params:
        settings=p_job_settings("fetch"),
        seed=p_data_seed,
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


rule llm_prepare_expert:
    # linked like the base, then its tensor headers are checked against the base's
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        data=DATA,
        base=BASE,
    output:
        directory(EXPERT),
    params:
        settings=p_job_settings("fetch"),
        seed=p_data_seed,
    log:
        "logs/{suite}/eseed{eseed}/prepare_expert/{task}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/prepare_expert/{task}.tsv"
    threads: 1
    retries: 1  # hub downloads are flaky
    resources:
        mem_mb=mem("expert"),
        runtime=runtime("expert"),
        gpu=gpu("expert"),
        cpus_per_task=cpus("expert"),
    conda:
        ENV
    shell:
        "fda-bench prepare-expert --suite {wildcards.suite} --settings {params.settings:q}"
        " --task {wildcards.task} --base {input.base} --data {input.data}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule llm_merge:
    # a killed merge resumes from its staging directory (.{baseline}.partial) on the next run
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        base=BASE,
        experts=expert_dirs,
    output:
        directory(LLM_MERGED),
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        hparams=p_hparams,
        experts=expert_args,
        shard_size=p_shard_size,
        vocab_mismatch=p_vocab_mismatch,
    log:
        "logs/{suite}/eseed{eseed}/merge/{baseline}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/merge/{baseline}.tsv"
    threads: 1
    resources:
        mem_mb=mem("merge"),
        runtime=runtime("merge"),
        gpu=gpu("merge"),
        cpus_per_task=cpus("merge"),
    conda:
        ENV
    shell:
        "fda-bench stream-merge --method {wildcards.baseline} --hparams {params.hparams:q}"
        " --base {input.base} {params.experts} --out {output} --shard-size {params.shard_size}"
        " --vocab-mismatch {params.vocab_mismatch} --resume > {log} 2>&1"


rule llm_construct:
    # one (layer, expert): anchors and construction log at the paths of the in-memory rules
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        base=BASE,
        experts=expert_dirs,
    output:
        anchors=ANCHORS,
        log=ANCHOR_LOG,
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        family=p_family,
        fda=p_fda,
        size=p_size,
        n_blocks=p_n_blocks,
        experts=expert_args,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/construct-{anchorinit}-block{block}-{task}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/construct-{anchorinit}-block{block}-{task}.tsv"
    threads: 1
    resources:
        mem_mb=mem("construct"),
        runtime=runtime("construct"),
        gpu=gpu("construct"),
        cpus_per_task=cpus("construct"),
    conda:
        ENV
    shell:
        "fda-bench llm-construct --suite {wildcards.suite} --family {params.family} --size {params.size}"
        " --fda {params.fda:q} --seed {wildcards.seed} --n-blocks {params.n_blocks}"
        " --anchor-init {wildcards.anchorinit} --base {input.base} {params.experts}"
        " --layer {wildcards.block} --task {wildcards.task} --out {output.anchors} --log {output.log} > {log} 2>&1"


rule llm_adapt:
    # one layer, on the anchors of every expert, from the init's merged directory
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        base=BASE,
        experts=expert_dirs,
        anchors=block_anchors,
        init_model=llm_init_model,
    output:
        ADAPTED,
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        family=p_family,
        fda=p_fda,
        size=p_size,
        n_blocks=p_n_blocks,
        experts=expert_args,
        anchors=p_anchor_args,
        init_model=p_init_model,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/adapt-{init}-{anchorinit}-block{block}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/adapt-{init}-{anchorinit}-block{block}.tsv"
    threads: 1
    resources:
        mem_mb=mem("adapt"),
        runtime=runtime("adapt"),
        gpu=gpu("adapt"),
        cpus_per_task=cpus("adapt"),
    conda:
        ENV
    shell:
        "fda-bench llm-adapt --family {params.family} --size {params.size} --fda {params.fda:q}"
        " --seed {wildcards.seed} --n-blocks {params.n_blocks} --anchor-init {wildcards.anchorinit}"
        " --base {input.base} {params.experts} --init {wildcards.init} {params.init_model}"
        " --layer {wildcards.block} {params.anchors} --out {output} > {log} 2>&1"


rule llm_assemble:
    # the init's merge (fda non_block: init, the official LLM setting) with the adapted layers in
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        base=BASE,
        blocks=adapted_blocks,
        init_model=llm_init_model,
    output:
        directory(LLM_FDA_MERGED),
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        family=p_family,
        fda=p_fda,
        size=p_size,
        n_blocks=p_n_blocks,
        init_model=p_init_model,
        shard_size=p_shard_size,
    log:
        "logs/{suite}/eseed{eseed}/fda/seed{seed}/assemble-{init}-{anchorinit}.log",
    benchmark:
        "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/assemble-{init}-{anchorinit}.tsv"
    threads: 1
    resources:
        mem_mb=mem("assemble"),
        runtime=runtime("assemble"),
        gpu=gpu("assemble"),
        cpus_per_task=cpus("assemble"),
    conda:
        ENV
    shell:
        "fda-bench llm-assemble --family {params.family} --size {params.size} --fda {params.fda:q}"
        " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base}"
        " --init {wildcards.init} {params.init_model} --blocks {input.blocks}"
        " --out {output} --shard-size {params.shard_size} --resume > {log} 2>&1"


rule llm_evaluate_reference:
    # `pretrained`: the base on every benchmark; `individual`: each expert on its task's benchmarks
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        data=DATA,
        base=BASE,
        experts=expert_dirs,
    output:
        csv=EVAL_REF,
        outcomes=npz(EVAL_REF),
    params:
        settings=p_job_settings("eval"),
        tasks=p_tasks,
        limit=p_limit,
        experts=expert_args,
        model=p_reference_model,
        seed=p_data_seed,
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
        "fda-bench llm-eval --suite {wildcards.suite} --settings {params.settings:q} {params.model}"
        " --tasks {params.tasks} {params.experts} --data {input.data} {params.limit}"
        " --generations-dir work/{wildcards.suite}/eseed{wildcards.eseed}/eval/generations/{wildcards.reference}"
        " --method {wildcards.reference} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule llm_evaluate_baseline:
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        data=DATA,
        model=LLM_MERGED,
    output:
        csv=EVAL_BASELINE,
        outcomes=npz(EVAL_BASELINE),
    params:
        settings=p_job_settings("eval"),
        tasks=p_tasks,
        limit=p_limit,
        seed=p_data_seed,
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
        "fda-bench llm-eval --suite {wildcards.suite} --settings {params.settings:q} --model {input.model}"
        " --tasks {params.tasks} --data {input.data} {params.limit}"
        " --generations-dir work/{wildcards.suite}/eseed{wildcards.eseed}/eval/generations/{wildcards.baseline}"
        " --method {wildcards.baseline} --seed {params.seed} --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"


rule llm_evaluate_fda:
    wildcard_constraints:
        suite=STREAMING,
    input:
        configured=configured,
        data=DATA,
        model=LLM_FDA_MERGED,
    output:
        csv=EVAL_FDA,
        outcomes=npz(EVAL_FDA),
    params:
        settings=p_job_settings("eval"),
        tasks=p_tasks,
        limit=p_limit,
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
        "fda-bench llm-eval --suite {wildcards.suite} --settings {params.settings:q} --model {input.model}"
        " --tasks {params.tasks} --data {input.data} {params.limit}"
        " --generations-dir work/{wildcards.suite}/eseed{wildcards.eseed}/eval/generations/fda/seed"
        "{wildcards.seed}/{wildcards.init}-{wildcards.anchorinit}"
        " --method fda --init {wildcards.init} --anchor-init {wildcards.anchorinit} --seed {wildcards.seed}"
        " --expert-seed {wildcards.eseed} --out {output.csv} --outcomes {output.outcomes} > {log} 2>&1"
