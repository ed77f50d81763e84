"""MMCosine: cosine-normalised per-modality logits."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS
from benchmark.balancers.joint import Joint
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import MultimodalModel
from benchmark.params import Positive


class CosineHead(Fusion):
    """Wraps a linear late fusion: out_m = s·cos(φ_m, W_m) row by row (features and each class's weight row
    L2-normalised, no bias), out = Σ_m out_m. The wrapped fusion keeps its parameters (its bias goes unused in
    training: it gets no loss gradient).

    ``evaluate``: what the forward pass returns in eval mode (``model.eval()``: validation selection, test and every
    diagnostic): ``cosine``, the cosine sum (as in training); ``linear``, the wrapped fusion's own output — the same
    weights unnormalised, with the bias. Training mode always returns the cosine sum, and ``modality_logits`` is
    always the cosine per-modality logits (the released code's unimodal accuracies)."""

    modality_logits_rule = (
        "s·cos(φ_m, W_m): the modality's normalised features against its normalised classifier rows (MMCosine)"
    )
    modality_logits_exact = True

    def __init__(self, inner: Fusion, scale: float, evaluate: Literal["cosine", "linear"] = "cosine") -> None:
        super().__init__(inner.feature_dims, inner.num_classes)
        if evaluate not in ("cosine", "linear"):
            raise ValueError(f"evaluate must be 'cosine' or 'linear', not {evaluate!r}")
        self.inner, self.scale, self.evaluate = inner, scale, evaluate
        self.name = f"{inner.name}+cosine"

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            m: self.scale * F.normalize(features[m], dim=1) @ F.normalize(self.inner.modality_linear(m), dim=1).T
            for m in self.modalities
        }

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.training and self.evaluate == "linear":
            return self.inner(features)
        return torch.stack(list(self.modality_logits(features).values())).sum(0)

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return self.inner.modality_head_params(modality)

    def modality_linear(self, modality: str) -> torch.Tensor:
        return self.inner.modality_linear(modality)


EVALUATE_NOTES = {
    "cosine": (
        "MMCosine evaluate: cosine — validation selection and test use the cosine sum Σ_m s·cos(φ_m, W_m), the "
        "training output; the released CREMA-D code (main_CD.py) reports the plain linear concat head instead "
        "(evaluate: linear)"
    ),
    "linear": (
        "MMCosine evaluate: linear — validation selection and test use the plain linear head of the wrapped fusion "
        "(the cosine-trained weights unnormalised, with its bias, which gets no loss gradient), as the released "
        "CREMA-D code (main_CD.py) reports; training uses the cosine sum, per-modality accuracies the cosine logits"
    ),
}


@BALANCERS.register("mmcosine")
class MMCosine(Joint):
    """MMCosine (Xu et al. 2023): per-modality logits s·cos(φ_m, W_m) with L2-normalised features and classifier
    weights and no bias, summed; cross-entropy on the sum (training always uses the cosine sum).

    ``evaluate`` chooses what the model outputs in eval mode, i.e. what validation selection and the test report
    (recorded in every run's notes): ``cosine`` (default) the cosine sum; ``linear`` the wrapped fusion's plain
    output, W[φ_a; φ_v] + b with the same weights unnormalised — what the released CREMA-D code reports
    (GeWu-Lab/MMCosine_ICASSP23, main_CD.py: ``valid`` takes softmax of the model's own ``out``, the
    ``fc_out`` concat head, and uses the cosine logits only for its per-modality accuracies; its VoxCeleb
    verification, main_vox2.py, compares cosine sums). Per-modality logits are the cosine ones in both cases."""

    display_name: ClassVar[str] = "MMCosine"
    paper = "Xu et al. 2023 (MMCosine), multi-modal cosine loss"
    single_label_only = "its loss is a softmax cross-entropy over cosine logits"

    def __init__(self, *, scale: Positive = 10.0, evaluate: Literal["cosine", "linear"] = "cosine") -> None:
        super().__init__()
        if evaluate not in ("cosine", "linear"):
            raise ValueError(f"evaluate must be 'cosine' or 'linear', not {evaluate!r}")
        self.scale, self.evaluate = scale, evaluate
        self.run_notes.append(EVALUATE_NOTES[evaluate])

    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        if not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                f"MMCosine normalises each modality's own linear classifier; fusion '{fusion_cls.name}' mixes the "
                "modalities before its classifier, so there is none to normalise"
            )
        return None

    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        model.fusion = CosineHead(model.fusion, self.scale, self.evaluate)
        return model
