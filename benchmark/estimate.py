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

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.balancers.base import RunContext
from benchmark.balancers.gblend import FUSED_HEAD, blend_weights, generalization_overfitting
from benchmark.balancers.joint import Joint
from benchmark.config import component_class, settings_hash
from benchmark.data.cache import BatchPreparer, CachedSplit
from benchmark.grid import RunSpec, run_settings
from benchmark.models.fusions import ConcatFusion
from benchmark.models.model import MultimodalModel, fingerprint
from benchmark.run import RunData, build_run_model, write_json
from benchmark.train import configure_determinism, fit, predict, resolve_device


def carve_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(V, T, T'): a stratified held-out part V of the training split, the rest T, and T' ⊂ T with |T'| = |V|."""
    rng = np.random.default_rng(seed)
    held, rest = [], []
    for c in torch.unique(labels).tolist():
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        k = max(1, int(round(fraction * len(idx))))
        held += idx[:k].tolist()
        rest += idx[k:].tolist()
    held, rest = sorted(held), sorted(rest)
    subset = sorted(rng.choice(rest, size=min(len(held), len(rest)), replace=False).tolist())
    return held, rest, subset


def head_network(model0: MultimodalModel, head: str) -> MultimodalModel:
    """The uni-modal (or naive multimodal) network of one head, initialised from φ^0's parameters."""
    if head == FUSED_HEAD:
        return MultimodalModel(copy.deepcopy(dict(model0.encoders)), copy.deepcopy(model0.fusion), model0.num_classes)
    encoder = copy.deepcopy(model0.encoders[head])
    fusion = ConcatFusion({head: encoder.out_dim}, model0.num_classes)
    fusion.head.load_state_dict(model0.unimodal_heads[head].state_dict())
    return MultimodalModel({head: encoder}, fusion, model0.num_classes)


def _measure(net: MultimodalModel, data: CachedSplit, prep: BatchPreparer, batch_size: int, metric: str) -> float:
    m = predict(net, data, prep, batch_size).metrics()
    return m["loss"] if metric == "loss" else m["accuracy"]


def estimate_gblend(cfg: dict, dataset: str, backbone: str, fusion: str, seed: int, out_path: Path,
                    log: Callable[[str], None] = print) -> dict:
    spec = RunSpec(dataset, backbone, fusion, "gblend", seed)
    settings = run_settings(cfg, spec)
    params = settings["balancer"]["params"]
    train_settings = dict(settings["train"])
    train_settings["epochs"] = params["estimate_epochs"] or settings["train"]["epochs"]
    metric = params["metric"]
    configure_determinism(train_settings["deterministic"])
    device = resolve_device(train_settings["device"])

    data = RunData.load(spec, settings, device)
    V_idx, T_idx, Tp_idx = carve_holdout(data.train.targets(), params["holdout_fraction"], seed)
    V, T, Tp = data.train.subset(V_idx), data.train.subset(T_idx), data.train.subset(Tp_idx)
    log(f"[estimate] held-out V: {len(V)} clips of the training split, T: {len(T)}, T': {len(Tp)}; {train_settings['epochs']} epochs per head")

    model0 = build_run_model(cfg, settings, data.info, component_class(cfg, "balancers", "gblend"))
    heads = list(model0.modalities) + [FUSED_HEAD]
    per_head, G, O = {}, {}, {}
    for head in heads:
        net = head_network(model0, head).to(device)
        bs = train_settings["eval_batch_size"]
        before = {"V": _measure(net, V, data.prep, bs, metric), "T'": _measure(net, Tp, data.prep, bs, metric)}
        ctx = RunContext(modalities=list(net.modalities), num_epochs=train_settings["epochs"], device=device, seed=seed)
        fit(net, Joint(), ctx, T, data.prep, train_settings, log=lambda s, h=head: log(f"[estimate:{h}] {s}"))
        after = {"V": _measure(net, V, data.prep, bs, metric), "T'": _measure(net, Tp, data.prep, bs, metric)}
        G[head], O[head] = generalization_overfitting(before, after, metric)
        per_head[head] = {"before": before, "after": after, "G": G[head], "O": O[head]}
        log(f"[estimate:{head}] {metric} before {before} after {after} -> G={G[head]:.4g} O={O[head]:.4g}")
    weights, notes = blend_weights(G, O)
    if weights[FUSED_HEAD] == 0:
        notes.append("the fused head got weight 0 (no generalisation measured on V), so it is not trained and "
                     "the model's fused predictions stay at their initial, near-chance level")
    log(f"[estimate] weights {weights}" + (f" ({'; '.join(notes)})" if notes else ""))
    result = {
        "algorithm": "G-Blend GB_Estimate at N=0 (Wang et al. 2020, Alg. 1), offline (Alg. 2)",
        "dataset": dataset, "backbone": backbone, "fusion": fusion, "seed": seed,
        "metric": metric, "epochs": train_settings["epochs"], "holdout_fraction": params["holdout_fraction"],
        "weights": weights, "heads": per_head, "notes": notes,
        "init_fingerprint": fingerprint(model0),
        "config_hash": settings_hash(settings),
        "holdout_clip_ids": V.ids(), "train_subset_clip_ids": Tp.ids(),
    }
    write_json(out_path, result)
    return result
