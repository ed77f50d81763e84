"""Fair hyperparameter tuning inside the DAG (the MLB paper's protocol: every method tuned separately per dataset,
backbone and fusion on the validation set, with the same number of trials).

With ``tuning.enabled``, every group of runs that differ only in their seed — one dataset × fold × backbone ×
fusion × method — gets ``tuning.trials`` trials. Trial k draws its hyperparameters from the group's search space
(``tuning.space``: the training settings every method shares, plus the method's, the fusion's and the backbone's
own entries) with a random generator seeded by (``tuning.seed``, the group, k), so the same config always draws
the same trials. Each trial is an ordinary training job with seed ``tuning.train_seed``, scored by the validation
metric that selects checkpoints (accuracy; mAP for multi-label data). It reads the training and validation
splits only: the parts it loads are recorded in its file, and the test split is never opened. ``best.json`` keeps
the best trial (the earliest on ties); the final multi-seed runs read it, record it in their settings, and the
leaderboard lists it with the budget. With ``tuning.enabled: false`` the grid runs the config's values (the
papers' defaults) and the leaderboard says so.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from benchmark.config import ConfigError, component_class, component_params
from benchmark.grid import NO_FUSION, RunSpec, artifact_paths, run_settings

TUNING_DIR = Path("results/tuning")
#: the sections of a run's settings a hyperparameter can live in
SECTIONS = {"train": None, "balancer": "balancers", "fusion": "fusions", "backbone": "backbones"}


def enabled(cfg: dict) -> bool:
    return bool((cfg.get("tuning") or {}).get("enabled"))


def group_dir(spec: RunSpec) -> Path:
    """The tuning folder of the runs that differ from ``spec`` only in their seed."""
    return TUNING_DIR / spec.dataset / spec.fold / spec.backbone / spec.fusion / spec.method


def trial_path(spec: RunSpec, trial: int) -> Path:
    return group_dir(spec) / f"trial{trial}.json"


def best_path(spec: RunSpec) -> Path:
    return group_dir(spec) / "best.json"


def group_space(cfg: dict, spec: RunSpec) -> dict[str, dict]:
    """'<section>.<parameter>' -> distribution, for this group: shared training settings and the group's method,
    fusion and backbone entries."""
    space = cfg["tuning"]["space"]
    out = {f"train.{k}": v for k, v in (space.get("train") or {}).items()}
    names = {"balancer": spec.balancer, "fusion": None if spec.fusion == NO_FUSION else spec.fusion, "backbone": spec.backbone}
    for section, axis in SECTIONS.items():
        if axis and names[section]:
            out.update({f"{section}.{k}": v for k, v in ((space.get(axis) or {}).get(names[section]) or {}).items()})
    return dict(sorted(out.items()))


def sample(dist: dict, rng: np.random.Generator):
    """One draw: a choice, or a value in [low, high] uniform on a linear or log scale (rounded for type: int)."""
    if "choices" in dist:
        return dist["choices"][int(rng.integers(len(dist["choices"])))]
    lo, hi = dist["low"], dist["high"]
    value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if dist.get("scale") == "log" else rng.uniform(lo, hi)
    return int(round(value)) if dist.get("type") == "int" else float(value)


def trial_params(cfg: dict, spec: RunSpec, trial: int) -> dict:
    """The hyperparameters of one trial (random search, seeded by the tuning seed, the group and the trial)."""
    group = zlib.crc32(str(group_dir(spec)).encode())
    rng = np.random.default_rng([cfg["tuning"]["seed"], group, trial])
    return {name: sample(dist, rng) for name, dist in group_space(cfg, spec).items()}


def apply_params(settings: dict, params: dict) -> dict:
    """Settings with hyperparameters replaced: 'train.optimizer.lr' is a path in the training settings,
    'balancer.alpha' a parameter of the method (likewise fusion, backbone)."""
    for name, value in params.items():
        section, _, key = name.partition(".")
        if section == "train":
            *parents, leaf = key.split(".")
            node = settings["train"]
            for p in parents:
                node = node[p]
            node[leaf] = value
        else:
            settings[section]["params"][key] = value
    return settings


def tuning_identity(cfg: dict, spec: RunSpec) -> dict:
    """What defines a group's tuning (its budget, seeds and space) — not its outcome, which lives in best.json."""
    t = cfg["tuning"]
    return {"trials": t["trials"], "seed": t["seed"], "train_seed": t["train_seed"], "space": group_space(cfg, spec)}


def resolved_settings(cfg: dict, spec: RunSpec) -> dict:
    """A final run's settings: the config's values, or with tuning the best trial's hyperparameters (from
    best.json, which the tune stage writes before any final run starts)."""
    settings = run_settings(cfg, spec)
    if not enabled(cfg):
        return settings
    path = best_path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: tuning is enabled, so the tune stage must run first "
                                "(snakemake does it; by hand: python -m benchmark tune-trial / tune-select)")
    best = json.loads(path.read_text())
    settings = apply_params(settings, best["params"])
    settings["tuning"] = {**tuning_identity(cfg, spec), "chosen": best["params"], "best_trial": best["trial"],
                          "val_score": best["val_score"], "metric": best["metric"]}
    return settings


def expected_hash(cfg: dict, spec: RunSpec) -> str | None:
    """The config hash a finished run (or G-Blend estimate) of ``spec`` must record to be current: its settings' hash,
    with tuning the tuned settings' hash; None while tuning is on and the group has no best.json yet."""
    from benchmark.config import settings_hash

    if enabled(cfg) and not best_path(spec).exists():
        return None
    return settings_hash(resolved_settings(cfg, spec))


def trial_hash(cfg: dict, spec: RunSpec, trial: int) -> str:
    """The config hash of a trial's settings (the trial's draw applied), recorded in its file."""
    from benchmark.config import settings_hash

    spec = trial_spec(cfg, spec)
    return settings_hash(settings_for(cfg, spec, trial_params(cfg, spec, trial)))


def settings_for(cfg: dict, spec: RunSpec, params: dict | None = None) -> dict:
    """A run's settings: with a tuning trial's ``params`` applied, else the resolved (tuned or default) ones."""
    return resolved_settings(cfg, spec) if params is None else apply_params(run_settings(cfg, spec), params)


def check_space(cfg: dict) -> None:
    """Every searched parameter exists (a key path of ``train``, or a parameter the component declares), and every
    range is valid; errors name the key path under ``tuning.space``."""
    space = (cfg.get("tuning") or {}).get("space") or {}
    base_train = {k: v for k, v in cfg["train"].items() if k != "per_backbone"}
    for key, dist in (space.get("train") or {}).items():
        node = base_train
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"tuning.space.train.{key}", f"'{key}' is not a training setting (e.g. optimizer.lr)")
            node = node[part]
        _check_dist(f"tuning.space.train.{key}", dist)
    for axis in ("balancers", "fusions", "backbones"):
        for name, params in (space.get(axis) or {}).items():
            accepted = component_params(cfg, axis, name)
            for key, dist in (params or {}).items():
                if key not in accepted:
                    raise ConfigError(f"tuning.space.{axis}.{name}.{key}",
                                      f"'{name}' has no parameter '{key}'; it has {', '.join(sorted(accepted)) or 'none'}")
                _check_dist(f"tuning.space.{axis}.{name}.{key}", dist)


def _check_dist(key: str, dist: dict) -> None:
    if "choices" in dist:
        return
    if not dist["low"] < dist["high"]:
        raise ConfigError(key, f"low ({dist['low']}) must be below high ({dist['high']})")
    if dist.get("scale") == "log" and dist["low"] <= 0:
        raise ConfigError(key, "a log-scale range needs low > 0")


def trial_spec(cfg: dict, spec: RunSpec) -> RunSpec:
    """The run a trial trains: the group's, with the tuning's training seed."""
    return replace(spec, seed=cfg["tuning"]["train_seed"])


def run_trial(cfg: dict, spec: RunSpec, trial: int, out_path: Path, log: Callable[[str], None] = print) -> dict:
    """Train one trial and score it on validation; writes ``out_path`` (params, score, history, the parts loaded)."""
    from benchmark.config import settings_hash
    from benchmark.data import cache
    from benchmark.estimate import estimate_gblend
    from benchmark.run import prepare_run, write_json
    from benchmark.train import fit, selection_metric

    out_path = Path(out_path)
    spec = trial_spec(cfg, spec)
    params = trial_params(cfg, spec, trial)
    log(f"trial {trial} of {spec.method} on {spec.dataset}/{spec.fold}/{spec.backbone}/{spec.fusion}: {params}")
    cache.LOADED_PARTS.clear()
    needs = component_class(cfg, "balancers", spec.balancer).needs
    modalities = run_settings(cfg, spec)["modalities"]
    artifacts = artifact_paths(spec, needs, modalities)
    if "gblend_weights" in needs:  # the estimate belongs to this trial's hyperparameters: computed here, on train only
        artifacts["gblend_weights"] = out_path.with_name(f"trial{trial}.gblend.json")
        estimate_gblend(cfg, spec.dataset, spec.backbone, spec.fusion, spec.seed, artifacts["gblend_weights"], log=log,
                        fold=spec.fold, modality=spec.modality, params=params)
    prepared = prepare_run(cfg, spec, artifacts, params=params)
    metric = selection_metric(prepared.train.multi_label)
    checkpoint, config_hash = out_path.with_name(f"trial{trial}.checkpoint.pt"), settings_hash(prepared.settings)
    result = fit(prepared.model, prepared.balancer, prepared.ctx, prepared.train, prepared.data.prep, prepared.settings["train"],
                 val=prepared.data.val, log=log, checkpoint=checkpoint, settings_hash=config_hash)
    ok = result.failure is None and result.best_epoch is not None
    score = result.history[result.best_epoch][f"val_{metric}"] if ok else None  # the selected epoch's score
    record = {"trial": trial, "params": params, "config_hash": config_hash,
              "status": "failed" if result.failure else "ok", "reason": result.failure,
              "metric": f"validation {metric}", "val_score": score, "best_epoch": result.best_epoch,
              "seed": spec.seed, "loaded_parts": sorted({part for _, part in cache.LOADED_PARTS}), "history": result.history}
    write_json(out_path, record)
    checkpoint.unlink(missing_ok=True)
    return record


def select_best(cfg: dict, spec: RunSpec, out_path: Path, log: Callable[[str], None] = print) -> dict:
    """Read the group's trials and write the best one (highest validation score, earliest on ties) to ``out_path``."""
    from benchmark.run import write_json

    trials = [json.loads(trial_path(spec, k).read_text()) for k in range(cfg["tuning"]["trials"])]
    scored = [t for t in trials if t["status"] == "ok" and t["val_score"] is not None]
    if not scored:
        raise RuntimeError(f"every trial of {group_dir(spec)} failed; see its trial files")
    best = max(scored, key=lambda t: (t["val_score"], -t["trial"]))
    out = {"params": best["params"], "trial": best["trial"], "val_score": best["val_score"], "metric": best["metric"],
           "budget": {"trials": len(trials), "epochs_trained": sum(len(t["history"]) for t in trials)},
           "trials": [{k: t[k] for k in ("trial", "params", "status", "val_score")} for t in trials]}
    write_json(out_path, out)
    log(f"best of {len(trials)} trials: trial {best['trial']} ({best['metric']} {best['val_score']:.4f}): {best['params']}")
    return out
