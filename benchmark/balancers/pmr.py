"""Prototypical Modal Rebalance (PMR)."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from annotated_types import Gt, Le
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce, in_window, true_class_probability
from benchmark.models.model import ModelOutput
from benchmark.params import EpochBound, Momentum, NonNegative

#: a share of the training batches (0 excluded, 1 = all of them)
BatchFraction = Annotated[float, Gt(0), Le(1)]

RHO_SCALED_NOTE = (
    "extension: weight: rho_scaled weights the weaker modality's prototype cross-entropy by α·min(ρ − 1, 1) "
    "(ρ = s_best / s_m ≥ 1) instead of the released code's constant α"
)
ENTROPY_NOTE = (
    "extension: mu > 0 subtracts μ·c·H(softmax(sim_strong)) for the modality with the highest prototype score "
    "(c = 1 with weight: constant, min(ρ − 1, 1) with rho_scaled; 0 on a tie), inside the epoch window; the paper "
    "describes a prototypical entropy regularisation for the early training stage, the released code has none"
)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """sim = −‖z − c_k‖ for every class prototype c_k: [B, C]."""
    return -torch.cdist(features.float(), prototypes.float())


def prototype_scores(sims: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = Σ_i softmax(sim_m)_i[y_i] over the batch (detached), one entry per modality in dict order."""
    return torch.stack([true_class_probability(s, y).sum() for s in sims.values()])


def pmr_coefficients(scores: torch.Tensor) -> torch.Tensor:
    """The ``rho_scaled`` coefficient of each modality's prototype loss, min(s_best / s_m − 1, 1): for two modalities
    min(ρ − 1, 1) for the weaker one (ρ = s_strong / s_weak) and 0 for the stronger one (both 0 on a tie).
    Not the released code's rule (that is ``pmr_constant_coefficients``)."""
    return torch.clamp(scores.max() / scores - 1, min=0.0, max=1.0)


def pmr_constant_coefficients(scores: torch.Tensor) -> torch.Tensor:
    """The released rule's coefficient of each modality's prototype loss (before α): 1 for a modality whose score
    is below the best (s_best / s_m > 1), 0 for the best; all 0 on a tie. For two modalities exactly the released
    code's ρ = s_a / s_v: ρ > 1 → visual 1, audio 0; ρ < 1 → audio 1, visual 0; ρ = 1 → both 0."""
    return (scores.max() / scores > 1).to(scores.dtype)


def prototype_batch_count(num_batches: int, fraction: float) -> int:
    """How many batches the prototypes are computed from: max(1, ⌊fraction · num_batches⌋), as the released code
    (which stops after ``len(loader) // 10`` batches, and after the first when that is 0)."""
    return max(1, min(num_batches, math.floor(fraction * num_batches + 1e-9)))


def prototype_positions(num_samples: int, batch_size: int, fraction: float, seed: int, epoch: int) -> torch.Tensor:
    """The training samples the prototypes of ``epoch`` are computed from: the first ``prototype_batch_count``
    batches of size ``batch_size`` of a shuffled order drawn from (seed, epoch) (the released code takes the first
    batches of its shuffled training loader, so a fresh random share every epoch). All samples, in order, when the
    count covers every batch. Sorted positions; the global random stream is not touched."""
    num_batches = math.ceil(num_samples / batch_size)
    take = prototype_batch_count(num_batches, fraction) * batch_size
    if take >= num_samples:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(1_000_003 * seed + epoch)
    return torch.randperm(num_samples, generator=generator)[:take].sort().values


@BALANCERS.register("pmr")
class PMR(Balancer):
    """PMR (Fan et al. 2023) as the released code (fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py).

    Prototypes: c_m,k = mean feature φ_m of class k (model in eval mode), recomputed at the start of every epoch
    from the first ⌊``prototype_fraction`` · batches⌋ batches (at least one) of a shuffled pass over the training
    split (``prototype_positions``; default 0.1: the released code stops after ``len(loader) // 10`` batches of its
    shuffled loader, all batches for AVE — set 1.0 there). With ``momentum`` > 0: c ← momentum·c + (1 − momentum)·c_new.

    Per step: sim_m = −‖φ_m − c_m,k‖, s_m = Σ_i softmax(sim_m)_i[y_i] (detached), ρ = s_a / s_v. Inside the epoch
    window [``start_epoch``, ``end_epoch``] (inclusive; a bound is an epoch or a share of the schedule: the released
    scripts (bash.sh) run 0–70 of 130 epochs for CREMA-D and AVE, so the default is ["0%", "54%"]):
    L = CE(fused) + α·CE(sim_weak), the weaker modality (ρ > 1: visual, ρ < 1: audio) with the constant α, the
    stronger one with 0, neither on a tie (ρ = 1). Outside the window L = CE(fused).

    Options: ``weight: rho_scaled`` weights the weaker modality by α·min(ρ − 1, 1) instead (an extension, named in
    the run's notes); ``mu`` > 0 adds an entropy term −μ·c·H(softmax(sim_strong)) for the stronger modality (an
    extension: the paper describes a prototypical entropy regularisation, the released code has none).

    Where it differs from the released code: the prototypes come from the training split for every dataset (the
    released AVE and CGMNIST runs compute them on the validation split); a class absent from the epoch's share keeps
    its previous prototype (zero before it has one; the released code divides by a zero count); momentum applies from
    the prototypes of epoch 1 on (the released code's ``epoch <= 0`` test also skips it for epoch 1's).
    Extension: with M > 2 modalities every modality scoring below the best gets the prototype loss (the paper has
    two).
    """

    display_name: ClassVar[str] = "PMR"
    paper = "Fan et al. 2023 (PMR)"
    single_label_only = "its prototypes and scores assume one class per sample"

    def __init__(
        self,
        *,
        alpha: NonNegative = 1.0,
        start_epoch: EpochBound = "0%",
        end_epoch: EpochBound = "54%",
        prototype_fraction: BatchFraction = 0.1,
        momentum: Momentum = 0.0,
        weight: Literal["constant", "rho_scaled"] = "constant",
        mu: NonNegative = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        if not 0 < prototype_fraction <= 1:
            raise ValueError(f"prototype_fraction must be in (0, 1], not {prototype_fraction}")
        if weight not in ("constant", "rho_scaled"):
            raise ValueError(f"weight must be 'constant' or 'rho_scaled', not {weight!r}")
        self.alpha, self.momentum, self.mu, self.weight = alpha, momentum, mu, weight
        self.start_epoch, self.end_epoch, self.prototype_fraction = start_epoch, end_epoch, prototype_fraction
        self.prototypes: dict[str, torch.Tensor] = {}
        if weight == "rho_scaled":
            self.run_notes.append(RHO_SCALED_NOTE)
        if mu > 0:
            self.run_notes.append(ENTROPY_NOTE)

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if num_modalities > 2:
            return [
                "extension: every modality scoring below the best gets the prototype loss (the paper and the "
                "released code have two modalities)"
            ]
        return []

    def coefficients(self, scores: torch.Tensor) -> torch.Tensor:
        """Each modality's coefficient before α (``weight``'s rule)."""
        if self.weight == "rho_scaled":
            return pmr_coefficients(scores)
        return pmr_constant_coefficients(scores)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        model, ctx = self.model, self.ctx
        train = ctx.train
        batch_size = ctx.settings.get("batch_size", 32)
        positions = prototype_positions(len(train), batch_size, self.prototype_fraction, ctx.seed, epoch)
        data = train if len(positions) == len(train) else train.subset(positions.tolist())
        was_training = model.training
        model.eval()
        num_classes = model.num_classes
        sums = {m: torch.zeros(num_classes, model.encoders[m].out_dim, device=ctx.device) for m in model.modalities}
        counts = torch.zeros(num_classes, device=ctx.device)
        for inputs, y in ctx.batches(data):
            features = model.encode(inputs)
            counts += torch.bincount(y, minlength=num_classes)
            for m, f in features.items():
                sums[m].index_add_(0, y, f.float())
        model.train(was_training)
        seen = (counts > 0)[:, None]
        for m in model.modalities:
            new = sums[m] / counts.clamp_min(1)[:, None]
            old = self.prototypes.get(m)
            if old is not None:
                blended = new if self.momentum == 0 else self.momentum * old + (1 - self.momentum) * new
                new = torch.where(seen, blended, old)
            self.prototypes[m] = new

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        modalities = self.model.modalities
        active = in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs)
        with torch.set_grad_enabled(active and torch.is_grad_enabled()):
            sims = {m: prototype_logits(out.features[m], self.prototypes[m]) for m in modalities}
        scores = prototype_scores(sims, y)
        coefficients = self.coefficients(scores)
        loss = fused_ce(out, y)
        if active:
            for c, s in zip(coefficients, sims.values()):
                loss = loss + self.alpha * c * F.cross_entropy(s, y)
            if self.mu:
                strong = torch.index_select(torch.stack(list(sims.values())), 0, scores.argmax().view(1))[0]
                p = torch.softmax(strong, 1)
                entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean()
                loss = loss - self.mu * coefficients.max() * entropy
        weights = self.alpha * coefficients if active else torch.zeros_like(coefficients)
        self.track(proto_weight=dict(zip(modalities, weights)), proto_score=dict(zip(modalities, scores)))
        return loss
