"""Sample-level modality valuation and re-sampling (Wei, Feng, Wang & Hu, "Enhancing Multimodal Cooperation via
Sample-level Modality Valuation", CVPR 2024), as the authors' released code does it
(GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py`` ``execute_modulation``/``main`` and
``code/datasets/dataloader.py`` ``AV_KS_Dataset_sample_level``, read at its only stored commit).

Valuation, after every epoch from ``warmup − 1`` on (0-based), in evaluation mode over the training split: for each
sample i and coalition S of modalities, correct_S,i = [argmax of the fused head applied to the features with every
modality outside S set to zero = y_i], and the value v(S)_i = |S|·correct_S,i (v(∅) = 0). A modality's contribution
is its Shapley value, for two modalities φ_a,i = (v({a})_i + v({a,v})_i − v({v})_i)/2 — the released
``contrib_a = (value_a + value_all − value_v)/2`` with value_all = 2 for a correct fused prediction.

Re-sampling, in every epoch from ``warmup`` on: the epoch trains on every sample once, plus, for every sample and
modality m, k(φ_m,i) extra copies in which only m's features reach the fused head (the others' are zeroed, so only
m's encoder and its part of the head learn from the copy): k = 1 for 0.4 < φ < 1, 2 for −0.1 < φ < 0.4, 3 for
φ < −0.1, else 0 (the released bands; for two modalities φ ∈ {−0.5, 0, 0.5, 1, 1.5}, so a modality that is the
sample's whole reason for a right answer gets none and one that hurts it gets three). Epochs before ``warmup`` are
plain joint training. The loss is the fused head's cross-entropy throughout.

Where the harness differs from the released code: the copies come from the loop's ``epoch_rows`` (re-sampled
epochs, shuffled by the run's seeded generator) instead of a new dataset object; the valuation pass reads the
training split without augmentation (the released one reuses the training transforms); features are zeroed the
released way (``exec_drop``) through whichever fusion the run uses — exact for concat, the code's only fusion.
Extension (noted in the run): for M > 2 modalities the exact Shapley value over all coalitions with the same v(S),
and a modality's copies keep only that modality.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce, window_epoch
from benchmark.models.model import ModelOutput
from benchmark.params import EpochBound

#: (low, high, copies): the released code's bands of a contribution, open at both ends
BANDS = ((0.4, 1.0, 1), (-0.1, 0.4, 2), (-math.inf, -0.1, 3))


def coalition_values(correct: dict[frozenset, torch.Tensor]) -> dict[frozenset, torch.Tensor]:
    """v(S) = |S|·[the prediction from S alone is right], per sample (the released value function)."""
    return {s: len(s) * c.float() for s, c in correct.items()}


def shapley_contributions(modalities: list[str], correct: dict[frozenset, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's Shapley value per sample, from ``correct[S]`` (bool per sample) for every non-empty S."""
    values = coalition_values(correct)
    n = len(modalities)
    some = next(iter(values.values()))
    value = lambda s: values[s] if s else torch.zeros_like(some)  # noqa: E731
    out = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        phi = torch.zeros_like(some)
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for rest in itertools.combinations(others, size):
                s = frozenset(rest)
                phi = phi + weight * (value(s | {m}) - value(s))
        out[m] = phi
    return out


def resample_copies(phi: torch.Tensor) -> torch.Tensor:
    """Extra copies of each sample for a modality with contributions ``phi`` (the released bands, ``BANDS``)."""
    copies = torch.zeros_like(phi, dtype=torch.long)
    for low, high, k in BANDS:
        copies = torch.where((phi > low) & (phi < high), torch.full_like(copies, k), copies)
    return copies


@BALANCERS.register("valuation")
class SampleValuation(Balancer):
    """Sample-level modality valuation (Wei et al., CVPR 2024; module docstring): after each epoch from ``warmup`` − 1
    on, each training sample's Shapley contribution of every modality (v(S) = |S|·[S alone predicts right]); the next
    epoch adds 1, 2 or 3 copies of the sample with only that modality's features (contribution in (0.4, 1),
    (−0.1, 0.4), below −0.1). Released default: ``warmup`` 5 epochs of plain joint training."""

    display_name: ClassVar[str] = "Sample-level valuation"
    paper = "Wei et al., CVPR 2024 (sample-level modality valuation and re-sampling)"
    single_label_only = "a sample's value is whether the predicted class is its one true class"

    def __init__(self, *, warmup: EpochBound = 5) -> None:
        super().__init__()
        self.warmup = warmup
        self.copies: dict[str, torch.Tensor] | None = None  # per modality, extra copies of each training position

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if num_modalities > 2:
            notes.append(
                "extension: the exact Shapley value over every coalition of the modalities (v(S) = |S| if S alone "
                "predicts right), and copies that keep only one modality (the paper has two)"
            )
        if fusion_cls is not None and fusion_cls.name != "concat":
            notes.append(
                f"coalitions are formed by zeroing features before fusion '{fusion_cls.name}' (the released code's "
                "rule, written for concatenation)"
            )
        return notes

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self._tags: torch.Tensor | None = None

    def epoch_rows(self, epoch: int) -> torch.Tensor | None:
        if self.copies is None or epoch < window_epoch(self.warmup, self.ctx.num_epochs):
            self._tags = None
            return None
        n = len(self.ctx.train)
        every = torch.arange(n)
        rows, tags = [every], [torch.full((n,), -1)]
        for index, m in enumerate(self.model.modalities):
            extra = torch.repeat_interleave(every, self.copies[m].cpu())
            rows.append(extra)
            tags.append(torch.full((len(extra),), index))
        self._tags = torch.cat(tags).to(self.ctx.device)
        return torch.cat(rows)

    def forward(self, model, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        if self.ctx.draws is None or self._tags is None:
            return model(inputs)
        tags = self._tags[self.ctx.draws.to(self.ctx.device)]
        features = model.encode(inputs)
        for index, m in enumerate(model.modalities):
            keep = (tags == -1) | (tags == index)
            f = features[m]
            features[m] = f * keep.view(-1, *([1] * (f.dim() - 1))).to(f.dtype)
        return model.decode(features)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return fused_ce(out, y)

    @torch.no_grad()
    def contributions(self) -> dict[str, torch.Tensor]:
        """Every training sample's contribution of each modality (eval mode, no augmentation), in split order."""
        model, modalities = self.model, self.model.modalities
        coalitions = [
            frozenset(c) for size in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, size)
        ]
        was_training = model.training
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        for inputs, y in self.ctx.batches():
            features = model.encode(inputs)
            correct = {}
            for s in coalitions:
                kept = {m: f if m in s else torch.zeros_like(f) for m, f in features.items()}
                correct[s] = model.fusion(kept).argmax(1) == y
            for m, phi in shapley_contributions(modalities, correct).items():
                parts[m].append(phi)
        model.train(was_training)
        return {m: torch.cat(v) for m, v in parts.items()}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch < window_epoch(self.warmup, self.ctx.num_epochs) - 1:
            return
        phi = self.contributions()
        self.copies = {m: resample_copies(v) for m, v in phi.items()}
        self.track(
            contribution={m: v.mean() for m, v in phi.items()},
            resampled={m: c.sum().float() for m, c in self.copies.items()},
        )
