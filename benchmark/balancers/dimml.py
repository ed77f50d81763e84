"""DI-MML: detached training of every modality's encoder through one classifier shared by the modalities, a
dimension-decoupled unidirectional contrastive (DUC) loss between them, and the modalities' logits fused at test time.

The method is Fan, Xu, Wang, Liu and Guo, "Detached and Interactive Multimodal Learning" (ACM MM 2024,
arXiv:2407.19514): "DI-MML addresses competition by separately training each modality encoder with isolated learning
objectives. It further encourages cross-modal interaction via a shared classifier that defines a common feature space
and employing a dimension-decoupled unidirectional contrastive (DUC) loss to facilitate modality-level knowledge
transfer. Additionally, [...] we devise a certainty-aware logit weighting strategy [...] during inference" (the
abstract; the rest of the paper was not available here). The training rule follows the released code
(fanyunfeng-bit/DI-MML, read at commit 83b9b7a): ``main_CFT.py`` (``train_epoch``, ``get_indices``, ``main``),
``loss/contrast_loss.py`` (``SupConLoss``) and, for inference, ``main_CFT_stage2.py``
(``valid_combine_classifier``); the train commands are the README's.

Training (``main_CFT.py``), with φ_m the modality's pooled features and (W, b) the shared classifier:

- detached cross-entropies: L = Σ_m CE(W·φ_m + b, y). Each CE reaches only its own encoder (and W, b, which every
  modality trains: the shared classifier is the interaction), so no modality's gradient reaches another's encoder.
- effective dimensions (``get_indices``, once, at the epoch the DUC loss starts: ``if epoch == 20`` of 150): with
  the encoders in eval mode over the whole training split, the class centroids c_k of each modality's features; a
  sample "hits" dimension d when its nearest centroid along d alone, argmin_k |φ_i,d − c_k,d|, is its own class;
  the dimensions whose hit rate over the split exceeds the mean hit rate over dimensions are the modality's
  effective ones, E_m. Audio-only dimensions are E_a \\ E_v, visual-only ones E_v \\ E_a.
- DUC loss (``SupConLoss``, from epoch 20 on, ``if epoch >= 20``): on the teacher's own dimensions S = E_t \\ E_s the
  student's features are contrasted against the teacher's *detached* features over the batch,
  ℓ(s ← t) = (1/B)·Σ_i −log( exp(⟨s_i, t_i⟩_S/τ) / Σ_j exp(⟨s_i, t_j⟩_S/τ) ), ⟨·,·⟩_S the dot product on S
  (unnormalised features); L_DUC = ℓ(v ← a on audio-only) + ℓ(a ← v on visual-only). One-way: only the student's
  encoder gets its gradient. The total is L = Σ_m CE + λ·L_DUC with λ = 1 (``loss_c`` unweighted).
- defaults are the released code's: τ = 50 (the CREMA-D command; AVE and UCF use 10, ModelNet 50: presets
  ``cremad``, ``ave``, ``ucf101``, ``modelnet``), the DUC loss and its dimensions from epoch 20 of 150
  (``start_epoch: "13.33%"``), the dimensions computed once (``refresh_every: 0``; k > 0 recomputes them every k
  epochs, an extension).

Inference (the head, ``DetachedSharedHead``, which replaces the run's fusion): ``evaluate: certainty`` (default:
the abstract's certainty-aware logit weighting, in the form ``valid_combine_classifier`` computes it): per sample,
c_m = max_c softmax(z_m)_c, w = softmax_m(c_m / T), logits = Σ_m w_m·z_m (weights without gradient), T =
``eval_temperature`` (1 in the CREMA-D and UCF commands, 3 for AVE and ModelNet); ``evaluate: sum``: Σ_m z_m.
Here z_m = W·φ_m + b, the shared classifier's logits, which are also the per-modality logits every diagnostic reads
(an exact split: no estimate).

Where the harness differs from the released code (every run says which options it used):

- the released code also gives each encoder a private linear head trained with its own cross-entropy (``loss_a``,
  ``loss_v``, besides the shared-classifier terms ``loss_align_*`` weighted by ``--weight 1``); ``private_heads:
  true`` adds them (one linear head per modality on its own features, CE weight 1); the default leaves them out,
  as the abstract describes the method (isolated objectives through the shared classifier; we could not check
  whether the paper's equations include private heads). Evaluation always uses the shared classifier.
- the released inference is a second stage: the encoders frozen, a new concat fusion classifier trained for 20
  epochs on their features, and the certainty weights taken over [private head a, private head v, that fused
  classifier]. The harness trains in one loop and evaluates the certainty-weighted shared-classifier logits; it does
  not train a post-hoc fusion classifier.
- the released stage 1 overwrites one checkpoint whenever either private head's *test* accuracy improves and
  every tenth epoch, so after 150 epochs it holds the last epoch's weights; the harness selects on the validation
  accuracy of the head's fused output, as for every method. The released optimiser (SGD lr 1e-3, momentum 0.9,
  weight decay 1e-4, StepLR(70, 0.1), batch 16, 150 epochs) is not the method's: the run's shared train settings
  apply.
- effective dimensions are computed from the unaugmented training inputs (the released loader applies the training
  transforms, one clip per batch); a class with no training sample takes no part in the nearest-centroid test (the
  released code divides by its zero count, NaN); the contrastive term is a log-sum-exp (the released exp/sum
  overflows to NaN for large ⟨s, t⟩/τ; equal otherwise). With an empty S (no teacher-only dimension) the term is
  log B with no gradient, as in the released code.
- extensions: with M > 2 modalities every ordered pair (teacher t, student s) gets ℓ(s ← t) on E_t \\ E_s and
  L_DUC = Σ_pairs ℓ / (M − 1) (the released code has two modalities: this is its sum for M = 2); modalities whose
  features differ in size are mapped to the largest one by a linear map without bias, part of that modality's branch
  (the released encoders all give 512 features).
"""

from __future__ import annotations

import itertools
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, window_epoch
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import Epoch, EpochBound, NonNegative, Positive

EVALUATE = ("certainty", "sum")
HEAD_NAME = "dimml_shared"

EVALUATE_NOTES = {
    "certainty": (
        "DI-MML evaluate: certainty — the model's output is the certainty-aware weighting of the shared classifier's "
        "per-modality logits, Σ_m w_m·z_m with w = softmax_m(max_c softmax(z_m)_c / T), T = {T} (the paper's "
        "certainty-aware logit weighting in the released code's form; its second stage weights two private heads "
        "and a post-hoc fusion classifier instead of the shared classifier's logits)"
    ),
    "sum": (
        "DI-MML evaluate: sum — the model's output is the sum of the shared classifier's per-modality logits "
        "Σ_m (W·φ_m + b) (not the paper's certainty-aware weighting)"
    ),
}
PRIVATE_NOTE = (
    "DI-MML private_heads: true — each encoder also trains a private linear head with its own cross-entropy (the "
    "released main_CFT.py's loss_a, loss_v, weight 1); evaluation uses the shared classifier only"
)
REFRESH_NOTE = (
    "extension: DI-MML refresh_every: {k} — the effective dimensions are recomputed every {k} epochs after the DUC "
    "loss starts (the released code computes them once)"
)


# --- the DUC loss and its dimensions -----------------------------------------------------------------------------


def class_centroids(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [C, d], counts [C]) of features [N, d] with labels [N]: each class's mean feature (zero for a
    class without samples)."""
    sums, counts = centroid_sums(features, y, num_classes)
    return centroids_from(sums, counts), counts


def centroid_sums(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums [C, d] (float64) and counts [C] of one batch, to be added over batches."""
    f = features.detach().double()
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, y, f)
    return sums, torch.bincount(y, minlength=num_classes).to(torch.float64)


def centroids_from(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return (sums / counts.clamp_min(1)[:, None]).float()


def dimension_hits(
    features: torch.Tensor, y: torch.Tensor, centroids: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """How many samples of the batch are nearest to their own class's centroid along each dimension alone: [d].
    ``argmin_k |φ_i,d − c_k,d|`` over the classes present (the first on a tie, as torch.argmin)."""
    dist = (features.detach().float()[:, None, :] - centroids[None]).abs()  # [B, C, d]
    dist = dist.masked_fill(~present[None, :, None], float("inf"))
    nearest = dist.argmin(1)  # [B, d]
    return (nearest == y[:, None]).sum(0)


def effective_dimensions(hit_rates: torch.Tensor) -> torch.Tensor:
    """The released rule: a dimension is effective when its hit rate exceeds the mean hit rate over dimensions
    (a boolean mask [d])."""
    rates = hit_rates.double()
    return rates > rates.mean()


def duc_term(student: torch.Tensor, teacher: torch.Tensor, dims: torch.Tensor, temperature: float) -> torch.Tensor:
    """ℓ(s ← t) = (1/B)·Σ_i [log Σ_j exp(⟨s_i, t_j⟩_S/τ) − ⟨s_i, t_i⟩_S/τ] on the dimensions S of the mask ``dims``,
    the teacher detached (``SupConLoss``, one direction)."""
    mask = dims.float()
    s = student.float() * mask
    t = teacher.detach().float() * mask
    sim = s @ t.T / temperature
    return (torch.logsumexp(sim, dim=1) - sim.diagonal()).mean()


def duc_pairs(modalities: list[str]) -> list[tuple[str, str]]:
    """Every ordered (teacher, student) pair; for two modalities the released order (audio teaches visual first)."""
    return list(itertools.permutations(modalities, 2))


def duc_loss(
    features: dict[str, torch.Tensor], effective: dict[str, torch.Tensor], temperature: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_DUC = Σ_(t, s) ℓ(s ← t on E_t \\ E_s) / (M − 1), and each pair's term keyed 't_to_s'."""
    modalities = list(features)
    terms = {
        f"{t}_to_{s}": duc_term(features[s], features[t], effective[t] & ~effective[s], temperature)
        for t, s in duc_pairs(modalities)
    }
    return sum(terms.values()) / (len(modalities) - 1), terms


def certainty_weights(logits: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """w [M, B]: softmax over the modalities of each one's top softmax probability / T (no gradient)."""
    with torch.no_grad():
        certainty = torch.stack([torch.softmax(z.detach().float(), 1).max(1).values for z in logits.values()])
        return torch.softmax(certainty / temperature, dim=0)


# --- the head -------------------------------------------------------------------------------------------------------


class DetachedSharedHead(Fusion):
    """DI-MML's head (``dimml_shared``): one linear classifier (W, b) shared by the modalities, z_m = W·φ_m + b for
    each modality's own features; the output fuses them: ``certainty`` Σ_m w_m·z_m with w = softmax_m(max_c
    softmax(z_m)_c / T) per sample, or ``sum`` Σ_m z_m (in training and evaluation alike; the training loss reads
    z_m, not the output). Features of a size other than the largest are mapped to it by a bias-free linear map
    (``project``); ``private_heads`` adds one linear head per modality (the released code's, trained by its own CE,
    never part of the output)."""

    name = HEAD_NAME
    modality_logits_rule = (
        "W·φ_m + b: the classifier shared by the modalities applied to modality m's features (DI-MML)"
    )
    modality_logits_exact = True

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_classes: int,
        *,
        evaluate: Literal["certainty", "sum"] = "certainty",
        temperature: float = 1.0,
        private_heads: bool = False,
    ) -> None:
        super().__init__(feature_dims, num_classes)
        if evaluate not in EVALUATE:
            raise ValueError(f"evaluate must be one of {', '.join(EVALUATE)}, not {evaluate!r}")
        if len(feature_dims) < 1:
            raise ValueError("the DI-MML head needs at least one modality")
        self.evaluate, self.temperature = evaluate, temperature
        self.dim = max(feature_dims.values())
        self.project = nn.ModuleDict(
            {m: nn.Linear(d, self.dim, bias=False) for m, d in feature_dims.items() if d != self.dim}
        )
        self.shared = nn.Linear(self.dim, num_classes)
        self.private = (
            nn.ModuleDict({m: nn.Linear(self.dim, num_classes) for m in feature_dims}) if private_heads else None
        )

    def common(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's features in the shared classifier's space (as they are, when all sizes are equal)."""
        return {m: self.project[m](features[m]) if m in self.project else features[m] for m in self.modalities}

    def shared_logits(self, common: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.shared(common[m]) for m in self.modalities}

    def private_logits(self, common: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.private is None:
            return {}
        return {m: self.private[m](common[m]) for m in self.modalities}

    def fuse(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([z.float() for z in logits.values()])  # [M, B, C]
        if self.evaluate == "sum":
            return stacked.sum(0)
        return (certainty_weights(logits, self.temperature)[..., None] * stacked).sum(0)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.modality_logits(features))

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.shared_logits(self.common(features))

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        """What acts on this modality alone: its projection and private head (the shared classifier acts on all)."""
        params = [(p, None) for p in self.project[modality].parameters()] if modality in self.project else []
        if self.private is not None:
            params += [(p, None) for p in self.private[modality].parameters()]
        return params

    def modality_linear(self, modality: str) -> torch.Tensor:
        """The [C, d_m] map from the modality's features to its logits (W, or W·P_m with its projection)."""
        if modality in self.project:
            return self.shared.weight @ self.project[modality].weight
        return self.shared.weight


# --- the method -----------------------------------------------------------------------------------------------------


@BALANCERS.register("dimml")
class DIMML(Balancer):
    """DI-MML (Fan et al. 2024) as its released code trains it (module docstring: files, rules, differences).
    ``configure_model`` replaces the run's late fusion by ``DetachedSharedHead`` ('dimml_shared'): one classifier
    shared by the modalities, whose per-modality logits are fused at evaluation (``evaluate``: certainty-aware
    weighting, or their sum). Loss: Σ_m CE(W·φ_m + b) (each reaching only its own encoder; plus the private heads'
    CE with ``private_heads``) and, from ``start_epoch`` on, ``duc_weight``·L_DUC, the one-way contrast of each
    student's features with the detached teacher's on the teacher's own effective dimensions (temperature τ =
    ``temperature``), those dimensions computed over the training split when the DUC loss starts (and every
    ``refresh_every`` epochs after, when > 0)."""

    display_name: ClassVar[str] = "DI-MML"
    paper = "Fan et al. 2024 (DI-MML, ACM MM), detached training with a shared classifier and the DUC loss"
    single_label_only = (
        "its losses are softmax cross-entropies and its effective dimensions come from the nearest centroid of the "
        "one true class"
    )
    presets = {
        "cremad": {"temperature": 50.0, "eval_temperature": 1.0, "source": "released DI-MML code, README: CREMAD"},
        "ave": {"temperature": 10.0, "eval_temperature": 3.0, "source": "released DI-MML code, README: AVE"},
        "ucf101": {"temperature": 10.0, "eval_temperature": 1.0, "source": "released DI-MML code, README: UCF"},
        "modelnet": {"temperature": 50.0, "eval_temperature": 3.0, "source": "released DI-MML code, README: ModelNet"},
    }

    def __init__(
        self,
        *,
        temperature: Positive = 50.0,
        duc_weight: NonNegative = 1.0,
        start_epoch: EpochBound = "13.33%",
        refresh_every: Epoch = 0,
        evaluate: Literal["certainty", "sum"] = "certainty",
        eval_temperature: Positive = 1.0,
        private_heads: bool = False,
    ) -> None:
        super().__init__()
        if evaluate not in EVALUATE:
            raise ValueError(f"evaluate must be one of {', '.join(EVALUATE)}, not {evaluate!r}")
        if not temperature > 0 or not eval_temperature > 0:
            raise ValueError("temperature and eval_temperature must be positive")
        if refresh_every < 0:
            raise ValueError(f"refresh_every must be 0 (once) or a number of epochs, not {refresh_every}")
        self.temperature, self.duc_weight, self.start_epoch = temperature, duc_weight, start_epoch
        self.refresh_every, self.evaluate, self.eval_temperature = refresh_every, evaluate, eval_temperature
        self.private_heads = private_heads
        #: each modality's effective dimensions (boolean masks over the shared classifier's input), once computed
        self.effective: dict[str, torch.Tensor] = {}
        #: the epoch they were last computed at (-1: not yet)
        self.effective_epoch = -1
        self.run_notes.append(EVALUATE_NOTES[evaluate].replace("{T}", f"{eval_temperature:g}"))
        if private_heads:
            self.run_notes.append(PRIVATE_NOTE)
        if refresh_every:
            self.run_notes.append(REFRESH_NOTE.format(k=refresh_every))

    # --- what the DAG asks ------------------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        if num_modalities < 2:
            return "DI-MML's shared classifier and contrastive loss need two or more modalities"
        if getattr(fusion_cls, "needs_blocks", False):
            return (
                f"DI-MML trains every encoder detached from the others; fusion '{fusion_cls.name}' passes features "
                "between the encoders, so it cannot be replaced by DI-MML's head (dimml_shared) without removing it"
            )
        if not getattr(fusion_cls, "modality_logits_exact", False):
            return (
                f"DI-MML replaces the fusion by its own head (dimml_shared: a classifier shared by the modalities, "
                f"their logits fused at evaluation); fusion '{fusion_cls.name}' mixes the modalities before its "
                "classifier, and replacing it would train DI-MML's late head under that name"
            )
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        name = getattr(fusion_cls, "name", "the configured fusion")
        notes = [
            f"DI-MML head 'dimml_shared' replaces fusion '{name}': one classifier W, b shared by the modalities, "
            "z_m = W·φ_m + b per modality (the per-modality logits every diagnostic reads), fused into the output "
            "as the run's evaluate option says; DI-MML's runs under the late fusions concat and sum train the same "
            "model (only the head's random initial draw differs)"
        ]
        if num_modalities > 2:
            notes.append(
                "extension: the DUC loss contrasts every ordered pair (teacher t, student s) on E_t \\ E_s and is "
                "divided by M − 1 (the released code has two modalities; the same for M = 2)"
            )
        return notes

    # --- hooks ------------------------------------------------------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        old = model.fusion
        if getattr(old, "needs_blocks", False) or not getattr(old, "per_modality_features", True):
            raise ValueError(f"DI-MML cannot replace fusion '{old.name}': {self.unsupported(type(old), 2)}")
        dims = {m: model.encoders[m].out_dim for m in model.modalities}
        model.fusion = DetachedSharedHead(
            dims,
            model.num_classes,
            evaluate=self.evaluate,
            temperature=self.eval_temperature,
            private_heads=self.private_heads,
        )
        if len(set(dims.values())) > 1:
            self.run_notes.append(
                "extension: DI-MML's modalities have features of different sizes ("
                + ", ".join(f"{m} {d}" for m, d in dims.items())
                + f"); each smaller one is mapped to {max(dims.values())} by a bias-free linear map of its own "
                "before the shared classifier and the DUC loss"
            )
        return model

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        if not isinstance(model.fusion, DetachedSharedHead):
            raise RuntimeError("DI-MML trains its own head: build the model through DIMML.configure_model")

    def duc_start(self) -> int:
        return window_epoch(self.start_epoch, self.ctx.num_epochs)

    def duc_active(self, epoch: int) -> bool:
        return epoch >= self.duc_start() and bool(self.effective)

    @torch.no_grad()
    def compute_effective(self) -> dict[str, torch.Tensor]:
        """Every modality's effective dimensions over the training split, the encoders in eval mode (two passes:
        class centroids, then per-dimension nearest-centroid hits)."""
        model, ctx = self.model, self.ctx
        head: DetachedSharedHead = model.fusion
        was_training = model.training
        model.eval()
        try:
            sums = {m: None for m in model.modalities}
            counts = torch.zeros(model.num_classes, dtype=torch.float64, device=ctx.device)
            for inputs, y in ctx.batches(ctx.train):  # pass 1: class centroids
                common = head.common(model.encode(inputs))
                for m in model.modalities:
                    s, n = centroid_sums(common[m], y, model.num_classes)
                    sums[m] = s if sums[m] is None else sums[m] + s
                counts += n.to(counts.device)
            centroids = {m: centroids_from(sums[m], counts) for m in model.modalities}
            hits = {m: torch.zeros(head.dim, dtype=torch.float64, device=ctx.device) for m in model.modalities}
            seen = 0
            for inputs, y in ctx.batches(ctx.train):  # pass 2: per-dimension nearest-centroid hits
                common = head.common(model.encode(inputs))
                seen += len(y)
                for m in model.modalities:
                    hits[m] += dimension_hits(common[m], y, centroids[m], counts > 0).double()
        finally:
            model.train(was_training)
        return {m: effective_dimensions(hits[m] / max(1, seen)) for m in model.modalities}

    def on_epoch_start(self, epoch: int) -> None:
        start = self.duc_start()
        if epoch < start:
            return
        due = (
            not self.effective
            or epoch == start
            or (self.refresh_every > 0 and (epoch - start) % self.refresh_every == 0)
        )
        if due and epoch != self.effective_epoch:
            self.effective = self.compute_effective()
            self.effective_epoch = epoch
        modalities = list(self.effective)
        self.track(
            effective_dims={m: self.effective[m].sum().float() for m in modalities},
            duc_dims={
                f"{t}_to_{s}": (self.effective[t] & ~self.effective[s]).sum().float() for t, s in duc_pairs(modalities)
            },
        )

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        head: DetachedSharedHead = self.model.fusion
        common = head.common(out.features)
        logits = head.shared_logits(common)
        ce = {m: F.cross_entropy(z.float(), y) for m, z in logits.items()}
        loss = sum(ce.values())
        tracked = {"loss_ce": ce}
        private = head.private_logits(common)
        if private:
            tracked["loss_private"] = {m: F.cross_entropy(z.float(), y) for m, z in private.items()}
            loss = loss + sum(tracked["loss_private"].values())
        if self.duc_active(self.ctx.epoch):
            duc, terms = duc_loss(common, self.effective, self.temperature)
            loss = loss + self.duc_weight * duc
            tracked["loss_duc"] = duc
            tracked["duc_term"] = terms
        if self.evaluate == "certainty":
            tracked["eval_weight"] = dict(zip(logits, certainty_weights(logits, self.eval_temperature).mean(1)))
        self.track(**tracked)
        return loss
