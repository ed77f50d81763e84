# Stage 3b (tuning.enabled only): for every dataset x fold x backbone x fusion x method of the grid, tuning.trials
# random-search trials scored on validation (train and val splits only), then best.json, which that group's final
# runs (and its G-Blend estimate) read. The folder is named by the tuning's identity. Trials are ordinary jobs: they
# run on the cluster and resume like training.


rule tune_trial:
    input:
        lambda w: step_inputs("tune_trial", group_of(w), w.id, int(w.trial)),
    output:
        paths.TRIAL_FILE,
    log:
        paths.TRIAL_LOG,
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark tune-trial {params.config} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --trial {wildcards.trial} --id {wildcards.id} --threads {threads}"
        " --out {output} >> {log} 2>&1"


localrules: tune_select


rule tune_select:
    input:
        lambda w: step_inputs("tune_best", group_of(w), w.id),
    output:
        paths.BEST_FILE,
    log:
        paths.SELECT_LOG,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark tune-select {params.config} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --id {wildcards.id} --out {output} > {log} 2>&1"
