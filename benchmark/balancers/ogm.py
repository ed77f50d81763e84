"""On-the-fly Gradient Modulation (OGM) and OGM with Generalization Enhancement (OGM-GE)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note, fused_ce, in_window, true_class_probability
from benchmark.models.model import ModelOutput
from benchmark.params import EpochBound, Positive

#: the released code's per-dataset settings (GeWu-Lab/OGM-GE_CVPR2022, README and main.py arguments)
OGM_PRESETS = {
    "cremad": {"alpha": 0.8, "source": "released OGM-GE code, CREMA-D setting (alpha 0.8)"},
    "vggsound": {"alpha": 0.1, "source": "released OGM-GE code, VGGSound setting (alpha 0.1)"},
}
NO_CONVOLUTIONS = (
    "backbone '{name}' has no convolution weights, the only parameters OGM's released rule (modulate: conv) "
    "scales, so the method would modulate nothing; set modulate: declared to scale the parameters each encoder "
    "declares as their analogue, or modulate: all for every encoder parameter (extensions, recorded in the run's "
    "notes)"
)
MODULATE = ("conv", "declared", "all")


def ogm_scores(modality_logits: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Eq. 8: s_m = Σ_i softmax(out_m)_i[y_i] over the batch, one entry per modality (in dict order)."""
    return torch.stack([true_class_probability(logits, y).sum() for logits in modality_logits.values()])


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 9-10: discrepancy ratios ρ and coefficients k, one per modality.

    ρ_m = s_m / mean_{j≠m} s_j (for two modalities exactly eq. 9: ρ_v = s_v/s_a, ρ_a = 1/ρ_v);
    k_m = 1 − tanh(α·ρ_m) if ρ_m > 1 else 1, so only the dominant modality is slowed. When all scores are
    equal no ρ exceeds 1 and, as the official code does, the first modality (audio) is slowed with ρ = 1.
    """
    m = scores.numel()
    others = (scores.sum() - scores) / (m - 1)
    rho = scores / others
    dominant = rho > 1
    tie = torch.zeros_like(dominant)
    tie[0] = True
    dominant = torch.where(dominant.any(), dominant, tie)
    k = torch.where(dominant, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
    return rho, k


def convolution_weights(encoder: nn.Module) -> list[nn.Parameter]:
    return [mod.weight for mod in encoder.modules() if isinstance(mod, nn.modules.conv._ConvNd)]


def modulated_parameters(encoder: nn.Module, which: str) -> list[nn.Parameter]:
    """'conv': convolution weights only (the official code's 4-D-tensor rule, here any Conv layer's weight);
    'declared': the parameters the encoder declares (``Backbone.modulated_parameters``: its convolution weights,
    or for an encoder without convolutions its weight matrices); 'all': every parameter of the encoder (biases and
    normalisation layers included)."""
    if which == "all":
        return list(encoder.parameters())
    if which == "declared" and hasattr(encoder, "modulated_parameters"):
        return list(encoder.modulated_parameters())
    return convolution_weights(encoder)


@BALANCERS.register("ogm")
class OGM(Balancer):
    """OGM (Peng et al. 2022, eqs. 8-11): cross-entropy on the fused output; after backward, inside the epoch
    window [start_epoch, end_epoch] (inclusive; a bound is an epoch or a share of the schedule such as "50%": the
    released code modulates epochs 0–50 of 100, the default ["0%", "50%"]), each modulated encoder gradient
    becomes k_m·g (eq. 11). ``modulate: conv`` scales convolution weights only, as the released code; on a backbone
    without convolutions that is nothing, so such a run is n/a; ``modulate: declared`` (the weight matrices an
    encoder without convolutions declares, e.g. an MLP's) and ``modulate: all`` (every encoder parameter) are
    extensions named in the run's notes. Presets ``cremad`` (α 0.8) and ``vggsound`` (α 0.1) are the released
    per-dataset values (config: ``per_dataset: {vggsound: {preset: vggsound}}``).

    Per-modality logits come from the fused head as the fusion defines them (concat: W_m·φ_m + b/M; fusions
    without a linear split use the zero-masking Shapley estimate, an extension noted in the run's outputs).
    Extension: with M > 2 modalities ρ_m = s_m / mean_{j≠m} s_j (the paper has two).
    """

    display_name: ClassVar[str] = "OGM"
    paper = "Peng et al. 2022 (OGM-GE), eqs. 8-11"
    single_label_only = "its discrepancy ratio compares softmax scores of the one true class (eq. 10)"
    generalization_enhancement = False
    presets = OGM_PRESETS

    def __init__(
        self,
        *,
        alpha: Positive = 0.8,
        start_epoch: EpochBound = "0%",
        end_epoch: EpochBound = "50%",
        modulate: Literal["conv", "declared", "all"] = "conv",
    ) -> None:
        super().__init__()
        if modulate not in MODULATE:
            raise ValueError(f"modulate must be one of {', '.join(MODULATE)}, not {modulate!r}")
        self.alpha, self.start_epoch, self.end_epoch, self.modulate = alpha, start_epoch, end_epoch, modulate

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 2:
            notes.append(
                "extension: ρ_m = s_m / mean of the other modalities' scores (the paper defines two modalities)"
            )
        return notes

    @classmethod
    def backbone_unsupported(cls, backbone_cls: type, params: dict) -> str | None:
        if params.get("modulate", "conv") == "conv" and getattr(backbone_cls, "has_convolutions", None) is False:
            return NO_CONVOLUTIONS.format(name=getattr(backbone_cls, "name", backbone_cls.__name__))
        return None

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.params = {m: modulated_parameters(model.encoders[m], self.modulate) for m in model.modalities}
        empty = [m for m, params in self.params.items() if not params]
        if empty:  # a backbone that did not declare has_convolutions
            name = type(model.encoders[empty[0]]).__name__
            raise ValueError(NO_CONVOLUTIONS.format(name=name) + f" (encoder of modality '{empty[0]}')")
        self.run_notes.append(
            f"on a tie (every score equal) modality '{model.modalities[0]}' is slowed with ρ = 1, the dataset's first "
            "(the released code slows its first, audio)"
        )
        differs = [
            m
            for m, params in self.params.items()
            if {id(p) for p in params} != {id(p) for p in convolution_weights(model.encoders[m])}
        ]
        if self.modulate == "declared" and differs:
            self.run_notes.append(
                f"extension: modulate: declared scales the parameters the encoders of {', '.join(differs)} declare "
                "(their weight matrices); the released code scales convolution weights only"
            )
        if self.modulate == "all":
            self.run_notes.append(
                "extension: modulate: all scales every encoder parameter (biases, normalisation and linear "
                "weights too); the released code scales convolution weights only"
            )

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        rho, k = ogm_coefficients(ogm_scores(self.model.modality_logits(out), y), self.alpha)
        self.k = dict(zip(self.model.modalities, k))
        self.track(rho=dict(zip(self.model.modalities, rho)), k=self.k)
        return fused_ce(out, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        if not in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs):
            return
        for m, params in self.params.items():
            for p in params:
                if p.grad is not None:
                    p.grad = self.modulate_grad(p.grad, self.k[m])

    def modulate_grad(self, g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return g * k


@BALANCERS.register("ogm_ge")
class OGMGE(OGM):
    """OGM-GE (Peng et al. 2022, eq. 16): g ← k_m·g + h with h ~ N(0, σ²), σ the standard deviation of the
    unscaled gradient tensor (+1e-8, one scalar per tensor, as the official code), added to every modulated
    encoder parameter of every modality — also the one with k = 1 — inside the epoch window."""

    display_name: ClassVar[str] = "OGM-GE"
    paper = "Peng et al. 2022 (OGM-GE), eqs. 8-10 and 16"
    generalization_enhancement = True

    def modulate_grad(self, g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        sigma = g.std() + 1e-8 if g.numel() > 1 else g.new_tensor(1e-8)
        return g * k + torch.randn_like(g) * sigma
