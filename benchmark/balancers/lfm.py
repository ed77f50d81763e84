"""LFM: dynamically learning the modality gap (Yang et al., "Facilitating Multimodal Classification via Dynamically
Learning Modality Gap", NeurIPS 2024), as the authors' released code does it (njustkmg/NeurIPS24-LFM,
``Crema_epoch.py`` ``Alignment``, ``getAlpha_Learnable_Fitted`` and ``train_audio_video``, read at its only stored
commit).

Per step, with z_m the per-modality logits (the released model's own linear head per modality; here the fused head's
share of each modality, ``model.modality_logits``, exact for concat and sum), p_m = softmax(z_m) and
q = (1/M)·Σ_m p_m:

    L = 2·(α₁(e)·CE((1/M)·Σ_m z_m, y) + α₂(e)·A),   A = (1/M)·Σ_m KL(q ‖ p_m)

(the released ``Alignment`` for two modalities: ``0.5·(kl_div(log p, q) + kl_div(log v, q))``, batch means; note
that ``F.kl_div(log p, q)`` is KL(q ‖ p), the reverse of the Jensen–Shannon divergence's KL(p ‖ q) terms —
``divergence: js`` takes the Jensen–Shannon divergence instead). The classification term is the cross-entropy of the
mean of the modalities' logits, as released (for concat the fused logits divided by M, so the fused head's argmax
and the evaluated predictions are the same).

The balance α₁ + α₂ = 1 moves from alignment to classification over training: the paper's "heuristic" strategy,
released as a degree-5 polynomial fitted to the learned α over the 200-epoch CREMA-D schedule (α₁ 0.20 at epoch
0, 0.54 at 100, 0.92 at 199). ``schedule: progress`` (the default here) reads the polynomial at the run's progress
mapped onto those 200 epochs, e = 200·epoch/num_epochs, so a shorter schedule follows the same curve; ``released``
reads it at the raw epoch index as the released script (on a 16-epoch run α₁ would stay near 0.2–0.3).

Not implemented: the paper's learning-based strategy (``Crema_epoch_learnable.py``: α updated each epoch by a
hypergradient through a Hessian-vector product on one training batch); it would need a second-order step outside
the loop's hooks. Extension (noted in the run): for M > 2 the mean over modalities of KL(q ‖ p_m) with q the mean
prediction, which is the released term for two.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note
from benchmark.models.model import ModelOutput

#: the released fit of α₁ over the epoch (``getAlpha_Learnable_Fitted``), lowest power first; α₂ = 1 − α₁
ALPHA1 = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)
RELEASED_EPOCHS = 200


def alpha_fitted(epoch: float) -> tuple[float, float]:
    """(α₁, α₂) of the released fitted schedule at ``epoch`` (of its 200)."""
    a1 = sum(c * epoch**i for i, c in enumerate(ALPHA1))
    return a1, 1.0 - a1


def alignment(logits: list[torch.Tensor], divergence: str = "released") -> torch.Tensor:
    """The alignment term A over the modalities' logits: (1/M)·Σ KL(q ‖ p_m) (released), or the Jensen–Shannon
    divergence (1/M)·Σ KL(p_m ‖ q) (``js``); batch means, q the mean prediction."""
    probs = [torch.softmax(z.float(), dim=-1) for z in logits]
    q = torch.stack(probs).mean(0)
    if divergence == "js":
        terms = [F.kl_div(q.log(), p, reduction="batchmean") for p in probs]
    else:
        terms = [F.kl_div(p.log(), q, reduction="batchmean") for p in probs]
    return torch.stack(terms).mean()


@BALANCERS.register("lfm")
class LFM(Balancer):
    """LFM (Yang et al., NeurIPS 2024; module docstring): L = 2·(α₁·CE(mean of the modalities' logits) + α₂·A), A the
    released alignment (1/M)·Σ KL(q ‖ p_m) between the modalities' predictions, with α₁ = 1 − α₂ following the
    released fitted schedule (0.20 → 0.92 over the run, ``schedule: progress``; ``released``: the raw epoch of its
    200). ``divergence: js`` uses the Jensen–Shannon divergence instead of the released reversed KLs."""

    display_name: ClassVar[str] = "LFM"
    paper = "Yang et al., NeurIPS 2024 (LFM, heuristic strategy: released fitted α schedule)"
    single_label_only = "its classification and alignment terms are softmax cross-entropy and divergences"

    def __init__(
        self,
        *,
        schedule: Literal["progress", "released"] = "progress",
        divergence: Literal["released", "js"] = "released",
    ) -> None:
        super().__init__()
        if schedule not in ("progress", "released"):
            raise ValueError(f"schedule must be progress or released, not {schedule!r}")
        if divergence not in ("released", "js"):
            raise ValueError(f"divergence must be released or js, not {divergence!r}")
        self.schedule, self.divergence = schedule, divergence

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 2:
            notes.append(
                "extension: the alignment is the mean over modalities of KL(mean prediction ‖ p_m) (the paper has two)"
            )
        return notes

    def alpha(self, epoch: int) -> tuple[float, float]:
        if self.schedule == "released":
            return alpha_fitted(epoch)
        return alpha_fitted(RELEASED_EPOCHS * epoch / self.ctx.num_epochs)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        logits = list(self.model.modality_logits(out).values())
        a1, a2 = self.alpha(self.ctx.epoch)
        cls = F.cross_entropy(torch.stack(logits).float().mean(0), y)
        align = alignment(logits, self.divergence)
        self.track(loss_cls=cls, loss_align=align, alpha_cls=torch.tensor(a1))
        return 2 * (a1 * cls + a2 * align)
