# Stage 3: G-Blend weights (Alg. 1) per dataset x fold x backbone x fusion x seed (x modality subset: method
# gblend-<a>+<b>), from a held-out part of train, in a file named by the estimate's identity.


rule estimate:
    input:
        lambda w: step_inputs("estimate", spec_of(w), w.id),
    output:
        weights=paths.ESTIMATE_FILE,
    log:
        paths.ESTIMATE_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
        modalities=estimate_modalities,
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark estimate {params.config} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --seed {wildcards.seed}{params.modalities} --id {wildcards.id} --threads {threads}"
        " --out {output.weights} > {log} 2>&1"
