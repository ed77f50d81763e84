# Stage 2: decode every clip once into cached tensors (training never decodes media).


rule preprocess:
    input:
        manifest="data/raw/{dataset}/manifest.csv",
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
        manifest="data/raw/{dataset}/manifest.csv",
        clips="data/processed/{dataset}/clips.pt",
    output:
        "data/processed/{dataset}/splits/{fold}.csv",
    log:
        "results/logs/split/{dataset}/{fold}.log",
    params:
        settings=lambda w: settings_hash(dataset_settings(config, w.dataset)["split"]),
    shell:
        "{PY} -m benchmark split --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} > {log} 2>&1"
