# FDA on the in-memory suites (streaming LLM suites: llm.smk, always per layer): anchors are
# constructed per (suite, expert seed, seed, anchor init, block, expert) and shared by every init
# (or, with fda.anchors.source official, imported once: official_anchors.smk); adaptation is per
# (suite, expert seed, seed, init, anchor init, block). `fda_jobs` chooses the job granularity of each
# stage (see workflow/schemas/config.schema.yaml):
#   construct fine:   one job per (block, expert)         construct coarse: one job per anchor
#                                                          init, caching each finished block
#   adapt fine:       one job per block + assembly job     adapt coarse: one job per (init, anchor
#                                                          init), caching each finished block


if cfg_names.fda_granularity(config, "construct") == "fine":

    rule fda_construct:
        wildcard_constraints:
            suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
        input:
            configured=configured,
            base=BASE,
            experts=expert_dirs,
        output:
            anchors=ANCHORS,
            log=ANCHOR_LOG,
        params:
            code=METHOD_CODE,  # reruns on an edit of the method's code
            settings=p_settings,
            family=p_family,
            fda=p_fda,
            size=p_size,
            n_blocks=p_n_blocks,
            experts=expert_args,
            key=p_construct_key,
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
            "fda-bench fda-construct --suite {wildcards.suite} --settings {params.settings:q}"
            " --family {params.family} --size {params.size} --fda {params.fda:q} --anchor-init {wildcards.anchorinit}"
            " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
            " --block {wildcards.block} --task {wildcards.task}"
            " --out-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/anchors/{wildcards.anchorinit}"
            " --progress-fd 3 3>&2 > {log} 2>&1"

else:
    # One job per (suite, expert seed, seed, anchor init) doing every block and expert. Its outputs list the
    # suite's blocks and tasks, so there is one such rule per suite. Finished blocks are cached in
    # anchors-cache/ (not declared, so not deleted before a rerun): a killed job resumes there.
    for _suite in IN_MEMORY_SUITES:  # streaming suites always run per layer (llm.smk)
        if not S(_suite).get("fda"):
            continue

        rule:
            name:
                f"fda_construct_{_suite}"
            wildcard_constraints:
                suite=_suite,
                eseed=_alt(cfg_views.expert_seeds(S(_suite))),
                seed=_alt(S(_suite)["seeds"]),
                anchorinit=_alt(S(_suite)["fda"]["anchor_inits"]),
            input:
                base=BASE,
                experts=expert_dirs,
            output:
                anchors=expand(ANCHORS, task=tasks_of(_suite), block=blocks_of(_suite), allow_missing=True),
                logs=expand(ANCHOR_LOG, task=tasks_of(_suite), block=blocks_of(_suite), allow_missing=True),
            params:
                code=METHOD_CODE,  # reruns on an edit of the method's code
                settings=p_settings,
                family=p_family,
                fda=p_fda,
                size=p_size,
                n_blocks=p_n_blocks,
                blocks=p_blocks,
                experts=expert_args,
                key=p_construct_key,
            log:
                "logs/{suite}/eseed{eseed}/fda/seed{seed}/construct-{anchorinit}.log",
            benchmark:
                "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/construct-{anchorinit}.tsv"
            threads: 1
            resources:
                mem_mb=mem("construct"),
                runtime=runtime("construct"),
                gpu=gpu("construct"),
                cpus_per_task=cpus("construct"),
            conda:
                ENV
            shell:
                "fda-bench fda-construct --suite {wildcards.suite} --settings {params.settings:q}"
                " --family {params.family} --size {params.size} --fda {params.fda:q} --anchor-init {wildcards.anchorinit}"
                " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
                " {params.blocks}"
                " --out-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/anchors/{wildcards.anchorinit}"
                " --cache-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/anchors-cache/{wildcards.anchorinit}"
                " --progress-fd 3 3>&2 > {log} 2>&1"


if cfg_names.fda_granularity(config, "adapt") == "fine":

    rule fda_adapt_block:
        wildcard_constraints:
            suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
        input:
            configured=configured,
            base=BASE,
            experts=expert_dirs,
            anchors=block_anchors,
            init_model=init_model,
        output:
            ADAPTED,
        params:
            code=METHOD_CODE,  # reruns on an edit of the method's code
            settings=p_settings,
            family=p_family,
            fda=p_fda,
            size=p_size,
            n_blocks=p_n_blocks,
            experts=expert_args,
            init_model=p_init_model,
            key=p_adapt_key,
            anchors_dir=p_anchors_dir,  # constructed per seed, or the imported official ones
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
            "fda-bench fda-adapt --suite {wildcards.suite} --settings {params.settings:q}"
            " --family {params.family} --size {params.size} --fda {params.fda:q} --anchor-init {wildcards.anchorinit}"
            " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
            " --init {wildcards.init} {params.init_model} --block {wildcards.block}"
            " --anchors-dir {params.anchors_dir}"
            " --blocks-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/{wildcards.init}-{wildcards.anchorinit}/blocks"
            " --progress-fd 3 3>&2 > {log} 2>&1"

    rule fda_assemble:
        wildcard_constraints:
            suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
        input:
            configured=configured,
            base=BASE,
            experts=expert_dirs,
            blocks=adapted_blocks,
            init_model=init_model,
        output:
            FDA_MERGED,
        params:
            code=METHOD_CODE,  # reruns on an edit of the method's code
            settings=p_settings,
            family=p_family,
            fda=p_fda,
            size=p_size,
            n_blocks=p_n_blocks,
            experts=expert_args,
            init_model=p_init_model,
            key=p_adapt_key,
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
            "fda-bench fda-assemble --suite {wildcards.suite} --settings {params.settings:q}"
            " --family {params.family} --size {params.size} --fda {params.fda:q} --anchor-init {wildcards.anchorinit}"
            " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
            " --init {wildcards.init} {params.init_model}"
            " --blocks-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/{wildcards.init}-{wildcards.anchorinit}/blocks"
            " --assemble {output} > {log} 2>&1"

else:

    rule fda_adapt:
        # All blocks in one job. Finished blocks are cached as blocks/block{b}.safetensors (not
        # declared outputs, so snakemake does not delete them when the job is killed); a rerun
        # skips every block whose cache key (settings + input files) still matches.
        wildcard_constraints:
            suite=IN_MEMORY,  # streaming suites: workflow/rules/llm.smk
        input:
            configured=configured,
            base=BASE,
            experts=expert_dirs,
            anchors=all_anchors,
            init_model=init_model,
        output:
            FDA_MERGED,
        params:
            code=METHOD_CODE,  # reruns on an edit of the method's code
            settings=p_settings,
            family=p_family,
            fda=p_fda,
            size=p_size,
            n_blocks=p_n_blocks,
            blocks=p_blocks,
            experts=expert_args,
            init_model=p_init_model,
            key=p_adapt_key,
            anchors_dir=p_anchors_dir,  # constructed per seed, or the imported official ones
        log:
            "logs/{suite}/eseed{eseed}/fda/seed{seed}/adapt-{init}-{anchorinit}.log",
        benchmark:
            "logs/benchmarks/{suite}/eseed{eseed}/fda/seed{seed}/adapt-{init}-{anchorinit}.tsv"
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
            " --family {params.family} --size {params.size} --fda {params.fda:q} --anchor-init {wildcards.anchorinit}"
            " --seed {wildcards.seed} --n-blocks {params.n_blocks} --base {input.base} {params.experts}"
            " --init {wildcards.init} {params.init_model} {params.blocks}"
            " --anchors-dir {params.anchors_dir}"
            " --blocks-dir work/{wildcards.suite}/eseed{wildcards.eseed}/fda/seed{wildcards.seed}/{wildcards.init}-{wildcards.anchorinit}/blocks"
            " --assemble {output} --progress-fd 3 3>&2 > {log} 2>&1"
