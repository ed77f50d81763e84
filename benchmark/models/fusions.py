"""Fusion modules: per-modality features -> class logits (the fusion layers and the classifier head).

Besides the fused logits, a fusion states how per-modality logits are obtained, because OGM, AGM, PMR and
MLB measure each modality's share through them, and which head parameters act on one modality only
(MLB scales that slice). For the linear fusions here both follow exactly from the head, as in the papers.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from benchmark.registry import Registry

#: a head parameter, and the index of the part of it that belongs to one modality (None: all of it)
ParamSlice = tuple[nn.Parameter, "tuple[slice, ...] | None"]


class Fusion(nn.Module):
    name: ClassVar[str]
    #: one line on how ``modality_logits`` is defined; None when the fusion has no per-modality logits
    modality_logits_rule: ClassVar[str | None] = None

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = list(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.num_classes = num_classes

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"fusion '{self.name}' defines no per-modality logits")

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        """Head parameters (or slices) that act on ``modality`` alone."""
        return []


FUSIONS: Registry[Fusion] = Registry("fusion", base=Fusion)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Late fusion: one linear head on the concatenated features, f = W[φ_1; …; φ_M] + b (OGM-GE eq. 1)."""

    modality_logits_rule = "W_m·φ_m + b/M: the modality's block of the head plus an equal share of the bias (OGM-GE eq. 8)"

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.head = nn.Linear(sum(feature_dims.values()), num_classes)
        self.slices: dict[str, slice] = {}
        start = 0
        for m, d in feature_dims.items():
            self.slices[m] = slice(start, start + d)
            start += d

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        share = self.head.bias / len(self.modalities)
        return {m: features[m] @ self.head.weight[:, self.slices[m]].T + share for m in self.modalities}

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return [(self.head.weight, (slice(None), self.slices[modality]))]


@FUSIONS.register("sum")
class SumFusion(Fusion):
    """One linear head per modality, logits summed: f = Σ_m (W_m φ_m + b_m)."""

    modality_logits_rule = "W_m·φ_m + b_m: the modality's own head with its full bias (official OGM-GE code since 2023)"

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.heads[m](features[m]) for m in self.modalities]).sum(0)

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](features[m]) for m in self.modalities}

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return [(p, None) for p in self.heads[modality].parameters()]
