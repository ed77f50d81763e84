# Stage 3: G-Blend weights (Alg. 1) per dataset x fold x backbone x fusion x seed, from a held-out part of train.


def estimate_inputs(w, subset: str | None) -> list[str]:
    spec = grid.RunSpec(w.dataset, w.backbone, w.fusion, "gblend", int(w.seed), subset, w.fold)
    weights = str(grid.gblend_weights_path(w.dataset, w.backbone, w.fusion, int(w.seed), w.fold, subset))
    return (processed_files(w.dataset, w.fold) + tuning_inputs(spec)
            + stale_flag(weights, lambda: tuning.expected_hash(config, spec), lambda: grid.run_hash(config, spec)))


rule estimate:
    input:
        lambda w: estimate_inputs(w, None),
    output:
        weights="results/gblend/{dataset}/{fold}/{backbone}/{fusion}/seed{seed}.json",
    log:
        "results/logs/estimate/{dataset}/{fold}/{backbone}/{fusion}/seed{seed}.log",
    params:
        settings=lambda w: grid.run_hash(config, grid.RunSpec(w.dataset, w.backbone, w.fusion, "gblend", int(w.seed), fold=w.fold)),
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark estimate --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --seed {wildcards.seed} --threads {threads} --out {output.weights} > {log} 2>&1"


# The same for runs on a subset of the modalities (a grid block's 'modalities'): weights per subset.
rule estimate_subset:
    input:
        lambda w: estimate_inputs(w, w.subset),
    output:
        weights="results/gblend/{dataset}/{fold}/{backbone}/{fusion}/seed{seed}-{subset}.json",
    log:
        "results/logs/estimate/{dataset}/{fold}/{backbone}/{fusion}/seed{seed}-{subset}.log",
    params:
        settings=lambda w: grid.run_hash(config, grid.RunSpec(w.dataset, w.backbone, w.fusion, "gblend", int(w.seed), w.subset, w.fold)),
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark estimate --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --seed {wildcards.seed} --modalities {wildcards.subset} --threads {threads} --out {output.weights} > {log} 2>&1"
