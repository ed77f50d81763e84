"""Information Acquisition Regulation (InfoReg, Huang, Wei, Yang & Hu, CVPR 2025, arXiv 2503.18595).

Released code (github.com/GeWu-Lab/InfoReg_CVPR2025, read at commit 939b2ed) that this module compares against:
main.py, ``train_epoch`` (the rule) and ``main`` (the trace lists and the defaults: SGD lr 0.002, momentum 0.9,
weight decay 1e-4, StepLR(30, 0.1), batch 64, 50 epochs, concat fusion). BalanceBenchmark (GeWu-Lab/BalanceBenchmark,
balancemm/trainer/) has no InfoReg trainer, so there is no second implementation to compare with. Per epoch of the
released loop:

1. ``global_model = deepcopy(model)``: the anchor θ̃ is the whole model as it was at the start of the epoch;
2. k, the growth of the information-sufficient modality's information: with ``audio_trace_list`` (ten zeros, then
   one Fisher trace per finished epoch), tr1 = mean of its last 10 entries, tr2 = mean of the 10 before the last
   one, k = (tr1 − tr2) / tr1 (k = 1 in epoch 0); the epoch is inside the prime learning window when k > 0.05,
   re-evaluated every epoch (the window can re-open); only the *audio* encoder's trace is read, for both modalities;
3. per step: out_m = W_m·φ_m + b/2 (the fused concat head's block of modality m plus half its bias);
   L = CE(out) + CE(out_a) + CE(out_v), one backward (three calls accumulating);
   s_m = Σ_i softmax(out_m)_i[y_i] over the batch; inside the window, if s_a > s_v: β_a = 0.95·exp(tanh(s_a − s_v)),
   β_v = 0; if s_v > s_a: β_v = 0.1·exp(tanh(s_v − s_a)), β_a = 0; on a tie neither; then for every parameter of
   the modality's encoder (``audio_net`` / ``visual_net``, all of them, biases and BatchNorm included):
   g ← g + β_m·(θ − θ̃) — the gradient of the proximal term (β_m/2)·‖θ_m − θ̃_m‖², pulling the leading modality's
   encoder back towards where it started the epoch; the fused head is never regulated;
4. the Fisher trace of the epoch: for every Conv2d/Linear weight of the audio encoder, Σ over the epoch's steps of
   g² (g after step 3, the regulation term included), its mean over the tensor's elements, summed over layers.

Defaults here are the released code's values; where this module differs (each with the released variant as an
option, together the ``released`` preset):

- the window's signal: the sum of every encoder's trace (``window_trace: encoders``) — the harness does not know
  which modality is information-sufficient, and the paper's Fig. 1 follows the whole network's information during
  the prime learning window; ``window_trace: <modality>`` reads one modality's trace, as the released code reads
  audio's;
- the window closes once (``latch: true``): the paper describes one prime learning window at the start of
  training after which regulation stops; ``latch: false`` re-evaluates k every epoch, as the released code;
- the trace is the Fisher information of the task loss (``fisher: task``: squared gradients before the regulation
  term is added); the released code squares the regulated gradient, so the term inflates the trace that gates it
  (``fisher: regulated``);
- α is one value for every modality (``alpha: 0.95``, the released coefficient of the information-sufficient
  modality, audio); the released code's per-modality constants are ``alpha: {audio: 0.95, visual: 0.1}``;
- a trace of layers: every encoder parameter with two or more dimensions (on ResNet-18 exactly its convolution
  weights, the released Conv2d/Linear rule; on other encoders also e.g. attention projection matrices);
- k = 0 when the window's mean trace is 0 (the released code divides by zero there).

The paper's text (beyond its abstract and summaries) could not be read where this module was written, so the rule
above is the released code's; check the paper's equations before relying on the defaults that differ from it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from annotated_types import Ge
from pydantic import StringConstraints

from benchmark.balancers.base import (
    BALANCERS,
    Balancer,
    estimator_note,
    fused_ce,
    true_class_probability,
    window_epoch,
)
from benchmark.metrics import task_loss
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.params import NonNegative, Positive

#: how many finished epochs the window's mean trace covers: a number of epochs, or a share of the schedule ("20%")
History = Annotated[int, Ge(1)] | Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?%$")]
FISHER = ("task", "regulated")
ENCODERS = "encoders"

RELEASED_SOURCE = (
    "released InfoReg code (GeWu-Lab/InfoReg_CVPR2025, main.py train_epoch): beta 0.95·exp(tanh(s_a − s_v)) for "
    "audio and 0.1·exp(tanh(s_v − s_a)) for visual, k from the audio encoder's Fisher trace (regulated gradients) "
    "over 10 zero-padded epochs, k > 0.05, re-evaluated every epoch"
)
LATCH_OFF_NOTE = (
    "InfoReg latch: false — the window is re-evaluated every epoch and can re-open, as the released code; the paper "
    "describes one prime learning window at the start of training"
)
REGULATED_FISHER_NOTE = (
    "InfoReg fisher: regulated — the trace squares the gradient after the regulation term is added, as the released "
    "code (the term inflates the trace that gates it)"
)


def window_rate(traces: list[float], history: int) -> float:
    """k, the relative growth of the mean trace over the last ``history`` epochs (missing epochs count as 0, as the
    released code's zero-padded list): k = (A_now − A_before) / A_now with A_now the mean of the last ``history``
    traces and A_before the mean of the ``history`` before the last one. 1 before any trace (epoch 0); 0 when
    A_now = 0 (no information acquired)."""
    if not traces:
        return 1.0
    padded = [0.0] * history + [float(t) for t in traces]
    now = sum(padded[-history:]) / history
    before = sum(padded[-history - 1 : -1]) / history
    return (now - before) / now if now > 0 else 0.0


def inforeg_coefficients(scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """β_m = α_m·exp(tanh(s_m − mean_{j≠m} s_j)) for a modality whose score exceeds the others' mean, else 0.

    For two modalities exactly the released rule: the one with the larger score gets α·exp(tanh(gap)), the other 0,
    neither on a tie. The scores are sums over the batch, so tanh saturates once the gap exceeds about two samples'
    worth of probability: β ranges over [α, α·e)."""
    m = scores.numel()
    gap = scores - (scores.sum() - scores) / (m - 1)
    return torch.where(gap > 0, alpha * torch.exp(torch.tanh(gap)), torch.zeros_like(gap))


def fisher_parameters(encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The layers of an encoder's Fisher trace: every trainable parameter with two or more dimensions (convolution
    kernels, weight matrices); not biases or normalisation layers."""
    return [p for p in encoder.parameters() if p.requires_grad and p.dim() >= 2]


@BALANCERS.register("inforeg")
class InfoReg(Balancer):
    """InfoReg (Huang et al. 2025) as the released code (module docstring: the released loop and every difference).

    Loss: L = CE(fused) + Σ_m CE(out_m), out_m the modality's logits from the fused head (concat: W_m·φ_m + b/M; sum:
    its own head; fusions without a linear split: the zero-masking Shapley estimate, an extension noted in the run);
    ``unimodal_loss: false`` keeps CE(fused) alone.

    Prime learning window: after every epoch the Fisher trace of each encoder, T_m = Σ_layers mean(Σ_steps g²), is
    recorded; at the start of epoch e, k = (A_{e−1} − A_{e−2}) / A_{e−1} with A_t the mean trace (of
    ``window_trace``) over the ``history`` epochs up to t, zeros before the first (k = 1 in epoch 0). The epoch
    regulates when k > ``threshold``; with ``latch`` the window, once closed, stays closed.

    Regulation, per step inside the window: s_m = Σ_i softmax(out_m)_i[y_i] (detached); the leading modality
    (s_m above the others' mean) gets β_m = α_m·exp(tanh(s_m − mean_{j≠m} s_j)), the others 0; after backward
    every parameter of encoder m gets g ← g + β_m·(θ − θ̃), θ̃ its value at the start of the epoch (the gradient of
    (β_m/2)·‖θ_m − θ̃_m‖²). Outside the window nothing is regulated; the loss keeps its unimodal terms.

    State: the traces of every finished epoch, the window flag and, during an epoch, the anchor θ̃ and the running
    sums of squared gradients (checkpoints come at epoch ends, where the anchor is re-taken at the next start).
    Extension: with M > 2 modalities every modality scoring above the mean of the others is regulated, by its gap to
    that mean (the paper and the released code have two).
    """

    display_name: ClassVar[str] = "InfoReg"
    paper = "Huang et al. 2025 (InfoReg), prime learning window from the Fisher trace and proximal regulation"
    single_label_only = "its regulation strength compares softmax scores of the one true class"
    presets = {
        "released": {
            "alpha": {"audio": 0.95, "visual": 0.1},
            "threshold": 0.05,
            "history": 10,
            "window_trace": "audio",
            "latch": False,
            "fisher": "regulated",
            "unimodal_loss": True,
            "source": RELEASED_SOURCE,
        }
    }

    def __init__(
        self,
        *,
        alpha: Positive | dict[str, NonNegative] = 0.95,
        threshold: NonNegative = 0.05,
        history: History = 10,
        window_trace: str = ENCODERS,
        latch: bool = True,
        fisher: Literal["task", "regulated"] = "task",
        unimodal_loss: bool = True,
    ) -> None:
        super().__init__()
        if fisher not in FISHER:
            raise ValueError(f"fisher must be one of {', '.join(FISHER)}, not {fisher!r}")
        self.alpha, self.threshold, self.history = alpha, threshold, history
        self.window_trace, self.latch, self.fisher, self.unimodal_loss = window_trace, latch, fisher, unimodal_loss
        #: whether the prime learning window is open (the current epoch regulates)
        self.window_open = True
        #: k of the current epoch
        self.rate = 1.0
        #: every finished epoch's Fisher trace, per modality
        self.traces: dict[str, list[float]] = {}
        #: θ̃: each encoder's parameters at the start of the current epoch (only while the window is open)
        self.anchor: dict[str, list[torch.Tensor]] = {}
        #: Σ over the epoch's steps of Σ_layers mean(g²), per modality (on the device)
        self.fisher_sum: dict[str, torch.Tensor] = {}
        if not latch:
            self.run_notes.append(LATCH_OFF_NOTE)
        if fisher == "regulated":
            self.run_notes.append(REGULATED_FISHER_NOTE)

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 2:
            notes.append(
                "extension: every modality scoring above the mean of the others' scores is regulated, by its gap to "
                "that mean (the paper and the released code have two modalities)"
            )
        return notes

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        mods = model.modalities
        if self.window_trace != ENCODERS and self.window_trace not in mods:
            raise ValueError(
                f"window_trace must be '{ENCODERS}' or one of the modalities ({', '.join(mods)}), "
                f"not {self.window_trace!r}"
            )
        if isinstance(self.alpha, dict):
            missing = [m for m in mods if m not in self.alpha]
            if missing:
                raise ValueError(f"alpha has no value for modalities {', '.join(missing)}")
            alpha = [float(self.alpha[m]) for m in mods]
        else:
            alpha = [float(self.alpha)] * len(mods)
        self.alpha_vec = torch.tensor(alpha, device=ctx.device)
        self.history_epochs = max(1, window_epoch(self.history, ctx.num_epochs))
        self.params = {m: [p for p in model.encoders[m].parameters() if p.requires_grad] for m in mods}
        self.fisher_params = {m: fisher_parameters(model.encoders[m]) for m in mods}
        self.dtype = torch.float32 if ctx.device.type == "mps" else torch.float64
        self.fisher_sizes = {
            m: torch.tensor([p.numel() for p in params], dtype=self.dtype, device=ctx.device)
            for m, params in self.fisher_params.items()
        }
        self.traces = {m: list(self.traces.get(m, [])) for m in mods}
        self.beta = torch.zeros(len(mods), device=ctx.device)

    # --- the prime learning window ---------------------------------------------------------------------------------
    def signal(self) -> list[float]:
        """The finished epochs' trace the window reads: one modality's, or the sum over the encoders."""
        if self.window_trace != ENCODERS:
            return self.traces[self.window_trace]
        mods = self.model.modalities
        return [sum(values) for values in zip(*(self.traces[m] for m in mods))]

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        self.rate = window_rate(self.signal(), self.history_epochs)
        is_open = self.rate > self.threshold
        self.window_open = (self.window_open and is_open) if self.latch else is_open
        self.anchor = (
            {m: [p.detach().clone() for p in params] for m, params in self.params.items()} if self.window_open else {}
        )
        self.fisher_sum = {m: torch.zeros((), dtype=self.dtype, device=self.ctx.device) for m in self.params}
        self.track(window=torch.tensor(float(self.window_open)), window_rate=torch.tensor(self.rate))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for m, total in self.fisher_sum.items():
            self.traces[m].append(total.item())
        self.track(fisher_trace={m: torch.tensor(self.traces[m][-1]) for m in self.fisher_sum})
        self.anchor = {}  # θ̃ of an epoch that is over; the next epoch takes its own
        self.fisher_sum = {}

    # --- per step ----------------------------------------------------------------------------------------------------
    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        mods = self.model.modalities
        logits = self.model.modality_logits(out)
        scores = torch.stack([true_class_probability(logits[m], y).sum() for m in mods])
        if self.window_open:
            self.beta = inforeg_coefficients(scores, self.alpha_vec.to(scores.dtype))
        else:
            self.beta = torch.zeros_like(scores)
        self.track(beta=dict(zip(mods, self.beta)), score=dict(zip(mods, scores / len(y))))
        loss = fused_ce(out, y)
        if self.unimodal_loss:
            uni = {m: task_loss(logits[m], y) for m in mods}
            self.track(loss_uni=uni)
            loss = loss + sum(uni.values())
        return loss

    @torch.no_grad()
    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        if self.fisher == "task":
            self.accumulate_fisher()
        if self.window_open:
            for i, (m, params) in enumerate(self.params.items()):
                beta = self.beta[i]
                for p, anchor in zip(params, self.anchor[m]):
                    pull = (p.detach() - anchor) * beta.to(p.dtype)
                    if p.grad is None:
                        p.grad = pull
                    else:
                        p.grad.add_(pull)
        if self.fisher == "regulated":
            self.accumulate_fisher()

    def accumulate_fisher(self) -> None:
        """Add this step's Σ_layers mean(g²) of every encoder to the epoch's sums."""
        for m, params in self.fisher_params.items():
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            norms = torch.stack(torch._foreach_norm(grads)).to(self.dtype)
            sizes = self.fisher_sizes[m]
            if len(grads) < len(params):  # a layer without a gradient this step adds nothing
                sizes = sizes[torch.tensor([p.grad is not None for p in params], device=sizes.device)]
            self.fisher_sum[m] += (norms.square() / sizes).sum()
