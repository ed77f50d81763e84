# Stage 1: raw clips + manifest (for synthetic-av: generated deterministically from its seed), in a folder named by
# the dataset's source (or generation) settings. A checkpoint: the manifest's length sets the number of shards.
localrules: download


checkpoint download:
    output:
        manifest=paths.RAW_MANIFEST,
    log:
        paths.DOWNLOAD_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    threads: RES["preprocess"]["threads"]
    conda:
        ENV
    shell:
        "{params.py} -m benchmark download {params.config} --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"
