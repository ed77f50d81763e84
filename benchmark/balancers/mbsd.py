"""MBSD: the unimodal losses plus a confidence-weighted self-distillation between the modalities' predictions, as
BalanceBenchmark implements it.

The method is named after Liu et al. 2023, "Multimodal Pre-Training with Self-Distillation for Product Understanding
in E-Commerce" (WSDM 2023), whose self-distillation "transfers the knowledge in the dominated modality to the weaker
modality"; that paper's equations were not available here and there is no released code of its own, so this module
follows BalanceBenchmark (GeWu-Lab/BalanceBenchmark, read at commit 4c1482f), ``balancemm/trainer/MBSD_trainer.py``
``training_step`` (line numbers of that file) and ``configs/trainer_config.yaml`` (``MBSD``: modulation_starts 0,
modulation_ends 80).

Per step, with z_m the per-modality logits taken from the fused head (BalanceBenchmark's ``unimodal_result``: for its
concat fusion W_m·φ_m + b/M, exactly the harness's ``model.modality_logits``), p_m = softmax(z_m) (no temperature),
t_m,i = p_m,i[y_i] the true-class probability (l. 126):

- inside the epoch window [start_epoch, end_epoch] (0-based, inclusive; l. 129), for the pair of modalities (a, b):
  w_i = |t_a,i − t_b,i| if either modality's argmax is y_i, else 0 (l. 148-149: max − min);
  s_i = max(t_a,i, t_b,i), u_i = min(t_a,i, t_b,i) (l. 150-151);
  kl_i = ``F.kl_div(s, u, reduction='none')``_i = u_i·(log u_i − s_i) (l. 153: the stronger sample's probability is
  passed where kl_div expects a log-probability, so this is not a KL divergence between distributions — kept as is);
  rs_i = (1/C)·Σ_c (z_a,ic − z_b,ic)² on the logits (l. 132);
  L_KL = (1/B)·Σ_i w_i·kl_i, L_RS = (1/B)·Σ_i w_i·rs_i (l. 154-158);
  L = CE(fused) + Σ_m CE(z_m) + L_RS + L_KL (l. 159).
- outside the window L = CE(fused) alone (l. 228): no unimodal losses either.

So the "direction" is per sample (from the modality with the higher true-class probability to the lower one) but
nothing is detached: w, s and u are built from the softmax outputs inside autograd (the released code assigns them
into zero tensors element by element, which records the copies), so gradient reaches both modalities through w, the
kl term and rs. rs is symmetric. Every coefficient is 1.

Three modalities (l. 161-224): the same per pair (0,1), (0,2), (1,2), each pair's rs on the softmax *probabilities*
instead of the logits, L_KL and L_RS the means over the three pairs, and the three unimodal losses. ``discrepancy:
auto`` reproduces both branches (logits for two modalities, probabilities for more); ``logits`` or
``probabilities`` fixes one for every M. Extension: for M > 3 every pair i < j, averaged (the released branch reads
only the first three modalities).

Where the harness differs: the per-sample Python loop is vectorised (same numbers, no host sync); the released
``max``/``min`` pick the first modality on a tie, as here; for fusions other than concat (BalanceBenchmark computes
per-modality logits for concat only) z_m is the fusion's own split (sum: W_m·φ_m + b_m) or the zero-masking Shapley
estimate (noted in the run).
"""

from __future__ import annotations

import itertools
from typing import ClassVar, Literal

import torch
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note, fused_ce, in_window
from benchmark.models.model import ModelOutput
from benchmark.params import EpochBound

DISCREPANCY = ("auto", "logits", "probabilities")


def mbsd_pair_terms(
    za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor, on: Literal["logits", "probabilities"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_KL, L_RS, w) of one pair of modalities' logits [B, C] (everything differentiable, as the released code)."""
    pa, pb = torch.softmax(za.float(), 1), torch.softmax(zb.float(), 1)
    ta, tb = pa.gather(1, y[:, None]).squeeze(1), pb.gather(1, y[:, None]).squeeze(1)
    correct = (pa.argmax(1) == y) | (pb.argmax(1) == y)
    w = torch.where(correct, (ta - tb).abs(), torch.zeros_like(ta))
    strong = torch.where(tb > ta, tb, ta)  # Python's max(a, b): a unless b > a
    weak = torch.where(tb < ta, tb, ta)  # min(a, b): a unless b < a
    kl = F.kl_div(strong, weak, reduction="none")
    diff = za.float() - zb.float() if on == "logits" else pa - pb
    rs = diff.pow(2).sum(1) / za.shape[1]
    n = len(y)
    return (w * kl).sum() / n, (w * rs).sum() / n, w


def discrepancy_on(discrepancy: str, num_modalities: int) -> Literal["logits", "probabilities"]:
    """What the squared-difference term compares: ``auto`` is the released code's logits for two modalities and
    probabilities for three (and, extended, more)."""
    if discrepancy == "auto":
        return "logits" if num_modalities == 2 else "probabilities"
    return discrepancy


def mbsd_terms(
    logits: dict[str, torch.Tensor], y: torch.Tensor, discrepancy: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_KL, L_RS, mean w) over every pair i < j of modalities (in dict order), each the mean over the pairs."""
    on = discrepancy_on(discrepancy, len(logits))
    terms = [mbsd_pair_terms(logits[a], logits[b], y, on) for a, b in itertools.combinations(logits, 2)]
    kl = torch.stack([t[0] for t in terms]).mean()
    rs = torch.stack([t[1] for t in terms]).mean()
    weight = torch.stack([t[2].detach().mean() for t in terms]).mean()
    return kl, rs, weight


@BALANCERS.register("mbsd")
class MBSD(Balancer):
    """MBSD (Liu et al. 2023) as BalanceBenchmark's MBSD trainer implements it (module docstring: file and lines).
    Inside the epoch window [start_epoch, end_epoch] (0-based, inclusive; BalanceBenchmark's 0 and 80):
    L = CE(fused) + Σ_m CE(z_m) + L_RS + L_KL with z_m the per-modality logits of the fused head,
    L_KL = (1/B)·Σ_i w_i·u_i·(log u_i − s_i) and L_RS = (1/B)·Σ_i w_i·(1/C)·‖z_a,i − z_b,i‖², where s_i / u_i are the
    larger / smaller of the two modalities' true-class probabilities and w_i = s_i − u_i when either modality
    classifies sample i correctly (0 otherwise); no temperature, nothing detached. Outside the window L = CE(fused).
    For three modalities the pair terms are averaged over the pairs and rs compares probabilities (``discrepancy:
    auto``, as the released code; ``logits`` / ``probabilities`` fix one). M > 3: every pair (an extension)."""

    display_name: ClassVar[str] = "MBSD"
    paper = "Liu et al. 2023 (MBSD, WSDM), self-distillation as BalanceBenchmark's MBSD trainer"
    single_label_only = "its weights and distillation terms read each modality's probability of the one true class"

    def __init__(
        self,
        *,
        start_epoch: EpochBound = 0,
        end_epoch: EpochBound = 80,
        discrepancy: Literal["auto", "logits", "probabilities"] = "auto",
    ) -> None:
        super().__init__()
        if discrepancy not in DISCREPANCY:
            raise ValueError(f"discrepancy must be one of {', '.join(DISCREPANCY)}, not {discrepancy!r}")
        self.start_epoch, self.end_epoch, self.discrepancy = start_epoch, end_epoch, discrepancy

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 3:
            notes.append(
                "extension: the distillation terms are averaged over every pair of modalities (BalanceBenchmark's "
                "MBSD trainer has branches for two and three modalities)"
            )
        return notes

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        released = discrepancy_on("auto", len(model.modalities))
        chosen = discrepancy_on(self.discrepancy, len(model.modalities))
        if chosen != released:
            self.run_notes.append(
                f"MBSD discrepancy: {chosen} — the squared-difference term compares the modalities' {chosen}; "
                f"BalanceBenchmark's trainer compares their {released} for {len(model.modalities)} modalities"
            )

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        if not in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs):
            self.track(loss_fused=fused)
            return fused
        logits = self.model.modality_logits(out)
        uni = {m: F.cross_entropy(z.float(), y) for m, z in logits.items()}
        kl, rs, weight = mbsd_terms(logits, y, self.discrepancy)
        self.track(loss_fused=fused, loss_uni=uni, loss_kl=kl, loss_rs=rs, weight=weight)
        return fused + sum(uni.values()) + rs + kl
