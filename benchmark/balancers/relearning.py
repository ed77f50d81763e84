"""Diagnosing & Re-learning (Wei, Li, Feng & Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning",
ECCV 2024, arXiv 2407.09705).

The rule (paper, Sec. 3; released code ``code/ours.py``, ``reinit_score`` and ``reinit``):

1. **Diagnosing.** For every modality k, the encoder's features φ_k of the training data D and of a held-out set V
   are each scaled to [−1, 1] per feature (min-max, fitted on that set) and clustered by k-means into as many
   clusters as there are classes. The purity of a clustering is P = (1/N) Σ_c max_y |{i ∈ c : y_i = y}| (each
   cluster counts its most frequent label). The learning state is the purity gap g_k = |P_D^k − P_V^k|: a modality
   whose representation separates its training data far better than held-out data is well learnt (or over-trained);
   a modality with little to learn has a small gap, so it is not pushed to memorise noise.
2. **Re-learning.** The re-initialisation strength α_k = tanh(λ·g_k) soft-resets every parameter of encoder k towards
   its initial value: θ_k ← (1 − α_k)·θ_k + α_k·θ_k^0 (θ_k^0: the encoder's weights before the first step). The
   better-learnt modality is pulled back further, which leaves room for the others while keeping part of what it
   learnt.

Schedule (the released loop): after the training epoch ``epoch`` (0-based) with epoch % ``every`` == 0 and
epoch > 0, at most ``times`` times, i.e. after epochs every, 2·every, …, times·every; here in ``on_epoch_end``, after
that epoch's validation (as ``ours.py``: its evaluation and best-model saving come before the re-initialisation, so
the epoch's selected weights are the ones before it). The loss is the fused cross-entropy alone. Defaults are the
released script ``code/script/ours.sh``: λ (``move_lambda``) 3, ``reinit_epoch`` 20, ``reinit_num`` 3 of 90 epochs
(``every: "22%"`` is the same share of another schedule); preset ``balancebenchmark``: BalanceBenchmark's
``configs/trainer_config.yaml`` (``ReLearning``: move_lambda 3, reinit_epoch 15, reinit_num 2).

Where this module stands relative to the released code (GeWu-Lab/Diagnosing_Relearning_ECCV2024 at 025085e) and to
BalanceBenchmark (GeWu-Lab/BalanceBenchmark at 4c1482f, ``balancemm/trainer/ReLearning_trainer.py``):

- **The held-out set V.** The released CREMA-D code trains on ``my_train.csv`` (5953 clips) and diagnoses with
  ``val.csv`` (743 clips): both are parts of ``train.csv``, so V is about 11% of the training data, never trained on
  (it selects its checkpoints on the test split). Here the same: ``training_split`` holds out a stratified, seeded
  (the run's seed) ``holdout_fraction`` of the training split (default 0.11; at least one clip per class; the clips
  of one video move together) and the model trains on the rest; the harness's validation split stays for checkpoint
  selection only, so no validation label reaches training. BalanceBenchmark diagnoses with the loader it validates
  on. The method therefore trains on 89% of the training split (noted in every run).
- **The training features** are those of the part trained on, computed in eval mode with the evaluation
  preprocessing, in the split's fixed order (``ctx.batches``). The released ``get_feature`` also runs in eval mode on
  the training loader (shuffled; its CREMA-D dataset in mode ``my_train`` applies the evaluation transforms).
- **k-means.** scikit-learn ``KMeans(n_clusters=C, random_state=0)`` as released; ``n_init`` is sklearn's default of
  the version the authors ran, which the repository does not pin (10 before sklearn 1.4, one k-means++ run after):
  here ``n_init`` 10, fixed. The features are float64 and the clustering runs on one thread (sklearn's OpenMP
  reduction of the cluster sums is in thread order, so several threads can give different centres run to run): the
  diagnosis is deterministic on CPU. With fewer held-out clips than classes (tiny data only), C is capped at the
  number of clips.
- **What is re-initialised:** every parameter of the modality's encoder (released: every parameter whose name holds
  ``audio_net`` / ``visual_net``, the encoders; BalanceBenchmark: every parameter whose name holds the modality's
  name). Buffers (batch-norm running statistics) are kept, the heads and the fusion are untouched.
- **Optimizer state is kept** (``forget_optimizer_state`` is *not* called): both released implementations assign
  ``param.data``, which leaves the optimizer's momentum buffers of those parameters in place, so the first steps
  after a re-initialisation still carry the old momentum. Here the new values are written into the parameters in
  place, with the same effect.
- The initial weights θ^0 are the encoders' weights when ``setup`` runs (after ``configure_model``; pretrained
  weights, when a backbone loads them, are θ^0), kept as plain tensors in ``state_dict``, so a resumed run mixes
  towards the same θ^0.

M ≥ 2 modalities: the rule is per modality (the paper's experiments include three-modality CMU-MOSI), so nothing is
extended. Every fusion with per-modality features; for a fusion between encoder blocks the diagnosed features are
what ``model.encode`` returns (already gated by the other streams) and only the encoders' own parameters are mixed.
Single-label data only (purity counts one label per clip).
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, ClassVar

import numpy as np
import torch
from annotated_types import Ge, Lt

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce
from benchmark.balancers.gblend import SuperEpochLength, carve_holdout, super_epoch_length
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import HoldoutFraction, Positive, PositiveInt

#: a k-means seed (scikit-learn accepts 0 to 2**32 - 1)
Seed = Annotated[int, Ge(0), Lt(2**32)]


def purity(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor) -> float:
    """Cluster purity: (1/N) Σ_clusters (count of the cluster's most frequent label). Label and cluster ids are
    arbitrary integers (only which samples share them matters)."""
    labels, clusters = np.asarray(labels).reshape(-1), np.asarray(clusters).reshape(-1)
    if len(labels) != len(clusters) or len(labels) == 0:
        raise ValueError(f"purity needs one cluster per label, got {len(labels)} labels and {len(clusters)} clusters")
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((ci.max() + 1, li.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, li), 1)
    return float(table.max(axis=1).sum() / len(labels))


def cluster_purity(
    features: torch.Tensor, labels: torch.Tensor, n_clusters: int, n_init: int = 10, seed: int = 0
) -> float:
    """Purity of k-means clusters of ``features`` [N, ...] (flattened per sample) against ``labels``: the features
    min-max scaled to [−1, 1] per dimension (fitted on these samples), ``n_clusters`` clusters (at most N), k-means++
    seeded by ``seed``, ``n_init`` runs, on one thread (deterministic)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import MinMaxScaler
    from threadpoolctl import threadpool_limits

    x = features.detach().reshape(len(features), -1).to("cpu", torch.float64).numpy()
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than clusters (tiny data)
        x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
        k = max(1, min(int(n_clusters), len(x)))
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return purity(labels.detach().cpu().numpy(), clusters)


def reinit_strength(train_purity: float, held_purity: float, lam: float) -> float:
    """α = tanh(λ·|P_D − P_V|): the share of the initial weights in the soft re-initialisation."""
    return math.tanh(lam * abs(train_purity - held_purity))


@torch.no_grad()
def soft_reinit_(params: list[torch.nn.Parameter], initial: list[torch.Tensor], alpha: float) -> None:
    """θ ← (1 − α)·θ + α·θ⁰ for every parameter, in place (the parameter objects, and so the optimizer's references
    to them and its state, are kept)."""
    for p, p0 in zip(params, initial, strict=True):
        p.mul_(1.0 - alpha).add_(p0.to(device=p.device, dtype=p.dtype), alpha=alpha)


def diagnosis_epochs(every: int | str, times: int, num_epochs: int) -> list[int]:
    """The 0-based epochs after which the method diagnoses and re-initialises: every, 2·every, …, times·every (the
    released ``epoch % reinit_epoch == 0 and epoch > 0``, at most ``reinit_num`` times), within the schedule.
    ``every`` is a number of epochs or a share of the schedule ("22%": round(0.22 · num_epochs), at least 1)."""
    period = super_epoch_length(every, num_epochs)
    return [k * period for k in range(1, times + 1) if k * period < num_epochs]


@torch.no_grad()
def encoder_features(model: MultimodalModel, batches) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every modality's encoder features (float64, on the CPU, one row per sample) and the labels of ``batches``
    (an iterable of (inputs, labels) on the device), in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    labels = []
    try:
        for inputs, y in batches:
            features = model.encode(inputs)
            for m in model.modalities:
                parts[m].append(features[m].detach().flatten(1).to("cpu", torch.float64))
            labels.append(y.detach().cpu())
    finally:
        model.train(was_training)
    return {m: torch.cat(v) for m, v in parts.items()}, torch.cat(labels)


@BALANCERS.register("relearning")
class ReLearning(Balancer):
    """Diagnosing & Re-learning (Wei et al., ECCV 2024). After epochs every, 2·every, …, times·every (0-based, after
    that epoch's validation): per modality k, P_D^k and P_V^k = purity of k-means clusters (C clusters, features
    min-max scaled to [−1, 1]) of encoder k's features on the data trained on (D) and on a held-out part V of the
    training split (``holdout_fraction``, stratified, never trained on); α_k = tanh(λ·|P_D^k − P_V^k|); every
    parameter of encoder k becomes (1 − α_k)·θ_k + α_k·θ_k^0, θ_k^0 its value before training. Optimizer state is
    kept (as the released code). Loss: the fused cross-entropy. History (diagnosis epochs only): ``purity_train_<m>``,
    ``purity_held_<m>``, ``gap_<m>``, ``alpha_<m>``. Differences from the released code: the module docstring."""

    display_name: ClassVar[str] = "Diagnosing & Re-learning"
    paper = "Wei et al. 2024 (Diagnosing & Re-learning, ECCV), purity gap g = |P_D − P_V|, α = tanh(λg), soft re-init"
    single_label_only = "its diagnosis counts, per k-means cluster, the clips of the cluster's most frequent label"
    presets = {
        "released": {
            "lam": 3.0,
            "every": 20,
            "times": 3,
            "source": "released Diagnosing_Relearning_ECCV2024 code, code/script/ours.sh "
            "(move_lambda 3, reinit_epoch 20, reinit_num 3, 90 epochs)",
        },
        "balancebenchmark": {
            "lam": 3.0,
            "every": 15,
            "times": 2,
            "source": "BalanceBenchmark configs/trainer_config.yaml, ReLearning (move_lambda 3, reinit_epoch 15, "
            "reinit_num 2)",
        },
    }

    def __init__(
        self,
        *,
        lam: Positive = 3.0,
        every: SuperEpochLength = 20,
        times: PositiveInt = 3,
        holdout_fraction: HoldoutFraction = 0.11,
        n_init: PositiveInt = 10,
        kmeans_seed: Seed = 0,
    ) -> None:
        super().__init__()
        if isinstance(every, str):
            if not every.endswith("%") or float(every.rstrip("%")) <= 0:
                raise ValueError(f"every is a number of epochs or a share like '22%', not {every!r}")
        elif every < 1:
            raise ValueError("every must be at least one epoch")
        if not 0 < holdout_fraction < 0.5:
            raise ValueError(f"holdout_fraction must lie in (0, 0.5), not {holdout_fraction}")
        self.lam, self.every, self.times = lam, every, times
        self.holdout_fraction, self.n_init, self.kmeans_seed = holdout_fraction, n_init, kmeans_seed
        #: per modality, the encoder's parameters before the first step (θ⁰; plain tensors, so a resume keeps them)
        self.initial: dict[str, list[torch.Tensor]] | None = None
        #: every diagnosis so far: {"epoch", "purity_train", "purity_held", "gap", "alpha"} (per modality)
        self.diagnoses: list[dict] = []
        self.split_note = ""

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        if fusion_cls is not None and getattr(fusion_cls, "needs_blocks", False):
            return [
                f"adaptation: fusion '{fusion_cls.name}' runs between encoder blocks, so the features Diagnosing & "
                "Re-learning clusters are already gated by the other streams; only each encoder's own parameters "
                "are re-initialised"
            ]
        return []

    # --- the held-out set ----------------------------------------------------------------------------------------
    def training_split(self, train, seed: int = 0):
        if train.multi_label:  # n/a by single_label_only; a direct call still gets a clear error
            raise ValueError(f"Diagnosing & Re-learning {self.single_label_only}: it needs single-label data")
        held, rest, _ = carve_holdout(train.targets(), self.holdout_fraction, seed, train.ids())
        self.held_out = train.subset(held)
        self.split_note = (
            f"Diagnosing & Re-learning holds out V = {len(held)} clips ({len(held) / len(train):.1%} of the training "
            f"split, stratified, seed {seed}) to diagnose each encoder (purity gap between the data trained on and V); "
            f"the model trains on the other {len(rest)}"
        )
        self.run_notes = [self.split_note]
        return train.subset(rest)

    # --- the run ------------------------------------------------------------------------------------------------
    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        self.params = {m: list(model.encoders[m].parameters()) for m in model.modalities}
        # setup runs before the first step: these are the initial weights (on resume, load_state_dict restores the
        # saved ones over them, which are the same)
        self.initial = {m: [p.detach().clone() for p in ps] for m, ps in self.params.items()}
        self.schedule = diagnosis_epochs(self.every, self.times, ctx.num_epochs)
        if not self.schedule:
            self.run_notes.append(
                f"Diagnosing & Re-learning never re-initialises in this schedule: every {self.every} epochs "
                f"(first after epoch {super_epoch_length(self.every, ctx.num_epochs)}, 0-based) of "
                f"{ctx.num_epochs}; the run is joint training on the part of the training split it trains on"
            )

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return fused_ce(out, y)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in self.schedule:
            return
        diagnosis = self.diagnose(epoch)
        for m in self.model.modalities:
            soft_reinit_(self.params[m], self.initial[m], diagnosis["alpha"][m])
        self.diagnoses.append(diagnosis)
        self.track(**{key: {m: torch.tensor(v) for m, v in diagnosis[key].items()} for key in DIAGNOSIS_KEYS})
        self.ctx.log(
            f"Diagnosing & Re-learning after epoch {epoch + 1}: "
            + ", ".join(
                f"{m} P_D {diagnosis['purity_train'][m]:.3f} P_V {diagnosis['purity_held'][m]:.3f} "
                f"alpha {diagnosis['alpha'][m]:.3f}"
                for m in self.model.modalities
            )
        )

    def diagnose(self, epoch: int) -> dict:
        """The purities, gaps and re-initialisation strengths of every modality for the current model."""
        held = getattr(self, "held_out", None)
        if held is None:
            raise RuntimeError("Diagnosing & Re-learning diagnoses on the held-out part that training_split carves")
        train_features, train_labels = encoder_features(self.model, self.ctx.batches())
        held_features, held_labels = encoder_features(self.model, self.ctx.batches(held))
        c = self.model.num_classes
        out: dict = {"epoch": epoch, **{key: {} for key in DIAGNOSIS_KEYS}}
        for m in self.model.modalities:
            p_d = cluster_purity(train_features[m], train_labels, c, self.n_init, self.kmeans_seed)
            p_v = cluster_purity(held_features[m], held_labels, c, self.n_init, self.kmeans_seed)
            out["purity_train"][m], out["purity_held"][m] = p_d, p_v
            out["gap"][m] = abs(p_d - p_v)
            out["alpha"][m] = reinit_strength(p_d, p_v, self.lam)
        return out


DIAGNOSIS_KEYS = ("purity_train", "purity_held", "gap", "alpha")
