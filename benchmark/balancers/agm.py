"""Adaptive Gradient Modulation (AGM, Li et al. ICCV 2023).

Released code (github.com/lihong2303/AGM_ICCV2023, read at commit 5a65542) that this module follows, CREMA-D files
unless noted:

- model/CREMAD_net.py ``GradMod.forward`` (l. 57-72): the full pass f(a,v) runs in the model's mode (train: the
  loop's ``model.train()``, run/CREMAD_main.py l. 18); then ``self.net.eval()`` and the whole network runs again on
  zeroed inputs, f(a,0), f(0,v) and f(0,0) (``AVClassifier.forward`` l. 100-105 zeroes the input tensors); then
  ``self.net.train()`` (its ``mode`` is ``cfgs.mode`` = 'train' in training, utils/config.py l. 8). No
  ``torch.no_grad``: the masked passes are part of the graph. In eval mode batch normalisation uses (and does not
  update) its running statistics and dropout is off, so only the full pass updates BN statistics. f(0,0) is
  returned but unused in training (it cancels in the shares).
- shares (CREMAD_main.py l. 65-66, CREMAD_net.py l. 10-17): m_a = ½(f(a,v) − f(0,v) + f(a,0)),
  m_v = ½(f(a,v) − f(a,0) + f(0,v)); the loss is CE(m_a + m_v) (l. 69); identity modules with full backward hooks
  multiply ∂L/∂m_a by ``scale_a`` and ∂L/∂m_v by ``scale_v`` (CREMAD_net.py l. 42-55).
- scores (CREMAD_main.py l. 130-143): s_m = batch mean of −log softmax(m_m)[y], a probability below 1e-8 counted as
  1e-8; k_m = exp(α·min(exp(S̄_o − S̄_m) − exp(s_o − s_m), 10)) (l. 145-152) with S̄ the running mean of all earlier
  steps' scores, updated after k is computed (l. 154-155, cumulative over epochs: ``iteration`` = global step).
- window (l. 159-165, argparse in utils/config.py l. 74-75): ``update_scale(k_a, k_v)`` only while
  ``modulation_starts <= epoch <= modulation_ends``, defaults 0 and 20, epochs 1-based (``range(1, EPOCHS+1)``,
  l. 635): the 0-based epochs 0..19. The hooks stay registered outside the window and ``scale`` is never reset, so
  after the window every step keeps the last in-window k (before it, k = 1).
- clipping (l. 233-243, also outside the window): after backward, if any element of the gradient of the fused
  classifier's weight (``fusion_module.fc_out.weight``; ``head.fc.weight`` for early fusion; not the bias) is
  > 1 or < −1, ``clip_grad_norm_(model.parameters(), max_norm=1.0)`` (total L2 norm of every parameter's gradient).
- other datasets: three modalities (run/URFunny_main.py l. 117-130, model/URFunny_net.py l. 9-31) use the 3-player
  Shapley shares and exp((mean(s) − s_m)·3/2) = exp(mean_{o≠m} s_o − s_m), with the exponent capped at 7 and the
  clipping at 5 (l. 203-207); AVE, AV-MNIST and MOSEI do not cap the exponent (run/AVE_main.py l. 133-134,
  run/AVMNIST_main.py l. 116-117, run/MOSEI_main.py l. 109-110); AVE does not clip; MOSEI's condition reads
  ``grad_max > 1.0 and grad_min < 1.0`` (l. 139), which holds almost always (not reproduced). Presets ``cremad``,
  ``ave``, ``avmnist`` and ``urfunny`` give these per-dataset cap and clip values.

The project differs in: an absent modality's input is the model's "absent" input (``MultimodalModel.without``), by
default the training split's mean input, because zero means "no signal" only for zero-mean inputs
(``train.absent_input: zero`` gives the released literal zeros); f(∅) is not computed (it cancels in every share);
masked passes restore each module's own training flag afterwards. ``masking: feature`` (an extension, noted in
the run) is the earlier harness rule: the encoders run once in train mode and the fusion runs on zeroed encoder
features per coalition, so no gradient reaches an encoder through a pass where its modality is absent.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, in_window
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.models.shapley import coalitions, masked, shapley_shares
from benchmark.params import EpochBound, Positive


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by k on the way back (AGM's backward hook)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (k,) = ctx.saved_tensors
        return grad * k.to(grad.dtype), None


def agm_scores(shares: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i −log softmax(m_m)_i[y_i], with the probability floored at 1e-8 (as the released code)."""
    return torch.stack(
        [
            -torch.log(torch.softmax(v.detach().float(), 1).gather(1, y[:, None]).clamp_min(1e-8)).mean()
            for v in shares.values()
        ]
    )


def agm_coefficients(
    scores: torch.Tensor, running: torch.Tensor, alpha: float, cap: float | None = 10.0
) -> torch.Tensor:
    """k_m = exp(α · min(exp(S̄_o − S̄_m) − exp(s_o − s_m), cap)), o = the other modality (the mean of the others'
    scores for M > 2, which is the released UR-Funny rule exp((mean(s) − s_m)·M/(M−1))); ``cap`` None: no cap."""
    m = scores.numel()
    others = (scores.sum() - scores) / (m - 1)
    running_others = (running.sum() - running) / (m - 1)
    exponent = torch.exp(running_others - running) - torch.exp(others - scores)
    if cap is not None:
        exponent = torch.clamp(exponent, max=cap)
    return torch.exp(alpha * exponent)


def head_weights(fusion: nn.Module, num_classes: int) -> list[nn.Parameter]:
    """The weight(s) of the fused classifier, the layer whose output is the logits (the released clipping condition
    reads ``fc_out.weight``): ``fusion.head`` when it is a linear layer, every per-modality head of ``fusion.heads``
    (summed heads), else the last linear layer with ``num_classes`` outputs; empty when there is none."""
    head = getattr(fusion, "head", None)
    if isinstance(head, nn.Linear):
        return [head.weight]
    heads = getattr(fusion, "heads", None)
    if isinstance(heads, nn.ModuleDict) and all(isinstance(h, nn.Linear) for h in heads.values()):
        return [h.weight for h in heads.values()]
    linear = [mod for mod in fusion.modules() if isinstance(mod, nn.Linear) and mod.out_features == num_classes]
    return [linear[-1].weight] if linear else []


def clip_if_head_exceeds(params: list[nn.Parameter], head: list[nn.Parameter], threshold: float) -> torch.Tensor:
    """The released rule without a host sync: if any element of the head weights' gradient is above ``threshold``
    or below −threshold, scale every gradient as ``clip_grad_norm_(params, max_norm=threshold)`` does
    (coefficient min(1, threshold / (‖g‖₂ + 1e-6)), ‖g‖₂ over all of them); otherwise leave them. Returns whether
    it clipped (a 0-d bool tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    head_grads = [w.grad for w in head if w.grad is not None]
    if not grads or not head_grads:
        return torch.zeros((), dtype=torch.bool)
    trigger = torch.stack([g.detach().abs().max() for g in head_grads]).max() > threshold
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    coef = torch.where(trigger, torch.clamp(threshold / (norm + 1e-6), max=1.0), torch.ones_like(norm))
    torch._foreach_mul_(grads, coef.to(grads[0].device))
    return trigger


FEATURE_MASKING_NOTE = (
    "extension: AGM masking 'feature' (shares from zeroed encoder features after one train-mode encoder pass; the "
    "released code re-runs the whole network in eval mode on zeroed inputs, so gradient also reaches an encoder "
    "through the passes where its modality is absent)"
)


@BALANCERS.register("agm")
class AGM(Balancer):
    """AGM (Li et al. 2023): the fused output is split into per-modality Shapley shares,
    m_a = ½(f(a,v) − f(0,v) + f(a,0)), m_v = ½(f(a,v) − f(a,0) + f(0,v)) (M-player Shapley shares for M > 2, each
    plus 1/M of f(∅), so they add up to f(N)), and the loss is CE(Σ_m m_m). Per step s_m = mean −log softmax(m_m)[y]
    (probabilities floored at 1e-8), S̄_m its running mean over all earlier steps (updated after use), and the
    gradient reaching m_m is multiplied by k_m = exp(α·min(exp(S̄_o − S̄_m) − exp(s_o − s_m), cap)) (o: the other
    modality, the mean of the others for M > 2).

    As the released code (module docstring: files and lines): ``masking: input`` runs the whole model on the inputs
    with absent modalities replaced, one pass per coalition, with the model in eval mode for those passes and inside
    autograd (gradient reaches every encoder through every pass); the full pass runs in train mode. k is updated
    inside the epoch window [start_epoch, end_epoch] (0-based, inclusive; the released 1-based [0, 20] is 0-based
    [0, 19]); with ``after_window: last`` (released) the last in-window k keeps scaling after the window, with
    ``one`` k = 1 outside it. After backward, in every epoch, if any element of the fused classifier's weight
    gradient exceeds ±``clip`` the total gradient norm of all parameters is clipped to ``clip`` (released: 1;
    None: off). ``cap`` None removes the exponent cap (released AVE, AV-MNIST, MOSEI); UR-Funny used cap 7, clip 5.

    Where the project differs: "absent" is the model's absent input, by default the training mean input instead of
    literal zero, because zero means no signal only for zero-mean inputs (``train.absent_input: zero`` restores
    zeros); f(∅) is not computed (it cancels). Extension: ``masking: feature`` zeroes encoder features after one
    train-mode encoder pass and runs only the fusion per coalition (no gradient reaches the other encoder through a
    masked pass)."""

    display_name: ClassVar[str] = "AGM"
    paper = "Li et al. 2023 (AGM), Shapley shares and gradient coefficients"
    single_label_only = "its scores are −log softmax of the one true class"
    #: the released code's per-dataset differences (the defaults are its CREMA-D setting)
    presets = {
        "cremad": {"cap": 10.0, "clip": 1.0, "source": "released AGM code, run/CREMAD_main.py l. 151-152, 233-243"},
        "ave": {"cap": None, "clip": None, "source": "released AGM code, run/AVE_main.py l. 133-134 (no cap, no clip)"},
        "avmnist": {"cap": None, "clip": 1.0, "source": "released AGM code, run/AVMNIST_main.py l. 116-117, 186-190"},
        "urfunny": {"cap": 7.0, "clip": 5.0, "source": "released AGM code, run/URFunny_main.py l. 128-130, 203-207"},
    }

    def __init__(
        self,
        *,
        alpha: Positive = 1.0,
        start_epoch: EpochBound = 0,
        end_epoch: EpochBound = 19,
        masking: Literal["input", "feature"] = "input",
        after_window: Literal["last", "one"] = "last",
        cap: Positive | None = 10.0,
        clip: Positive | None = 1.0,
    ) -> None:
        super().__init__()
        if masking not in ("input", "feature"):
            raise ValueError(f"masking must be 'input' or 'feature', not {masking!r}")
        if after_window not in ("last", "one"):
            raise ValueError(f"after_window must be 'last' or 'one', not {after_window!r}")
        self.alpha, self.start_epoch, self.end_epoch = alpha, start_epoch, end_epoch
        self.masking, self.after_window, self.cap, self.clip = masking, after_window, cap, clip
        if masking == "feature":
            self.run_notes = [FEATURE_MASKING_NOTE]

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        # M > 2 follows the released UR-Funny code (M-player shares, mean of the other scores); the parameter-dependent
        # extension (masking: feature) is recorded per run (run_notes)
        return []

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.running = torch.zeros(len(model.modalities), device=ctx.device)
        self.scale = torch.ones(len(model.modalities), device=ctx.device)  # the hooks' k (released: starts at 1)
        self.steps = 0
        self._head = head_weights(model.fusion, model.num_classes)

    # --- the shares -----------------------------------------------------------------------------------------------
    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        # the shares are turned into the loss in loss(), where the labels are known
        if self.masking == "feature":
            features = model.encode(inputs)
            self._passes = {}

            def fused(keep):
                self._passes[keep] = model.fusion(masked(features, keep))
                return self._passes[keep]

            self._shares = shapley_shares(fused, model.modalities)
            return model.decode(features)
        out = model(inputs)  # the full pass, in the model's own (training) mode
        self._passes = self.masked_passes(model, inputs, out.logits)
        self._shares = shapley_shares(self._passes.__getitem__, model.modalities)
        return out

    @staticmethod
    def masked_passes(
        model: MultimodalModel, inputs: dict[str, torch.Tensor], full: torch.Tensor
    ) -> dict[frozenset[str], torch.Tensor]:
        """f(S) for every coalition S: ``full`` for all modalities, zeros for none (f(∅) cancels in every share),
        and the whole model on ``model.without(inputs, S)`` in eval mode for the others (with autograd; every
        module's training flag is restored afterwards)."""
        everything = frozenset(model.modalities)
        passes = {frozenset(): torch.zeros_like(full), everything: full}
        flags = [(mod, mod.training) for mod in model.modules()]
        model.eval()
        try:
            for keep in coalitions(model.modalities):
                if keep and keep != everything:
                    passes[keep] = model(model.without(inputs, keep)).logits
        finally:
            for mod, flag in flags:
                mod.training = flag
        return passes

    # --- the coefficients -----------------------------------------------------------------------------------------
    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        shares = self._shares
        scores = agm_scores(shares, y)
        k = agm_coefficients(scores, self.running, self.alpha, self.cap)
        self.steps += 1
        self.running = self.running + (scores - self.running) / self.steps  # cumulative mean, updated after use
        if in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs):
            self.scale = k
            applied = k
        elif self.after_window == "last":
            applied = self.scale  # the released hooks keep their last scale (1 before the window)
        else:
            applied = torch.ones_like(k)
        shares = {m: _ScaleGrad.apply(v, applied[i]) for i, (m, v) in enumerate(shares.items())}
        self.track(k=dict(zip(self.model.modalities, applied)), score=dict(zip(self.model.modalities, scores)))
        logits = torch.stack(list(shares.values())).sum(0)
        return F.cross_entropy(logits, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        if self.clip is None:
            return
        clipped = clip_if_head_exceeds(list(self.model.parameters()), self._head, self.clip)
        self.track(clipped=clipped)
