# Stage 3: G-Blend weights (Alg. 1) per dataset x backbone x fusion x seed, from a held-out part of train.


rule estimate:
    input:
        lambda w: processed_files(w.dataset),
    output:
        weights="results/gblend/{dataset}/{backbone}/{fusion}/seed{seed}.json",
    log:
        "results/logs/estimate/{dataset}/{backbone}/{fusion}/seed{seed}.log",
    params:
        settings=lambda w: grid.run_hash(config, grid.RunSpec(w.dataset, w.backbone, w.fusion, "gblend", int(w.seed))),
    threads: RES["train"]["threads"]
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark estimate --config {CONFIG_FILE} --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --seed {wildcards.seed} --threads {threads} --out {output.weights} > {log} 2>&1"
