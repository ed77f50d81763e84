"""Gradient-Blending (Wang et al. 2020), offline version (Alg. 2): weights estimated once, before training,
by the DAG's ``estimate`` step (Alg. 1, see benchmark.estimate), then fixed for the whole run (eq. 7)."""
from __future__ import annotations

import json

import torch

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce, unimodal_ce
from benchmark.models.model import ModelOutput, fingerprint

FUSED_HEAD = "fused"


def generalization_overfitting(before: dict[str, float], after: dict[str, float], metric: str = "loss") -> tuple[float, float]:
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
        return {h: 1.0 / len(G) for h in G}, ["no head generalised on the held-out set (all G <= 0): equal weights used"]
    return {h: v / total for h, v in raw.items()}, []


@BALANCERS.register("gblend")
class GBlend(Balancer):
    """G-Blend, offline (Wang et al. 2020, eq. 7, Alg. 1-2): L = Σ_m w_m·CE(unimodal_m) + w_fused·CE(fused)
    with the weights the ``estimate`` step computed from the same initial model on a held-out part of the
    training split (never the validation or test split)."""

    paper = "Wang et al. 2020 (G-Blend), eq. 7 and Alg. 1-2 (offline)"
    unimodal_heads = True
    needs = ("gblend_weights",)

    def __init__(self, *, holdout_fraction: float = 0.1, estimate_epochs: int | None = None, metric: str = "loss") -> None:
        super().__init__()
        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}")
        # used by the estimate step; recorded here so they are part of the run's settings
        self.holdout_fraction, self.estimate_epochs, self.metric = holdout_fraction, estimate_epochs, metric

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        path = ctx.artifacts["gblend_weights"]
        estimate = json.loads(path.read_text())
        expected = set(model.modalities) | {FUSED_HEAD}
        if set(estimate["weights"]) != expected:
            raise ValueError(f"{path}: weights for {sorted(estimate['weights'])}, but the model has heads {sorted(expected)}")
        # setup runs before the first step, so the model is still the initial one (φ^0)
        if estimate["init_fingerprint"] != fingerprint(model):
            raise ValueError(f"{path} was estimated from a different initial model (seed or architecture changed); re-run the estimate step")
        self.weights = {h: torch.tensor(float(w), device=ctx.device) for h, w in estimate["weights"].items()}
        self.run_notes = [f"G-Blend estimate: {note}" for note in estimate.get("notes", [])]

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        uni = unimodal_ce(out, y)
        self.track(loss_fused=fused, loss_uni=uni, w=self.weights)
        return self.weights[FUSED_HEAD] * fused + sum(self.weights[m] * loss for m, loss in uni.items())
