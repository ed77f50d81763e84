# Stage 2: decode every clip once into cached tensors (training never decodes media).


def preprocess_manifest(w) -> str:
    """The downloaded manifest, or its Algorithm 1 subset for datasets with a 'balance' section."""
    return f"data/raw/{w.dataset}/{grid.manifest_name(config, w.dataset)}"


# Stage 1b (multi-label datasets with 'balance'): the G-Blend supplement's Algorithm 1 picks a balanced subset.
localrules: balance


rule balance:
    input:
        manifest="data/raw/{dataset}/manifest.csv",
    output:
        manifest="data/raw/{dataset}/manifest.balanced.csv",
        report="data/raw/{dataset}/balance.json",
    log:
        "results/logs/balance/{dataset}.log",
    params:
        settings=lambda w: settings_hash(dataset_settings(config, w.dataset).get("balance")),
    shell:
        "{PY} -m benchmark balance --config {CONFIG_FILE} --dataset {wildcards.dataset} > {log} 2>&1"


rule preprocess:
    input:
        manifest=preprocess_manifest,
    output:
        clips="data/processed/{dataset}/clips.pt",
        info="data/processed/{dataset}/info.json",
        rejected="data/processed/{dataset}/rejected.csv",
    log:
        "results/logs/preprocess/{dataset}.log",
    params:
        settings=lambda w: dataset_hash(w.dataset),
    threads: RES["preprocess"]["threads"]
    resources:
        mem_mb=RES["preprocess"]["mem_mb"],
        runtime=RES["preprocess"]["runtime"],
    shell:
        "{PY} -m benchmark preprocess --config {CONFIG_FILE} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


# Stage 2b: which clip is train/val/test in one fold, as a reviewable file (no decoding: cheap to redo).
localrules: split


rule split:
    input:
        manifest=preprocess_manifest,
        clips="data/processed/{dataset}/clips.pt",
    output:
        "data/processed/{dataset}/splits/{fold}.csv",
    log:
        "results/logs/split/{dataset}/{fold}.log",
    params:
        settings=lambda w: settings_hash(dataset_settings(config, w.dataset)["split"]),
    shell:
        "{PY} -m benchmark split --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} > {log} 2>&1"
