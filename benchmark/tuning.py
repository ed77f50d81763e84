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
import logging
from pathlib import Path
from typing import Callable

from benchmark.config import component_class, settings_hash
from benchmark.data import cache
from benchmark.estimate import estimate_gblend
from benchmark.grid import RunSpec
from benchmark.prerequisites import ARTEFACTS
from benchmark.run import prepare_run, write_json
from benchmark.search import trial_params
from benchmark.settings import Resolved, Resolver, Step
from benchmark.train import fit, selection_metric

LOG = logging.getLogger(__name__)


def _estimate_in_trial(cfg: dict, trial: Resolved, settings: dict, out_path: Path, resolver: Resolver, log) -> None:
    s = trial.spec
    estimate_gblend(
        cfg,
        s.dataset,
        s.backbone,
        s.fusion,
        s.seed,
        out_path,
        log=log,
        fold=s.fold,
        modality=s.modality,
        settings=settings,
        resolver=resolver,
        resolved=trial,
    )


#: how a trial makes the artefacts that belong to its own hyperparameters (``Artefact.made_by_trials``), from the
#: training split only
MADE_IN_TRIAL = {"gblend_weights": _estimate_in_trial}


def run_trial(
    cfg: dict,
    spec: RunSpec,
    trial: int,
    out_path: Path | None = None,
    log: Callable[[str], None] = LOG.info,
    resolver: Resolver | None = None,
) -> dict:
    """Train one trial and score it on validation; writes ``out_path`` (default: the trial's file in its tuning
    folder) with the params, score, history and the parts of the dataset it loaded."""
    resolver = resolver or Resolver(cfg)
    spec = resolver.group_spec(spec)
    resolved = resolver.resolve(Step("tune_trial", spec, trial))
    out_path = Path(out_path or resolved.path)
    params = trial_params(cfg, spec, trial)
    settings = resolved.settings
    log(f"trial {trial} of {spec.method} on {spec.dataset}/{spec.fold}/{spec.backbone}/{spec.fusion}: {params}")
    cache.LOADED_PARTS.clear()
    artifacts = resolved.artifacts()
    for need in component_class(cfg, "balancers", spec.balancer).needs:
        if ARTEFACTS[need].made_by_trials:
            artifacts[need] = out_path.with_name(f"trial{trial}.{need}.json")
            MADE_IN_TRIAL[need](cfg, resolved, settings, artifacts[need], resolver, log)
    prepared = prepare_run(cfg, spec, artifacts, settings=settings, resolver=resolver, resolved=resolved, log=log)
    metric = selection_metric(prepared.train.multi_label)
    checkpoint, config_hash = out_path.with_name(f"trial{trial}.checkpoint.pt"), settings_hash(prepared.settings)
    result = fit(
        prepared.model,
        prepared.balancer,
        prepared.ctx,
        prepared.train,
        prepared.data.prep,
        prepared.settings["train"],
        val=prepared.data.val,
        log=log,
        checkpoint=checkpoint,
        settings_hash=config_hash,
    )
    ok = result.failure is None and result.best_epoch is not None
    score = result.history[result.best_epoch][f"val_{metric}"] if ok else None  # the selected epoch's score
    record = {
        "trial": trial,
        "params": params,
        "config_hash": config_hash,
        "identity": resolved.record(),
        "status": "failed" if result.failure else "ok",
        "reason": result.failure,
        "metric": f"validation {metric}",
        "val_score": score,
        "best_epoch": result.best_epoch,
        "seed": spec.seed,
        "loaded_parts": sorted({part for _, part in cache.LOADED_PARTS}),
        "history": result.history,
    }
    write_json(out_path, record)
    checkpoint.unlink(missing_ok=True)
    outcome = f"validation {metric} {100 * score:.1f}% at epoch {result.best_epoch + 1}" if ok else "no score"
    outcome = f"failed: {result.failure}" if result.failure else outcome
    log(f"trial {trial}: {outcome}; wrote {out_path}")
    return record


def select_best(
    cfg: dict,
    spec: RunSpec,
    out_path: Path | None = None,
    log: Callable[[str], None] = LOG.info,
    resolver: Resolver | None = None,
) -> dict:
    """Read the group's trials and write the best one (highest validation score, earliest on ties) to ``out_path``
    (default: the group's best.json)."""
    resolver = resolver or Resolver(cfg)
    group = resolver.resolve(Step("tune_best", resolver.group_spec(spec)))
    out_path = Path(out_path or group.path / "best.json")
    trials = [json.loads(p.file.read_text()) for p in group.prerequisites]
    scored = [t for t in trials if t["status"] == "ok" and t["val_score"] is not None]
    if not scored:
        raise RuntimeError(f"every trial of {group.path} failed; see its trial files")
    best = max(scored, key=lambda t: (t["val_score"], -t["trial"]))
    out = {
        "params": best["params"],
        "trial": best["trial"],
        "val_score": best["val_score"],
        "metric": best["metric"],
        "identity": group.record(),
        "budget": {"trials": len(trials), "epochs_trained": sum(len(t["history"]) for t in trials)},
        "trials": [{k: t[k] for k in ("trial", "params", "status", "val_score")} for t in trials],
    }
    write_json(out_path, out)
    log(
        f"best of {len(trials)} trials: trial {best['trial']} ({best['metric']} {best['val_score']:.4f}): "
        f"{best['params']}"
    )
    return out
