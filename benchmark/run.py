"""One training run of the grid: settings -> trained model -> metrics.json (+ model.pt).

Checkpoint selection uses validation accuracy only. The test split is read once, after training, to report
the selected (best-validation) model and the last-epoch model; nothing ever selects on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmark.balancers.base import Balancer, RunContext
from benchmark.config import component_class, settings_hash
from benchmark.data.cache import BatchPreparer, CachedSplit, load_info, load_part, make_loader
from benchmark.diagnostics import (
    correct_string,
    ids_digest,
    linear_probes,
    masked_shapley,
    model_cost,
    ogr,
    train_eval_subset,
)
from benchmark.events import write_events
from benchmark.grid import NO_FUSION, RunSpec
from benchmark.models.model import MultimodalModel, build_model
from benchmark.provenance import execution_host, provenance
from benchmark.settings import DatasetDirs, Resolved, Resolver
from benchmark.train import configure_determinism, fit, predict, resolve_device, selection_metric

METRICS_VERSION = 2
LOG = logging.getLogger(__name__)


def _json_safe(obj):
    """NaN/inf become null, so every metrics file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1, sort_keys=False, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by tensors on CUDA; peak resident memory of the process on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def diagnose(
    model: MultimodalModel,
    data: "RunData",
    test: CachedSplit,
    train_eval: CachedSplit,
    evaluation: dict,
    batch_size: int,
) -> dict:
    """Imbalance diagnostics of the selected (best-validation) model; see ``benchmark.diagnostics``."""
    out: dict = {}
    probe = evaluation["linear_probe"]
    if probe["enabled"]:
        out["linear_probe"] = linear_probes(
            model,
            train_eval,
            {"val": data.val, "test": test},
            data.prep,
            batch_size,
            probe["weight_decay"],
            probe["steps"],
        )
    if evaluation["shapley"]:
        out["shapley"] = {
            split: masked_shapley(model, part, data.prep, batch_size)
            for split, part in (("val", data.val), ("test", test))
        }
    return out


@dataclass
class RunData:
    info: dict
    train: CachedSplit
    val: CachedSplit
    prep: BatchPreparer
    processed: Path
    fold: str
    splits: Path

    @classmethod
    def load(cls, spec: RunSpec, settings: dict, device: torch.device, dirs: DatasetDirs) -> "RunData":
        info = load_info(dirs.processed, settings["dataset"])
        modality_info = {m: info["modalities"][m] for m in settings["modalities"]}
        prep = BatchPreparer(
            modality_info,
            settings["dataset"]["preprocess"]["visual"],
            device,
            channels_last=bool(settings["train"].get("channels_last")),
        )
        part = lambda name: load_part(dirs.processed, spec.fold, name, settings["modalities"], dirs.splits)  # noqa: E731
        return cls(info, part("train"), part("val"), prep, dirs.processed, spec.fold, dirs.splits)

    def test(self, modalities: list[str]) -> CachedSplit:
        """Read only after training, to report the selected checkpoints."""
        return load_part(self.processed, self.fold, "test", modalities, self.splits)


def build_run_model(cfg: dict, settings: dict, info: dict, balancer_cls: type[Balancer]) -> MultimodalModel:
    fusion = "concat" if settings["fusion"]["name"] == NO_FUSION else settings["fusion"]["name"]
    return build_model(
        modality_info={m: info["modalities"][m] for m in settings["modalities"]},
        num_classes=len(info["classes"]),
        backbone_cls=component_class(cfg, "backbones", settings["backbone"]["name"]),
        backbone_params=settings["backbone"]["params"],
        fusion_cls=component_class(cfg, "fusions", fusion),
        fusion_params=settings["fusion"]["params"],
        unimodal_heads=balancer_cls.unimodal_heads,
        seed=settings["seed"],
        encoders={
            m: (component_class(cfg, "backbones", e["name"]), e["params"])
            for m, e in settings["backbone"].get("encoders", {}).items()
        },
    )


@dataclass
class PreparedRun:
    """Everything a run trains with, before training: shared by ``execute_run`` and the performance benchmark."""

    settings: dict
    device: torch.device
    balancer_cls: type[Balancer]
    balancer: Balancer
    model: MultimodalModel
    data: RunData
    ctx: RunContext
    train: CachedSplit  # the part of the training split the method trains on
    resolved: Resolved


def restore_missing_weights(
    cfg: dict, resolved: Resolved, artifacts: dict[str, Path], resolver: Resolver, log: Callable[[str], None]
) -> None:
    """Weights are not committed with results (README, "Weights are not committed"), so a method that reads another
    run's ``model.pt`` (``pretrain``, ``umt``) would find it missing after a fresh clone although that run's
    ``metrics.json`` is current. Such a run is trained again into a scratch folder (same settings and seed: the same
    numbers on CPU) and its weights are put in place only if its recorded metrics are reproduced; otherwise the run
    stops with what differs and how to retrain the prerequisite."""
    used = {Path(f) for f in artifacts.values()}
    for need in resolved.prerequisites:
        if need.file not in used or need.file.exists() or need.file.name != "model.pt" or not need.tracked.exists():
            continue
        log(f"{need.file} is missing (weights are not committed with results): training {need.step.spec} again")
        scratch = need.file.parent / f".restore-{os.getpid()}"
        try:
            train_run(cfg, need.step.spec, scratch, log=lambda _: None, resolver=resolver)
            again, recorded = (json.loads(f.read_text()) for f in (scratch / "metrics.json", need.tracked))
            same = lambda key: json.dumps(again[key], sort_keys=True) == json.dumps(recorded[key], sort_keys=True)  # noqa: E731
            if not (same("identity") and same("metrics")):
                raise RuntimeError(
                    f"{need.tracked.parent}: training it again did not reproduce its recorded metrics (another "
                    f"machine or library version?), so its weights cannot be restored; delete {need.tracked.parent} "
                    "so that the DAG trains it again"
                )
            (scratch / "model.pt").replace(need.file)  # atomic: a concurrent job restoring it writes the same file
            log(f"restored {need.file}: the recorded metrics were reproduced")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def prepare_run(
    cfg: dict,
    spec: RunSpec,
    artifacts: dict[str, Path] | None = None,
    settings: dict | None = None,
    resolver: Resolver | None = None,
    resolved: Resolved | None = None,
    log: Callable[[str], None] = LOG.info,
) -> PreparedRun:
    """Resolve the run (its settings: the tuned ones when tuning is on; a tuning trial passes its own ``settings``
    and ``resolved`` step) and device, load its data, build its method and (configured) model; restore the weights
    of prerequisite runs whose results came without them (``restore_missing_weights``)."""
    resolver = resolver or Resolver(cfg)
    resolved = resolved or resolver.run(spec)
    if settings is None:
        settings = resolver.training_settings(resolved)
    configure_determinism(settings["train"]["deterministic"], settings["train"].get("cudnn_benchmark", False))
    device = resolve_device(settings["train"]["device"])
    balancer_cls = component_class(cfg, "balancers", spec.balancer)
    data = RunData.load(spec, settings, device, resolver.dataset_dirs(spec.dataset))
    balancer = balancer_cls(**settings["balancer"]["params"])
    model = balancer.configure_model(build_run_model(cfg, settings, data.info, balancer_cls))
    if artifacts is None:
        artifacts = resolved.artifacts()
    restore_missing_weights(cfg, resolved, artifacts, resolver, log)
    ctx = RunContext(
        modalities=list(settings["modalities"]),
        num_epochs=settings["train"]["epochs"],
        device=device,
        seed=spec.seed,
        artifacts=artifacts,
        loader_workers=cfg["resources"]["train"]["loader_workers"],
    )
    return PreparedRun(
        settings,
        device,
        balancer_cls,
        balancer,
        model,
        data,
        ctx,
        balancer.training_split(data.train, spec.seed),
        resolved,
    )


def execute_run(
    cfg: dict,
    spec: RunSpec,
    log: Callable[[str], None] = LOG.info,
    artifacts: dict[str, Path] | None = None,
    checkpoint: Path | None = None,
    resolver: Resolver | None = None,
) -> tuple[dict, dict | None]:
    """Train and evaluate one run in memory: (the metrics record, the best-validation state dict).

    ``artifacts`` overrides where the method's DAG inputs are read from (default: their grid paths). With
    ``checkpoint``, training saves its state there after every epoch and resumes from it (see ``fit``). A run whose
    loss diverges returns a record with status 'failed' and the reason (and no evaluation).
    """
    started = time.perf_counter()
    prepared = prepare_run(cfg, spec, artifacts, resolver=resolver, log=log)
    settings, device, balancer_cls, balancer, model, data, ctx, train = (
        prepared.settings,
        prepared.device,
        prepared.balancer_cls,
        prepared.balancer,
        prepared.model,
        prepared.data,
        prepared.ctx,
        prepared.train,
    )
    fusion_cls = None if spec.fusion == NO_FUSION else component_class(cfg, "fusions", spec.fusion)
    notes = list(balancer_cls.notes(fusion_cls, len(settings["modalities"])))
    notes += [
        f"parameters from preset '{p['preset']}' of {spec.balancer} ({p['source']}; {p['at']})"
        for p in settings["balancer"].get("presets", [])
    ]
    notes += [
        f"modality '{m}' is encoded by '{e['name']}' (backbone '{spec.backbone}' does not take its "
        f"{prepared.data.info['modalities'][m].get('kind', 'input')} input)"
        for m, e in settings["backbone"].get("encoders", {}).items()
    ]
    log(
        f"run {spec.method} on {spec.dataset}/{spec.backbone}/{spec.fusion} seed {spec.seed}, device {device}, "
        f"identity {prepared.resolved.identity}"
    )
    evaluation = settings["evaluation"]
    train_eval = train_eval_subset(train, evaluation["train_eval_max"], spec.seed)
    bins = evaluation["ece_bins"]
    audit = data.test(settings["modalities"]) if evaluation["test_selection_audit"] else None
    result = fit(
        model,
        balancer,
        ctx,
        train,
        data.prep,
        settings["train"],
        val=data.val,
        log=log,
        train_eval=train_eval,
        ece_bins=bins,
        checkpoint=checkpoint,
        settings_hash=settings_hash(settings),
        audit=audit,
    )
    notes += getattr(balancer, "run_notes", [])
    notes += model.fusion.choices() if hasattr(model.fusion, "choices") else []
    record = {
        "version": METRICS_VERSION,
        "status": "ok",
        "run": {
            "dataset": spec.dataset,
            "backbone": spec.backbone,
            "fusion": spec.fusion,
            "balancer": spec.balancer,
            "method": spec.method,
            "seed": spec.seed,
            "modalities": settings["modalities"],
            "num_classes": len(data.info["classes"]),
            "multi_label": bool(data.info.get("multi_label", False)),
        },
        "method_paper": balancer_cls.paper,
        "notes": notes,
        "config_hash": settings_hash(settings),
        "identity": prepared.resolved.record(),
    }
    tail = {"settings": settings, "provenance": provenance(device)}

    def execution() -> dict:
        """Everything that differs between two executions of the same run (excluded from determinism checks)."""
        return {
            "seconds_per_epoch": result.seconds_per_epoch,
            "total_seconds": time.perf_counter() - started,
            "peak_memory_bytes": peak_memory_bytes(device),
            "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process RSS",
            "resumed_after_epoch": result.resumed_after,
            **execution_host(),
        }

    if result.failure is not None:
        log(f"failed: {result.failure}")
        return {
            **record,
            "status": "failed",
            "reason": result.failure,
            "history": result.history,
            **tail,
            "timing": execution(),
        }, None

    test = data.test(settings["modalities"])
    bs = settings["train"]["eval_batch_size"]
    last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    reported, test_predictions = {}, {}
    for name, state in (("last", last_state), ("best", result.best_state)):  # best last: diagnostics use it
        model.load_state_dict(state)
        test_predictions[name] = predict(model, test, data.prep, bs)
        reported[name] = {
            "val": predict(model, data.val, data.prep, bs).metrics(bins),
            "test": test_predictions[name].metrics(bins),
        }
    reported = {"best": reported["best"], "last": reported["last"]}
    diagnostics = diagnose(model, data, test, train_eval, evaluation, bs)
    best_row = result.history[result.best_epoch]
    diagnostics["ogr"] = {
        "rule": "G-Blend eq. 3 between the initial model and the selected checkpoint; per epoch in the history",
        "from_initial_to_best": ogr(
            (result.initial["train_eval_loss"], best_row["train_eval_loss"]),
            (result.initial["val_loss"], best_row["val_loss"]),
        ),
        "initial": result.initial,
        "train_eval_samples": len(train_eval),
    }
    diagnostics["test_correct"] = {
        "ids": ids_digest(test.ids()),
        **{name: correct_string(p.logits, p.labels) for name, p in test_predictions.items()},
    }
    if result.audit:
        top = max(range(len(result.audit)), key=lambda e: (result.audit[e], -e))  # earliest best, as selection
        diagnostics["audit"] = {
            "rule": "test accuracy after every epoch and the epoch test-set selection would keep (the protocol of "
            "peer toolkits and the OGM-GE code); optimistic, reported only, never used for selection or ranking",
            "test_accuracy_per_epoch": result.audit,
            "test_selected": {"epoch": top, "accuracy": result.audit[top]},
        }
    sample, _ = data.prep(next(iter(make_loader(test, 1, shuffle=False))))
    cost = model_cost(model, sample)
    metrics = {
        **record,
        "selection": {
            "criterion": f"validation {selection_metric(train.multi_label)} (earliest best epoch)",
            "best_epoch": result.best_epoch,
            "epochs": settings["train"]["epochs"],
            "epochs_trained": len(result.history),
            "trained_on": len(train),
        },
        "metrics": reported,
        "diagnostics": diagnostics,
        "cost": cost,
        "history": result.history,
        **tail,
        "timing": execution(),
    }
    b = reported["best"]
    log(
        f"done: epoch {result.best_epoch + 1}/{settings['train']['epochs']} selected on validation: val acc "
        f"{100 * b['val']['accuracy']:.1f}%, test acc {100 * b['test']['accuracy']:.1f}% "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return metrics, result.best_state


def train_run(
    cfg: dict,
    spec: RunSpec,
    out_dir: Path | None = None,
    log: Callable[[str], None] = LOG.info,
    resolver: Resolver | None = None,
) -> dict:
    """One run of the grid: train (resuming from ``out_dir/checkpoint.pt`` if a previous attempt left one), evaluate,
    write ``model.pt`` (best-validation weights; none for a failed run) and ``metrics.json``, drop the checkpoint.
    ``out_dir`` defaults to the run's folder (named by its identity)."""
    resolver = resolver or Resolver(cfg)
    out_dir = Path(out_dir or resolver.run(spec).path)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    metrics, best_state = execute_run(cfg, spec, log, checkpoint=checkpoint, resolver=resolver)
    model = {
        "state_dict": best_state,
        "config_hash": metrics["config_hash"],
        "identity": metrics["identity"]["identity"],
        "status": metrics["status"],
    }
    if metrics["status"] == "ok":
        model["epoch"] = metrics["selection"]["best_epoch"]
    else:
        model["reason"] = metrics["reason"]
    torch.save(model, out_dir / "model.pt.tmp")
    (out_dir / "model.pt.tmp").replace(out_dir / "model.pt")
    write_json(out_dir / "metrics.json", metrics)
    checkpoint.unlink(missing_ok=True)
    # TensorBoard's view of the whole history, written once from the record (a resumed run gets every epoch)
    write_events(out_dir, metrics["history"], metrics["timing"]["seconds_per_epoch"])
    log(f"wrote {out_dir / 'metrics.json'} (status {metrics['status']})")
    return metrics
