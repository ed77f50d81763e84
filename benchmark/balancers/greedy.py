"""Balanced multi-modal learning against the greedy nature of learning (Wu, Jastrzębski, Cho & Geras, ICML 2022,
"Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", arXiv 2202.05306).

The paper's model is a mid-level fusion network: one branch φ_m per modality and fusion layers between the
branches' blocks through which a branch receives the other modalities (MMTM, Joze et al. 2020). Writing θ^m for
branch m's own parameters and θ^{→m} for the fusion layers that feed branch m, and

    μ(θ; t) = Σ_{steps s ≤ t} ‖∇_θ L_s‖² / ‖θ_s‖²          (the accumulated effective learning rate of θ),

the *conditional learning speed* of m is v_m = log10 μ(θ^{→m}) / μ(θ^m): how fast the model learns to feed branch
m from the other modalities relative to how fast it learns from m itself (the proxy for the conditional utilisation
rate, which needs extra forward passes). The imbalance is d = v_0 − v_1. Training alternates between *regular*
steps (the fused loss, every parameter updated; d is measured after the backward pass) and *re-balancing* steps:
when |d| > ε after a regular step, the next Q steps re-balance the modality m whose branch leans on the others
(v_m the larger: m is under-utilised): the cross-modal flow into branch m is switched off (the fusion layer's
excitation of branch m replaced by its running average over training, so φ_m sees only m) and only branch m is
updated. Then regular steps resume, measuring again.

**Where it runs.**

- ``se_gate`` (the harness's mid-level fusion; the paper's setting): the squeeze-and-excitation gate into stream m
  reads only the other streams, so its parameters are exactly θ^{→m} and its output w_m is the excitation a
  re-balancing step replaces by its running mean (the gate sits after block ``block``, one position; MMTM sits
  after ResNet-18 layers 2–4).
- ``concat`` and ``sum`` (late fusions: BalanceBenchmark's adaptation): the method inserts MMTM modules between
  the encoders' blocks (``configure_model``; squeeze s = [pool(h_1); …; pool(h_M)], z = ReLU(W_s s),
  w_m = σ(W_m z), h_m ← h_m ⊙ w_m, hidden width int(2·Σ c_m / ``mmtm_ratio``)), after every block but the first
  by default (ResNet-18: layer1–layer4, BalanceBenchmark's positions; ``mmtm_after: [3, 4, 5]`` gives the released
  code's layer2–layer4), and keeps the late head on top. θ^{→m} is W_m of every MMTM plus the shared squeeze W_s
  (counted for every modality, as both released codes do). The model then has more parameters than the plain
  late-fusion model of the other methods (recorded in the run's notes).
- n/a: fusions whose head mixes the modalities' features (mid_mlp, film, gated, transformer, lmf): the head itself
  is a cross-modal path that no re-balancing step can switch off, so no step makes a branch learn from its own
  modality alone; ``nl_gate``: its gate adds attention over all streams' positions, the query's own included, so
  the cross-modal part cannot be switched off alone, and non-query streams take nothing from the others;
  ``mid_concat``: the streams merge (no branches). Backbones without a block structure: n/a (no place between
  blocks for the fusion layers).

θ^m is branch m's encoder plus the head parameters acting on m alone (concat: its slice W_m of the head; sum: its
own head), as the released code counts each branch's classifier in it. Each group's ratio is Σ‖g‖² / Σ‖θ‖² over the
group's tensors (the released ratio of sums).

**M > 2 (extension).** d_m = v_m − mean_{j≠m} v_j; if max_m d_m > ε the next Q steps re-balance argmax_m d_m
(= argmax v_m). For two modalities this is exactly |d| > ε with the paper's direction.

**Hooks.** The schedule is data-dependent per step, so it lives in ``forward`` (a re-balancing step's forward
switches the flow into the chosen branch off, by a forward hook on the excitation layers) and ``after_backward``
(a regular step's gradients give μ and the decision for the following steps, exactly where the released callback's
``on_backward_end`` sits: before the optimizer step; a re-balancing step drops the gradients of every parameter
outside the branch, so the optimizer does not step them: no momentum or weight decay either). ``on_epoch_start``
resets the per-epoch counts; the warm-up (``start_epoch``) gates the trigger only. ``phases`` is not used: it fixes
the steps of every batch in advance, which is the released code's *random* variant's kind of schedule (a fixed or
random alternation), not the guided one, and would cost one extra step per batch. One host read per regular step
after the warm-up (the trigger decides the next step's forward).

**Released code** (github.com/nyukat/greedy_multimodal_learning at a190e03: src/callbacks.py
``Bias_Mitigation_Strong``, src/balanced_mmtm.py ``MMTM_mitigate``, src/model.py ``MMTM_MVCNN``,
configs/training_guided.gin) follows the rule above on two ResNet-18 views of ModelNet40 with MMTM after layers 2–4,
each branch with its own fc and the prediction the average of the two; differences:

1. a re-balancing step updates **every** parameter (one optimizer step over the whole network; only the excitation
   of the cut branch is replaced): ``rebalance_update: all``, the default here, since the released code is the one
   source that could be checked; ``branch`` updates branch m only (a reading of the paper's description, unverified).
2. μ accumulates over every regular step from the first one, the warm-up included, and never over re-balancing
   steps (followed); the warm-up is ``starting_epoch=2`` counted from 1: 0-based epoch 1, the default
   ``start_epoch``; ε = 0.01 and Q = 5 (``curation_windowsize``) are the gin file's and the defaults.
3. the running average of the second branch's excitation is averaged from the *first* branch's excitation
   (``running_avg_weight_skeleton`` is updated with ``vis_out``), and the averages also move during evaluation
   forwards. Here each stream's own excitation is averaged, over training forwards only (a bug fix, no option).
4. the excitation a re-balancing step uses is the running average *including* the current batch (updated, then
   used), so the cut branch still sees 1/(n+1) of the current batch's cross-modal excitation (a detached batch
   mean, n the forwards so far); here it is the average of the previous forwards (then updated with this one), so
   the branch sees nothing of the other modalities' current inputs. The difference shrinks as 1/n; no option.

**BalanceBenchmark** (github.com/GeWu-Lab/BalanceBenchmark at 4c1482f: balancemm/trainer/Greedy_trainer.py,
``BaseClassifierGreedyModel`` and ``MMTM`` in balancemm/models/avclassify_model.py, configs/trainer_config.yaml)
adapts it to its late-fusion concatenation classifier by inserting MMTM after layer1–layer4 of each ResNet-18
encoder, which is what ``concat``/``sum`` do here. Where it differs from the paper and from this module: the
prediction is the concatenation head (not the average of per-branch predictions); θ^m is the encoder alone (the
head is in neither group); re-balancing starts at the first step (its ``modulation_starts/ends`` are read but both
branches of the test run the same forward): preset ``balancebenchmark`` (ε = 0.001, start_epoch 0); every parameter
is updated in re-balancing steps (as the released code); two modalities only. As stored, its ``MMTM.forward``
empties ``running_avg_weight`` before reading it (a KeyError on the first forward) and reshapes frames with a fixed
batch of 64, so it could not be run for comparison.

Settings of the released training (SGD lr 0.1, no momentum or weight decay, batch 8) are the run's training
settings here, not the method's. Not verified: the paper's text could not be read here (only the released code,
BalanceBenchmark and abstracts), so the paper's ε and Q, and whether its re-balancing step updates the branch only
or everything (the released code, the default), rest on those sources.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from annotated_types import MinLen
from torch import nn

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce, window_epoch
from benchmark.models.backbones import pool_maps
from benchmark.models.fusions import Fusion, ParamSlice
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.models.stream_fusions import NLGateFusion, SEGateFusion, per_sample_scale
from benchmark.params import EpochBound, NonNegative, PositiveInt

PRESETS = {
    "released": {
        "epsilon": 0.01,
        "window": 5,
        "start_epoch": 1,
        "rebalance_update": "all",
        "source": "nyukat/greedy_multimodal_learning configs/training_guided.gin (epsilon 0.01, curation_windowsize "
        "5, starting_epoch 2 counted from 1) and its callback, which updates every parameter in re-balancing steps",
    },
    "balancebenchmark": {
        "epsilon": 0.001,
        "window": 5,
        "start_epoch": 0,
        "rebalance_update": "all",
        "source": "GeWu-Lab/BalanceBenchmark configs/trainer_config.yaml Greedy (alpha 0.001, window_size 5, no "
        "warm-up) and Greedy_trainer.py, which updates every parameter in re-balancing steps",
    },
}
MIXING_HEAD = (
    "fusion '{name}' mixes the modalities' features in its head, a cross-modal path that a re-balancing step cannot "
    "switch off, so no step would make a branch learn from its own modality alone (the paper's branches predict "
    "separately and their predictions are averaged; BalanceBenchmark adapts the method to the concatenation head)"
)
NL_GATE = (
    "fusion '{name}' adds attention over every stream's positions, the query stream's own included, so its "
    "cross-modal part cannot be switched off alone, and streams that are not queries take nothing from the others "
    "(no conditional learning speed)"
)
NO_BLOCKS = (
    "the method's fusion layers (MMTM, or the SE gate) sit between encoder blocks, and backbone '{name}' has no block "
    "structure"
)
SE_GATE_NOTE = (
    "the paper's mid-level fusion is MMTM after ResNet-18 layers 2-4; here fusion '{name}': the gate into stream m "
    "(which reads only the other streams) is the cross-modal path θ^(→m), at its one position"
)
MMTM_NOTE = (
    "BalanceBenchmark's adaptation to late fusion '{name}': MMTM modules (Joze et al. 2020) inserted between the "
    "encoder blocks carry the cross-modal flow (the model has more parameters than plain '{name}'); the prediction is "
    "the late head, not the paper's average of per-branch predictions"
)
M_GT_2 = (
    "extension: with {m} modalities d_m = v_m − mean over j≠m of v_j, and the modality with the largest d_m > ε is "
    "re-balanced (the paper defines two modalities)"
)
BRANCH_UPDATE = (
    "option: rebalance_update: branch updates only the re-balanced branch in re-balancing steps (a reading of the "
    "paper that could not be checked); the released code, the default, updates every parameter"
)


def group_ratio(params: list[ParamSlice]) -> torch.Tensor:
    """Σ‖g‖² / Σ‖θ‖² over a group of parameters (or slices of them); a missing gradient counts as zero."""
    grads, weights = [], []
    for p, index in params:
        w = p.detach() if index is None else p.detach()[index]
        weights.append(w.double().pow(2).sum())
        if p.grad is not None:
            g = p.grad if index is None else p.grad[index]
            grads.append(g.double().pow(2).sum())
    gn = torch.stack(grads).sum() if grads else weights[0].new_zeros(())
    return gn / torch.stack(weights).sum().clamp_min(1e-30)


def conditional_speeds(mu_bypass: torch.Tensor, mu_main: torch.Tensor) -> torch.Tensor:
    """v_m = log10 μ(θ^{→m}) / μ(θ^m), one per modality."""
    return torch.log10(mu_bypass.clamp_min(1e-30) / mu_main.clamp_min(1e-30))


def imbalance(speeds: torch.Tensor) -> torch.Tensor:
    """d_m = v_m − mean_{j≠m} v_j (two modalities: d_0 = v_0 − v_1, the paper's d, and d_1 = −d_0)."""
    m = speeds.numel()
    return (m * speeds - speeds.sum()) / (m - 1)


class MMTM(nn.Module):
    """Multimodal transfer module (Joze et al. 2020) at one position between encoder blocks, as the released code's
    ``MMTM_mitigate``: s = [pool(h_1); …; pool(h_M)], z = ReLU(W_s s), w_m = σ(W_m z), h_m ← h_m ⊙ w_m."""

    def __init__(self, channels: dict[str, int], kinds: dict[str, str], ratio: int) -> None:
        super().__init__()
        total = sum(channels.values())
        hidden = max(1, int(2 * total / ratio))
        self.kinds = dict(kinds)
        self.modalities = list(channels)
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden, c), nn.Sigmoid()) for m, c in channels.items()})

    def forward(self, maps: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        s = torch.cat([pool_maps(maps[m], batch, self.kinds[m]) for m in self.modalities], dim=1)
        z = torch.relu(self.squeeze(s))
        return {m: per_sample_scale(h, self.excite[m](z), self.kinds[m]) for m, h in maps.items()}


class MMTMFusion(Fusion):
    """A late fusion with MMTM modules between the encoder blocks (BalanceBenchmark's ``BaseClassifierGreedyModel``):
    the streams run block by block, an MMTM after each block in ``after``, then the wrapped late fusion's head.
    Per-modality logits and head slices are the wrapped fusion's, on features that have seen the other streams."""

    needs_blocks = True
    modality_logits_exact = False

    def __init__(self, inner: Fusion, encoders: nn.ModuleDict, after: list[int], ratio: int) -> None:
        super().__init__(inner.feature_dims, inner.num_classes)
        self.inner = inner
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}+mmtm"
        self.modality_logits_rule = (
            f"{inner.modality_logits_rule}, where φ_m has seen the other modalities through the MMTM modules"
        )
        self.after = sorted(after)
        self.mmtm = nn.ModuleDict(
            {
                str(k): MMTM(
                    {m: encoders[m].block_channels(k) for m in self.modalities},
                    {m: encoders[m].kind for m in self.modalities},
                    ratio,
                )
                for k in self.after
            }
        )

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = len(next(iter(inputs.values())))
        maps = {m: encoders[m].maps(inputs[m]) for m in self.modalities}
        blocks = {m: encoders[m].blocks() for m in self.modalities}
        for k in range(1, max(len(b) for b in blocks.values()) + 1):
            maps = {m: blocks[m][k - 1](h) if k <= len(blocks[m]) else h for m, h in maps.items()}
            if str(k) in self.mmtm:
                maps = self.mmtm[str(k)](maps, batch)
        return {m: encoders[m].pool(h, batch) for m, h in maps.items()}

    def choices(self) -> list[str]:
        return self.inner.choices()

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner(features)

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.inner.modality_logits(features)

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return self.inner.modality_head_params(modality)

    def modality_linear(self, modality: str) -> torch.Tensor | None:
        return self.inner.modality_linear(modality)


def _is_late(fusion_cls: type) -> bool:
    return (
        not getattr(fusion_cls, "needs_blocks", False)
        and getattr(fusion_cls, "per_modality_features", True)
        and bool(getattr(fusion_cls, "modality_logits_exact", False))
    )


@BALANCERS.register("greedy")
class Greedy(Balancer):
    """Balanced multi-modal learning (Wu et al., ICML 2022): after every regular step the conditional learning speeds
    v_m = log10 μ(θ^{→m}) / μ(θ^m) (μ: accumulated ‖g‖²/‖θ‖²) give d = v_0 − v_1; from ``start_epoch`` on, |d| > ε
    starts ``window`` re-balancing steps of the modality with the larger v: the cross-modal flow into its branch is
    replaced by its running average and every parameter is updated, as the released code (``rebalance_update:
    branch``: only that branch). On ``se_gate`` the SE gates are the cross-modal layers; on ``concat``/``sum`` MMTM
    modules are inserted between encoder blocks (BalanceBenchmark's adaptation). Module docstring: the rule, the
    released code's and BalanceBenchmark's differences, the n/a fusions."""

    display_name: ClassVar[str] = "Greedy"
    paper = "Wu et al. 2022 (ICML), balanced multi-modal learning (conditional learning speed, re-balancing steps)"
    presets: ClassVar[dict] = PRESETS

    def __init__(
        self,
        *,
        epsilon: NonNegative = 0.01,
        window: PositiveInt = 5,
        start_epoch: EpochBound = 1,
        rebalance_update: Literal["branch", "all"] = "all",
        mmtm_after: Annotated[list[PositiveInt], MinLen(1)] | None = None,
        mmtm_ratio: PositiveInt = 4,
    ) -> None:
        super().__init__()
        if epsilon < 0:
            raise ValueError(f"epsilon must be ≥ 0, not {epsilon}")
        if window < 1:
            raise ValueError(f"window must be ≥ 1, not {window}")
        if rebalance_update not in ("branch", "all"):
            raise ValueError(f"rebalance_update must be 'branch' or 'all', not {rebalance_update!r}")
        self.epsilon, self.window, self.start_epoch = float(epsilon), int(window), start_epoch
        self.rebalance_update = rebalance_update
        self.mmtm_after = list(mmtm_after) if mmtm_after is not None else None
        self.mmtm_ratio = int(mmtm_ratio)
        if rebalance_update == "branch":
            self.run_notes.append(BRANCH_UPDATE)

    # --- what the DAG asks -----------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        name = getattr(fusion_cls, "name", fusion_cls.__name__)
        if issubclass(fusion_cls, SEGateFusion) or _is_late(fusion_cls):
            return None
        if issubclass(fusion_cls, NLGateFusion):
            return NL_GATE.format(name=name)
        return MIXING_HEAD.format(name=name)

    @classmethod
    def backbone_unsupported(cls, backbone_cls: type, params: dict) -> str | None:
        if not backbone_cls.has_blocks():
            return NO_BLOCKS.format(name=getattr(backbone_cls, "name", backbone_cls.__name__))
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = []
        if fusion_cls is not None:
            name = getattr(fusion_cls, "name", fusion_cls.__name__)
            notes.append((SE_GATE_NOTE if issubclass(fusion_cls, SEGateFusion) else MMTM_NOTE).format(name=name))
        if num_modalities > 2:
            notes.append(M_GT_2.format(m=num_modalities))
        return notes

    # --- the model -------------------------------------------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        fusion = model.fusion
        if isinstance(fusion, SEGateFusion):
            return model
        if not _is_late(type(fusion)):
            raise ValueError(self.unsupported(type(fusion), len(model.modalities)))
        for m, e in model.encoders.items():
            if not e.has_blocks():
                raise ValueError(NO_BLOCKS.format(name=getattr(e, "name", type(e).__name__)) + f" (modality '{m}')")
        depth = min(len(e.block_ends) for e in model.encoders.values())
        after = self.mmtm_after if self.mmtm_after is not None else list(range(2, depth + 1))
        bad = [k for k in after if not 1 <= k <= depth]
        if bad or not after:
            raise ValueError(f"greedy: mmtm_after must name blocks in 1..{depth} of the encoders, not {after}")
        with torch.random.fork_rng(devices=[]):  # the new layers' init leaves the run's random stream where it was
            model.fusion = MMTMFusion(fusion, model.encoders, after, self.mmtm_ratio)
        return model

    def cross_modal_layers(self, model: MultimodalModel) -> dict[str, list[tuple[str, nn.Module]]]:
        """Per modality m: the layers whose output is the excitation of stream m by the others (key, module)."""
        fusion = model.fusion
        if isinstance(fusion, SEGateFusion):
            return {m: [(f"{fusion.block}:{m}", fusion.gates[m])] for m in model.modalities}
        if isinstance(fusion, MMTMFusion):
            return {m: [(f"{k}:{m}", fusion.mmtm[k].excite[m]) for k in fusion.mmtm] for m in model.modalities}
        raise ValueError(f"greedy: fusion '{getattr(fusion, 'name', type(fusion).__name__)}' has no cross-modal layers")

    def bypass_parameters(self, model: MultimodalModel) -> dict[str, list[ParamSlice]]:
        """θ^{→m}: the parameters of the layers feeding stream m from the others (MMTM: W_m and the shared W_s)."""
        fusion = model.fusion
        out = {}
        for m, layers in self.cross_modal_layers(model).items():
            params = [p for _, layer in layers for p in layer.parameters()]
            if isinstance(fusion, MMTMFusion):
                params += [p for k in fusion.mmtm for p in fusion.mmtm[k].squeeze.parameters()]
            out[m] = [(p, None) for p in params]
        return out

    def branch_parameters(self, model: MultimodalModel) -> dict[str, list[ParamSlice]]:
        """θ^m: the encoder of m and the head parameters (or slices) acting on m alone."""
        return {
            m: [(p, None) for p in model.encoders[m].parameters()] + list(model.fusion.modality_head_params(m))
            for m in model.modalities
        }

    def setup(self, model: MultimodalModel, ctx) -> None:
        super().setup(model, ctx)
        self.modalities = list(model.modalities)
        layers = self.cross_modal_layers(model)
        self.bypass = self.bypass_parameters(model)
        self.branch = self.branch_parameters(model)
        # what a re-balancing step of m may step: whole tensors of branch m (a head shared by every branch is not)
        self.updated = {m: {id(p) for p, index in group if index is None} for m, group in self.branch.items()}
        shared = [m for m, group in self.branch.items() if any(index is not None for _, index in group)]
        if shared and self.rebalance_update == "branch":
            self.run_notes.append(
                "re-balancing steps update the branch's encoder only: the fused head's weight is one tensor shared by "
                "every branch (its slice of it learns in the regular steps)"
            )
        device = ctx.device
        self.running = {
            key: torch.zeros(layer[-2].out_features, device=device)  # the excitation's width (Linear, then σ)
            for group in layers.values()
            for key, layer in group
        }
        self.forwards = 0  # training forwards so far (the running averages' count)
        self.mu_bypass = torch.zeros(len(self.modalities), dtype=torch.float64, device=device)
        self.mu_main = torch.zeros(len(self.modalities), dtype=torch.float64, device=device)
        self.remaining = 0  # re-balancing steps still to run
        self.caring: str | None = None  # the modality they re-balance
        self.rebalancing: str | None = None  # the current step's (None: a regular step)
        self.stepping = False  # inside this method's training forward (hooks act only then)
        self.counts = {m: 0 for m in self.modalities}
        self.steps = 0
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = [
            layer.register_forward_hook(self._excitation_hook(key, m))
            for m, group in layers.items()
            for key, layer in group
        ]

    def _excitation_hook(self, key: str, modality: str):
        def hook(module, args, output):
            if not self.stepping:
                return None
            before = self.running[key]
            with torch.no_grad():  # the running mean over training forwards of the batch-mean excitation
                n = self.forwards
                self.running[key] = (output.detach().float().mean(0) + before * n) / (n + 1)
            if self.rebalancing == modality:  # the flow from the other modalities into this stream is off:
                return before.to(output.dtype).expand_as(output)  # the mean of the previous forwards
            return None

        return hook

    # --- the schedule --------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.counts = {m: 0 for m in self.modalities}
        self.steps = 0

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        self.rebalancing = self.caring if self.remaining > 0 else None
        self.stepping = True
        try:
            out = model(inputs)
        finally:
            self.stepping = False
        self.forwards += 1
        return out

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return fused_ce(out, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        self.steps += 1
        if self.rebalancing is not None:
            if self.rebalance_update == "branch":
                keep = self.updated[self.rebalancing]
                for p in self.model.parameters():
                    if id(p) not in keep:
                        p.grad = None
            self.counts[self.rebalancing] += 1
            self.remaining -= 1
            return
        self.mu_bypass += torch.stack([group_ratio(self.bypass[m]) for m in self.modalities])
        self.mu_main += torch.stack([group_ratio(self.branch[m]) for m in self.modalities])
        v = conditional_speeds(self.mu_bypass, self.mu_main)
        d = imbalance(v)
        self.track(speed=dict(zip(self.modalities, v)), imbalance=dict(zip(self.modalities, d)))
        if self.ctx.epoch < window_epoch(self.start_epoch, self.ctx.num_epochs):
            return
        top = torch.argmax(d)
        hit, who = torch.stack([(d[top] > self.epsilon).double(), top.double()]).tolist()
        if hit:
            self.remaining, self.caring = self.window, self.modalities[int(who)]

    def epoch_summary(self) -> dict[str, float]:
        summary = super().epoch_summary()
        steps = max(1, self.steps)
        summary.update({f"rebalance_{m}": self.counts[m] / steps for m in self.modalities})
        return summary
