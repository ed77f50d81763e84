"""Multi-Loss and Multi-Loss Balanced (MLB)."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.balancers.base import (
    BALANCERS,
    Balancer,
    fused_ce,
    modality_parameter_groups,
    scale_grads,
    true_class_probability,
    unimodal_ce,
)
from benchmark.models.model import ModelOutput
from benchmark.params import AtLeastOne, Positive


@BALANCERS.register("multi_loss")
class MultiLoss(Balancer):
    """Multi-Loss (Kontras et al. 2024, eq. 3): L = CE(fused) + Σ_m CE(unimodal_m), one linear unimodal head
    per encoder, one backward, no balancing."""

    display_name: ClassVar[str] = "Multi-Loss"
    paper = "Kontras et al. 2024 (MLB), eq. 3"
    unimodal_heads = True

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        uni = unimodal_ce(out, y)
        self.track(loss_fused=fused, loss_uni=uni)
        return fused + sum(uni.values())


def mlb_coefficients(scores: torch.Tensor, alpha: float, beta_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 5-7 from scores s (eq. 4), one per modality: returns (r, k).

    r_m = mean_{j≠m} s_j / s_m;  β_m = β_max if r_m > 1 else 2;  k_m = 1 + (β_m − 1)·tanh(α·(r_m − 1)).
    A lagging modality (r > 1) is accelerated up to β_max, a leading one slowed towards (never to) 0, and
    k → 1 as the scores converge.
    """
    m = scores.numel()
    r = ((scores.sum() - scores) / (m - 1)) / scores
    beta = torch.where(r > 1, torch.full_like(r, float(beta_max)), torch.full_like(r, 2.0))
    return r, 1 + (beta - 1) * torch.tanh(alpha * (r - 1))


@BALANCERS.register("mlb")
class MLB(MultiLoss):
    """Multi-Loss Balanced (Kontras et al. 2024, eqs. 2-7): the Multi-Loss objective; scores
    s_m = mean_i softmax(unimodal_m)_i[y_i] (detached); after backward every gradient of modality m's encoder,
    its unimodal head and its slice of the fused head is multiplied by k_m (eq. 2). No noise, no schedule.

    The paper fixes no α and shows β_max = 10 only as an example. The defaults are the authors' released CREMA-D
    and AVE configuration (configs/<dataset>/res/MLB.json: α 0.8 with tanh_mode unset, which makes k = 1 +
    tanh(α·(r − 1)) in both directions, i.e. β = 2 and acceleration capped at 2×); presets ``cremad``, ``ave``
    (α 0.8, β_max 2) and ``ucf101`` (α 1.0, β_max 2) name that source, ``paper-example`` is β_max 10."""

    display_name: ClassVar[str] = "MLB"
    paper = "Kontras et al. 2024 (MLB), eqs. 2-7"
    single_label_only = "its coefficients compare softmax scores of the one true class (eq. 5)"
    presets = {
        "cremad": {"alpha": 0.8, "beta_max": 2.0, "source": "released MLB code, configs/CREMAD/res/MLB.json"},
        "ave": {"alpha": 0.8, "beta_max": 2.0, "source": "released MLB code, configs/AVE/res/MLB.json"},
        "ucf101": {"alpha": 1.0, "beta_max": 2.0, "source": "released MLB code, configs/UCF101/res/MLB.json"},
        "paper-example": {
            "beta_max": 10.0,
            "source": "Kontras et al. 2024, the β_max = 10 example setting the paper shows",
        },
    }

    def __init__(self, *, alpha: Positive = 0.8, beta_max: AtLeastOne = 2.0) -> None:
        super().__init__()
        self.alpha, self.beta_max = alpha, beta_max

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if fusion_cls is not None and not getattr(fusion_cls, "modality_logits_exact", False):
            return [
                f"fusion '{fusion_cls.name}' mixes modalities before its head, so k_m scales the encoder and unimodal "
                "head of each modality (no fused-head slice)"
            ]
        return []

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.groups = modality_parameter_groups(model)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([true_class_probability(out.unimodal[m], y).mean() for m in self.model.modalities])
        r, k = mlb_coefficients(scores, self.alpha, self.beta_max)
        self.k = dict(zip(self.model.modalities, k))
        self.track(r=dict(zip(self.model.modalities, r)), k=self.k)
        return super().loss(out, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        for m, group in self.groups.items():
            scale_grads(group, self.k[m])
