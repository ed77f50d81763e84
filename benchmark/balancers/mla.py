"""MLA: Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal & Yao, CVPR 2024).

The method (paper abstract and README; the paper's own equation text could not be read where this module was
written, so the rules below are read from the released code and the OWM algorithm it names):

- **alternating unimodal adaptation**: the model is one encoder per modality and one linear head *shared by all
  modalities*. Every batch trains the modalities one after the other: for modality m, z_m = head(φ_m) and one
  optimizer step on CE(z_m, y) — the step reaches encoder m and the head only.
- **head gradient modification** (OWM, Zeng et al. 2019): so that the shared head does not forget what the previous
  modalities taught it, its weight gradient G [C, d] is projected, G ← G·P, by a projector P [d, d] orthogonal to
  the inputs the head has been trained on. P starts as I; at each step, with r the batch mean of the current
  modality's features (1×d) and α the regulariser: k = P·rᵀ, P ← P − k·kᵀ / (α + r·k), then the projection
  (the order of OWM-style code: P takes the current batch's mean input, then projects its gradient; that code does
  not normalise P). One P for all
  modalities, updated at every step; α = α₀ · 0.1^(b/B) for batch b of B in the epoch (0.1 → 0.01 with α₀ = 0.1,
  the released schedule, from OWM's code); the very first step of a run is not modified (the released counter
  ``exp_count`` = 0). The head's bias gradient is never modified (both codes touch the weight only).
- **test-time uncertainty-based fusion**: per sample, e_m = −Σ_c p_m,c log p_m,c with p_m = softmax(z_m), weights
  λ_m = exp(max_k e_k − e_m) / Σ_j exp(max_k e_k − e_j) (= softmax over modalities of −e), fused logits
  Σ_m λ_m·z_m: the more certain modality counts more.

Released code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, read at commit ab6c184; main.py
``train_epoch``/``valid`` with ``--gs_flag --dynamic``, utils/utils.py ``GSPlugin``) and BalanceBenchmark
(GeWu-Lab/BalanceBenchmark at 4c1482f: balancemm/trainer/MLA_trainer.py, models/avclassify_model.py
``BaseClassifierMLAModel``, configs/trainer_config.yaml ``MLA``), and how they differ:

- the released ``GSPlugin.before_update`` modifies the parameter named ``"module.weight"`` of the head it is handed,
  ``fusion_module.fc_out`` — an ``nn.Linear``, whose parameters are named ``weight`` and ``bias`` — so the test never
  matches: as released, no gradient is modified and P never changes (``gradient: none``, preset ``released``). What
  the plugin would do if it matched is G ← G·P with P divided by its Frobenius norm after every update
  (``normalize: true``; preset ``released-plugin``), which scales the head's steps by about 1/√d.
- BalanceBenchmark fixes the name but *adds* the projection to the gradient, G ← G + G·P (P Frobenius-normalised):
  ``gradient: add, normalize: true``; it alternates in epochs [0, 80] only and outside that window takes one joint
  step on CE of the entropy-fused output (``end_epoch``; preset ``balancebenchmark``).
- the released ``calculate_entropy`` takes the softmax over the *batch* (dim 0) and sums over the whole batch, so its
  fusion weights are one pair per evaluation batch (and depend on the batch size); BalanceBenchmark and this module
  use the per-sample entropy over classes. The released "fixed fusion" (--gs_flag without --dynamic: 0.55·z_audio +
  0.45·z_visual hard-coded in main) is not offered.
- the released loop (torch 1.8) zeroes gradients rather than deleting them between the two steps of a batch, so in the
  visual step the audio encoder takes a momentum and weight-decay step with a zero gradient; here a parameter without
  a gradient in a step is not stepped (the loop's phases; BalanceBenchmark, on torch 2, behaves the same).
- the released code runs all encoders once per batch before the first step; here each encoder runs in its own step.
  Both give the same features (a modality's step does not change another encoder), the head as updated by the
  previous step.

Released training settings (main.py's defaults and hard-coded optimizer, README commands): SGD lr 1e-3, momentum
0.9, weight decay 1e-4, StepLR(70, 0.1), batch 64, 100 epochs. M > 2 is the released code's (IEMOCAP: audio, visual,
text alternate in that order with one P).

Here the harness's configured fusion is replaced by MLA's own model (``configure_model``): one linear head shared by
all modalities, applied to each modality's features alone. That is a late fusion, so MLA runs on the late linear
fusions (concat, sum: the same model on either) and is n/a on fusions that mix the modalities before their classifier
or inside the encoders (their layers would go unused, or the encoders could not run alone). Encoders of unequal width
are zero-padded to the widest (BalanceBenchmark sizes the shared head by the largest modality) — an extension noted in
the run.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, in_window
from benchmark.metrics import task_loss
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import EpochBound, Positive

GRADIENT = ("project", "add", "none")

HEAD_NOTE = (
    "MLA's own head: fusion '{name}' is replaced by one linear head shared by all modalities and applied to each "
    "modality's features alone; training alternates unimodal steps (one optimizer step per modality and batch), "
    "evaluation and every diagnostic use the entropy-weighted sum Σ_m λ_m·head(φ_m), λ = softmax over modalities of "
    "minus each prediction's entropy (the same model whichever late fusion is configured)"
)
PAD_NOTE = (
    "extension: MLA's shared head takes features of width {width}; the narrower modalities' features ({narrow}) are "
    "zero-padded to it (the paper's encoders share one width; BalanceBenchmark sizes the head by the widest)"
)
GRADIENT_NOTES = {
    "none": (
        "MLA gradient: none — the shared head's gradient is not modified, as the released code runs (its GSPlugin "
        "looks for a parameter named 'module.weight', which the head's nn.Linear does not have)"
    ),
    "add": (
        "MLA gradient: add — the head gradient becomes G + G·P (BalanceBenchmark's MLA trainer); the paper's OWM "
        "projection replaces it by G·P"
    ),
}
NORMALIZE_NOTE = (
    "MLA normalize: true — the projector P is divided by its Frobenius norm after every update (the released "
    "GSPlugin and BalanceBenchmark), which also shrinks the head's steps by about 1/√d; OWM's projector is not"
)
WINDOW_NOTE = (
    "MLA window: alternating steps in epochs [{start}, {end}] only; outside it one joint step on CE of the "
    "entropy-fused output (BalanceBenchmark's MLA trainer)"
)


def entropy_weights(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """λ [M, B]: per sample, exp(max_k e_k − e_m) / Σ_j exp(max_k e_k − e_j) with e_m the entropy of softmax(z_m)
    over the classes — a softmax over modalities of −e (MLA's test-time uncertainty-based fusion)."""
    entropies = []
    for z in logits.values():
        log_p = torch.log_softmax(z.float(), dim=1)
        entropies.append(-(log_p.exp() * log_p).sum(1))
    e = torch.stack(entropies)
    return torch.softmax(e.max(0, keepdim=True).values - e, dim=0)


def owm_update(p: torch.Tensor, r: torch.Tensor, alpha: float, normalize: bool = False) -> torch.Tensor:
    """One OWM step of the projector: k = P·rᵀ, P − k·kᵀ / (α + r·k) for the mean input r [1, d] (then divided by its
    Frobenius norm with ``normalize``, as the released MLA plugin)."""
    k = p @ r.T
    p = p - (k @ k.T) / (alpha + r @ k)
    if normalize:
        p = p / torch.linalg.matrix_norm(p)
    return p


class SharedHead(Fusion):
    """MLA's head: one linear layer shared by all modalities, z_m = W·pad(φ_m) + b (features narrower than the widest
    zero-padded), fused as Σ_m λ_m·z_m with the entropy weights (``entropy_weights``). Per-modality logits are the z_m
    themselves (exact); no head parameter acts on one modality alone."""

    name = "mla_shared_head"
    modality_logits_rule = "W·φ_m + b: MLA's shared head applied to the modality's features alone"
    modality_logits_exact = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.width = max(feature_dims.values())
        self.head = nn.Linear(self.width, num_classes)

    def pad(self, feature: torch.Tensor) -> torch.Tensor:
        missing = self.width - feature.shape[1]
        return F.pad(feature, (0, missing)) if missing else feature

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.head(self.pad(features[m])) for m in self.modalities}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.modality_logits(features)
        weights = entropy_weights(z)
        return sum(w[:, None].to(v.dtype) * v for w, v in zip(weights, z.values()))

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return []  # the head is shared: none of it acts on one modality alone

    def modality_linear(self, modality: str) -> torch.Tensor:
        return self.head.weight[:, : self.feature_dims[modality]]


@BALANCERS.register("mla")
class MLA(Balancer):
    """MLA (Zhang et al. 2024; module docstring: rules, files, differences). The configured late fusion is replaced by
    one linear head shared by all modalities (``SharedHead``). Every batch takes one optimizer step per modality, in
    the model's modality order (``phases``): z_m = head(φ_m) from modality m's encoder alone, loss CE(z_m, y). Before
    each step (except the run's first), the OWM projector P takes the batch mean r of pad(φ_m) — k = P·rᵀ,
    P ← P − k·kᵀ/(α + r·k), α = ``owm_alpha``·0.1^(b/B) in batch b of B — and the head weight's gradient becomes G·P,
    so it stays (nearly) orthogonal to the inputs the head has already fitted. Evaluation: Σ_m λ_m·z_m, λ the softmax
    over modalities of −entropy(softmax(z_m)) per sample.

    ``gradient: none`` is the released code as it runs (no modification), ``add`` BalanceBenchmark's G + G·P;
    ``normalize`` divides P by its Frobenius norm after every update (both codes); ``start_epoch``/``end_epoch`` bound
    the alternating epochs, outside which one joint step on CE of the fused output is taken (BalanceBenchmark:
    0–80). Defaults: the OWM rule the paper names, every epoch (the released code)."""

    display_name: ClassVar[str] = "MLA"
    paper = "Zhang et al. 2024 (MLA, CVPR), alternating unimodal adaptation, OWM head gradient, entropy fusion"
    single_label_only = "its test-time fusion weighs each modality by the entropy of its softmax over the classes"
    presets = {
        "released": {
            "gradient": "none",
            "source": "released MLA code, main.py train_epoch --gs_flag and utils/utils.py GSPlugin, whose "
            "'module.weight' name test never matches the head's 'weight', so no gradient is modified",
        },
        "released-plugin": {
            "gradient": "project",
            "normalize": True,
            "source": "released MLA code, utils/utils.py GSPlugin.before_update as written (G·P, P divided by its "
            "Frobenius norm)",
        },
        "balancebenchmark": {
            "gradient": "add",
            "normalize": True,
            "start_epoch": 0,
            "end_epoch": 80,
            "source": "BalanceBenchmark balancemm/trainer/MLA_trainer.py (w.grad.add_) and configs/trainer_config.yaml "
            "(modulation_starts 0, modulation_ends 80)",
        },
    }

    def __init__(
        self,
        *,
        owm_alpha: Positive = 0.1,
        gradient: Literal["project", "add", "none"] = "project",
        normalize: bool = False,
        start_epoch: EpochBound = 0,
        end_epoch: EpochBound = "100%",
    ) -> None:
        super().__init__()
        if gradient not in GRADIENT:
            raise ValueError(f"gradient must be one of {', '.join(GRADIENT)}, not {gradient!r}")
        self.owm_alpha, self.gradient, self.normalize = owm_alpha, gradient, normalize
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        if gradient in GRADIENT_NOTES:
            self.run_notes.append(GRADIENT_NOTES[gradient])
        if normalize and gradient != "none":
            self.run_notes.append(NORMALIZE_NOTE)
        if (start_epoch, end_epoch) != (0, "100%"):
            self.run_notes.append(WINDOW_NOTE.format(start=start_epoch, end=end_epoch))

    # --- what it runs on ------------------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        name = getattr(fusion_cls, "name", fusion_cls.__name__)
        if getattr(fusion_cls, "needs_blocks", False):
            return (
                f"MLA trains each modality's encoder alone, one unimodal step at a time, and fusion '{name}' mixes "
                "the streams inside the encoders"
            )
        if not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                f"MLA replaces the fusion by its own late head (one linear layer shared by the modalities); fusion "
                f"'{name}' mixes the modalities before its classifier, and its layers would go unused"
            )
        if num_modalities < 2:
            return "MLA alternates between modalities; one modality leaves nothing to alternate or fuse"
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if fusion_cls is None:
            return []
        return [HEAD_NOTE.format(name=getattr(fusion_cls, "name", fusion_cls.__name__))]

    # --- the model --------------------------------------------------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        dims = {m: e.out_dim for m, e in model.encoders.items()}
        model.fusion = SharedHead(dims, model.num_classes)
        width = max(dims.values())
        narrow = [f"{m}: {d}" for m, d in dims.items() if d < width]
        if narrow:
            self.run_notes.append(PAD_NOTE.format(width=width, narrow=", ".join(narrow)))
        return model

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        if not isinstance(model.fusion, SharedHead):
            raise ValueError("MLA needs its shared head: build the model through MLA.configure_model")
        head = model.fusion.head
        #: the OWM projector (d × d), shared by all modalities; a step counter (the first step is not modified)
        self.P = torch.eye(head.in_features, dtype=head.weight.dtype, device=head.weight.device)
        self.steps = 0
        batch_size = ctx.settings.get("batch_size") if ctx.settings else None
        self.batches_per_epoch = max(1, -(-len(ctx.train) // batch_size)) if ctx.train is not None and batch_size else 1
        self.batch = 0  # the batch's index in the epoch
        self._r = None

    def on_epoch_start(self, epoch: int) -> None:
        self.batch = 0

    def alternating(self, epoch: int) -> bool:
        return in_window(epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs)

    def phases(self, epoch: int) -> tuple:
        return tuple(self.model.modalities) if self.alternating(epoch) else (None,)

    # --- one step -----------------------------------------------------------------------------------------------------
    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        m = self.ctx.phase
        if m is None:  # outside the alternating window: the fused output, one joint step
            self._r = None
            return model(inputs)
        feature = model.encoders[m](inputs[m])
        padded = model.fusion.pad(feature)
        self._r = padded.detach().float().mean(0, keepdim=True)
        return ModelOutput(model.fusion.head(padded), {m: feature}, None)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        loss = task_loss(out.logits, y)
        m = self.ctx.phase
        self.track(**({"loss_uni": {m: loss}} if m is not None else {"loss_fused": loss}))
        return loss

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        m = self.ctx.phase
        r, self._r = self._r, None
        if m is None:
            return
        weight = self.model.fusion.head.weight
        if self.gradient != "none" and self.steps > 0 and weight.grad is not None:
            alpha = self.owm_alpha * 0.1 ** (self.batch / self.batches_per_epoch)
            self.P = owm_update(self.P, r.to(self.P.dtype), alpha, self.normalize)
            g = weight.grad
            projected = g @ self.P.T.to(g.dtype)
            new = g + projected if self.gradient == "add" else projected
            norm = torch.linalg.vector_norm(g)
            self.track(kept={m: torch.linalg.vector_norm(new) / torch.where(norm > 0, norm, torch.ones_like(norm))})
            weight.grad = new
        self.steps += 1
        if m == self.model.modalities[-1]:
            self.batch += 1
