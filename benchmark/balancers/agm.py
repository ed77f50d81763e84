"""Adaptive Gradient Modulation (AGM)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.models.shapley import masked, shapley_shares
from benchmark.params import Epoch, Positive


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by k on the way back (AGM's backward hook)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (k,) = ctx.saved_tensors
        return grad * k, None


def agm_scores(shares: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i −log softmax(m_m)_i[y_i], with the probability floored at 1e-8 (as the reference code)."""
    return torch.stack(
        [
            -torch.log(torch.softmax(v.detach().float(), 1).gather(1, y[:, None]).clamp_min(1e-8)).mean()
            for v in shares.values()
        ]
    )


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float) -> torch.Tensor:
    """k_m = exp(α · min(exp(S̄_o − S̄_m) − exp(s_o − s_m), 10)), o = the other modality (mean of the others for M >
    2)."""
    m = scores.numel()
    others = (scores.sum() - scores) / (m - 1)
    running_others = (running.sum() - running) / (m - 1)
    return torch.exp(alpha * torch.clamp(torch.exp(running_others - running) - torch.exp(others - scores), max=10.0))


@BALANCERS.register("agm")
class AGM(Balancer):
    """AGM (Li et al. 2023): the fused output is split into per-modality shares by zero-masking Shapley values,
    m_a = ½(f(a,v) − f(0,v) + f(a,0)), m_v = ½(f(a,v) − f(a,0) + f(0,v)) (features of an absent modality set to
    zero, as the reference implementation masks encoder outputs), and the loss is CE(Σ_m m_m). Per step,
    s_m = mean −log softmax(m_m)[y], S̄_m its running mean over all earlier steps, and inside the epoch window
    the gradient reaching m_m is multiplied by k_m = exp(α·min(exp(S̄_o − S̄_m) − exp(s_o − s_m), 10)).
    The encoders run once per step and the fusion once per coalition (2^M passes; the reference re-runs the
    encoders for each masked pass). Extension: more than two modalities use M-player Shapley shares and the
    mean of the other modalities' scores."""

    paper = "Li et al. 2023 (AGM), Shapley shares and gradient coefficients"
    single_label_only = "its scores are −log softmax of the one true class"

    def __init__(self, *, alpha: Positive = 1.0, start_epoch: Epoch = 0, end_epoch: Epoch = 50) -> None:
        super().__init__()
        self.alpha, self.start_epoch, self.end_epoch = alpha, start_epoch, end_epoch

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if num_modalities > 2:
            return [
                "extension: M-player Shapley shares and the mean of the other modalities' scores (the paper has two "
                "modalities)"
            ]
        return []

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.running = torch.zeros(len(model.modalities), device=ctx.device)
        self.steps = 0

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = model.encode(inputs)
        # the shares are turned into the loss in loss(), where the labels are known
        self._shares = shapley_shares(lambda keep: model.fusion(masked(features, keep)), model.modalities)
        return model.decode(features)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        shares = self._shares
        scores = agm_scores(shares, y)
        k = agm_coefficients(scores, self.running, self.alpha)
        self.steps += 1
        self.running = self.running + (scores - self.running) / self.steps  # cumulative mean, updated after use
        if self.start_epoch <= self.ctx.epoch <= self.end_epoch:
            shares = {m: _ScaleGrad.apply(v, k[i]) for i, (m, v) in enumerate(shares.items())}
        self.track(k=dict(zip(self.model.modalities, k)), score=dict(zip(self.model.modalities, scores)))
        logits = torch.stack(list(shares.values())).sum(0)
        return F.cross_entropy(logits, y)
