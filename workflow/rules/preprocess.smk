# Stage 2: decode every clip once into cached tensors (training never decodes media).


rule preprocess:
    input:
        manifest="data/raw/{dataset}/manifest.csv",
    output:
        train="data/processed/{dataset}/train.pt",
        val="data/processed/{dataset}/val.pt",
        test="data/processed/{dataset}/test.pt",
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
