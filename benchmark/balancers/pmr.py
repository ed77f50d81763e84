"""Prototypical Modal Rebalance (PMR)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce
from benchmark.models.model import ModelOutput
from benchmark.params import Momentum, NonNegative


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """sim = −‖z − c_k‖ for every class prototype c_k: [B, C]."""
    return -torch.cdist(features.float(), prototypes.float())


def pmr_coefficients(scores: torch.Tensor) -> torch.Tensor:
    """Weight of each modality's prototype loss, min(s_best / s_m − 1, 1): for two modalities min(ρ − 1, 1) for the
    weaker one (ρ = s_strong / s_weak) and 0 for the stronger one, as the official code."""
    return torch.clamp(scores.max() / scores - 1, min=0.0, max=1.0)


@BALANCERS.register("pmr")
class PMR(Balancer):
    """PMR (Fan et al. 2023): class prototypes per modality, c_m,k = mean feature of class k in the training data,
    recomputed at the start of every epoch (with ``momentum`` > 0: c ← momentum·c + (1 − momentum)·c_new);
    sim_m = −‖φ_m − c_m‖; scores s_m = Σ_i softmax(sim_m)_i[y_i] (detached), ρ = s_a / s_v. The weaker modality's
    prototype cross-entropy is added, weighted as the official code does:
    L = CE(fused) + α·min(ρ − 1, 1)·CE(sim_weak), ρ ≥ 1 the strong/weak score ratio. ``mu`` > 0 adds the paper's
    prototypical entropy regularisation, −μ·H(softmax(sim_strong)) for the dominant modality (off by default).
    Extension: with M > 2 modalities every modality m gets weight min(s_best/s_m − 1, 1)."""

    paper = "Fan et al. 2023 (PMR)"
    single_label_only = "its prototypes and scores assume one class per sample"

    def __init__(self, *, alpha: NonNegative = 1.0, momentum: Momentum = 0.0, mu: NonNegative = 0.0) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        self.alpha, self.momentum, self.mu = alpha, momentum, mu
        self.prototypes: dict[str, torch.Tensor] = {}

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if num_modalities > 2:
            return [
                "extension: each modality's prototype loss weighted by min(s_best/s_m − 1, 1) (the paper has two "
                "modalities)"
            ]
        return []

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        model = self.model
        was_training = model.training
        model.eval()
        num_classes = model.num_classes
        sums = {
            m: torch.zeros(num_classes, model.encoders[m].out_dim, device=self.ctx.device) for m in model.modalities
        }
        counts = torch.zeros(num_classes, device=self.ctx.device)
        for inputs, y in self.ctx.batches():
            features = model.encode(inputs)
            counts += torch.bincount(y, minlength=num_classes)
            for m, f in features.items():
                sums[m].index_add_(0, y, f.float())
        model.train(was_training)
        for m in model.modalities:
            new = sums[m] / counts.clamp_min(1)[:, None]
            old = self.prototypes.get(m)
            self.prototypes[m] = (
                new if old is None or self.momentum == 0 else self.momentum * old + (1 - self.momentum) * new
            )

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        sims = {m: prototype_logits(out.features[m], self.prototypes[m]) for m in self.model.modalities}
        scores = torch.stack([torch.softmax(s.detach(), 1).gather(1, y[:, None]).sum() for s in sims.values()])
        weights = pmr_coefficients(scores)
        loss = fused_ce(out, y)
        for i, s in enumerate(sims.values()):
            loss = loss + self.alpha * weights[i] * F.cross_entropy(s, y)
        if self.mu:
            strong = int(scores.argmax())
            p = torch.softmax(list(sims.values())[strong], 1)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean()
            loss = loss - self.mu * (weights.max()) * entropy
        self.track(
            proto_weight=dict(zip(self.model.modalities, weights)), proto_score=dict(zip(self.model.modalities, scores))
        )
        return loss
