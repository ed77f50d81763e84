# Stage 2: decode every clip once into cached tensors (training never decodes media).


def preprocess_manifest(w) -> str:
    """The downloaded manifest, or its Algorithm 1 subset for datasets with a 'balance' section."""
    return f"{paths.raw_dir(w.dataset)}/{manifest_name(config, w.dataset)}"


# Stage 1b (multi-label datasets with 'balance'): the G-Blend supplement's Algorithm 1 picks a balanced subset.
localrules: balance


rule balance:
    input:
        manifest=paths.DATA_RAW + "/manifest.csv",
    output:
        manifest=paths.DATA_RAW + "/manifest.balanced.csv",
        report=paths.DATA_RAW + "/balance.json",
    log:
        paths.LOGS + "/balance/{dataset}.log",
    params:
        settings=lambda w: settings_hash(dataset_settings(config, w.dataset).get("balance")),
    shell:
        "{PY} -m benchmark balance {CONFIG_ARGS} --dataset {wildcards.dataset} > {log} 2>&1"


# rejected.csv is written by the step but is not an output: Snakemake deletes a failed job's outputs, and the
# error of a step stopped by too many rejections points to it.
rule preprocess:
    input:
        manifest=preprocess_manifest,
    output:
        clips=paths.DATA_PROCESSED + "/clips.pt",
        info=paths.DATA_PROCESSED + "/info.json",
    log:
        paths.LOGS + "/preprocess/{dataset}.log",
    params:
        settings=lambda w: dataset_hash(w.dataset),
    threads: RES["preprocess"]["threads"]
    resources:
        **PREPROCESS_RESOURCES,
    shell:
        "{PY} -m benchmark preprocess {CONFIG_ARGS} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


# Stage 2b: which clip is train/val/test in one fold, as a reviewable file (no decoding: cheap to redo).
localrules: split


rule split:
    input:
        manifest=preprocess_manifest,
        clips=paths.DATA_PROCESSED + "/clips.pt",
    output:
        paths.SPLIT_FILE,
    log:
        paths.LOGS + "/split/{dataset}/{fold}.log",
    params:
        settings=lambda w: settings_hash(dataset_settings(config, w.dataset).get("split")),
    shell:
        "{PY} -m benchmark split {CONFIG_ARGS} --dataset {wildcards.dataset} --fold {wildcards.fold} > {log} 2>&1"
