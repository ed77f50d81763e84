"""G-Blend weight estimation (Wang et al. 2020, Alg. 1, GB_Estimate at N = 0 for the offline Alg. 2).

From the initial model φ^0 of the G-Blend run (same seed, same architecture: checked by fingerprint), each
head's network — every modality's encoder with its unimodal head, and the naive multimodal network — is
trained for n epochs on T with the ordinary training loop. Then, per head,
    G = L^V(0) − L^V(n),   O = (L^V(n) − L^T'(n)) − (L^V(0) − L^T'(0)),   w = G / O² normalised to sum 1,
with accuracy in place of loss when ``metric: accuracy`` (the paper allows both; both are measured and recorded).

The held-out set V (``holdout``):
- ``train`` (the paper): carved from the *training* split (stratified, seeded, ``holdout_fraction``, raised until V
  has at least ``min_holdout`` clips; an error when that would leave fewer clips to train than to hold out); T is
  the rest of the training split, T' a random subset of T of |V| clips. With ``holdout_draws`` > 1 this is repeated
  with differently seeded splits (draw 0 uses the run's seed); the head networks are re-trained from φ^0 on every
  draw's T (V of one draw lies in another draw's T, so one training cannot serve two draws), and G and O are
  averaged over the draws before w is formed.
- ``val`` (an extension; named in the notes): V is the validation split, T the whole training split and T' a
  seeded random subset of it of |V| clips; draws then differ in T' and in the head networks' training seed.
The test split is never read.

Bootstrap intervals (``bootstrap`` resamples of every draw's V and T' videos, seeded by the run's seed, percentile
95%) of G, O and w per head, and the O guard (``o_floor``), are ``benchmark.balancers.gblend.blend_estimate``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from benchmark.balancers.gblend import (
    carve_holdout,
    draw_seed,
    gb_estimate,
    init_fingerprint,
    train_subset,
    weights_summary,
)
from benchmark.config import component_class, settings_hash
from benchmark.grid import DEFAULT_FOLD, RunSpec
from benchmark.run import RunData, build_run_model, write_json
from benchmark.settings import Resolved, Resolver, Step
from benchmark.train import configure_determinism, resolve_device

TRAIN_SUBSET = "T'"
LOG = logging.getLogger(__name__)


def estimate_gblend(
    cfg: dict,
    dataset: str,
    backbone: str,
    fusion: str,
    seed: int,
    out_path: Path | None = None,
    log: Callable[[str], None] = LOG.info,
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
    configure_determinism(settings["train"]["deterministic"], settings["train"].get("cudnn_benchmark", False))
    device = resolve_device(settings["train"]["device"])

    data = RunData.load(spec, settings, device, resolver.dataset_dirs(dataset))
    holdout = params.get("holdout", "train")
    min_holdout = params.get("min_holdout", 1)
    seeds = [draw_seed(seed, k) for k in range(params.get("holdout_draws", 1))]
    draws = []
    for s in seeds:
        if holdout == "val":
            if len(data.val) < min_holdout:
                raise ValueError(
                    f"G-Blend: the validation split has {len(data.val)} clips, fewer than min_holdout "
                    f"({min_holdout}); lower min_holdout or use holdout: train"
                )
            parts = {
                "V": data.val,
                "T": data.train,
                "T'": data.train.subset(train_subset(len(data.train), len(data.val), s)),
            }
        else:
            V_idx, T_idx, Tp_idx = carve_holdout(
                data.train.targets(), params["holdout_fraction"], s, data.train.ids(), min_size=min_holdout
            )
            parts = {"V": data.train.subset(V_idx), "T": data.train.subset(T_idx), "T'": data.train.subset(Tp_idx)}
        draws.append({**parts, "seed": s})
    first = draws[0]
    log(
        f"[estimate] held-out V ({'the validation split' if holdout == 'val' else 'of the training split'}): "
        f"{len(first['V'])} clips; T: {len(first['T'])}; T' (train subset): {len(first[TRAIN_SUBSET])}; "
        f"{len(draws)} draw(s); {epochs} epochs per head and draw"
    )

    model0 = build_run_model(cfg, settings, data.info, component_class(cfg, "balancers", "gblend"))
    init = init_fingerprint(model0)  # the G-Blend run checks it starts from this very model
    est = gb_estimate(
        model0.to(device),
        draws,
        data.prep,
        settings["train"],
        epochs,
        device,
        seed,
        params["metric"],
        log,
        resamples=params.get("bootstrap", 1000),
        o_floor=params.get("o_floor", "std"),
        normalise=params.get("normalise", "sum"),
    )
    if holdout == "val":
        est["notes"].append(
            "extension: the held-out set V is the validation split (holdout: val), not a part of the training split "
            "as in the paper (§2.4); the same split selects the checkpoint"
        )
    log(f"[estimate] weights {weights_summary(est)}" + (f" ({'; '.join(est['notes'])})" if est["notes"] else ""))
    n_train = len(data.train)
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
        "holdout": holdout,
        "holdout_fraction": params["holdout_fraction"],
        "min_holdout": min_holdout,
        "holdout_draws": len(draws),
        "heads_retrained_per_draw": True,
        **est,
        "init_fingerprint": init,
        "config_hash": settings_hash(settings),
        "identity": resolved.record(),
        # draw 0's sets (the paper's single split); every draw's below
        "holdout_clip_ids": first["V"].ids(),
        "train_subset_clip_ids": first[TRAIN_SUBSET].ids(),
        "draws": [
            {
                "seed": d["seed"],
                "holdout_clips": len(d["V"]),
                "train_clips": len(d["T"]),
                "holdout_share_of_train_split": None if holdout == "val" else len(d["V"]) / n_train,
                "holdout_clip_ids": d["V"].ids(),
                "train_subset_clip_ids": d["T'"].ids(),
            }
            for d in draws
        ],
    }
    write_json(out_path, result)
    log(f"[estimate] wrote {out_path}")
    return result
