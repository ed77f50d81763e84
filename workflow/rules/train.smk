# Stage 4: one job per dataset x fold x backbone x fusion x method x seed. Its params hold the run's config hash,
# so changing a setting retrains exactly the runs it affects. A job resumes from its run directory's checkpoint.pt
# (left by a killed, preempted or retried attempt); the log is appended to, so it keeps every attempt.


def method_inputs(w) -> list[str]:
    spec = spec_of(w)
    needs = component_class(config, "balancers", spec.balancer).needs
    modalities = grid.run_settings(config, spec)["modalities"]
    return (processed_files(w.dataset, w.fold) + [str(p) for p in grid.artifact_paths(spec, needs, modalities).values()]
            + tuning_inputs(spec) + stale_flag(spec, run_file(spec, "metrics.json")))


rule train:
    input:
        method_inputs,
    output:
        metrics="results/runs/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}/metrics.json",
        model="results/runs/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}/model.pt",
    log:
        "results/runs/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}/train.log",
    params:
        settings=lambda w: grid.run_hash(config, spec_of(w)),
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark train --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --seed {wildcards.seed} --threads {threads}"
        " --out-dir $(dirname {output.metrics}) >> {log} 2>&1"


# A result whose recorded config hash is not the config's (see stale_flag in common.smk) gets this flag as a new
# input, which makes its job rerun; the flag's name holds the hash, so a later change makes a new one.
localrules: config_flag


rule config_flag:
    output:
        "{path}.config-{hash}.flag",
    log:
        "{path}.config-{hash}.flag.log",
    shell:
        "echo 'rerun: the config hash is now {wildcards.hash}' > {output} 2> {log}"
