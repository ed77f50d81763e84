# Stage 1: raw clips + manifest (for synthetic-av: generated deterministically from its seed).
localrules: download


rule download:
    output:
        manifest="data/raw/{dataset}/manifest.csv",
    log:
        "results/logs/download/{dataset}.log",
    params:
        settings=lambda w: dataset_hash(w.dataset, raw_only=True),
    threads: RES["preprocess"]["threads"]
    shell:
        "{PY} -m benchmark download --config {CONFIG_FILE} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"
