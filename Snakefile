# The benchmark DAG: download -> preprocess -> [tune] -> estimate (G-Blend) -> train -> aggregate.
# Every step is `python -m benchmark <step>`; see README.md. The grid lives in config.yaml.
include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        leaderboard_outputs(),


include: "workflow/rules/download.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/estimate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
