"""Uni-Modal Teacher (UMT) and Uni-Modal Ensemble (UME): Du et al., "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning" (ICML 2023).

The paper's diagnosis: late-fusion joint training under-learns each modality's *uni-modal* features ("modality
laziness"), which unimodal training learns. Its two remedies are late-fusion training methods:

- **UMT** keeps the fused model and its task loss, and adds a feature distillation per modality: each encoder's
  features are pulled (squared error) towards those of a trained unimodal model of that modality, which stays
  frozen. L = L_task(fused) + λ·Σ_m MSE(φ_m, φ_m^teacher).
- **UME** trains the unimodal models independently (no cross-modal interaction at all) and combines their
  predictions at test time.

The paper picks between them per task by how much the task depends on paired (cross-modal) features: UME where the
uni-modal features carry the task (the unimodal ensemble already matches joint training), UMT where cross-modal
interaction adds something. That choice rule is documentation only here: both methods run and the leaderboard
compares them (paraphrased from the paper; the exact criterion was not re-read here).

Sources. The authors' repository is not in the stored index (searched by name, title and method names), so no
released code of the authors was read. BalanceBenchmark (GeWu-Lab/BalanceBenchmark, read at commit 4c1482f)
implements UMT (``balancemm/trainer/UMT_trainer.py``) and has no UME; its ``configs/trainer_config.yaml`` gives UMT
``scaling: 10, modulation_starts: 0, modulation_ends: 80``. What its trainer does, line by line (at 4c1482f):

- l. 38-53: one model per modality, built like the multimodal model with that modality alone, loaded from the first
  checkpoint file in the newest output folder of that modality's ``unimodalTrainer`` run, kept in a plain dict
  (not registered with the trained model) — as here, where the DAG trains the ``unimodal`` runs first (``needs =
  ("unimodal_checkpoints",)``, as ``pretrain``) and hands their best-validation ``model.pt``.
- l. 133-144: loss = CE(fused) + scaling·Σ_m MSELoss(teacher features, student features), where the features are
  each encoder's output (its ``encoder_result[m]``: the vector the fusion reads), the teacher run under
  ``torch.no_grad()``, inside the inclusive epoch window [modulation_starts, modulation_ends]; CE alone outside.
- The teacher models are never put in eval mode (nothing calls ``.eval()`` on them), so a teacher with batch
  normalisation normalises with the batch's statistics (and updates its running statistics) and a teacher with
  dropout drops units: ``teacher_mode: train`` reproduces that; the default ``eval`` uses the trained unimodal
  model as it is evaluated (running statistics, no dropout), a frozen teacher.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, RunContext, fused_ce, in_window
from benchmark.balancers.pretrain import unimodal_encoder_state
from benchmark.metrics import task_loss
from benchmark.models.fusions import SumFusion
from benchmark.models.model import ModelOutput, MultimodalModel, fingerprint
from benchmark.params import EpochBound, NonNegative

TEACHER_MODES = ("eval", "train")


@BALANCERS.register("umt")
class UMT(Balancer):
    """Uni-Modal Teacher (Du et al. 2023): the fused model trained with its task loss plus, per modality, the mean
    squared error between its encoder's features φ_m and those of the trained unimodal model of that modality (the
    teacher, frozen): L = L_task(fused) + λ·Σ_m mean_{i,d}(φ_m,id − φ^T_m,id)², inside the inclusive epoch window
    [start_epoch, end_epoch] (a bound is an epoch or a share of the schedule); the task loss alone outside it.

    The teachers are the encoders of the same dataset/backbone/seed's ``unimodal`` runs (their best-validation
    weights, ``needs = ("unimodal_checkpoints",)``: the DAG trains them first, once, shared with ``pretrain``).
    Each teacher is a copy of the student's encoder architecture (taken in ``configure_model``, before the loop moves
    or compiles the encoders) holding the unimodal run's encoder weights, kept by the method, not by the model: it
    has no trainable parameter (requires_grad off, never given to the optimizer), runs under ``no_grad``, and is not
    part of the model's state dict, so the checkpoint (model.pt) has exactly the keys of a joint model's and
    evaluation, diagnostics and the reported cost are the student's alone. It is not in the method's
    ``state_dict`` either: ``setup`` reloads it from the unimodal checkpoint on resume. The students start from
    their own initialisation (the fusion and encoders are trained from scratch, as the paper's UMT).

    Defaults: λ = 10 (``distill_weight``) and MSE reduced as ``nn.MSELoss()`` (mean over samples and feature units)
    are BalanceBenchmark's (module docstring); its window 0-80 covers every epoch of schedules up to 81 epochs, and
    the paper distils throughout training, hence ["0%", "100%"] here. ``teacher_mode``: ``eval`` (default) the
    teacher as evaluated; ``train`` BalanceBenchmark's teacher in training mode (batch statistics, dropout), still
    without gradient or optimizer steps (its normalisation layers' running statistics drift, unused).

    Under a fusion between encoder blocks (se_gate, nl_gate) the student's features are the streams after the
    fusion's gates, the teacher's an ungated encoder's: an extension, noted. M > 2: one distillation term per
    modality, summed (the paper's datasets have two modalities; an extension, noted)."""

    display_name: ClassVar[str] = "UMT"
    paper = "Du et al. 2023 (ICML), Uni-Modal Teacher: task loss + feature distillation from unimodal teachers"
    needs = ("unimodal_checkpoints",)

    def __init__(
        self,
        *,
        distill_weight: NonNegative = 10.0,
        start_epoch: EpochBound = "0%",
        end_epoch: EpochBound = "100%",
        teacher_mode: Literal["eval", "train"] = "eval",
    ) -> None:
        super().__init__()
        if teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode must be one of {', '.join(TEACHER_MODES)}, not {teacher_mode!r}")
        self.distill_weight, self.start_epoch, self.end_epoch = distill_weight, start_epoch, end_epoch
        self.teacher_mode = teacher_mode
        if teacher_mode == "train":
            self.run_notes.append(
                "UMT teacher_mode: train — the frozen teachers run in training mode (batch statistics, dropout), as "
                "BalanceBenchmark's UMT trainer leaves them; the paper's teacher is the trained unimodal model"
            )

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if fusion_cls is not None and getattr(fusion_cls, "needs_blocks", False):
            notes.append(
                f"extension: under fusion '{fusion_cls.name}' the distilled student features are the streams after "
                "its cross-stream gates, the teachers' those of an ungated unimodal encoder"
            )
        if num_modalities > 2:
            notes.append("extension: one feature-distillation term per modality, summed (the paper has two)")
        return notes

    # --- the teachers: frozen copies held by the method ---------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        self._templates = {m: copy.deepcopy(model.encoders[m]) for m in model.modalities}
        return model

    def setup(self, model: MultimodalModel, ctx: RunContext) -> None:
        super().setup(model, ctx)
        templates = getattr(self, "_templates", None) or {m: copy.deepcopy(model.encoders[m]) for m in model.modalities}
        self._templates = None
        teachers = {}
        for m in model.modalities:
            teacher = templates[m]
            teacher.load_state_dict(unimodal_encoder_state(ctx, m, "no teacher to distil from"))
            teacher.requires_grad_(False)
            teacher.to(ctx.device)
            if ctx.settings.get("channels_last"):
                teacher.to(memory_format=torch.channels_last)
            if ctx.settings.get("compile"):
                teacher.compile(dynamic=False)
            teacher.train(self.teacher_mode == "train")
            teachers[m] = teacher
        self.teachers = nn.ModuleDict(teachers)  # a module: neither in the model nor in the method's state_dict
        self._targets = None

    def active(self) -> bool:
        return in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs)

    # --- per step -------------------------------------------------------------------------------------------------
    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        out = model(inputs)
        self._targets = None
        if self.active():
            with torch.no_grad():
                self._targets = {m: self.teachers[m](inputs[m]) for m in model.modalities}
        return out

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        targets, self._targets = self._targets, None  # one step's teacher features, never kept past the step
        if not self.active():
            self.track(loss_fused=fused)
            return fused
        if targets is None:
            raise RuntimeError("UMT.loss needs the teacher features of UMT.forward (call it for the step's batch)")
        distill = {}
        for m, target in targets.items():
            student = out.features[m]
            if student.shape != target.shape:
                raise ValueError(
                    f"UMT: the {m} encoder's features {tuple(student.shape)} and its teacher's {tuple(target.shape)} "
                    "differ in shape"
                )
            distill[m] = F.mse_loss(student.float(), target.float())
        self.track(loss_fused=fused, loss_distill=distill)
        return fused + self.distill_weight * sum(distill.values())


# --- UME ---------------------------------------------------------------------------------------------------------


class UnimodalEnsemble(SumFusion):
    """One linear classifier per modality (the unimodal run's: its one-modality concat head is a Linear(d_m, C));
    the logits are the mean of theirs, f = (1/M)·Σ_m (W_m φ_m + b_m). Per-modality logits are the modality's own
    classifier's, exactly (its unimodal model's logits), so ``acc_<m>`` is each unimodal model's accuracy."""

    name = "ume"
    modality_logits_rule = "W_m·φ_m + b_m: the modality's own unimodal classifier (UME's logits are their mean)"

    def combine(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from the per-modality ones: their mean."""
        return torch.stack([logits[m] for m in self.modalities]).mean(0)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.combine(self.modality_logits(features))


@BALANCERS.register("ume")
class UME(Balancer):
    """Uni-Modal Ensemble (Du et al. 2023): unimodal models trained independently, their predictions combined at
    test time — here in one run: ``configure_model`` replaces the fusion by ``UnimodalEnsemble`` (one linear
    classifier per modality, the fused logits their mean), and the loss is L = Σ_m L_task(W_m φ_m + b_m, y), the sum
    of the unimodal models' own losses. Nothing couples the modalities: the ensemble's logits are not in the loss,
    so each encoder and classifier gets exactly the gradient of its own unimodal loss (the sum, not the mean, keeps
    each at the unimodal run's scale), and every update the loop's optimizers make is per parameter (SGD momentum
    and weight decay, Adam's moments; the loop clips nothing), so the run trains M unimodal models step for step as
    M separate runs with the same batches would (tested against separately trained unimodal models).

    Why one run rather than ensembling the ``unimodal`` runs' checkpoints: the loop has no run without training
    (a run of frozen checkpoints would step nothing for its whole schedule), and as an ordinary run UME is selected,
    evaluated, diagnosed, checkpointed and resumed like every method, with no prerequisite. It differs from
    ensembling those checkpoints in three ways: the initial weights are drawn in the multimodal model's
    construction (the same distribution, other draws); one epoch is kept for all modalities — the one where the
    *ensemble* is best on validation — instead of each unimodal run's own best epoch; and the unimodal training is
    paid again rather than reused. The combination is the mean of the logits (argmax as their sum; the paper
    averages the unimodal models' predictions — whether before or after the softmax was not verified here). No
    released UME code was read: the authors' repository is not in the stored index and BalanceBenchmark has no UME.

    UME has no fusion: it replaces whichever the grid names, and ``configure_model`` re-seeds torch's generator
    from the encoders' initial weights before drawing the classifiers, so its runs under concat and sum are the
    same run (same numbers: the classifiers and every later random draw). It is a
    late-fusion method (the paper's), so the fusions that are not linear late fusions are n/a for it (it would be
    that same run again under another name). Multi-label targets: the per-class binary cross-entropy of each
    classifier. M > 2: the mean of M classifiers (an extension, noted)."""

    display_name: ClassVar[str] = "UME"
    paper = "Du et al. 2023 (ICML), Uni-Modal Ensemble: independently trained unimodal models, logits averaged"

    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        if getattr(fusion_cls, "needs_blocks", False) or not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                "UME replaces the fusion by the mean of independently trained unimodal classifiers (a late fusion); "
                f"under fusion '{fusion_cls.name}', which is not a linear late fusion, it would be the same run as "
                "under concat or sum"
            )
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if fusion_cls is not None:
            notes.append(
                f"UME does not use fusion '{fusion_cls.name}': its logits are the mean of the unimodal classifiers "
                "(the same run under every late fusion)"
            )
        if num_modalities > 2:
            notes.append("extension: the mean of the logits of more than two unimodal models (the paper has two)")
        return notes

    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        dims = {m: model.encoders[m].out_dim for m in model.modalities}
        # torch's generator re-seeded from the encoders' initial weights (which the fusion does not change): the
        # classifiers, and every later draw of the run (augmentation), are the same whatever fusion the grid built
        torch.manual_seed(int(fingerprint(model.encoders), 16) % 2**63)
        model.fusion = UnimodalEnsemble(dims, model.num_classes)
        return model

    def setup(self, model: MultimodalModel, ctx: RunContext) -> None:
        super().setup(model, ctx)
        if not isinstance(model.fusion, UnimodalEnsemble):
            raise RuntimeError("UME trains a model whose fusion UME.configure_model replaced; call it first")

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = model.encode(inputs)
        logits = model.fusion.modality_logits(features)
        return ModelOutput(model.fusion.combine(logits), features, logits)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        uni = {m: task_loss(logits, y) for m, logits in out.unimodal.items()}
        self.track(loss_uni=uni, loss_ensemble=task_loss(out.logits.detach(), y))
        return sum(uni.values())
