# Stage 4: one job per dataset x fold x backbone x fusion x method x seed, in the folder named by the run's identity
# (benchmark.settings): a changed setting is a new folder, so exactly the affected runs train, once. A job resumes
# from its folder's checkpoint.pt (left by a killed, preempted or retried attempt); the log keeps every attempt.


rule train:
    input:
        lambda w: step_inputs("run", spec_of(w), w.id),
    output:
        metrics=paths.RUN_METRICS,  # model.pt is written next to it but is not an output (see README)
    log:
        paths.RUN_LOG,
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark train {params.config} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --seed {wildcards.seed} --id {wildcards.id} --threads {threads}"
        " --out-dir $(dirname {output.metrics}) >> {log} 2>&1"
