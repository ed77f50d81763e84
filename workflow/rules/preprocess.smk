# Stage 2: decode every clip once into cached tensors (training never decodes media). Every data folder is named by
# what determines its content (benchmark.settings.dataset_dirs), so a changed setting makes a new one.


# Stage 1b (multi-label datasets with 'balance'): the G-Blend supplement's Algorithm 1 picks a balanced subset.
localrules: balance


checkpoint balance:
    input:
        lambda w: data_inputs(w, "balance"),
    output:
        manifest=paths.BALANCED_MANIFEST_FILE,
        report=paths.BALANCE_REPORT_FILE,
    log:
        paths.BALANCE_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark balance {params.config} --dataset {wildcards.dataset} > {log} 2>&1"


# Each shard of the manifest (resources.preprocess.shard_clips rows) is one job: its memory is bounded by the shard, a
# cluster runs many at once, and a killed job loses only its shard (written atomically), so a rerun redoes only the
# missing ones. The shard count comes from the manifest, known once its (checkpoint) step has run.
rule preprocess_shard:
    input:
        lambda w: data_inputs(w, "preprocess"),
    output:
        tensors=paths.SHARD_TENSORS,
        record=paths.SHARD_RECORD,
    log:
        paths.PREPROCESS_SHARD_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
        shard=lambda w: int(w.shard),
    threads: RES["preprocess"]["threads"]
    resources:
        **PREPROCESS_RESOURCES,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark preprocess {params.config} --dataset {wildcards.dataset} --shard {params.shard}"
        " --workers {threads} > {log} 2>&1"


# The gather step: index.csv (clip -> shard, position), info.json and the one rejected-clips report. rejected.csv is
# written by the step but is not an output: Snakemake deletes a failed job's outputs, and the error of a step stopped
# by too many rejections points to it.
localrules: preprocess


rule preprocess:
    input:
        shard_records,
    output:
        index=paths.INDEX_FILE,
        info=paths.INFO_FILE,
    log:
        paths.PREPROCESS_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark preprocess {params.config} --dataset {wildcards.dataset} --gather > {log} 2>&1"


# Stage 2b: which clip is train/val/test in one fold, as a reviewable file (no decoding: cheap to redo).
localrules: split


rule split:
    input:
        lambda w: data_inputs(w, "split"),
    output:
        paths.SPLIT_FILE,
    log:
        paths.SPLIT_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark split {params.config} --dataset {wildcards.dataset} --fold {wildcards.fold} > {log} 2>&1"
