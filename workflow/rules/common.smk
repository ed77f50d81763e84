# Shared by every rule: config validation (before any job is built), the grid, wildcard constraints.
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# user classes named 'module.path:ClassName' resolve from the working directory, as they do in the jobs
# (python -m benchmark puts the working directory on sys.path)
sys.path.insert(0, os.getcwd())

from benchmark.config import ConfigError, component_class, dataset_settings, grid_names, registry, settings_hash, validate_config
from benchmark import grid, tuning

configfile: "config.yaml"

# Registry-aware checks with messages that name the key path; they also fill the schema's defaults.
try:
    config.update(validate_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, schema="../schemas/config.schema.yaml")

RUNS, NOT_APPLICABLE = grid.grid_runs(config)
PY = sys.executable  # the interpreter running Snakemake (the project's venv) also runs every step
RES = config["resources"]
# a training job's CPUs: per GPU when the site says so (Slurm --cpus-per-gpu), else resources.train.threads
TRAIN_THREADS = RES["train"]["cpus_per_gpu"] * RES["train"]["gpus"] if RES["train"].get("cpus_per_gpu") and RES["train"]["gpus"] else RES["train"]["threads"]


def _resolved_config_file() -> str:
    """The validated config as every job sees it (CLI overrides included), stored by content hash."""
    text = yaml.safe_dump(config, sort_keys=True)
    path = Path(".snakemake/benchmark") / f"config-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CONFIG_FILE = _resolved_config_file()


def component_names(axis: str) -> list[str]:
    return registry(axis).names()


def _alternatives(names) -> str:
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(grid_names(config, "datasets")),
    backbone=_alternatives(grid_names(config, "backbones")),
    fusion=_alternatives(grid_names(config, "fusions") + [grid.NO_FUSION]),
    # every method name, not only the grid's: runs may depend on others (pretrain on unimodal runs)
    method="(" + _alternatives(set(grid_names(config, "balancers")) | set(config["balancers"]) | set(component_names("balancers"))) + r")(-[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*)?",
    subset=r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)+",
    seed=r"\d+",
    trial=r"\d+",
    fold=_alternatives({f for d in grid_names(config, "datasets") for f in grid.dataset_folds(config, d)}),


def spec_of(w) -> grid.RunSpec:
    return grid.RunSpec.from_method(w.dataset, w.backbone, w.fusion, w.method, int(w.seed), w.fold)


def run_file(spec: grid.RunSpec, name: str) -> str:
    return str(spec.run_dir / name)


def processed_files(dataset: str, fold: str) -> list[str]:
    d = grid.processed_dir(dataset)
    return [str(d / "clips.pt"), str(d / "info.json"), str(d / "splits" / f"{fold}.csv")]


def dataset_hash(dataset: str, raw_only: bool = False) -> str:
    """Hash of a dataset's settings; raw_only: without preprocessing (what the download step depends on)."""
    s = dataset_settings(config, dataset)
    return settings_hash({k: v for k, v in s.items() if k != "preprocess"} if raw_only else s)


def stale_flag(recorded: str, expected, trigger) -> list[str]:
    """Snakemake reruns a job whose params changed only when it ran in this directory before (its metadata), and it
    does not remake a missing input of a job whose outputs exist. So a result made elsewhere (a fresh clone of
    committed results, a copied folder) is checked here: when the config hash it records is not the one the config
    now gives, a flag file named by the new hash is written next to it (once) and made an input of its job, which is
    then newer than the result, so the job reruns. Current results get no flag. ``expected``: the hash the result must
    record (None: not known yet, so stale) and ``trigger``, the job's params hash that names the flag, are functions,
    called only for results that exist (a dry run of a large new grid reads nothing)."""
    path = Path(recorded)
    if not path.exists():
        return []
    try:
        recorded_hash = json.loads(path.read_text()).get("config_hash")
    except (OSError, ValueError):
        return []
    current = expected()
    if current is not None and recorded_hash == current:
        return []
    flag = Path(f"{recorded}.config-{trigger()}.flag")
    if not flag.exists():
        flag.write_text(f"{recorded} records config {recorded_hash}; the config now gives another: rerun\n")
    return [str(flag)]


def tuning_inputs(spec: grid.RunSpec) -> list[str]:
    """With tuning on, a run (or G-Blend estimate) reads its group's best.json."""
    return [str(tuning.best_path(spec))] if tuning.enabled(config) else []


def leaderboard_outputs() -> list[str]:
    pairs = dict.fromkeys((s.dataset, s.backbone) for s in RUNS + [s for s, _ in NOT_APPLICABLE])
    tables = [f"results/{name}" for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.tex", "agreement.csv", "report.html")]
    return tables + [f"results/plots/{d}__{b}.png" for d, b in pairs]


def training_resources(rule_resources: dict) -> dict:
    """Scheduler resources for GPU steps; partition/account only when the site sets them."""
    out = {"gpu": rule_resources["gpus"], "mem_mb": rule_resources["mem_mb"], "runtime": rule_resources["runtime"]}
    if rule_resources.get("cpus_per_gpu") and rule_resources["gpus"]:
        out["cpus_per_gpu"] = rule_resources["cpus_per_gpu"]
    if rule_resources.get("partition"):
        out["slurm_partition"] = rule_resources["partition"]
    if rule_resources.get("account"):
        out["slurm_account"] = rule_resources["account"]
    return out


TRAIN_RESOURCES = training_resources(RES["train"])
