# Stage 2: decode every clip once into cached tensors (training never decodes media). Every data folder is named by
# what determines its content (benchmark.settings.dataset_dirs), so a changed setting makes a new one.


# Stage 1b (multi-label datasets with 'balance'): the G-Blend supplement's Algorithm 1 picks a balanced subset.
localrules: balance


rule balance:
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


# rejected.csv is written by the step but is not an output: Snakemake deletes a failed job's outputs, and the
# error of a step stopped by too many rejections points to it.
rule preprocess:
    input:
        lambda w: data_inputs(w, "preprocess"),
    output:
        clips=paths.CLIPS_FILE,
        info=paths.INFO_FILE,
    log:
        paths.PREPROCESS_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    threads: RES["preprocess"]["threads"]
    resources:
        **PREPROCESS_RESOURCES,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark preprocess {params.config} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


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
