# Shared by every rule: one config reading (the same as every CLI step's), validation before any job is built, the
# grid, one resolver of settings and identities, the paths, wildcard constraints.
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# user classes named 'module.path:ClassName' resolve from the working directory, as they do in the jobs
# (python -m benchmark puts the working directory on sys.path)
sys.path.insert(0, os.getcwd())

from benchmark import paths
from benchmark.config import ConfigError, SCHEMA_PATH, grid_names, layered, typed, validate_config
from benchmark.data.shards import count_rows, shard_count, shard_name
from benchmark.grid import NO_FUSION, RunSpec, dataset_folds, grid_runs
from benchmark.settings import Resolver, Step, experiment_record


def _layers():
    """The overlays (--configfile) and typed overrides: Snakemake's --config entries (its parser leaves every value a
    string: parsed again as YAML) and set=[...] ('key.path=value' expressions, as `run.sh --set` passes them)."""
    overlays = [str(p) for p in workflow.config_settings.configfiles]
    given = dict(workflow.config_settings.config)
    sets = given.pop("set", [])
    sets = [sets] if isinstance(sets, str) else list(sets)
    sets += [f"{key}={json.dumps(typed(value))}" for key, value in given.items()]
    return overlays, sets


OVERLAYS, SETS = _layers()
try:
    _cfg = validate_config(layered(OVERLAYS, SETS))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_cfg)
validate(config, schema=str(SCHEMA_PATH))

#: every job reads the config as the DAG did: the same overlays and overrides, in the same order
CONFIG_ARGS = " ".join([f"--config {shlex.quote(p)}" for p in OVERLAYS] + [f"--set {shlex.quote(s)}" for s in SETS])
RESOLVER = Resolver(config)
DIRS = {d: RESOLVER.dataset_dirs(d) for d in grid_names(config, "datasets")}
RUNS, NOT_APPLICABLE = grid_runs(config)
EXPERIMENT_RECORD_ID = experiment_record(config, RESOLVER)["identity"]
EXPERIMENT = config["experiment"]
PY = sys.executable  # the interpreter running Snakemake (the project's venv) also runs every step
# the same software described for `--use-conda` (run.sh and test.sh build it as a venv from pyproject.toml)
ENV = "../envs/benchmark.yaml"
RES = config["resources"]
# a training job's CPUs: per GPU when the site says so (Slurm --cpus-per-gpu), else resources.train.threads
TRAIN_THREADS = RES["train"]["cpus_per_gpu"] * RES["train"]["gpus"] if RES["train"].get("cpus_per_gpu") and RES["train"]["gpus"] else RES["train"]["threads"]


def _alternatives(names) -> str:
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(grid_names(config, "datasets")),
    backbone=_alternatives(grid_names(config, "backbones")),
    fusion=_alternatives(grid_names(config, "fusions") + [NO_FUSION]),
    method=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*)?",
    seed=r"\d+",
    trial=r"\d+",
    id=r"[0-9a-f]{12}",
    raw_id=r"[0-9a-f]{12}",
    cache_id=r"[0-9a-f]{12}",
    split_id=r"[0-9a-f]{12}",
    balance_id=r"[0-9a-f]{12}",
    shard=r"\d{5}",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    fold=_alternatives({f for d in grid_names(config, "datasets") for f in dataset_folds(config, d)}),


def spec_of(w) -> RunSpec:
    return RunSpec.from_method(w.dataset, w.backbone, w.fusion, w.method, int(w.seed), w.fold)


def group_of(w) -> RunSpec:
    return RunSpec.from_method(w.dataset, w.backbone, w.fusion, w.method, config["tuning"]["train_seed"], w.fold)


def step_inputs(kind: str, spec: RunSpec, wanted_id: str, trial: int | None = None) -> list:
    """A step's inputs: its data and its prerequisites' files, from the one resolver. A step whose output exists has
    none: its identity is in its path, so it is current whatever happens upstream (a data/ rebuilt for another run
    in a fresh clone, a prerequisite trained again); only a missing output makes a step run. A requested identity the
    config does not give is an error."""
    resolved = RESOLVER.resolve(Step(kind, spec, trial))
    owner = RESOLVER.resolve(Step("tune_best", spec)) if kind == "tune_trial" else resolved
    if owner.identity != wanted_id:
        raise WorkflowError(f"{kind} {spec.method} on {spec.dataset}/{spec.fold}/{spec.backbone}/{spec.fusion} seed {spec.seed}: "
                            f"the config gives identity {owner.identity}, not {wanted_id}")
    return [] if resolved.output.exists() else resolved.input_files()


def data_inputs(w, step: str) -> list[str]:
    """A data step's inputs (none once its output exists: its identity is in its path)."""
    dirs = DIRS[w.dataset]
    done = {"balance": dirs.raw / (dirs.manifest or ""), "preprocess": dirs.processed / "info.json",
            "split": dirs.split_file(w.get("fold", ""))}[step]
    if done.exists():
        return []
    manifest = [str(dirs.raw / dirs.manifest)] if step != "balance" else [str(dirs.raw / "manifest.csv")]
    return manifest + ([str(dirs.processed / "index.csv")] if step == "split" else [])


def shard_records(w) -> list[str]:
    """The gather step's inputs: every shard's record, as many as the manifest has shards (read once the manifest's
    checkpoint has run; none once the gather's output exists)."""
    dirs = DIRS[w.dataset]
    if (dirs.processed / "info.json").exists():
        return []
    if dirs.balance_id is None:
        manifest = checkpoints.download.get(dataset=w.dataset, raw_id=dirs.raw.name).output.manifest
    else:
        manifest = checkpoints.balance.get(dataset=w.dataset, raw_id=dirs.raw.name, balance_id=dirs.balance_id).output.manifest
    n = shard_count(count_rows(manifest), RES["preprocess"]["shard_clips"])
    return [str(paths.fill(paths.SHARD_RECORD, dataset=w.dataset, cache_id=dirs.processed.name, shard=shard_name(k)))
            for k in range(n)]


def estimate_modalities(w) -> str:
    return f" --modalities {spec_of(w).modality}" if spec_of(w).modality else ""


def run_metrics(spec: RunSpec) -> str:
    return str(RESOLVER.run(spec).path / "metrics.json")


def experiment_outputs() -> list[str]:
    out = paths.experiment_dir(EXPERIMENT)
    pairs = dict.fromkeys((s.dataset, s.backbone) for s in RUNS + [s for s, _ in NOT_APPLICABLE])
    record = str(paths.fill(paths.EXPERIMENT_RECORD, experiment=EXPERIMENT, id=EXPERIMENT_RECORD_ID))
    return [str(out / name) for name in paths.EXPERIMENT_OUTPUTS] + [str(out / "plots" / f"{d}__{b}.png") for d, b in pairs] + [record]


def training_resources(rule_resources: dict) -> dict:
    """Scheduler resources for GPU steps; partition/account only when the site sets them."""
    out = {"mem_mb": rule_resources["mem_mb"], "runtime": rule_resources["runtime"]}
    if rule_resources["gpus"]:  # none at all on CPU-only partitions: Slurm refuses a request for 0 GPUs
        out["gpu"] = rule_resources["gpus"]
    if rule_resources.get("cpus_per_gpu") and rule_resources["gpus"]:
        out["cpus_per_gpu"] = rule_resources["cpus_per_gpu"]
    if rule_resources.get("partition"):
        out["slurm_partition"] = rule_resources["partition"]
    if rule_resources.get("account"):
        out["slurm_account"] = rule_resources["account"]
    return out


TRAIN_RESOURCES = training_resources(RES["train"])
# the preprocessing job needs no GPU, but a site that requires a partition or account requires it for every job
PREPROCESS_RESOURCES = {"mem_mb": RES["preprocess"]["mem_mb"], "runtime": RES["preprocess"]["runtime"],
                        **{k: v for k, v in TRAIN_RESOURCES.items() if k.startswith("slurm_")}}
