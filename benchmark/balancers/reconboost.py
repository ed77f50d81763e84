"""ReconBoost (Hua, Xu, Bao, Yang & Huang, ICML 2024, "ReconBoost: Boosting Can Achieve Modality Reconcilement").

The model is an ensemble of one learner per modality, F(x) = β·Σ_m f_m(x_m), β a learnable "boost rate". Training
goes in stages; stage s trains one modality m (the modalities in turn) on its task loss plus a KL-based
reconcilement term against the detached ensemble of the other modalities' current learners, then runs global
rectification: cross-entropy of the whole ensemble, updating every learner, the head and β, so the earlier learners
are consolidated rather than forgotten. With the KL reconcilement the method resembles Friedman's gradient boosting
(the abstract), each modality's new learner correcting the others' errors, only the newest learner per modality kept.
The paper's text beyond its abstract was not available here, so the equations are read from the released code
(below); the abstract names a memory-consolidation and a global-rectification scheme, the code has the
rectification phase and the ``ga`` term below (which of them the paper calls memory consolidation was not checked).

The released code that this module follows (huacong/ReconBoost, read at commit 14ab57a; ``train.py`` for the
audio-visual sets, ``train_MSA.py`` for three modalities, ``models/dynamic_net.py`` for the ensemble):

- stage s (``schedule.py``, ``fixed_mode``): modality s mod M in a fixed order (audio, visual; text, visual, audio).
- phase 1, ``epochs_per_stage`` epochs (README: 4), a fresh SGD on that modality's encoder and the head:
  q = softmax(``net_ensemble.forward(mask_model=m)``), the other modalities' current learners summed, times β,
  under ``no_grad``; p = softmax(f_m); the per-sample loss is
  ``-weight1·mean_c(y_c·log p_c) + weight2·mean_c(y_c·q_c·log p_c)`` = (1/K)·(weight2·q_y − weight1)·log p_y
  (``mean`` over the K classes, so the 1/K is part of the released loss and kept here). Up to a term that does not
  depend on f_m this is (1/K)·[weight1·CE(y, p) − weight2·KL(y⊙q ‖ p)]: the reconcilement maximises the divergence
  from the ensemble-weighted target, i.e. a sample the others already classify (q_y high) weighs less, by
  weight1 − weight2·q_y (``boosting_loss``). README/argparse: weight1 5, weight2 1 (CREMA-D; AVE and ModelNet40
  weight1 4; ``train_MSA.py`` 1 and 0.25).
- ``use_ga`` (default on): from stage 1 on, ``+ alpha·MSE(softmax(f_m).detach(), softmax(f_prev).detach())`` with
  f_prev the previous stage's modality's learner, alpha 0.5. Both softmaxes are detached, so this term adds *no
  gradient*: the released updates are those of alpha 0 (the default here). ``alpha`` > 0 gives the term a gradient
  through the current learner (f_prev stays detached): an extension, named in the run's notes. (For cross-entropy the
  logit-gradient is softmax − y, so the term is the squared distance between the two learners' gradients.)
- phase 2, global rectification (the code's "# global rectification scheme"), ``correct_epoch`` epochs (README: 4),
  a fresh SGD on every learner, the head and β: cross-entropy of β·Σ_m f_m.
- evaluation: argmax of the ensemble β·Σ_m f_m (every learner current: "only the newest model of each modality").

How, in the one loop: **per-epoch alternation** through ``phases(epoch)``, which returns the epoch's single phase (so
every batch of an epoch makes one optimizer step with ``ctx.phase`` set, as the released phases are whole passes):
each stage is ``boost_epochs`` boosting epochs of its modality, then ``rectify_epochs`` rectification epochs
(``phase_of``). ``configure_model`` wraps the fusion in ``BoostedEnsemble``: the model's output (training, evaluation,
checkpoints) is β·(fusion output), with β a parameter initialised to ``boost_rate``. The learners f_m are the fusion's
exact per-modality logits (concat: W_m·φ_m + b/M; sum: W_m·φ_m + b_m), whose sum is the fusion's output. A boosting
step runs the other encoders under ``no_grad`` (in train mode, as the released ``net_ensemble.to_train()``: their
batch-norm statistics move) and back-propagates through f_m alone, so only that encoder and its head parameters get a
gradient; the loop's optimizer skips every parameter without one (no momentum, no weight decay), as the released
per-modality optimizer. ``reset_momentum`` (default, as released: a new optimizer per phase) drops the optimizer's
running state at the first epoch of every phase block.

Defaults: weight1 5, weight2 1 (released CREMA-D), alpha 0 (the released updates, see above), boost_rate 1.0
(released ``--boost_rate``), boost_epochs 1 and rectify_epochs 1 (BalanceBenchmark's ``T_epochs: 1``; the released
4 + 4 would give each modality a single stage in the harness's 16-epoch schedules; preset ``released``).

Where the harness differs from the released code: the learners do not share one head (the released
``common_space``: one MLP head h, f_m = h(φ_m); with common_space off each modality keeps its own head, as here
with the ``sum`` fusion); with ``concat`` the head weight is one tensor, so in a boosting step the other modalities'
blocks of it get weight decay and momentum (their gradient is zero) and the bias b is shared; every learner is in the
ensemble from the first step (the released ``--use_pretrain`` path, without its pretrained unimodal encoders; its
no-pretrain stage 0 boosts against an empty ensemble, q_y = 1); one learning rate for both phases (released ``m_lr``
and ``e_lr``, both 0.01 by default) and the harness's epoch-wise schedule instead of its per-stage decay; checkpoints
are selected on validation after every epoch (the released code keeps the best test accuracy after each stage).

BalanceBenchmark (GeWu-Lab/BalanceBenchmark at 4c1482f, ``balancemm/trainer/ReconBoost_trainer.py``,
``configs/trainer_config.yaml``: alpha 0.5, T_epochs 1, weight1 5, weight2 1; ``BaseClassifierReconBoostModel``):
its epoch runs, for every modality in turn, one boosting pass and one rectification pass (2M passes; one harness
epoch is one pass); one optimizer for everything, its momentum carried across phases (``reset_momentum: false``); a
shared linear head; β initialised to 0.01; its ga term is detached as in the released code. Preset
``balancebenchmark``.

M = 3 is the released ``train_MSA.py`` setting (the ensemble of the two others, f_prev the previous stage's
modality); M > 3 applies the same rule (an extension, in ``notes``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, forget_optimizer_state, fused_ce
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import Epoch, NonNegative, Positive, PositiveInt

BOOST, RECTIFY = "boost", "rectify"

CONSOLIDATION_NOTE = (
    "extension: alpha > 0 gives the consolidation term alpha·MSE(softmax(f_m), softmax(f_prev)) a gradient through "
    "the current learner; the released code computes it on two detached softmaxes, so it adds no gradient there"
)
MORE_MODALITIES_NOTE = (
    "extension: with M > 3 modalities each stage boosts one modality against the ensemble of all the others, in the "
    "dataset's modality order (the released code has two or three)"
)
SHARED_HEAD_NOTE = (
    "ReconBoost learners: each modality's own per-modality logits of fusion '{name}' ({rule}), times the boost rate "
    "in the ensemble; the released code shares one head across the modalities (common_space)"
)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (bf16 autocast outputs are widened; float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def boosting_loss(
    z: torch.Tensor, others: torch.Tensor, y: torch.Tensor, weight1: float, weight2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The released boosting loss of a modality's logits ``z`` [B, K] against the other learners' ensemble logits
    ``others`` [B, K] (used detached): mean_i (1/K)·(weight2·q_i,y − weight1)·log p_i,y with p = softmax(z),
    q = softmax(others). Returns the loss and q_y per sample. Its gradient at z_i is
    (1/(B·K))·(weight1 − weight2·q_i,y)·(p_i − e_y): a cross-entropy step whose weight falls where the others are
    already right."""
    log_p = torch.log_softmax(_wide(z), dim=1)
    q_true = torch.softmax(_wide(others.detach()), dim=1).gather(1, y[:, None]).squeeze(1)
    log_p_true = log_p.gather(1, y[:, None]).squeeze(1)
    per_sample = (weight2 * q_true - weight1) * log_p_true / z.shape[1]
    return per_sample.mean(), q_true


class BoostedEnsemble(Fusion):
    """Wraps an exact late fusion: output β·(inner output) = β·Σ_m f_m, with f_m = the inner fusion's per-modality
    logits (``learners``) and β a learnable scalar (the released ``boost_rate``). ``modality_logits`` are β·f_m, so
    they still sum to the output."""

    modality_logits_exact = True

    def __init__(self, inner: Fusion, boost_rate: float = 1.0) -> None:
        super().__init__(inner.feature_dims, inner.num_classes)
        self.inner = inner
        self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}+boost"
        self.modality_logits_rule = f"β·({inner.modality_logits_rule}), β the ensemble's boost rate (ReconBoost)"

    def choices(self) -> list[str]:
        return self.inner.choices()

    def learners(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """f_m: each modality's learner, the inner fusion's exact per-modality logits (without β)."""
        return self.inner.modality_logits(features)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.boost_rate * self.inner(features)

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.boost_rate * z for m, z in self.learners(features).items()}

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return self.inner.modality_head_params(modality)

    def modality_linear(self, modality: str) -> torch.Tensor | None:
        return self.inner.modality_linear(modality)


@BALANCERS.register("reconboost")
class ReconBoost(Balancer):
    """ReconBoost (Hua et al. 2024): alternating boosting with a KL-based reconcilement against the other modalities'
    ensemble, then global rectification of the whole ensemble (module docstring: the released code, the schedule and
    where the harness differs).

    Schedule (``phase_of``): epochs come in stages of ``boost_epochs`` + ``rectify_epochs``; stage s boosts modality
    s mod M (the dataset's order): L = (1/K)·mean_i (weight2·q_i,y − weight1)·log p_i,y, p = softmax(f_m),
    q = softmax(β·Σ_{k≠m} f_k) detached (``boosting_loss``), plus, from stage 1 on and only when ``alpha`` > 0,
    alpha·MSE(softmax(f_m), softmax(f_prev) detached) (an extension: the released term is detached, hence 0 here by
    default); then rectification: L = CE(β·Σ_m f_m), every parameter. ``reset_momentum`` drops the optimizer state
    at the first epoch of every phase block (the released code builds a new optimizer per phase).

    Tracked per epoch: ``boost_loss_<m>``, ``boost_ce_<m>`` (CE of f_m), ``ensemble_true_prob_<m>`` (mean q_y),
    ``consolidation_<m>`` (the MSE, also when alpha is 0) in boosting epochs; ``rectify_ce`` in rectification
    epochs; ``boost_rate`` (β) in both."""

    display_name: ClassVar[str] = "ReconBoost"
    paper = "Hua et al. 2024 (ReconBoost), alternating boosting with KL reconcilement and global rectification"
    single_label_only = "its reconcilement weighs each sample by the ensemble's softmax probability of its one class"
    presets: ClassVar[dict] = {
        "released": {
            "weight1": 5.0,
            "weight2": 1.0,
            "alpha": 0.0,
            "boost_epochs": 4,
            "rectify_epochs": 4,
            "boost_rate": 1.0,
            "reset_momentum": True,
            "source": "released ReconBoost code, README CREMA-D command (weight1 5, weight2 1, epochs_per_stage 4, "
            "correct_epoch 4, boost_rate 1.0; its ga term, alpha 0.5, is detached: alpha 0)",
        },
        "released-ave": {
            "weight1": 4.0,
            "weight2": 1.0,
            "alpha": 0.0,
            "boost_epochs": 4,
            "rectify_epochs": 4,
            "boost_rate": 1.0,
            "reset_momentum": True,
            "source": "released ReconBoost code, README AVE / ModelNet40 commands (weight1 4, weight2 1, 4 + 4 epochs)",
        },
        "released-msa": {
            "weight1": 1.0,
            "weight2": 0.25,
            "alpha": 0.0,
            "boost_epochs": 4,
            "rectify_epochs": 4,
            "boost_rate": 1.0,
            "reset_momentum": True,
            "source": "released ReconBoost code, train_MSA.py defaults (weight1 1.0, weight2 0.25, 4 + 4 epochs)",
        },
        "balancebenchmark": {
            "weight1": 5.0,
            "weight2": 1.0,
            "alpha": 0.0,
            "boost_epochs": 1,
            "rectify_epochs": 1,
            "boost_rate": 0.01,
            "reset_momentum": False,
            "source": "BalanceBenchmark configs/trainer_config.yaml ReconBoost (T_epochs 1, weight1 5, weight2 1) and "
            "BaseClassifierReconBoostModel (boost_rate 0.01), one optimizer throughout",
        },
    }

    def __init__(
        self,
        *,
        weight1: Positive = 5.0,
        weight2: NonNegative = 1.0,
        alpha: NonNegative = 0.0,
        boost_epochs: PositiveInt = 1,
        rectify_epochs: Epoch = 1,
        boost_rate: Positive = 1.0,
        reset_momentum: bool = True,
    ) -> None:
        super().__init__()
        if boost_epochs < 1:
            raise ValueError(f"boost_epochs must be at least 1, not {boost_epochs}")
        if rectify_epochs < 0:
            raise ValueError(f"rectify_epochs must be at least 0, not {rectify_epochs}")
        self.weight1, self.weight2, self.alpha = float(weight1), float(weight2), float(alpha)
        self.boost_epochs, self.rectify_epochs = int(boost_epochs), int(rectify_epochs)
        self.boost_rate, self.reset_momentum = float(boost_rate), bool(reset_momentum)
        if alpha > 0:
            self.run_notes.append(CONSOLIDATION_NOTE)

    # --- what it runs on -----------------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        name = getattr(fusion_cls, "name", fusion_cls.__name__)
        if getattr(fusion_cls, "needs_blocks", False) or not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                f"ReconBoost trains one learner per modality whose logits sum to the ensemble's; fusion '{name}' mixes "
                "the modalities before its classifier, so it has no such learners"
            )
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if fusion_cls is not None:
            name = getattr(fusion_cls, "name", fusion_cls.__name__)
            notes.append(SHARED_HEAD_NOTE.format(name=name, rule=getattr(fusion_cls, "modality_logits_rule", "")))
        if num_modalities > 3:
            notes.append(MORE_MODALITIES_NOTE)
        return notes

    # --- the schedule --------------------------------------------------------------------------------------------
    def stage_of(self, epoch: int) -> tuple[int, int]:
        """(stage, epoch within the stage) of a 0-based epoch."""
        length = self.boost_epochs + self.rectify_epochs
        return epoch // length, epoch % length

    def phase_of(self, epoch: int) -> tuple[str, str | None]:
        """The epoch's phase: (``boost``, modality) for the first ``boost_epochs`` of a stage, else (``rectify``,
        None); stage s boosts the s-th modality mod M."""
        stage, within = self.stage_of(epoch)
        if within < self.boost_epochs:
            modalities = self.model.modalities
            return BOOST, modalities[stage % len(modalities)]
        return RECTIFY, None

    def phases(self, epoch: int) -> tuple:
        return (self.phase_of(epoch),)

    def _phase(self) -> tuple[str, str | None]:
        phase = self.ctx.phase
        return phase if phase is not None else self.phase_of(self.ctx.epoch)

    # --- hooks ---------------------------------------------------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        if not isinstance(model.fusion, BoostedEnsemble):
            model.fusion = BoostedEnsemble(model.fusion, self.boost_rate)
        return model

    def setup(self, model: MultimodalModel, ctx) -> None:
        if not isinstance(model.fusion, BoostedEnsemble):
            raise RuntimeError("ReconBoost trains a BoostedEnsemble: pass the model through configure_model first")
        super().setup(model, ctx)

    def on_epoch_start(self, epoch: int) -> None:
        _, within = self.stage_of(epoch)
        if self.reset_momentum and within in (0, self.boost_epochs):  # a new phase block: a fresh optimizer
            forget_optimizer_state(self.ctx.optimizer, list(self.model.parameters()))

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        kind, m = self._phase()
        if kind != BOOST or not torch.is_grad_enabled():
            return model(inputs)
        features = {}
        for k in model.modalities:  # the other learners only feed the detached ensemble: no graph through them
            if k == m:
                features[k] = model.encoders[k](inputs[k])
            else:
                with torch.no_grad():
                    features[k] = model.encoders[k](inputs[k])
        return model.decode(features)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fusion = self.model.fusion
        kind, m = self._phase()
        if kind == RECTIFY:
            loss = fused_ce(out, y)
            self.track(rectify_ce=loss, boost_rate=fusion.boost_rate)
            return loss
        modalities = self.model.modalities
        learners = fusion.learners(out.features)
        z = learners[m]
        others = torch.stack([learners[k].detach() for k in modalities if k != m]).sum(0)
        loss, q_true = boosting_loss(z, fusion.boost_rate.detach() * others, y, self.weight1, self.weight2)
        previous = modalities[(modalities.index(m) - 1) % len(modalities)]
        p = torch.softmax(_wide(z), dim=1)
        p_prev = torch.softmax(_wide(learners[previous].detach()), dim=1)
        first_stage = self.stage_of(self.ctx.epoch)[0] == 0
        if self.alpha > 0 and not first_stage:
            consolidation = F.mse_loss(p, p_prev)
            loss = loss + self.alpha * consolidation
        else:
            consolidation = F.mse_loss(p.detach(), p_prev)
        self.track(
            boost_loss={m: loss},
            boost_ce={m: F.cross_entropy(_wide(z.detach()), y)},
            ensemble_true_prob={m: q_true.mean()},
            consolidation={m: consolidation.detach()},
            boost_rate=fusion.boost_rate,
        )
        return loss
