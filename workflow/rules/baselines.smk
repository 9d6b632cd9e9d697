# Baseline merges (ta, tsvm, wudi, average, ties): one job per (suite, method). The merged
# encoder is also the init of "FDA (init, .)" for ta, tsvm and wudi.


rule merge_baseline:
    input:
        base=BASE,
        experts=expert_dirs,
    output:
        MERGED,
    params:
        hparams=p_hparams,
        experts=expert_args,
        key=p_expert_key_all,
    log:
        "logs/{suite}/merge/{baseline}.log",
    benchmark:
        "logs/benchmarks/{suite}/merge/{baseline}.tsv"
    threads: 1
    resources:
        mem_mb=mem("merge"),
        runtime=runtime("merge"),
        gpu=gpu("merge"),
    conda:
        ENV
    shell:
        "fda-bench merge --method {wildcards.baseline} --hparams {params.hparams:q}"
        " --base {input.base} {params.experts} --out {output} > {log} 2>&1"
