"""On-the-fly Prediction Modulation (OPM) and the TPAMI version of On-the-fly Gradient Modulation (OPG).

Wei, Hu, Du & Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024 (arXiv 2410.11582),
the journal extension of OGM-GE (Peng et al., CVPR 2022). Released code: github.com/GeWu-Lab/BML_TPAMI2024, read at
commit 4b3aa4f (code/main.py, code/models/Classifier.py, code/config.py, code/scripts/train_{opm,ogm}.sh). As
published it does not run (Classifier.py l. 53 has a stray ']'); the rules below are those of the lines around it.

Both methods monitor the discrepancy between the modalities on every training batch:

- score (as OGM-GE eq. 8): s_m = Σ_i softmax(out_m)_i[y_i] over the batch, out_m the modality's logits taken from the
  fused head (concat: W_m·φ_m + b/M; Classifier.py l. 112-143 splits the concat head's weight with b/2), computed on
  the undropped features and detached (``ogm_scores``);
- discrepancy ratio: ρ_m = 1/(M−1) · Σ_{j≠m} s_m / s_j, the paper's M-modality form; for two modalities exactly the
  released ρ_a = s_a/s_v, ρ_v = s_v/s_a (``discrepancy_ratios``; main.py l. 119-120, Classifier.py l. 61-62).

OPM (feed-forward stage): the dominant modality's feature vector is dropped (set to zero) per sample with probability
q_m = q_base·(1 + λ·z(ρ_m)) if ρ_m > 1, else 0 (the weaker modality is never dropped), z(ρ) = tanh(ρ − 1), clipped to
[0, 1] (``opm_drop_probabilities``; Classifier.py ``calcu_q``, l. 58-72). As ``Modality_drop.execute_drop``
(l. 31-55): the drop is executed on a step only with probability ``p_exe`` (one draw per batch; otherwise nothing is
dropped); each sample's mask of modality m is Bernoulli(1 − q_m), independently per sample and modality; every
feature vector (all modalities) is then divided by 1 − θ, θ = Σ_m d_m·q_m / Σ_m d_m (the dimension-weighted drop
rate: inverted dropout over the concatenated vector; its backward is the same scaling). Samples losing every
modality would be removed (main.py l. 95-101), which never happens: the weakest modality has ρ ≤ 1, so q = 0. The
loss is the cross-entropy of the fused head on the dropped features; evaluation never drops.

OPG (back-propagation stage): OGM-GE's rule unchanged — after backward, inside the window, every modulated encoder
gradient of modality m becomes k_m·g + h, k_m = 1 − tanh(α·ρ_m) if ρ_m > 1 else 1, h ~ N(0, σ²) with σ the std of the
unscaled gradient tensor (+1e-8), added for every modality (main.py l. 116-169, ``--modulation OGM_GE``, its
default). What is the same as ``ogm.py`` is imported from there (scores, parameter selection, GE noise); where OPG
differs from the harness's ``ogm_ge``:
  1. M > 2: ρ_m is the mean of the pairwise ratios s_m/s_j (above); ``ogm_ge``'s extension is s_m / mean_{j≠m} s_j.
     Identical for two modalities.
  2. a tie (every ρ = 1): no modality is slowed (the rule's k = 1 unless ρ > 1); the CVPR code (and ``ogm_ge``) slows
     the first modality, the TPAMI code's else-branch slows the second (main.py l. 137-153). Exact float ties do not
     occur in training, so no option is offered.
  3. window: the TPAMI code does not modulate during its warm-up (``warm_up = 1 if epoch <= 5``, main.py l. 91) and
     scripts/train_ogm.sh sets the window [0, 60] of 100 epochs (0-based, inclusive, l. 154): epochs 6-60, the
     default ["6%", "60%"] (``ogm_ge``: the CVPR code's ["0%", "50%"]). α 0.8 is train_ogm.sh's value
     (Kinetics-Sounds), as ``ogm_ge``'s CREMA-D default.
  4. ``noise: false`` gives the code's ``--modulation OGM`` (no GE noise).

Defaults are the released scripts' (Kinetics-Sounds): OPM q_base 0.5, λ 0.5, p_exe 0.7 (train_opm.sh and the
argparse defaults, which override config.py's q_base 0.4), no drop during the warm-up epochs 0-5 and no end
(window ["6%", "100%"]). The released training settings (AdamW lr 5e-5, weight decay 0.01, StepLR(40, 0.1), batch
32, 100 epochs) are the run's training settings here, not the method's.

Not verified against the paper's text, which could not be read here (only the released code, BalanceBenchmark's
re-implementation and third-party summaries): the M-modality ρ above, whether the paper rescales kept features
(``rescale: false`` keeps them as they are), whether it has p_exe (``p_exe: 1`` drops on every step), and whether q is
applied to the batch it is computed on (released code, ``q_step: current``) or from the next step on
(``q_step: previous``: step t drops with the q of step t − 1, q = 0 on the first step; a re-implementation's reading of
the paper's Algorithm 1). ``rescale: false`` and ``q_step: previous`` are named in the run's notes.

BalanceBenchmark (balancemm/trainer/OPM_trainer.py, OGM_trainer.py) follows the released two-modality rules; with
three modalities its OPM divides s_m by the sum of the other scores (ρ > 1 only above the other two together) and
its OGM by the lowest score, and its OGM scales every parameter of more than one dimension whose name contains the
modality (not only convolution weights); neither is followed here.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note, fused_ce, in_window
from benchmark.balancers.ogm import OGM, OGMGE, ogm_scores
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import EpochBound, NonNegative, Positive, Probability

M_GT_2_RATIO = (
    "extension: with {m} modalities ρ_m = mean over j≠m of s_m/s_j (the TPAMI paper's M-modality form as reported; the "
    "released code has two modalities)"
)
STREAM_NOTE = (
    "fusion '{name}' exchanges information between the streams inside the encoders: OPM zeroes each stream's final "
    "feature vector, which already carries what the gates took from the other streams (the paper drops late features)"
)
NO_RESCALE_NOTE = "option: rescale: false keeps the kept features as they are (the released code divides by 1 − θ)"
PREVIOUS_Q_NOTE = (
    "option: q_step: previous drops with the probabilities of the previous step (0 on the first step); the released "
    "code uses the current batch's"
)
NO_NOISE_NOTE = "option: noise: false is the released --modulation OGM (no generalisation-enhancement noise)"


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """ρ_m = 1/(M−1) · Σ_{j≠m} s_m / s_j, one per modality (two modalities: ρ_a = s_a/s_v, ρ_v = s_v/s_a)."""
    m = scores.numel()
    pairwise = scores[:, None] / scores[None, :]  # [m, j] = s_m / s_j
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=scores.device)
    return torch.where(off_diagonal, pairwise, torch.zeros_like(pairwise)).sum(1) / (m - 1)


def opm_drop_probabilities(rho: torch.Tensor, q_base: float, lam: float) -> torch.Tensor:
    """q_m = clip(q_base·(1 + λ·tanh(ρ_m − 1)), 0, 1) if ρ_m > 1 else 0 (a tie drops nothing)."""
    q = (q_base * (1 + lam * torch.tanh(rho - 1))).clamp(0.0, 1.0)
    return torch.where(rho > 1, q, torch.zeros_like(q))


def opg_coefficients(rho: torch.Tensor, alpha: float) -> torch.Tensor:
    """k_m = 1 − tanh(α·ρ_m) if ρ_m > 1 else 1 (OGM-GE eq. 10, kept in the TPAMI paper); nobody is slowed on a tie."""
    return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))


@BALANCERS.register("opm")
class OPM(Balancer):
    """OPM (Wei et al., TPAMI 2024): during training the dominant modality's features are dropped (zeroed) per sample
    with probability q_m = q_base·(1 + λ·tanh(ρ_m − 1)) (ρ_m > 1; weaker modalities never), the step's drop executed
    with probability ``p_exe`` and the features rescaled by 1/(1 − θ), as the released code (module docstring);
    cross-entropy of the fused head on the dropped features. Inside the epoch window only (default ["6%", "100%"]:
    the released warm-up keeps epochs 0-5 of 100 undropped). Scores come from the undropped features through the
    fused head's split (concat: W_m·φ_m + b/M; fusions without a linear split use the zero-masking estimate, noted).

    ``forward`` only encodes: q needs the labels, so ``loss`` drops, runs the fusion once on the dropped features
    and puts those logits into the step's output (what the loop's training accuracy reads)."""

    display_name: ClassVar[str] = "OPM"
    paper = "Wei et al. 2024 (TPAMI), On-the-fly Prediction Modulation"
    single_label_only = "its discrepancy ratio compares softmax scores of the one true class"

    def __init__(
        self,
        *,
        q_base: Probability = 0.5,
        lam: NonNegative = 0.5,
        p_exe: Probability = 0.7,
        start_epoch: EpochBound = "6%",
        end_epoch: EpochBound = "100%",
        rescale: bool = True,
        q_step: Literal["current", "previous"] = "current",
    ) -> None:
        super().__init__()
        for name, value in (("q_base", q_base), ("p_exe", p_exe)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {value}")
        if lam < 0:
            raise ValueError(f"lam must be ≥ 0, not {lam}")
        if q_step not in ("current", "previous"):
            raise ValueError(f"q_step must be 'current' or 'previous', not {q_step!r}")
        self.q_base, self.lam, self.p_exe, self.rescale, self.q_step = q_base, lam, p_exe, rescale, q_step
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        if not rescale:
            self.run_notes.append(NO_RESCALE_NOTE)
        if q_step == "previous":
            self.run_notes.append(PREVIOUS_Q_NOTE)

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if fusion_cls is not None and getattr(fusion_cls, "needs_blocks", False):
            notes.append(STREAM_NOTE.format(name=fusion_cls.name))
        if num_modalities > 2:
            notes.append(M_GT_2_RATIO.format(m=num_modalities))
        return notes

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        self.q = torch.zeros(len(model.modalities), device=ctx.device)  # the last step's q (used by q_step: previous)

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = model.encode(inputs)
        placeholder = next(iter(features.values())).new_empty(0)  # replaced in loss() by the dropped pass's logits
        return ModelOutput(placeholder, features)

    def drop(
        self, features: dict[str, torch.Tensor], q: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The released drop: with probability p_exe, keep each sample's feature of modality m with probability
        1 − q_m and divide every feature by 1 − θ (``rescale``); otherwise leave all. Returns the features, the
        [M, B] keep mask and whether the drop was executed (0-d bool)."""
        first = next(iter(features.values()))
        batch, device = first.shape[0], first.device
        executed = torch.rand((), device=device) < self.p_exe
        keep = (torch.rand(len(features), batch, device=device) >= q[:, None]) | ~executed
        dims = [f[0].numel() for f in features.values()]  # d_m (plain ints: no host-to-device copy per step)
        theta = sum(d * q[i] for i, d in enumerate(dims)) / sum(dims)
        scale = torch.where(executed, 1 / (1 - theta), torch.ones_like(theta)) if self.rescale else theta.new_ones(())
        dropped = {
            m: f * (keep[i].to(f.dtype) * scale.to(f.dtype)).view(-1, *[1] * (f.dim() - 1))
            for i, (m, f) in enumerate(features.items())
        }
        return dropped, keep, executed

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        modalities = self.model.modalities
        with torch.no_grad():
            scores = ogm_scores(self.model.fusion.modality_logits(out.features), y)
        rho = discrepancy_ratios(scores)
        current = opm_drop_probabilities(rho, self.q_base, self.lam)
        q = current if self.q_step == "current" else self.q
        self.q = current
        if in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs):
            features, keep, executed = self.drop(out.features, q)
            applied, kept = q, keep.float().mean(1)
        else:
            features, applied, kept = out.features, torch.zeros_like(q), torch.ones_like(q)
            executed = torch.zeros((), dtype=torch.bool, device=q.device)
        fused = self.model.decode(features)
        out.logits, out.unimodal = fused.logits, fused.unimodal
        self.track(rho=dict(zip(modalities, rho)), q=dict(zip(modalities, applied)), kept=dict(zip(modalities, kept)))
        self.track(executed=executed)
        return fused_ce(out, y)


@BALANCERS.register("opg")
class OPG(OGM):
    """OPG: the TPAMI 2024 on-the-fly gradient modulation (the paper's "OGM", with GE): OGM-GE's coefficients
    k_m = 1 − tanh(α·ρ_m) (ρ_m > 1) and noise N(0, std(g)²) on the modulated encoder gradients, with the TPAMI
    M-modality ratio ρ_m = mean_{j≠m} s_m/s_j, no modality slowed on a tie, and the released window ["6%", "60%"]
    (warm-up epochs 0-5, window 0-60 of 100). ``modulate`` as ``ogm`` (conv: convolution weights, as the released
    code); ``noise: false`` is the released ``--modulation OGM``. Module docstring: every difference from ``ogm_ge``.
    """

    display_name: ClassVar[str] = "OPG"
    paper = "Wei et al. 2024 (TPAMI), On-the-fly Gradient Modulation with GE"
    presets: ClassVar[dict] = {}  # OGM-GE's per-dataset α come from the CVPR code; the TPAMI code ships one setting

    def __init__(
        self,
        *,
        alpha: Positive = 0.8,
        start_epoch: EpochBound = "6%",
        end_epoch: EpochBound = "60%",
        modulate: Literal["conv", "declared", "all"] = "conv",
        noise: bool = True,
    ) -> None:
        super().__init__(alpha=alpha, start_epoch=start_epoch, end_epoch=end_epoch, modulate=modulate)
        self.noise = noise
        if not noise:
            self.run_notes.append(NO_NOISE_NOTE)

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 2:
            notes.append(M_GT_2_RATIO.format(m=num_modalities))
        return notes

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        # OGM's setup notes the CVPR code's tie rule; here a tie slows no modality (module docstring, point 2)
        self.run_notes = [n for n in self.run_notes if not n.startswith("on a tie")]

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        rho = discrepancy_ratios(ogm_scores(self.model.modality_logits(out), y))
        k = opg_coefficients(rho, self.alpha)
        self.k = dict(zip(self.model.modalities, k))
        self.track(rho=dict(zip(self.model.modalities, rho)), k=self.k)
        return fused_ce(out, y)

    def modulate_grad(self, g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return OGMGE.modulate_grad(self, g, k) if self.noise else g * k
