# Tables and figures per suite, derived only from result cells (and construction logs), marked
# for `snakemake --report report.html`.


rule tables:
    input:
        cells=suite_cells,
        outcomes=lambda w: [npz(c) for c in suite_cells(w)],
    output:
        csv=report("results/tables/{suite}.csv", caption="../report/table.rst", category="Tables", subcategory="{suite}", labels={"suite": "{suite}", "table": "absolute"}),
        md="results/tables/{suite}.md",
        tex="results/tables/{suite}.tex",
        ncsv=report("results/tables/{suite}-normalized.csv", caption="../report/table-normalized.rst", category="Tables", subcategory="{suite}", labels={"suite": "{suite}", "table": "normalised"}),
        nmd="results/tables/{suite}-normalized.md",
        ntex="results/tables/{suite}-normalized.tex",
        pcsv=report("results/tables/{suite}-paper.csv", caption="../report/table-paper.rst", category="Tables", subcategory="{suite}", labels={"suite": "{suite}", "table": "ours vs paper"}),
        pmd="results/tables/{suite}-paper.md",
        ptex="results/tables/{suite}-paper.tex",
    params:
        tasks=p_result_tasks,
    log:
        "logs/{suite}/tables.log",
    benchmark:
        "logs/benchmarks/{suite}/tables.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench aggregate --suite {wildcards.suite} --tasks {params.tasks} --cells {input.cells}"
        " --outcomes {input.outcomes} --out-dir results/tables > {log} 2>&1"


rule figures:
    input:
        cells=suite_cells,
        outcomes=lambda w: [npz(c) for c in suite_cells(w)],
    output:
        methods=report("results/figures/{suite}-methods.png", caption="../report/fig-methods.rst", category="Figures", subcategory="{suite}", labels={"suite": "{suite}", "figure": "methods"}),
        methods_pdf="results/figures/{suite}-methods.pdf",
        heatmap=report("results/figures/{suite}-heatmap.png", caption="../report/fig-heatmap.rst", category="Figures", subcategory="{suite}", labels={"suite": "{suite}", "figure": "heatmap"}),
        heatmap_pdf="results/figures/{suite}-heatmap.pdf",
    params:
        tasks=p_result_tasks,
    log:
        "logs/{suite}/figures.log",
    benchmark:
        "logs/benchmarks/{suite}/figures.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench figures --suite {wildcards.suite} --tasks {params.tasks} --cells {input.cells}"
        " --outcomes {input.outcomes} --out-dir results/figures > {log} 2>&1"


rule construction_figures:
    input:
        configured=configured,
        logs=construction_logs,
    output:
        curves=report("results/figures/{suite}-construction-{anchorinit}.png", caption="../report/fig-construction.rst", category="FDA construction", subcategory="{suite}", labels={"suite": "{suite}", "anchors": "{anchorinit}", "figure": "curves"}),
        curves_pdf="results/figures/{suite}-construction-{anchorinit}.pdf",
        spectra=report("results/figures/{suite}-spectra-{anchorinit}.png", caption="../report/fig-spectra.rst", category="FDA construction", subcategory="{suite}", labels={"suite": "{suite}", "anchors": "{anchorinit}", "figure": "spectra"}),
        spectra_pdf="results/figures/{suite}-spectra-{anchorinit}.pdf",
    log:
        "logs/{suite}/construction-figures-{anchorinit}.log",
    benchmark:
        "logs/benchmarks/{suite}/construction-figures-{anchorinit}.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench construction-figures --suite {wildcards.suite} --anchor-init {wildcards.anchorinit}"
        " --logs {input.logs} --out-dir results/figures > {log} 2>&1"


rule costs:
    # What each method row cost (docs/cost.md): the jobs' benchmark files (products of their jobs,
    # so taking them as inputs orders this rule after them) and the resources line in their logs,
    # the construction logs and WUDI's merged header for the FLOPs, the cells and their per-example
    # outcomes for the accuracy and its intervals. The
    # command finds the files from the plan (params.plan): hundreds of paths would overflow the
    # shell's 128 KiB command line.
    input:
        cells=suite_cells,
        benchmarks=cost_benchmarks,
        anchor_logs=cost_anchor_logs,
        wudi=cost_wudi_model,
        outcomes=lambda w: [npz(c) for c in suite_cells(w)],
    output:
        jobs="results/costs/{suite}.csv",
        csv=report("results/tables/{suite}-cost.csv", caption="../report/table-cost.rst", category="Tables", subcategory="{suite}", labels={"suite": "{suite}", "table": "cost"}),
        md="results/tables/{suite}-cost.md",
        tex="results/tables/{suite}-cost.tex",
        fig=report("results/figures/{suite}-cost.png", caption="../report/fig-cost.rst", category="Figures", subcategory="{suite}", labels={"suite": "{suite}", "figure": "accuracy vs cost"}),
        fig_pdf="results/figures/{suite}-cost.pdf",
    params:
        tasks=p_result_tasks,
        plan=p_cost_plan,
        args=p_cost_args,
    log:
        "logs/{suite}/costs.log",
    benchmark:
        "logs/benchmarks/{suite}/costs.tsv"
    threads: 1
    resources:
        mem_mb=mem("aggregate"),
        runtime=runtime("aggregate"),
    localrule: True
    conda:
        ENV
    shell:
        "fda-bench costs --suite {wildcards.suite} --tasks {params.tasks} --cells {input.cells} --plan {params.plan:q}"
        " --benchmarks-dir logs/benchmarks/{wildcards.suite} --work-dir work/{wildcards.suite} {params.args}"
        " --outcomes {input.outcomes}"
        " --jobs-out {output.jobs} --tables-dir results/tables --figures-dir results/figures > {log} 2>&1"
