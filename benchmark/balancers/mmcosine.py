"""MMCosine: cosine-normalised per-modality logits."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS
from benchmark.balancers.joint import Joint
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import MultimodalModel
from benchmark.params import Positive


class CosineHead(Fusion):
    """Wraps a linear late fusion: out_m = s·cos(φ_m, W_m) row by row (features and each class's weight row
    L2-normalised, no bias), out = Σ_m out_m. The wrapped fusion keeps its parameters (its bias goes unused)."""

    modality_logits_rule = (
        "s·cos(φ_m, W_m): the modality's normalised features against its normalised classifier rows (MMCosine)"
    )
    modality_logits_exact = True

    def __init__(self, inner: Fusion, scale: float) -> None:
        super().__init__(inner.feature_dims, inner.num_classes)
        self.inner, self.scale = inner, scale
        self.name = f"{inner.name}+cosine"

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            m: self.scale * F.normalize(features[m], dim=1) @ F.normalize(self.inner.modality_linear(m), dim=1).T
            for m in self.modalities
        }

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(self.modality_logits(features).values())).sum(0)

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return self.inner.modality_head_params(modality)

    def modality_linear(self, modality: str) -> torch.Tensor:
        return self.inner.modality_linear(modality)


@BALANCERS.register("mmcosine")
class MMCosine(Joint):
    """MMCosine (Xu et al. 2023): per-modality logits s·cos(φ_m, W_m) with L2-normalised features and classifier
    weights and no bias, summed; cross-entropy on the sum. Training and evaluation both use the cosine head."""

    paper = "Xu et al. 2023 (MMCosine), multi-modal cosine loss"
    single_label_only = "its loss is a softmax cross-entropy over cosine logits"

    def __init__(self, *, scale: Positive = 10.0) -> None:
        super().__init__()
        self.scale = scale

    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        if not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                f"MMCosine normalises each modality's own linear classifier; fusion '{fusion_cls.name}' mixes the "
                "modalities before its classifier, so there is none to normalise"
            )
        return None

    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        model.fusion = CosineHead(model.fusion, self.scale)
        return model
