"""Gradient-Blending (Wang et al. 2020): the weight estimation (Alg. 1) and the offline (Alg. 2) and online (Alg. 3)
training schemes. Offline weights come from the DAG's ``estimate`` step (benchmark.estimate); online weights are
re-estimated inside the training job at every super-epoch."""

from __future__ import annotations

import copy
import json
from typing import Callable, Literal

import numpy as np
import torch

from benchmark.balancers.base import BALANCERS, Balancer, RunContext, fused_ce, unimodal_ce
from benchmark.metrics import video_of
from benchmark.models.fusions import ConcatFusion
from benchmark.models.model import ModelOutput, MultimodalModel, fingerprint
from benchmark.params import HoldoutFraction, PositiveInt

FUSED_HEAD = "fused"


def generalization_overfitting(
    before: dict[str, float], after: dict[str, float], metric: str = "loss"
) -> tuple[float, float]:
    """G and O of one head between checkpoints N and N+n (G-Blend eq. 3, Alg. 1), from its measure on the
    held-out set ("V") and the train subset ("T'"):  G = L^V(N) − L^V(N+n),
    O = (L^V(N+n) − L^T'(N+n)) − (L^V(N) − L^T'(N)).  With accuracy, the error 1 − acc takes the loss's place."""
    sign = 1.0 if metric == "loss" else -1.0  # error = 1 - accuracy: every difference flips sign
    G = sign * (before["V"] - after["V"])
    O = sign * ((after["V"] - after["T'"]) - (before["V"] - before["T'"]))
    return G, O


def blend_weights(G: dict[str, float], O: dict[str, float], eps: float = 1e-8) -> tuple[dict[str, float], list[str]]:
    """Alg. 1: w_i = (1/Z)·G_i / O_i², Z making the weights sum to 1.

    A head whose generalisation G_i is not positive gets weight 0 (it learned nothing that transfers to the
    held-out set, and a negative weight would train it to unlearn); O_i² is floored at ``eps``. If no head
    generalised at all the weights fall back to equal, and the returned notes say so.
    """
    raw = {h: max(G[h], 0.0) / max(O[h] ** 2, eps) for h in G}
    total = sum(raw.values())
    if total <= 0:
        return {h: 1.0 / len(G) for h in G}, [
            "no head generalised on the held-out set (all G <= 0): equal weights used"
        ]
    return {h: v / total for h, v in raw.items()}, []


def carve_holdout(
    labels: torch.Tensor, fraction: float, seed: int, clip_ids: list[str] | None = None
) -> tuple[list[int], list[int], list[int]]:
    """(V, T, T'): a stratified held-out part V of the training split, the rest T, and T' ⊂ T with |T'| = |V|.

    Strata are the labels (the label set of a multi-label sample). With ``clip_ids``, the clips of one video
    (``<video>#<k>``) move together, so V never shares a video with T."""
    rng = np.random.default_rng(seed)
    videos = [video_of(c) for c in clip_ids] if clip_ids is not None else list(range(len(labels)))
    members: dict = {}
    for i, v in enumerate(videos):
        members.setdefault(v, []).append(i)
    rows = labels.tolist()
    key = {v: tuple(rows[idx[0]]) if labels.dim() == 2 else rows[idx[0]] for v, idx in members.items()}
    units = list(members)
    held, rest = [], []
    for c in sorted(set(key.values())):
        idx = np.array([u for u, unit in enumerate(units) if key[unit] == c])
        rng.shuffle(idx)
        k = max(1, int(round(fraction * len(idx))))
        held += [i for u in idx[:k].tolist() for i in members[units[u]]]
        rest += [i for u in idx[k:].tolist() for i in members[units[u]]]
    held, rest = sorted(held), sorted(rest)
    subset = sorted(rng.choice(rest, size=min(len(held), len(rest)), replace=False).tolist())
    return held, rest, subset


def head_network(model: MultimodalModel, head: str) -> MultimodalModel:
    """The uni-modal (or naive multimodal) network of one head, initialised from the model's current parameters."""
    if head == FUSED_HEAD:
        return MultimodalModel(copy.deepcopy(dict(model.encoders)), copy.deepcopy(model.fusion), model.num_classes)
    encoder = copy.deepcopy(model.encoders[head])
    fusion = ConcatFusion({head: encoder.out_dim}, model.num_classes).to(next(model.parameters()).device)
    fusion.head.load_state_dict(model.unimodal_heads[head].state_dict())
    return MultimodalModel({head: encoder}, fusion, model.num_classes)


def gb_estimate(
    model: MultimodalModel,
    data: dict,
    prep,
    settings: dict,
    epochs: int,
    device: torch.device,
    seed: int,
    metric: str,
    log: Callable[[str], None],
) -> dict:
    """GB_Estimate (Alg. 1) from ``model``'s current parameters over ``epochs`` epochs.

    ``data`` holds the CachedSplit views 'T' (trained on), 'V' (held out) and "T'" (train subset for measuring).
    Every head network is trained with the ordinary training loop (joint cross-entropy on that head).
    Returns the weights, per-head measures and notes.
    """
    from benchmark.balancers.joint import Joint
    from benchmark.train import fit, predict

    head_settings = {**settings, "epochs": epochs}
    bs = settings["eval_batch_size"]

    def measure(net: MultimodalModel) -> dict[str, float]:
        out = {}
        for part in ("V", "T'"):
            m = predict(net, data[part], prep, bs).metrics()
            out[part] = m["loss"] if metric == "loss" else m["accuracy"]
        return out

    per_head, G, O = {}, {}, {}
    for head in list(model.modalities) + [FUSED_HEAD]:
        net = head_network(model, head).to(device)
        before = measure(net)
        ctx = RunContext(modalities=list(net.modalities), num_epochs=epochs, device=device, seed=seed)
        fit(net, Joint(), ctx, data["T"], prep, head_settings, log=lambda s, h=head: log(f"[estimate:{h}] {s}"))
        after = measure(net)
        G[head], O[head] = generalization_overfitting(before, after, metric)
        per_head[head] = {"before": before, "after": after, "G": G[head], "O": O[head]}
        log(f"[estimate:{head}] {metric} before {before} after {after} -> G={G[head]:.4g} O={O[head]:.4g}")
    weights, notes = blend_weights(G, O)
    if weights[FUSED_HEAD] == 0:
        notes.append(
            "the fused head got weight 0 (no generalisation measured on V), so it is not trained and "
            "the model's fused predictions stay at their initial, near-chance level"
        )
    return {"weights": weights, "heads": per_head, "notes": notes}


class WeightedHeads(Balancer):
    """L = Σ_m w_m·CE(unimodal_m) + w_fused·CE(fused) (G-Blend eq. 7); subclasses decide the weights."""

    unimodal_heads = True
    weights: dict[str, torch.Tensor]

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        uni = unimodal_ce(out, y)
        self.track(loss_fused=fused, loss_uni=uni, w=self.weights)
        return self.weights[FUSED_HEAD] * fused + sum(self.weights[m] * loss for m, loss in uni.items())

    def set_weights(self, weights: dict[str, float]) -> None:
        expected = set(self.model.modalities) | {FUSED_HEAD}
        if set(weights) != expected:
            raise ValueError(f"weights for {sorted(weights)}, but the model has heads {sorted(expected)}")
        self.weights = {h: torch.tensor(float(w), device=self.ctx.device) for h, w in weights.items()}


@BALANCERS.register("gblend")
class GBlend(WeightedHeads):
    """G-Blend, offline (Wang et al. 2020, eq. 7, Alg. 1-2): L = Σ_m w_m·CE(unimodal_m) + w_fused·CE(fused)
    with the weights the ``estimate`` step computed from the same initial model on a held-out part of the
    training split (never the validation or test split)."""

    paper = "Wang et al. 2020 (G-Blend), eq. 7 and Alg. 1-2 (offline)"
    needs = ("gblend_weights",)

    def __init__(
        self,
        *,
        holdout_fraction: HoldoutFraction = 0.1,
        estimate_epochs: PositiveInt | None = None,
        metric: Literal["loss", "accuracy"] = "loss",
    ) -> None:
        super().__init__()
        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}")
        # used by the estimate step; recorded here so they are part of the run's settings
        self.holdout_fraction, self.estimate_epochs, self.metric = holdout_fraction, estimate_epochs, metric

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        path = ctx.artifacts["gblend_weights"]
        estimate = json.loads(path.read_text())
        # setup runs before the first step, so the model is still the initial one (φ^0)
        if estimate["init_fingerprint"] != fingerprint(model):
            raise ValueError(
                f"{path} was estimated from a different initial model (seed or architecture changed); re-run the "
                "estimate step"
            )
        self.set_weights(estimate["weights"])
        self.run_notes = [f"G-Blend estimate: {note}" for note in estimate.get("notes", [])]


@BALANCERS.register("gblend_online")
class GBlendOnline(WeightedHeads):
    """G-Blend, online (Wang et al. 2020, Alg. 3): the weights are re-estimated from the current model at the start
    of every super-epoch — the first lasting ``first_super_epoch`` epochs (the paper: 10), the later ones
    ``super_epoch`` (the paper: 5) — by GB_Estimate over that super-epoch's length, then used for it. The
    held-out set V (``holdout_fraction`` of the training split, stratified, seeded by the run's seed) is left out
    of training altogether, so that every estimate measures on data the model has never seen."""

    paper = "Wang et al. 2020 (G-Blend), eq. 7 and Alg. 1, 3 (online)"

    def __init__(
        self,
        *,
        first_super_epoch: PositiveInt = 10,
        super_epoch: PositiveInt = 5,
        holdout_fraction: HoldoutFraction = 0.1,
        metric: Literal["loss", "accuracy"] = "loss",
    ) -> None:
        super().__init__()
        if first_super_epoch < 1 or super_epoch < 1:
            raise ValueError("super-epochs must last at least one epoch")
        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}")
        self.first_super_epoch, self.super_epoch = first_super_epoch, super_epoch
        self.holdout_fraction, self.metric = holdout_fraction, metric
        self.estimates: list[dict] = []

    def super_epoch_starts(self, num_epochs: int) -> list[int]:
        starts, epoch = [], 0
        while epoch < num_epochs:
            starts.append(epoch)
            epoch += self.first_super_epoch if epoch == 0 else self.super_epoch
        return starts

    def training_split(self, train, seed: int = 0):
        held, rest, subset = carve_holdout(train.targets(), self.holdout_fraction, seed, train.ids())
        self.held_out = {"V": train.subset(held), "T'": train.subset(subset)}
        return train.subset(rest)

    def on_epoch_start(self, epoch: int) -> None:
        starts = self.super_epoch_starts(self.ctx.num_epochs)
        if epoch not in starts:
            return
        i = starts.index(epoch)
        length = (starts[i + 1] if i + 1 < len(starts) else self.ctx.num_epochs) - epoch
        data = {"T": self.ctx.train, **self.held_out}
        est = gb_estimate(
            self.model,
            data,
            self.ctx.prep,
            self.ctx.settings,
            length,
            self.ctx.device,
            self.ctx.seed + epoch,
            self.metric,
            self.ctx.log,
        )
        self.set_weights(est["weights"])
        self.estimates.append({"epoch": epoch, "epochs": length, **est})
        self.run_notes = [f"G-Blend estimate at epoch {e['epoch']}: {n}" for e in self.estimates for n in e["notes"]]
        self.ctx.log(f"[gblend_online] super-epoch from epoch {epoch} ({length} epochs): weights {est['weights']}")
