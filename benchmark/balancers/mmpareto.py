"""MMPareto (Wei & Hu, ICML 2024): Pareto integration of the multimodal and unimodal gradients of each encoder.

The released code (GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py ``train_epoch``, read at commit a339db3) that the
options below follow:

- losses: ``loss_mm`` (cross-entropy of the concatenation head), ``loss_a``, ``loss_v`` (cross-entropy of one linear
  head per encoder); each is back-propagated on its own (``retain_graph``) and the gradients of every encoder
  parameter (names containing 'audio' / 'visual', heads excluded) are kept per loss.
- direction: ``cos = cosine(g_mm, g_m)`` over the concatenation of the encoder's parameter gradients; ``cos > 0``:
  weights (1/2, 1/2); else ``MinNormSolver.find_min_norm_element`` on the two gradients, which for two vectors is
  the closed form of the min-norm point of their segment (Sener & Koltun 2018).
- magnitude: after ``(loss_mm + loss_a + loss_v).backward()``, for every encoder parameter *tensor* p:
  ``new = 2·w_mm·g_mm,p + 2·w_m·g_m,p``; ``diff = ‖total grad of p‖ / ‖new‖``; the gradient becomes
  ``gamma·diff·new`` if ``diff > 1``, else ``gamma·new``, with ``gamma = 1.5`` hard-coded. Heads keep the summed
  loss's gradient (each head: its own loss's), without gamma.
- settings (code/script/mmpareto.sh and argparse defaults): SGD lr 0.002, momentum 0.9, weight decay 1e-4,
  batch 64, 50 epochs, StepLR(30, 0.1); CREMA-D only.

BalanceBenchmark's MMPareto trainer (GeWu-Lab/BalanceBenchmark, balancemm/trainer/MMPareto_trainer.py) is not
followed: it applies the rule inside an epoch window [0, 80] only and skips the update outside it, accumulates the
per-loss gradients without zeroing between the backward calls, and drops the min-norm weights of a conflicting step
(they are assigned to a loop variable), which leaves the weights at 0.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce, unimodal_ce
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import Positive

MAGNITUDE = ("encoder", "tensor")

MORE_MODALITIES_NOTE = (
    "extension: with M > 2 modalities every encoder integrates its own two gradients (fused loss, its unimodal "
    "loss) by the same rule; the paper's experiments have two modalities"
)
STREAM_FUSION_NOTE = (
    "extension: fusion '{name}' mixes the streams inside the encoders, so the other modalities' unimodal losses also "
    "reach an encoder: their gradients are added to its MMPareto gradient unchanged (without gamma), and the fusion's "
    "own parameters between the blocks get the summed gradient of all losses"
)


def min_norm_weight(ff: torch.Tensor, uu: torch.Tensor, fu: torch.Tensor) -> torch.Tensor:
    """The weight c of g_f in the min-norm point c·g_f + (1 − c)·g_u of the segment between two gradients, from
    ff = ‖g_f‖², uu = ‖g_u‖², fu = ⟨g_f, g_u⟩: c = clamp((uu − fu) / ‖g_f − g_u‖², 0, 1) (Sener & Koltun 2018,
    Alg. 1; equal gradients: 1/2)."""
    denominator = ff + uu - 2 * fu
    c = (uu - fu) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, c.clamp(0, 1), torch.full_like(c, 0.5))


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """⟨a, b⟩ over all the tensors of two gradients (in their dtype: parameters' gradients are float32 or wider)."""
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    """x where it is positive, else 1 (a safe divisor)."""
    return torch.where(x > 0, x, torch.ones_like(x))


def mmpareto_gradient(
    g_fused: list[torch.Tensor], g_uni: list[torch.Tensor], gamma: float = 1.5, magnitude: str = "encoder"
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One encoder's MMPareto gradient from its fused-loss and unimodal-loss gradients (one tensor per parameter).

    Direction: cos(g_f, g_u) ≥ 0 (no conflict): weights (1/2, 1/2); cos < 0: the two-objective min-norm (MGDA)
    weights (c, 1 − c). h = 2·(w_f·g_f + w_u·g_u), so without conflict h = g_f + g_u, the uniform sum.
    Magnitude: ``encoder`` — h is rescaled to ‖g_f + g_u‖, both norms over the whole encoder (never a shrink: the
    midpoint lies on the segment, so ‖h‖ ≤ ‖g_f + g_u‖); ``tensor`` — the released code, each parameter tensor
    separately: h_p ← h_p · ‖g_f,p + g_u,p‖ / ‖h_p‖ where that ratio exceeds 1, else unchanged. Then everything is
    multiplied by ``gamma``. A zero h stays zero (the released code gives NaN there).

    Returns the gradients and the step's statistics (cosine, conflict, w_f, ‖g_f‖/‖g_u‖), 0-d tensors."""
    if magnitude not in MAGNITUDE:
        raise ValueError(f"magnitude must be one of {', '.join(MAGNITUDE)}, not {magnitude!r}")
    ff, uu, fu = _dot(g_fused, g_fused), _dot(g_uni, g_uni), _dot(g_fused, g_uni)
    cos = fu / _nonzero(ff.sqrt() * uu.sqrt())
    conflict = fu < 0
    w_f = torch.where(conflict, min_norm_weight(ff, uu, fu), torch.full_like(fu, 0.5))
    h = [2 * (w_f * f + (1 - w_f) * u) for f, u in zip(g_fused, g_uni)]
    uniform = [f + u for f, u in zip(g_fused, g_uni)]
    if magnitude == "encoder":
        length = _dot(h, h).sqrt()
        ratio = torch.where(conflict & (length > 0), _dot(uniform, uniform).sqrt() / _nonzero(length), 1.0)
        scales = [gamma * ratio] * len(h)
    else:
        scales = []
        for x, s in zip(h, uniform):
            ratio = torch.linalg.vector_norm(s) / _nonzero(torch.linalg.vector_norm(x))
            scales.append(gamma * torch.where(ratio > 1, ratio, 1.0))
    stats = {
        "cos": cos,
        "conflict": conflict.float(),
        "weight_fused": w_f,
        "norm_ratio": ff.sqrt() / _nonzero(uu.sqrt()),
    }
    return [x * k.to(x.dtype) for x, k in zip(h, scales)], stats


@BALANCERS.register("mmpareto")
class MMPareto(Balancer):
    """MMPareto (Wei & Hu 2024, Alg. 1): the multitask-like objective L = CE(fused) + Σ_m CE(unimodal_m), one linear
    unimodal head per encoder. Per step and encoder m, g_f = ∇_θm CE(fused) and g_u = ∇_θm CE(unimodal_m); if
    cos(g_f, g_u) ≥ 0 they are combined with weights (1/2, 1/2), else with the min-norm (Pareto, MGDA) weights of the
    two objectives; h = 2·(w_f·g_f + w_u·g_u) is rescaled to the magnitude of the uniform sum ‖g_f + g_u‖ (over the
    whole encoder) and multiplied by ``gamma`` (``mmpareto_gradient``). Every other parameter gets its own losses'
    gradients: the fused head CE(fused)'s, unimodal head m CE(unimodal_m)'s (no gamma).

    Defaults: ``gamma`` 1.5 is the released code's hard-coded value (the magnitude enhancement; 1.0 keeps exactly
    the uniform sum's magnitude). Where the released code differs (module docstring): it rescales each parameter
    tensor separately, and only where that enlarges it (``magnitude: tensor``; preset ``released``); it counts
    cos = 0 as a conflict (only exactly orthogonal gradients differ); it gives NaN where a combined tensor is zero
    (here zero).

    How, in the one loop: ``forward`` runs the encoders and hands the fusion and heads detached copies of the
    features, so the loop's backward trains what lies after the features; ``loss`` takes each loss's gradient at
    the features (cheap) and back-propagates them through the encoders once for the fused loss and once per
    unimodal loss (``torch.autograd.grad``, 1 + M encoder passes, the released code's 1 + M + 1); ``after_backward``
    sets the encoder gradients. Extension (notes): M > 2 applies the rule per encoder; fusions acting between the
    encoder blocks (se_gate, nl_gate) add the other unimodal losses' gradients that reach an encoder unchanged."""

    display_name: ClassVar[str] = "MMPareto"
    paper = "Wei & Hu 2024 (MMPareto), Alg. 1"
    unimodal_heads = True
    presets = {
        "released": {
            "gamma": 1.5,
            "magnitude": "tensor",
            "source": "released MMPareto code, code/MMPareto.py train_epoch (gamma=1.5, per-tensor norm rescaling)",
        },
        "uniform-magnitude": {
            "gamma": 1.0,
            "source": "Wei & Hu 2024: the final gradient with the magnitude of the uniform sum ‖g_f + g_u‖, no gamma",
        },
    }

    def __init__(self, *, gamma: Positive = 1.5, magnitude: Literal["encoder", "tensor"] = "encoder") -> None:
        super().__init__()
        if magnitude not in MAGNITUDE:
            raise ValueError(f"magnitude must be one of {', '.join(MAGNITUDE)}, not {magnitude!r}")
        self.gamma, self.magnitude = gamma, magnitude
        if magnitude == "tensor":
            self.run_notes.append(
                "magnitude: tensor rescales each encoder parameter tensor to its summed gradient's norm where that "
                "enlarges it (the released code); the paper's norms are over the whole encoder"
            )

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if num_modalities > 2:
            notes.append(MORE_MODALITIES_NOTE)
        if fusion_cls is not None and getattr(fusion_cls, "needs_blocks", False):
            notes.append(STREAM_FUSION_NOTE.format(name=getattr(fusion_cls, "name", fusion_cls.__name__)))
        return notes

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        #: the parameters whose gradient this method sets: every encoder's, then (fusions between the encoder
        #: blocks) the fusion's; per modality, the positions of its encoder's among them
        self._params, self._own = [], {}
        for m in model.modalities:
            own = [p for p in model.encoders[m].parameters() if p.requires_grad]
            self._own[m] = list(range(len(self._params), len(self._params) + len(own)))
            self._params += own
        if getattr(model.fusion, "needs_blocks", False):
            seen = {id(p) for p in self._params}
            self._params += [p for p in model.fusion.parameters() if p.requires_grad and id(p) not in seen]
        self._features = None
        self._pending = None

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = model.encode(inputs)
        if not torch.is_grad_enabled():
            return model.decode(features)
        self._features = features
        return model.decode({m: f.detach().requires_grad_(f.requires_grad) for m, f in features.items()})

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        uni = unimodal_ce(out, y)
        self.track(loss_fused=fused, loss_uni=uni)
        total = fused + sum(uni.values())
        encoded, self._features = self._features, None
        if torch.is_grad_enabled():
            self._pending = self._encoder_gradients(out, encoded or out.features, fused, uni)
        return total

    def _encoder_gradients(
        self, out: ModelOutput, encoded: dict[str, torch.Tensor], fused: torch.Tensor, uni: dict[str, torch.Tensor]
    ) -> list[torch.Tensor | None]:
        """Each parameter's new gradient (None: leave the loop's), from the per-loss gradients at the features."""
        modalities = self.model.modalities
        heads_side = [out.features[m] for m in modalities]
        usable = [i for i, f in enumerate(heads_side) if f.requires_grad]
        if not self._params or not usable:
            return [None] * len(self._params)
        at_features = torch.autograd.grad(fused, [heads_side[i] for i in usable], retain_graph=True, allow_unused=True)
        at_features_uni = {}
        for i in usable:
            m = modalities[i]
            (at_features_uni[m],) = torch.autograd.grad(uni[m], heads_side[i], retain_graph=True, allow_unused=True)
        detached = any(encoded[m] is not out.features[m] for m in modalities)
        passes = [([encoded[modalities[i]] for i in usable], list(at_features))]
        passes += [([encoded[m]], [g]) for m, g in at_features_uni.items()]
        grads = []
        for n, (outputs, vectors) in enumerate(passes):
            pairs = [(o, v) for o, v in zip(outputs, vectors) if v is not None]
            if not pairs:
                grads.append([None] * len(self._params))
                continue
            grads.append(
                torch.autograd.grad(
                    [o for o, _ in pairs],
                    self._params,
                    grad_outputs=[v for _, v in pairs],
                    retain_graph=not detached or n < len(passes) - 1,
                    allow_unused=True,
                )
            )
        g_fused, g_uni = grads[0], dict(zip(at_features_uni, grads[1:]))
        final: list[torch.Tensor | None] = [None] * len(self._params)
        stats: dict[str, dict[str, torch.Tensor]] = {}
        owned = set()
        for m in modalities:
            own = self._own[m]
            if not own:
                continue
            owned.update(own)
            f = [self._or_zeros(g_fused, i) for i in own]
            u = [self._or_zeros(g_uni.get(m), i) for i in own]
            combined, step = mmpareto_gradient(f, u, self.gamma, self.magnitude)
            for i, g in zip(own, combined):
                for other, gu in g_uni.items():  # fusions between the blocks: other unimodal losses reach here
                    if other != m and gu[i] is not None:
                        g = g + gu[i]
                final[i] = g
            for key, value in step.items():
                stats.setdefault(key, {})[m] = value
        for i in range(len(self._params)):  # the fusion's parameters between the blocks: the summed gradient
            if i in owned:
                continue
            parts = [g[i] for g in [g_fused, *g_uni.values()] if g[i] is not None]
            final[i] = torch.stack(parts).sum(0) if parts else None
        self.track(**stats)
        return final

    def _or_zeros(self, grads, i: int) -> torch.Tensor:
        g = None if grads is None else grads[i]
        return torch.zeros_like(self._params[i]) if g is None else g

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for p, g in zip(self._params, pending):
            if g is not None:
                p.grad = g
