"""A balancer and a fusion defined outside the package (docs/extending.md; tests run them through the DAG).

Use them with config entries, e.g.
    balancers: {weakest_boost: {class: "examples.my_methods:WeakestBoost", lam: 0.5}}
    fusions:   {max: {class: "examples.my_methods:MaxFusion"}}
and the names in grid.balancers / grid.fusions.
"""

import torch
from torch.nn import functional as F

from benchmark.balancers.base import Balancer, fused_ce, true_class_probability
from benchmark.models.fusions import Fusion


class WeakestBoost(Balancer):
    """Joint cross-entropy plus lam × the cross-entropy of the modality whose logits are currently weakest."""

    paper = "README example, not a published method"

    def __init__(self, *, lam: float = 0.5) -> None:
        super().__init__()
        self.lam = lam

    def loss(self, out, y):
        logits = self.model.modality_logits(out)  # per-modality logits, as the fusion defines them
        scores = torch.stack([true_class_probability(v, y).mean() for v in logits.values()])
        weakest = list(logits.values())[int(scores.argmin())]
        self.track(score=dict(zip(logits, scores)))  # per-epoch means go into metrics.json's history
        return fused_ce(out, y) + self.lam * F.cross_entropy(weakest, y)


class MaxFusion(Fusion):
    """Element-wise max over per-modality projections, then a linear head (per-modality logits: the default
    zero-masking Shapley estimate)."""

    def __init__(self, feature_dims, num_classes, *, hidden: int = 64) -> None:
        super().__init__(feature_dims, num_classes)
        self.project = torch.nn.ModuleDict({m: torch.nn.Linear(d, hidden) for m, d in feature_dims.items()})
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, features):
        return self.head(torch.stack([self.project[m](features[m]) for m in self.modalities]).amax(0))
