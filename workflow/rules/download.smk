# Stage 1: raw clips + manifest (for synthetic-av: generated deterministically from its seed).
localrules: download


rule download:
    output:
        manifest=paths.DATA_RAW + "/manifest.csv",
    log:
        paths.LOGS + "/download/{dataset}.log",
    params:
        settings=lambda w: dataset_hash(w.dataset, raw_only=True),
    threads: RES["preprocess"]["threads"]
    shell:
        "{PY} -m benchmark download {CONFIG_ARGS} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"
