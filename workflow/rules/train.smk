# Stage 4: one job per dataset x fold x backbone x fusion x method x seed. Its params hold the run's config hash,
# so changing a setting retrains exactly the runs it affects. A job resumes from its run directory's checkpoint.pt
# (left by a killed, preempted or retried attempt); the log is appended to, so it keeps every attempt.


def method_inputs(w) -> list[str]:
    spec = spec_of(w)
    needs = component_class(config, "balancers", spec.balancer).needs
    modalities = grid.run_settings(config, spec)["modalities"]
    return (processed_files(w.dataset, w.fold) + [str(p) for p in grid.artifact_paths(spec, needs, modalities).values()]
            + tuning_inputs(spec) + stale_flag(run_file(spec, "metrics.json"), lambda: tuning.expected_hash(config, spec), lambda: grid.run_hash(config, spec)))


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

