# The benchmark DAG: download -> preprocess -> [tune] -> estimate (G-Blend) -> train -> aggregate.
# Every step is `python -m benchmark <step>`; see README.md. The grid lives in config.yaml (and its overlays).
include: "workflow/rules/common.smk"


# The experiment's view and every run it shows: Snakemake does not remake a missing input of a job whose outputs
# exist, so the runs are asked for here too (a deleted run folder trains again, also without Snakemake's metadata).
rule all:
    default_target: True
    input:
        experiment_outputs(),
        [run_metrics(spec) for spec in RUNS],


include: "workflow/rules/download.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/estimate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
