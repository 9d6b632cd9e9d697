# Baseline merges (ta, tsvm, wudi, average, ties): one job per (suite, expert seed, method). The merged
# encoder is also the init of "FDA (init, .)" for ta, tsvm and wudi. Merges run in the suite's
# merge layout (fused q/k/v for the paper's CLIP checkpoints) and are stored in the HF layout.


rule merge_baseline:
    wildcard_constraints:
        suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
    input:
        configured=configured,
        base=BASE,
        experts=expert_dirs,
    output:
        MERGED,
    params:
        code=METHOD_CODE,  # reruns on an edit of the method's code
        settings=p_settings,
        hparams=p_hparams,
        experts=expert_args,
        key=p_expert_key_all,
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
        "fda-bench merge --suite {wildcards.suite} --settings {params.settings:q}"
        " --method {wildcards.baseline} --hparams {params.hparams:q}"
        " --base {input.base} {params.experts} --out {output} > {log} 2>&1"
