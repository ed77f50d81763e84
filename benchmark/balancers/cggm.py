"""Classifier-Guided Gradient Modulation (CGGM, Guo et al., NeurIPS 2024).

Released code (github.com/zrguo/CGGM, read at commit 21e428c) that this module compares against:
src/msatrain.py (CMU-MOSI, IEMOCAP; three modalities), src/foodtrain.py (UPMC-Food 101; two), src/segtrain.py
(BraTS; four), models/msamodel.py (``ClassifierGuided``, ``cal_coeff``), src/eval_metrics.py (``cal_cos``, the
per-batch metrics) and run/*_run.py (the defaults). Per training step of the released loop:

1. forward; the task loss plus λ·l_gm *of the previous step* (none on the very first step) is back-propagated;
2. the classifiers (one per modality: two transformer layers, a projection and ``out_layer``) run on the encoder
   outputs detached from the graph (``hs_detach``), their summed task loss is back-propagated and they are stepped
   by their own optimiser (``cls_lr`` 5e-4); the l_gm gradient that reached them is zeroed first;
3. ε_m = the classifier's metric on this batch (accuracy; binary accuracy for MOSI; Dice for BraTS), computed from
   the logits before the classifier step; Δε_m = ε_m − ε_m(previous step) (ε = 0 before the first step, and the
   previous step's value carries over epoch boundaries); with S = Σ_k Δε_k + 1e-8:  B_m = (S − Δε_m) / S;
4. l_gm = (Σ_m |B_m| − Σ_m B_m · cos(W_m, W_Ω)) / M, where W_m is classifier m's ``out_layer.weight`` and W_Ω the
   fused model's ``out_layer.weight`` — the *weights*, not their gradients (``cal_cos`` is handed the parameters);
   kept with its graph for the next step, where its gradient (evaluated at this step's weights) reaches W_Ω only;
5. every gradient of encoder m (``encoders.{m}.*``; the input projections are not included) is multiplied by
   ρ·B_m; then ``clip_grad_norm_(model.parameters(), clip)`` (0.8 in every script) and the optimiser step.

Defaults in the scripts: ρ (``rou``) 1.3 and λ (``lamda``) 0.2 for MOSI and IEMOCAP (also the README's command),
ρ 1.3 / λ 0.05 for Food-101, ρ 1.0 / λ 0.1 for BraTS (whose ``vision_encoder``/``text_encoder`` name filter
matches no parameter of the segmentation model, so its magnitude modulation appears to be a no-op).

The paper (arXiv 2411.01409) names the direction term a cosine between the classifiers' gradients and the fusion
module's gradient, and its algorithm adds the previous iteration's L_gm (as zrguo/CGGM issue #6 describes, where
two readers point out that a previous-iteration value built from gradients carries no gradient, and that the code
uses parameters). The default ``direction: gradient`` therefore takes the paper's objective L_task + λ·L_gm with
gradient cosines of the *current* step, made differentiable (``create_graph`` on the fused head's gradient): the
paper's quantities, not its one-step-late schedule, which would make the term a constant. The paper's equation text
itself could not be read where this module was written (only its abstract and the released code); check it before
relying on the default over the released ``direction: weights``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer
from benchmark.metrics import hits, task_loss
from benchmark.models.fusions import Fusion
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import NonNegative, Positive

#: the improvement sum's guard, as the released code (diff_sum = Σ Δε + 1e-8, also in the numerator)
GUARD = 1e-8
DIRECTIONS = ("gradient", "weights")

WEIGHTS_NOTE = (
    "CGGM direction: weights — as the released code, cos(classifier last-layer weight, fused-head weight block) "
    "of the previous step, whose gradient reaches only the fused head; the paper aligns the gradients"
)
NO_CLIP_NOTE = (
    "CGGM clip: null — no gradient-norm clipping; the released scripts clip every run to 0.8, which bounds the "
    "steps where Σ Δε ≈ 0 makes B (and ρ·B) of order 1e6"
)
NEEDS_LINEAR_BLOCKS = (
    "CGGM's direction term compares each modality's classifier with the fused classifier acting on that "
    "modality; fusion '{name}' mixes the modalities before its head, so it has no such per-modality block"
)


def cggm_coefficients(accuracy: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Δε = ε − ε_prev and the balancing terms B_m = (S − Δε_m) / S, S = Σ_k Δε_k + 1e-8 (the released rule).

    For two modalities B_1 = Δε_2 / (Δε_1 + Δε_2): the modality that improved less gets the larger B. Nothing keeps
    B in [0, 1]: a modality that improved while the others got worse gets B < 0 (its encoder's gradient is reversed),
    and when the improvements cancel (S = 1e-8) |B| is of order 1e8·|Δε|."""
    delta = accuracy - previous
    total = delta.sum() + GUARD
    return delta, (total - delta) / total


def head_block(fusion: Fusion, modality: str) -> tuple[nn.Parameter, tuple | None] | None:
    """The fused classifier's weight block acting on ``modality`` alone: (parameter, index into it), e.g. the
    modality's columns of a concat head or its own head's weight for sum fusion; None for fusions that mix first."""
    for p, index in fusion.modality_head_params(modality):
        if p.dim() == 2:
            return p, index
    return None


def _block(p: torch.Tensor, index: tuple | None) -> torch.Tensor:
    return p if index is None else p[index]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0)


@BALANCERS.register("cggm")
class CGGM(Balancer):
    """CGGM (Guo et al. 2024). One classifier per modality (here the harness's linear unimodal head) is trained by
    its task loss on the modality's encoder features *detached* from the graph, so it never changes the encoders.
    Per step: ε_m = the classifier's accuracy on the batch (hit rate for multi-label data), Δε_m = ε_m − ε_m of the
    previous step (0 before the first; carried over epochs), S = Σ_k Δε_k + 1e-8, balancing term
    B_m = (S − Δε_m) / S (a modality that improved less than the others gets more).

    Magnitude: after backward every gradient of encoder m is multiplied by ρ·B_m (every step, every epoch).
    Direction: L = L_task + Σ_m L_task(classifier_m) + λ·L_gm with
    L_gm = (Σ_m |B_m| − Σ_m B_m · cos(g_m, g_Ω,m)) / M, g_m the gradient of classifier m's loss with respect to its
    last-layer weight (a constant) and g_Ω,m the gradient of the fused task loss with respect to the fused
    classifier's weight block acting on modality m (concat: its columns; sum: its own head), taken with
    ``create_graph`` so that minimising L_gm turns the fused gradient towards the classifiers of the modalities
    with large B (its gradient reaches the encoders and the fused head). The encoders' gradients of the whole loss
    are then scaled by ρ·B_m, and with ``clip`` the total gradient norm of the model's parameters (the unimodal heads
    excluded, as the released code clips the model and not its classifiers) is clipped to ``clip``.

    Where the released code differs (module docstring: files): its direction term uses the *weights* of the
    classifiers' and the fused model's last layers, not their gradients, and is added one step late (λ·l_gm of step
    t − 1 in the loss of step t, its gradient evaluated at step t − 1's weights, reaching the fused head only):
    ``direction: weights`` reproduces that (the pending term is kept as its value and its gradient, so a resumed run
    is exact). The released classifiers are two transformer layers with their own optimiser and learning rate
    (5e-4); here they are the model's linear unimodal heads, trained by the run's optimiser. The released code
    modulates the transformer stack of each encoder but not its input projection; here every encoder parameter.
    ``clip`` defaults to the released 0.8 (which the released scripts apply to every method's runs).

    Fusions: the direction term needs the fused classifier's block per modality (concat, sum and the block
    fusions with a concat head); the released models' fused head acts on a fused token of each classifier's
    width, a single weight, where here each modality's block stands for it (an adaptation, noted in the runs).
    M ≥ 2 modalities as the paper (its datasets have two, three and four).
    """

    display_name: ClassVar[str] = "CGGM"
    paper = "Guo et al. 2024 (CGGM), balancing term B, magnitude ρ·B and direction loss L_gm"
    unimodal_heads = True
    #: the released scripts' per-dataset values (run/*_run.py); the defaults are MOSI's and IEMOCAP's
    presets = {
        "cmu_mosi": {"rho": 1.3, "lam": 0.2, "source": "released CGGM code, run/mosi_run.py (rou 1.3, lamda 0.2)"},
        "iemocap": {"rho": 1.3, "lam": 0.2, "source": "released CGGM code, run/iemo_run.py (rou 1.3, lamda 0.2)"},
        "food101": {
            "rho": 1.3,
            "lam": 0.05,
            "source": "released CGGM code, run/food_run.py (rou 1.3, lamda 0.05)",
        },
        "brats": {"rho": 1.0, "lam": 0.1, "source": "released CGGM code, run/brats_run.py (rou 1.0, lamda 0.1)"},
    }

    def __init__(
        self,
        *,
        rho: Positive = 1.3,
        lam: NonNegative = 0.2,
        direction: Literal["gradient", "weights"] = "gradient",
        clip: Positive | None = 0.8,
    ) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        self.rho, self.lam, self.direction, self.clip = rho, lam, direction, clip
        #: the pending released-code term (direction: weights): value and gradient per modality block, or None
        self.pending: dict | None = None
        if direction == "weights" and lam > 0:
            self.run_notes.append(WEIGHTS_NOTE)
        if clip is None:
            self.run_notes.append(NO_CLIP_NOTE)

    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        if getattr(fusion_cls, "modality_head_params", None) is Fusion.modality_head_params:
            return NEEDS_LINEAR_BLOCKS.format(name=getattr(fusion_cls, "name", fusion_cls.__name__))
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if fusion_cls is None:
            return []
        return [
            f"adaptation: in CGGM's direction term the fused classifier is represented, per modality, by the weight "
            f"block of fusion '{fusion_cls.name}' acting on that modality (the released models have one fused head "
            "of each classifier's width)"
        ]

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        mods = model.modalities
        blocks = {m: head_block(model.fusion, m) for m in mods}
        missing = [m for m, b in blocks.items() if b is None]
        if missing:
            raise ValueError(NEEDS_LINEAR_BLOCKS.format(name=getattr(model.fusion, "name", type(model.fusion))))
        self.blocks = blocks
        self.encoder_params = {m: [p for p in model.encoders[m].parameters() if p.requires_grad] for m in mods}
        heads = {id(p) for p in model.unimodal_heads.parameters()}
        self.clip_params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
        self.dtype = torch.float32 if ctx.device.type == "mps" else torch.float64
        self.previous = torch.zeros(len(mods), dtype=self.dtype, device=ctx.device)  # ε of the previous step

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = model.encode(inputs)
        unimodal = {m: model.unimodal_heads[m](features[m].detach()) for m in model.modalities}
        return ModelOutput(model.fusion(features), features, unimodal)

    # --- the loss ------------------------------------------------------------------------------------------------
    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        mods = self.model.modalities
        fused = task_loss(out.logits, y)
        uni = {m: task_loss(out.unimodal[m], y) for m in mods}
        accuracy = torch.stack([hits(out.unimodal[m].detach(), y).to(self.dtype).mean() for m in mods])
        delta, balance = cggm_coefficients(accuracy, self.previous)
        self.previous = accuracy
        self.balance = balance
        loss = fused + sum(uni.values())
        if self.lam > 0 and torch.is_grad_enabled():
            if self.direction == "gradient":
                term, cos = self.gradient_term(fused, uni, balance)
                loss = loss + self.lam * term
            else:
                loss = loss + self.lam * self.pending_term()
                term, cos = self.weights_term(balance)
            self.track(l_gm=term, cos=dict(zip(mods, cos)))
        self.track(acc_head=dict(zip(mods, accuracy)), improvement=dict(zip(mods, delta)))
        self.track(B=dict(zip(mods, balance)), k=dict(zip(mods, self.rho * balance)))
        return loss

    def gradient_term(
        self, fused: torch.Tensor, uni: dict[str, torch.Tensor], balance: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_gm of this step from gradients: cos(∂L_m/∂W_m, ∂L_fused/∂W_Ω,m), the fused side with its graph."""
        mods = self.model.modalities
        params = list({id(p): p for p, _ in self.blocks.values()}.values())
        fused_grads = dict(zip(map(id, params), torch.autograd.grad(fused, params, create_graph=True)))
        cos = []
        for m in mods:
            weight = self.model.unimodal_heads[m].weight
            (head_grad,) = torch.autograd.grad(uni[m], weight, retain_graph=True)
            p, index = self.blocks[m]
            cos.append(_cos(head_grad.detach(), _block(fused_grads[id(p)], index)))
        cos = torch.stack(cos)
        b = balance.to(cos.dtype)
        return (b.abs().sum() - (b * cos).sum()) / len(mods), cos.detach()

    def weights_term(self, balance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The released l_gm of this step, from this step's weights: stored (value, gradient at these weights) for the
        next step's loss. Returns its value and the cosines."""
        mods = self.model.modalities
        with torch.enable_grad():
            blocks = [_block(self.blocks[m][0].detach(), self.blocks[m][1]).clone().requires_grad_() for m in mods]
            cos = torch.stack([_cos(self.model.unimodal_heads[m].weight.detach(), w) for m, w in zip(mods, blocks)])
            b = balance.to(cos.dtype)
            value = (b.abs().sum() - (b * cos).sum()) / len(mods)
            grads = torch.autograd.grad(value, blocks)
        self.pending = {"value": value.detach(), "grad": {m: g.detach() for m, g in zip(mods, grads)}}
        return value.detach(), cos.detach()

    def pending_term(self) -> torch.Tensor | float:
        """The previous step's l_gm as a loss term: its value, with its stored gradient on the fused blocks."""
        if self.pending is None:
            return 0.0
        term = self.pending["value"]
        for m, g in self.pending["grad"].items():
            p, index = self.blocks[m]
            linear = (g.to(p.dtype) * _block(p, index)).sum()
            term = term + linear - linear.detach()
        return term

    # --- the gradients --------------------------------------------------------------------------------------------
    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        k = (self.rho * self.balance).float()
        for i, m in enumerate(self.model.modalities):
            grads = [p.grad for p in self.encoder_params[m] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, k[i].to(grads[0].device))
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.clip_params, self.clip)
            self.track(grad_norm=norm)
