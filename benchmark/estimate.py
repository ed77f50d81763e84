"""G-Blend weight estimation (Wang et al. 2020, Alg. 1, GB_Estimate at N = 0 for the offline Alg. 2).

From the initial model φ^0 of the G-Blend run (same seed, same architecture: checked by fingerprint), each
head's network — every modality's encoder with its unimodal head, and the naive multimodal network — is
trained for n epochs on T with the ordinary training loop. The held-out set V is carved from the
*training* split (stratified, seeded), never from validation or test; T' is a random subset of T of |V|
clips for the train-side measurement. Then, per head,
    G = L^V(0) − L^V(n),   O = (L^V(n) − L^T'(n)) − (L^V(0) − L^T'(0)),   w = G / O² normalised,
with accuracy in place of loss when ``metric: accuracy`` (the paper allows both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from benchmark.balancers.gblend import carve_holdout, gb_estimate
from benchmark.config import component_class, settings_hash
from benchmark.grid import DEFAULT_FOLD, RunSpec
from benchmark.models.model import fingerprint
from benchmark.run import RunData, build_run_model, write_json
from benchmark.settings import Resolved, Resolver, Step
from benchmark.train import configure_determinism, resolve_device


def estimate_gblend(
    cfg: dict,
    dataset: str,
    backbone: str,
    fusion: str,
    seed: int,
    out_path: Path | None = None,
    log: Callable[[str], None] = print,
    fold: str = DEFAULT_FOLD,
    modality: str | None = None,
    settings: dict | None = None,
    resolver: Resolver | None = None,
    resolved: Resolved | None = None,
) -> dict:
    """Weights for the G-Blend runs of one dataset/fold/backbone/fusion/seed (and modality subset, '+'-joined), with
    the tuned hyperparameters when tuning is on, or a tuning trial's ``settings``. ``out_path`` defaults to the
    estimate's file (named by its identity); a tuning trial passes itself as ``resolved``."""
    resolver = resolver or Resolver(cfg)
    spec = RunSpec(dataset, backbone, fusion, "gblend", seed, modality, fold)
    resolved = resolved or resolver.resolve(Step("estimate", spec))
    if settings is None:
        settings = resolver.training_settings(resolved)
    out_path = Path(out_path or resolved.path)
    params = settings["balancer"]["params"]
    epochs = params["estimate_epochs"] or settings["train"]["epochs"]
    configure_determinism(settings["train"]["deterministic"])
    device = resolve_device(settings["train"]["device"])

    data = RunData.load(spec, settings, device, resolver.dataset_dirs(dataset))
    V_idx, T_idx, Tp_idx = carve_holdout(data.train.targets(), params["holdout_fraction"], seed, data.train.ids())
    parts = {"V": data.train.subset(V_idx), "T": data.train.subset(T_idx), "T'": data.train.subset(Tp_idx)}
    train_subset = parts["T'"]
    log(
        f"[estimate] held-out V: {len(parts['V'])} clips of the training split; T: {len(parts['T'])}; "
        f"T' (train subset): {len(train_subset)}; {epochs} epochs per head"
    )

    model0 = build_run_model(cfg, settings, data.info, component_class(cfg, "balancers", "gblend"))
    init = fingerprint(model0)  # the G-Blend run checks it starts from this very model
    est = gb_estimate(
        model0.to(device), parts, data.prep, settings["train"], epochs, device, seed, params["metric"], log
    )
    log(f"[estimate] weights {est['weights']}" + (f" ({'; '.join(est['notes'])})" if est["notes"] else ""))
    result = {
        "algorithm": "G-Blend GB_Estimate at N=0 (Wang et al. 2020, Alg. 1), offline (Alg. 2)",
        "dataset": dataset,
        "fold": fold,
        "backbone": backbone,
        "fusion": fusion,
        "seed": seed,
        **({"modalities": settings["modalities"]} if modality else {}),
        "metric": params["metric"],
        "epochs": epochs,
        "holdout_fraction": params["holdout_fraction"],
        **est,
        "init_fingerprint": init,
        "config_hash": settings_hash(settings),
        "identity": resolved.record(),
        "holdout_clip_ids": parts["V"].ids(),
        "train_subset_clip_ids": train_subset.ids(),
    }
    write_json(out_path, result)
    return result
