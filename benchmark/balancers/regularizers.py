"""Baselines that regularise instead of balancing: auxiliary losses, dropout, modality dropout."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS
from benchmark.balancers.gblend import FUSED_HEAD, WeightedHeads
from benchmark.balancers.joint import Joint
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import DropProbability, ScheduleFraction


@BALANCERS.register("aux_loss")
class AuxLoss(WeightedHeads):
    """Auxiliary unimodal losses with fixed equal weights, the G-Blend paper's multi-task baseline:
    L = (CE(fused) + Σ_m CE(unimodal_m)) / (M + 1) — G-Blend's eq. 7 with uniform instead of estimated weights."""

    display_name: ClassVar[str] = "Auxiliary losses"
    paper = "Wang et al. 2020 (G-Blend), eq. 7 with equal weights (auxiliary-loss baseline)"

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        heads = list(model.modalities) + [FUSED_HEAD]
        self.set_weights({h: 1.0 / len(heads) for h in heads})


@BALANCERS.register("dropout")
class FeatureDropout(Joint):
    """Dropout on the fused features (the G-Blend paper's regularisation baseline, Fig. 1; supplement §6.1: dropout
    after the feature concatenation): in training every modality's feature vector goes through dropout(p) before
    the fusion, which for concatenation is exactly dropout on the concatenated vector; joint cross-entropy."""

    display_name: ClassVar[str] = "Feature dropout"
    paper = "Wang et al. 2020 (G-Blend), Fig. 1 and supplement §6.1 (dropout baseline)"

    def __init__(self, *, p: DropProbability = 0.5) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), not {p}")
        self.p = p

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if fusion_cls is not None and fusion_cls.name != "concat":
            return [
                f"dropout on each modality's features before fusion '{fusion_cls.name}' (the paper drops the "
                "concatenated features)"
            ]
        return []

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        return model.decode({m: F.dropout(f, self.p, training=True) for m, f in model.encode(inputs).items()})


@BALANCERS.register("modality_dropout")
class ModalityDropout(Joint):
    """Modality dropout (ModDrop, Neverova et al. 2016): in training each modality of each sample is dropped with
    probability p — its input replaced by the absent input (``model.without``: the training mean by default,
    ``level: input``) or its feature vector zeroed (``level: feature``) — and a sample never loses all modalities
    (one is kept at random); joint cross-entropy. p has no default in the seed papers; 0.25 here."""

    display_name: ClassVar[str] = "Modality dropout"
    paper = "Neverova et al. 2016 (ModDrop); compared in the G-Blend and MLB settings"
    needs_modality_features = True  # feature-level dropping indexes the modalities' features

    def __init__(self, *, p: DropProbability = 0.25, level: Literal["input", "feature"] = "input") -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), not {p}")
        if level not in ("input", "feature"):
            raise ValueError(f"level must be 'input' or 'feature', not {level!r}")
        self.p, self.level = p, level

    def keep_mask(self, batch_size: int, num_modalities: int, device: torch.device) -> torch.Tensor:
        """[B, M] of 0/1: Bernoulli(1 − p) per entry, with one random modality restored in all-dropped rows."""
        keep = (torch.rand(batch_size, num_modalities, device=device) >= self.p).float()
        empty = keep.sum(1) == 0
        rescue = torch.nn.functional.one_hot(
            torch.randint(num_modalities, (batch_size,), device=device), num_modalities
        ).float()
        return torch.where(empty[:, None], rescue, keep)

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        keep = self.keep_mask(len(next(iter(inputs.values()))), len(model.modalities), self.ctx.device)
        self.track(kept=keep.mean(0).sum())
        if self.level == "input":
            dropped = {
                m: torch.where(keep[:, i].view(-1, *[1] * (x.dim() - 1)) > 0, x, model.absent.like(m, x))
                for i, (m, x) in enumerate(inputs.items())
            }
            return model(dropped)
        features = model.encode(inputs)
        return model.decode({m: f * keep[:, model.modalities.index(m), None] for m, f in features.items()})


@BALANCERS.register("early_stop")
class EarlyStop(Joint):
    """Early-stopping baseline (G-Blend paper, Fig. 1; supplement §7.3, which tried 25%, 50% and 75% of the training
    iterations and found 75% best): joint cross-entropy, but training ends after ⌈fraction · epochs⌉ epochs of the
    unchanged schedule (learning-rate steps stay where the full schedule puts them). The harness stops at epoch
    boundaries, so the fraction of iterations is rounded up to whole epochs; the run's notes give the epochs trained.
    The checkpoint is still the best-validation epoch among those trained."""

    display_name: ClassVar[str] = "Early stopping"
    paper = "Wang et al. 2020 (G-Blend), Fig. 1 and supplement §7.3 (early-stopping baseline)"

    def __init__(self, *, fraction: ScheduleFraction = 0.75) -> None:
        super().__init__()
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        self.fraction = fraction

    def stop_epoch(self, num_epochs: int) -> int:
        """How many epochs are trained: ⌈fraction · num_epochs⌉ (at least one)."""
        return max(1, math.ceil(self.fraction * num_epochs - 1e-9))

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        n = self.stop_epoch(ctx.num_epochs)
        self.run_notes = [
            f"early stopping: trained {n} of {ctx.num_epochs} epochs (fraction {self.fraction}, rounded up to whole "
            "epochs)"
        ]

    def finished(self, epoch: int) -> bool:
        return epoch + 1 >= self.stop_epoch(self.ctx.num_epochs)
