# Stage 3: G-Blend weights (Alg. 1) per dataset x fold x backbone x fusion x seed (x modality subset: method
# gblend-<a>+<b>), from a held-out part of train, in a file named by the estimate's identity.


def estimate_modalities(w) -> str:
    return f" --modalities {spec_of(w).modality}" if spec_of(w).modality else ""


rule estimate:
    input:
        lambda w: step_inputs("estimate", spec_of(w), w.id),
    output:
        weights=paths.ESTIMATE_FILE,
    log:
        paths.LOGS + "/estimate/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}.log",
    params:
        modalities=estimate_modalities,
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark estimate {CONFIG_ARGS} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --seed {wildcards.seed}{params.modalities} --id {wildcards.id} --threads {threads}"
        " --out {output.weights} > {log} 2>&1"
