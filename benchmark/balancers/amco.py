"""AMCo: an adaptive mask on the modality the model depends on, with co-optimisation by unimodal losses, as
BalanceBenchmark implements it.

The method is Zhou et al. 2023, "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning"
(ICASSP 2023): "the adaptive mask can encourage the model to fit other modalities better by making dependent
modalities harder to be learned; the co-optimization can preserve the performance of models on dependent
modalities". The paper's equations were not available here and it has no released code of its own, so this module
follows BalanceBenchmark (GeWu-Lab/BalanceBenchmark, read at commit 4c1482f): ``balancemm/trainer/AMCo_trainer.py``
(``train_loop`` and ``training_step``), ``balancemm/models/avclassify_model.py`` (``BaseClassifierAMCoModel``) and
``configs/trainer_config.yaml`` (``AMCo``: sigma 0.5, eps 0.3, modulation_starts 0, modulation_ends 80; its alpha,
method, U and modality entries are read but never used).

What the released code does (trainer line numbers):

- the model (``BaseClassifierAMCoModel``, concat fusion): per-modality logits z_m = W_m·φ_m + b/M from the fused
  head; the output is ``linear_star``(Σ_m z_m), an extra C×C linear layer after the head (``star: true``), in
  training and evaluation alike.
- the ramp (l. 64-83): at the start of every epoch l = 0 and no modality is dependent; before batch k of epoch e
  (both 0-based) the mask ratio is p = sin(π/2 · min(ε, l)/ε), then l ← l + e/10; so l = k·e/10, p = 0 through the
  first epoch, and from the second epoch on p reaches 1 after ⌈10ε/e⌉ batches. N = ⌊p·C⌋ of the C class positions
  are zeroed, positions drawn at random each batch; the one mask row is shared by every sample of the batch
  (the code expands it to two rows, which broadcasts over the batch only when DataParallel splits it across two
  GPUs, one row each — the only setting in which it runs).
- inside the epoch window [start_epoch, end_epoch] (0-based, inclusive; l. 127-131): every dependent modality's
  z_m is multiplied by the mask (model l. 376-378), both in the fused sum and in its own loss; the loss is
  CE(fused) + Σ_m CE(z_m) (l. 140-146: one backward per term, the gradients add up); after the step each modality's
  dependence share q_m = (1/B)·Σ_i Σ_{c} softmax([z_1,i; …; z_M,i])_{m,c} — one softmax over all modalities' class
  scores (the masked ones, as used), summed over modality m's block — decides whether m is dependent in the next
  step: q_m > σ (l. 147-154). Outside the window: the plain model and CE(fused) alone, no dependence update.

Options: ``mask_on: features`` (an extension, noted in the run) zeroes ⌊p·d_m⌋ of the dependent modality's d_m
encoder feature units instead, before the fusion, so the fused output and the unimodal logits both come from the
masked features — masking "units" of a representation rather than class scores; BalanceBenchmark's config carries a
feature size (U: 512) it never reads, and we could not check which of the two the paper masks. ``star: false``
drops the extra linear layer.

Where the harness differs: mask positions come from a generator seeded by (run seed, epoch, step, modality), not the
global NumPy stream; the dependence test stays on the device (a boolean used by the next step, no host sync). For
fusions other than concat (BalanceBenchmark's AMCo model has only concat) z_m is the fusion's own split (sum:
W_m·φ_m + b_m, which adds up to its output) or the zero-masking Shapley estimate, whose shares also add up to the
fused output (noted in the run).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note, in_window
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import EpochBound, Positive, Probability

MASK_ON = ("logits", "features")
FEATURES_NOTE = (
    "extension: AMCo mask_on: features zeroes ⌊p·d_m⌋ of the dependent modality's d_m encoder feature units (one "
    "random set per step, shared by the batch) before the fusion; BalanceBenchmark masks ⌊p·C⌋ of that modality's C "
    "per-modality logits (class scores)"
)
NO_STAR_NOTE = (
    "AMCo star: false — the fused logits go out as they are; BalanceBenchmark's AMCo model adds a C×C linear layer "
    "(linear_star) after them"
)


def amco_mask_ratio(progress: float, eps: float) -> float:
    """p = sin(π/2 · min(ε, l)/ε): the share of units masked at ramp position l (0 at l = 0, 1 from l = ε on)."""
    return math.sin(math.pi / 2 * (min(eps, progress) / eps))


def dependence_shares(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """q_m = batch mean of Σ_c softmax([z_1; …; z_M])_{m,c}: each modality's share of one softmax over every
    modality's class scores (detached), one entry per modality in dict order; they add up to 1."""
    z = torch.cat([v.detach().float() for v in logits.values()], dim=1)
    n, c = len(z), next(iter(logits.values())).shape[1]
    return torch.softmax(z, dim=1).view(n, len(logits), c).sum(2).mean(0)


class StarHead(Fusion):
    """The wrapped fusion followed by a C×C linear layer: f = L*(inner(φ)) (BalanceBenchmark's ``linear_star``).
    Per-modality logits, head slices and block-wise encoding are the wrapped fusion's (before L*)."""

    def __init__(self, inner: Fusion) -> None:
        super().__init__(inner.feature_dims, inner.num_classes)
        self.inner = inner
        self.star = nn.Linear(inner.num_classes, inner.num_classes)
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}+star"
        self.modality_logits_rule = f"{inner.modality_logits_rule} (before AMCo's linear_star layer)"

    @property
    def needs_blocks(self) -> bool:  # type: ignore[override]
        return getattr(self.inner, "needs_blocks", False)

    def encode(self, encoders, inputs):
        return self.inner.encode(encoders, inputs)

    def choices(self) -> list[str]:
        return self.inner.choices()

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.star(self.inner(features))

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.inner.modality_logits(features)

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return self.inner.modality_head_params(modality)

    def modality_linear(self, modality: str) -> torch.Tensor | None:
        return self.inner.modality_linear(modality)


@BALANCERS.register("amco")
class AMCo(Balancer):
    """AMCo (Zhou et al. 2023) as BalanceBenchmark's AMCo trainer and model implement it (module docstring: files
    and lines). Inside the epoch window [start_epoch, end_epoch] (0-based, inclusive; BalanceBenchmark's 0 and 80):
    the per-modality logits z_m of each modality found dependent in the previous step (its share of one softmax over
    all modalities' class scores, batch-averaged, above σ) are multiplied by a mask that zeroes ⌊p·C⌋ random class
    positions, one mask per step shared by the batch, p = sin(π/2·min(ε, l)/ε) with l = k·e/10 after k steps of
    epoch e (reset every epoch, so nothing is masked in epoch 0); the output is L*(Σ_m z_m) with an extra linear
    layer L* and the loss CE(output) + Σ_m CE(z_m). Outside the window: the model's own output and CE alone.

    ``mask_on: features`` masks ⌊p·d_m⌋ encoder feature units of the dependent modality instead (an extension);
    ``star: false`` drops L*. Extension: M > 2 applies the released rule as written (one softmax over all M·C
    scores; each modality above σ is masked)."""

    display_name: ClassVar[str] = "AMCo"
    paper = "Zhou et al. 2023 (AMCo, ICASSP), adaptive mask co-optimization as BalanceBenchmark's AMCo trainer"
    single_label_only = "its losses are softmax cross-entropies and its dependence test a softmax share of class scores"

    def __init__(
        self,
        *,
        sigma: Probability = 0.5,
        eps: Positive = 0.3,
        start_epoch: EpochBound = 0,
        end_epoch: EpochBound = 80,
        mask_on: Literal["logits", "features"] = "logits",
        star: bool = True,
    ) -> None:
        super().__init__()
        if mask_on not in MASK_ON:
            raise ValueError(f"mask_on must be one of {', '.join(MASK_ON)}, not {mask_on!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, not {eps}")
        self.sigma, self.eps, self.start_epoch, self.end_epoch = sigma, eps, start_epoch, end_epoch
        self.mask_on, self.star = mask_on, star
        if mask_on == "features":
            self.run_notes.append(FEATURES_NOTE)
        if not star:
            self.run_notes.append(NO_STAR_NOTE)

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if notes:
            notes.append(
                "AMCo (mask_on: logits) on this fusion: inside the window the training output is the sum of the "
                "(masked) estimated per-modality logits, which equals the fusion's output when nothing is masked"
            )
        if num_modalities > 2:
            notes.append(
                "extension: BalanceBenchmark's AMCo model is audio-visual; its trainer's rule is applied as written to "
                f"{num_modalities} modalities (one softmax over every modality's class scores, each modality whose "
                "share exceeds σ masked)"
            )
        return notes

    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        if self.star:
            model.fusion = StarHead(model.fusion)
        return model

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.on_epoch_start(ctx.epoch)
        self._z = None

    def on_epoch_start(self, epoch: int) -> None:
        # the released train_loop starts every epoch with l = 0 and no dependent modality
        self.dependent = torch.zeros(len(self.model.modalities), dtype=torch.bool, device=self.ctx.device)
        self.progress = 0.0
        self.step = 0

    def draw_mask(self, size: int, count: int, salt: int) -> torch.Tensor:
        """A [size] mask with ``count`` zeros at random positions drawn from (seed, epoch, step, salt)."""
        key = ((self.ctx.seed * 1_000_003 + self.ctx.epoch) * 1_000_033 + self.step) * 101 + salt
        generator = torch.Generator().manual_seed(key % (2**63))
        mask = torch.ones(size)
        mask[torch.randperm(size, generator=generator)[:count]] = 0.0
        return mask.to(self.ctx.device)

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        ratio = amco_mask_ratio(self.progress, self.eps)  # the ramp moves every step, inside the window or not
        self.progress += self.ctx.epoch / 10
        modalities = model.modalities
        active = in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs)
        try:
            if not active:
                self._z = None
                return model(inputs)
            features = model.encode(inputs)
            shares = {}
            if self.mask_on == "features":
                kept = {}
                for i, m in enumerate(modalities):
                    size = features[m].shape[1]
                    count = int(ratio * size)
                    shares[m] = self.dependent[i].float() * (count / size)
                    if count:
                        keep = torch.where(self.dependent[i], self.draw_mask(size, count, i), 1.0)
                        kept[m] = features[m] * keep.to(features[m].dtype)
                    else:
                        kept[m] = features[m]
                out = model.decode(kept)
                self._z = model.fusion.modality_logits(kept)
            else:
                z = model.fusion.modality_logits(features)
                size = model.num_classes
                count = int(ratio * size)
                if count:
                    mask = self.draw_mask(size, count, 0)
                    z = {
                        m: v * torch.where(self.dependent[i], mask, 1.0).to(v.dtype)
                        for i, (m, v) in enumerate(z.items())
                    }
                shares = {m: self.dependent[i].float() * (count / size) for i, m in enumerate(modalities)}
                fused = torch.stack(list(z.values())).sum(0)
                if self.star:
                    fused = model.fusion.star(fused)
                out = ModelOutput(fused, features, None)
                self._z = z
            self.track(mask_share=shares)
            return out
        finally:
            self.step += 1

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = F.cross_entropy(out.logits.float(), y)
        z, self._z = self._z, None
        if z is None:
            self.track(loss_fused=fused)
            return fused
        uni = {m: F.cross_entropy(v.float(), y) for m, v in z.items()}
        q = dependence_shares(z)
        self.dependent = q > self.sigma  # used by the next step (the released dependent_modality dict)
        self.track(loss_fused=fused, loss_uni=uni, dependence=dict(zip(z, q)))
        return fused + sum(uni.values())
