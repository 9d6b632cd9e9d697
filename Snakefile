# fda-bench: one DAG from experts to paper-shaped tables. See docs/workflow.md.
#
#   snakemake --cores 2                                    # embedded suites (config/config.yaml)
#   snakemake --cores 2 --config smoke=true                # the same, minutes instead of hours
#   snakemake results/vitb16_wudi_fda.csv --configfile config/paper.yaml --workflow-profile workflow/profiles/slurm
#   snakemake --report report.html                         # tables and figures in one HTML file
#
# Rules live in workflow/rules/*.smk; every job is a thin `fda-bench ...` call. The streaming LLM
# suites (llama13b) run workflow/rules/llm.smk instead of the in-memory merge/FDA/evaluation rules.


include: "workflow/rules/common.smk"
include: "workflow/rules/experts.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/fda.smk"
include: "workflow/rules/official_anchors.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/fda_select.smk"
include: "workflow/rules/llm.smk"
include: "workflow/rules/aggregate.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
