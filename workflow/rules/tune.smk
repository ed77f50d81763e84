# Stage 3b (tuning.enabled only): for every dataset x fold x backbone x fusion x method of the grid, tuning.trials
# random-search trials scored on validation (train and val splits only), then best.json, which that group's final
# runs (and its G-Blend estimate) read. Trials are ordinary jobs: they run on the cluster and resume like training.


def group_spec(w) -> grid.RunSpec:
    return grid.RunSpec.from_method(w.dataset, w.backbone, w.fusion, w.method, config["tuning"]["train_seed"], w.fold)


def trial_inputs(w) -> list[str]:
    """Cached data, plus the unimodal checkpoints a pre-training trial starts from (G-Blend trials estimate their own
    weights inside the job, from the training split)."""
    spec = group_spec(w)
    needs = tuple(n for n in component_class(config, "balancers", spec.balancer).needs if n != "gblend_weights")
    modalities = grid.run_settings(config, spec)["modalities"]
    trial = int(w.trial)
    recorded = str(tuning.trial_path(spec, trial))
    return (processed_files(w.dataset, w.fold) + [str(p) for p in grid.artifact_paths(spec, needs, modalities).values()]
            + stale_flag(recorded, lambda: tuning.trial_hash(config, spec, trial), lambda: trial_trigger(w)))


def trial_trigger(w) -> str:
    return settings_hash({"group": grid.run_hash(config, group_spec(w)), "trial": int(w.trial)})


rule tune_trial:
    input:
        trial_inputs,
    output:
        "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/trial{trial}.json",
    log:
        "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/trial{trial}.log",
    params:
        settings=trial_trigger,
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    shell:
        "{PY} -m benchmark tune-trial --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --trial {wildcards.trial} --threads {threads} --out {output} >> {log} 2>&1"


localrules: tune_select


rule tune_select:
    input:
        lambda w: [str(tuning.trial_path(group_spec(w), k)) for k in range(config["tuning"]["trials"])],
    output:
        "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/best.json",
    log:
        "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/select.log",
    shell:
        "{PY} -m benchmark tune-select --config {CONFIG_FILE} --dataset {wildcards.dataset} --fold {wildcards.fold} --backbone {wildcards.backbone}"
        " --fusion {wildcards.fusion} --method {wildcards.method} --out {output} > {log} 2>&1"
