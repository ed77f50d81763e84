"""AMSS and AMSS+: Adaptively Mask Subnetworks considering Modal Significance.

Yang, Pan, Jiang, Xu & Tang, "Learning to Rebalance Multi-Modal Optimization by Adaptively Masking Subnetworks",
IEEE TPAMI 47(6), 2025 (doi 10.1109/TPAMI.2025.3547417, arXiv 2404.08347). Released code:
github.com/njustkmg/TPAMI-AMSS, read at commit 3161ecc: ``AMSS/train_test.py`` (audio-visual: CREMA-D,
Kinetics-Sounds; line numbers below are of this file unless named), ``AMSS_IT/train_test_IT.py`` (image-text),
``AMSS_rod/train_nv.py`` (NVGesture, three modalities) and the README's commands (``--sample_mode=Adaptive``;
``--isbias=0`` is AMSS, ``--isbias=1`` AMSS+).

Per training step, on the batch:

1. **modal significance** (``modal_caculate_MI``, l. 38-97), detached: with z_m the modality's logits taken from the
   fused head (concat: W_m·φ_m + b/M, l. 119-123) and φ_m its feature vector,
   - CE_m = the batch-mean cross-entropy of z_m (l. 73-74), so H(Y) − CE_m is the variational lower bound of the
     mutual information I(Y; φ_m);
   - H(Y) = the entropy of the batch's label frequencies (``label_entropy``, below);
   - H_m = the batch mean of the entropy of softmax(φ_m) over the feature vector (l. 77-82, in nats);
   - the mutual-information rate r_m = (H(Y) − CE_m + c) / H_m, c = ``offset`` 0.5 (l. 89-90);
   - the update ratio ξ_m = clip(1 − softmax(r / T)_m, 0.1, 0.9), T = ``temperature`` (0.2, the argparse default
     the audio-visual commands keep); for two modalities exactly the released ξ_a = e^{t_v} / (e^{t_a} + e^{t_v})
     (l. 91-95), for M modalities the three-modality code's 1 − softmax form (train_nv.py l. 82-84). The more
     significant (dominant) modality gets the smaller ratio. If H(Y) − CE_m + c ≤ 0 for any modality, every ratio
     is 0.5 (l. 86-87; tracked as ``fallback``); a NaN ratio is 0.5 (``limit_number``, l. 53-56).
2. **sub-network sampling** (after backward, l. 243-308): for every masked parameter of modality m, its units (the
   output filters of a convolution: slices along dim 0) get the importance w_i = Σ g_i² over the unit (the squared
   gradient, an empirical Fisher information; ``gn_mode: gn``, the default) and q_i = w_i / Σ_j w_j;
   k = ⌈N·ξ_m⌉ of the N units are drawn without replacement with probabilities ∝ q (``torch.multinomial``,
   l. 263-265) and the gradient of every other unit is zeroed. AMSS keeps the drawn units' gradients as they are;
   AMSS+ (``variant: amss+``) multiplies each drawn unit's gradient by 1 / (q_i + 1/N) (l. 269-270), the released
   "unbiased" rescaling. The loss is the cross-entropy of the fused head (l. 190); nothing else changes.

Here the draw is the exponential race: key_i = E_i / q_i with E_i ~ Exp(1), the k smallest keys win — the same
distribution as successive sampling without replacement (``torch.multinomial``), but on the device with k a device
tensor, so a step never waits on the host. The draws come from the method's own ``torch.Generator`` on the run's
device, seeded from the run's seed; its state is part of the method's checkpointed state (``state_dict``), so a
resumed run draws the same masks, and the global RNG streams are left as they would be without the method.

Where the harness differs from the released code, or chooses between its versions:

1. which parameters: the released rule masks the 4-D weights whose names contain 'layer' and 'conv' — the 16
   convolutions inside ResNet-18's residual blocks, not the stem convolution nor the 1×1 shortcut convolutions.
   ``mask: conv`` is that rule by structure: the convolution weights inside residual blocks (modules with ``conv1``
   and ``downsample``: torchvision's ResNet and R(2+1)D blocks), their shortcuts excepted; an encoder without such
   blocks (small_cnn, conformer) has every convolution weight masked (named in the run's notes). ``mask: declared``
   (the parameters the encoder declares, e.g. an MLP's weight matrices, whose rows are the units) and ``mask: all``
   (every encoder parameter; a 1-D parameter's entries are its units) are extensions. The image-text code masks
   BERT's attention weights per head; per row here.
2. the fused head: the audio-visual code computes masks for the head's weight (``mask_ffn``, l. 194-241) but never
   applies them; the image-text and NVGesture code apply them: each class row of the modality's weight block keeps
   ⌈d_m·ξ_m⌉ entries drawn ∝ g² (int() in the NVGesture code), AMSS+ scaling 1 / (q + 1/d_m) within the row (the
   released code adds 1/C there, and the NVGesture code the drawn indices themselves: slips not kept).
   ``mask_head: false`` (default) is the audio-visual code; ``true`` the others (for a fusion whose head has no
   per-modality block, e.g. FiLM or gated fusion, there is nothing to mask).
3. H(Y): ``label_entropy: shannon`` (default) is the Shannon entropy −Σ_c p_c log p_c (nats) of the batch's label
   frequencies, the H(Y) of the mutual information (the other two released scripts compute it in bits).
   ``released`` is the audio-visual code's ``nn.CrossEntropyLoss()(p, p)`` = −Σ_c p_c log softmax(p)_c over the
   classes 0..max(y) of the batch (l. 59-70): log C for a batch with every class equally often, near log C otherwise.
4. three or more modalities: the NVGesture code's constants differ (entropies in bits, H_m / 40, offset 3 with a
   guard at 2); the audio-visual code's constants are used for every M.
5. numerics: softmax is computed stably (the released e^t overflows to NaN, then 0.5, for t > 88); a parameter with
   no gradient at all (Σ w = 0) is drawn uniformly (``torch.multinomial`` raises there); units with zero importance
   are drawn only after all others (their gradient is zero anyway). ξ·N is rounded up in float64 as the released
   Python float product.
6. as in the released code, masking zeroes gradients only: the optimizer's momentum and weight decay still move the
   units not drawn (the released SGD: momentum 0.9, weight decay 1e-4).
7. AMSS+'s 1 / (q_i + 1/N) is the released formula, not the inverse inclusion probability of k-of-N sampling; for
   near-uniform importance it multiplies drawn gradients by about N/2 (32 to 256 on ResNet-18's layers).

The released training settings (SGD lr 0.01, momentum 0.9, weight decay 1e-4, StepLR(60, 0.1), 80 epochs, batch 64)
are the run's training settings here, not the method's. Not verified against the paper's text, which could not be read
here (only its abstract and third-party summaries: modal significance from mutual-information rates, non-uniform
sampling of the sub-networks guided by Fisher information, AMSS+ by unbiased estimation): the rules above are the
released code's. BalanceBenchmark (GeWu-Lab/BalanceBenchmark, balancemm/trainer) has no AMSS trainer.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import nn

from benchmark.balancers.base import BALANCERS, Balancer, estimator_note, fused_ce
from benchmark.models.model import ModelOutput
from benchmark.params import NonNegative, Positive

#: the update ratio's bounds and its value when it is undefined (``limit_number``, l. 53-56)
RATIO_MIN, RATIO_MAX, RATIO_FALLBACK = 0.1, 0.9, 0.5
VARIANTS = ("amss", "amss+")
MASKS = ("conv", "declared", "all")
LABEL_ENTROPY = ("shannon", "released")
#: added to the run's seed for the method's generator (its draws never coincide with the loader's)
SEED_OFFSET = 240_408_347

NO_CONVOLUTIONS = (
    "backbone '{name}' has no convolution weights, the units AMSS's released rule masks (mask: conv), so the method "
    "would mask nothing; set mask: declared to mask the parameters each encoder declares (its weight matrices, rows "
    "as units) or mask: all for every encoder parameter (extensions, recorded in the run's notes)"
)
M_GT_2_NOTE = (
    "extension: with {m} modalities the update ratio is 1 − softmax(r/T)_m (the released three-modality form) with "
    "the audio-visual code's constants (offset, nats; the NVGesture code uses bits, H_m/40 and offset 3)"
)
NO_HEAD_BLOCK_NOTE = (
    "mask_head: true masks nothing in the head of fusion '{name}': it has no per-modality weight block (the released "
    "code masks the concat head's blocks)"
)


# --- the rules ---------------------------------------------------------------------------------------------------


def label_entropy(y: torch.Tensor, rule: str = "shannon") -> torch.Tensor:
    """H(Y) of the batch's labels: ``shannon`` −Σ_c p_c log p_c (nats); ``released`` the audio-visual code's
    −Σ_c p_c log softmax(p)_c over the classes 0..max(y) (``nn.CrossEntropyLoss()(p, p)``, l. 59-70)."""
    p = torch.bincount(y).float() / len(y)
    if rule == "released":
        return -(p * torch.log_softmax(p, 0)).sum()
    return -(torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))).sum()


def feature_entropy(features: torch.Tensor) -> torch.Tensor:
    """H_m: the batch mean of the entropy of softmax over each sample's feature vector (nats; l. 77-82)."""
    logp = torch.log_softmax(features.float().flatten(1), 1)
    return -(logp.exp() * logp).sum(1).mean()


def update_ratios(
    ce: torch.Tensor, h_features: torch.Tensor, h_labels: torch.Tensor, temperature: float, offset: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, ξ, fallback) from the modalities' cross-entropies CE_m and feature entropies H_m (one entry each) and H(Y).

    r_m = (H(Y) − CE_m + c) / H_m; ξ_m = clip(1 − softmax(r/T)_m, 0.1, 0.9), NaN → 0.5; every ξ is 0.5 (fallback
    True) when any H(Y) − CE_m + c ≤ 0 (r is then reported as 1, as the released code)."""
    information = h_labels - ce + offset
    fallback = (information <= 0).any()
    rate = information / h_features
    ratio = (1 - torch.softmax(rate / temperature, 0)).clamp(RATIO_MIN, RATIO_MAX)
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, RATIO_FALLBACK), ratio)
    ratio = torch.where(fallback, torch.full_like(ratio, RATIO_FALLBACK), ratio)
    rate = torch.where(fallback, torch.ones_like(rate), rate)
    return rate, ratio, fallback


def sample_units(
    importance: torch.Tensor, ratio: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ⌈N·ratio⌉ of the N units of every row of ``importance`` [R, N] without replacement, with probabilities
    ∝ importance (an all-zero row: uniformly). Returns (drawn [R, N] bool, q [R, N] the normalised importance).

    The exponential race: key = E / q with E ~ Exp(1); the k smallest keys are drawn (successive sampling, the same
    distribution as ``torch.multinomial(q, k, replacement=False)``). k stays on the device."""
    n = importance.shape[1]
    total = importance.sum(1, keepdim=True)
    q = torch.where(total > 0, importance / total.clamp_min(torch.finfo(importance.dtype).tiny), 1.0 / n)
    e = torch.empty_like(q).exponential_(generator=generator)
    keys = torch.where(q > 0, e / q, torch.full_like(q, math.inf))
    rank = keys.argsort(1).argsort(1)
    k = torch.ceil(ratio.double() * n)
    return rank < k, q


def unit_mask(grad: torch.Tensor, ratio: torch.Tensor, plus: bool, rows: bool, generator=None) -> torch.Tensor:
    """The multiplier of ``grad``: units are slices along dim 0 (filters), or with ``rows`` the entries of each row
    of a 2-D block (the fused head's). Drawn units get 1 (AMSS) or 1 / (q + 1/N) (AMSS+), the others 0."""
    g = grad.detach().float()
    if rows:
        importance = g.pow(2)
    else:
        importance = g.reshape(g.shape[0], -1).pow(2).sum(1)[None]
    drawn, q = sample_units(importance, ratio, generator)
    n = importance.shape[1]
    keep = 1.0 / (q + 1.0 / n) if plus else torch.ones_like(q)
    mask = torch.where(drawn, keep, torch.zeros_like(q)).to(grad.dtype)
    return mask if rows else mask.reshape(-1, *[1] * (grad.dim() - 1))


# --- which parameters form a modality's sub-network -------------------------------------------------------------


def _convolutions(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def residual_block_convolutions(encoder: nn.Module) -> tuple[list[nn.Parameter], bool]:
    """The released rule ('layer' and 'conv' in a ResNet parameter's name) by structure: the convolution weights under
    the ``conv*`` children of residual blocks (modules with ``conv1`` and ``downsample``), so neither the stem nor the
    shortcut convolutions; without residual blocks every convolution weight. Returns (weights, found blocks)."""
    blocks = [m for m in encoder.modules() if hasattr(m, "conv1") and hasattr(m, "downsample")]
    if not blocks:
        return _convolutions(encoder), False
    weights, seen = [], set()
    for block in blocks:
        for name, child in block.named_children():
            if not name.startswith("conv"):
                continue
            for w in _convolutions(child):
                if id(w) not in seen:
                    seen.add(id(w))
                    weights.append(w)
    return weights, True


def masked_parameters(encoder: nn.Module, which: str) -> list[nn.Parameter]:
    if which == "all":
        return [p for p in encoder.parameters() if p.dim() > 0]
    if which == "declared" and hasattr(encoder, "modulated_parameters"):
        return list(encoder.modulated_parameters())
    return residual_block_convolutions(encoder)[0]


# --- the method ------------------------------------------------------------------------------------------------


@BALANCERS.register("amss")
class AMSS(Balancer):
    """AMSS / AMSS+ (Yang et al., TPAMI 2025) as the released code (module docstring: rules, lines, differences).
    Cross-entropy of the fused head; per step each modality's update ratio ξ_m = clip(1 − softmax(r/T)_m, 0.1, 0.9)
    from its mutual-information rate r_m = (H(Y) − CE_m + 0.5) / H(softmax φ_m), so the dominant modality updates
    fewer units; after backward, in every masked parameter of modality m, ⌈N·ξ_m⌉ of its N units (convolution
    filters) are drawn without replacement ∝ their squared gradient and the others' gradients zeroed; ``variant:
    amss+`` scales a drawn unit's gradient by 1 / (q_i + 1/N) (q the normalised importance). ``mask``: conv (the
    residual blocks' convolutions, as released), declared or all (extensions); ``mask_head`` also masks the fused
    head's per-modality weight block row by row (the image-text code; the audio-visual code does not)."""

    display_name: ClassVar[str] = "AMSS"
    paper = "Yang et al. 2025 (TPAMI), AMSS / AMSS+: adaptively masking sub-networks by modal significance"
    single_label_only = (
        "its significance compares each modality's cross-entropy of the one true class with the entropy of the "
        "batch's labels"
    )

    def __init__(
        self,
        *,
        variant: Literal["amss", "amss+"] = "amss",
        temperature: Positive = 0.2,
        offset: NonNegative = 0.5,
        label_entropy: Literal["shannon", "released"] = "shannon",
        mask: Literal["conv", "declared", "all"] = "conv",
        mask_head: bool = False,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("variant", variant, VARIANTS),
            ("mask", mask, MASKS),
            ("label_entropy", label_entropy, LABEL_ENTROPY),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        self.variant, self.temperature, self.offset = variant, temperature, offset
        self.label_entropy, self.mask, self.mask_head = label_entropy, mask, mask_head

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        notes = estimator_note(fusion_cls)
        if num_modalities > 2:
            notes.append(M_GT_2_NOTE.format(m=num_modalities))
        return notes

    @classmethod
    def backbone_unsupported(cls, backbone_cls: type, params: dict) -> str | None:
        if params.get("mask", "conv") == "conv" and getattr(backbone_cls, "has_convolutions", None) is False:
            return NO_CONVOLUTIONS.format(name=getattr(backbone_cls, "name", backbone_cls.__name__))
        return None

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        #: per modality: (parameter, index into it or None, units are the entries of each row)
        self.units: dict[str, list[tuple[nn.Parameter, tuple | None, bool]]] = {}
        flat = []
        for m in model.modalities:
            params = masked_parameters(model.encoders[m], self.mask)
            if not params:
                name = type(model.encoders[m]).__name__
                raise ValueError(NO_CONVOLUTIONS.format(name=name) + f" (encoder of modality '{m}')")
            if self.mask == "conv" and not residual_block_convolutions(model.encoders[m])[1]:
                flat.append(m)
            units = [(p, None, False) for p in params]
            if self.mask_head:
                units += [
                    (p, index, True)
                    for p, index in model.fusion.modality_head_params(m)
                    if (p if index is None else p[index]).dim() == 2
                ]
            self.units[m] = units
        if flat:
            self.run_notes.append(
                f"mask: conv masks every convolution weight of the encoders of {', '.join(flat)}: they have no "
                "residual blocks (the released rule masks ResNet-18's residual-block convolutions, not its stem or "
                "shortcuts)"
            )
        if self.mask == "declared":
            self.run_notes.append(
                "extension: mask: declared masks the parameters the encoders declare (convolution filters, or the "
                "rows of their weight matrices); the released code masks residual-block convolution filters"
            )
        if self.mask == "all":
            self.run_notes.append(
                "extension: mask: all masks every encoder parameter (slices along dim 0 as units: biases and "
                "normalisation entries too); the released code masks residual-block convolution filters"
            )
        if self.mask_head:
            self.run_notes.append(
                "option: mask_head: true also masks the fused head's per-modality weight block row by row (the "
                "image-text and NVGesture code); the audio-visual code computes that mask but does not apply it"
            )
            if not any(rows for units in self.units.values() for _, _, rows in units):
                self.run_notes.append(NO_HEAD_BLOCK_NOTE.format(name=getattr(model.fusion, "name", "?")))
        if self.label_entropy == "released":
            self.run_notes.append(
                "option: label_entropy: released — H(Y) as the audio-visual code computes it, −Σ p·log softmax(p) "
                "(the Shannon entropy for a batch with every class equally often)"
            )
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(int(ctx.seed) + SEED_OFFSET)
        self.ratio = torch.full((len(model.modalities),), RATIO_FALLBACK, device=ctx.device)

    # the generator is not plain data: its state is (a CPU byte tensor), saved and restored with the method's state
    def state_dict(self) -> dict:
        state = super().state_dict()
        if getattr(self, "generator", None) is not None:
            state["generator_state"] = self.generator.get_state()
            state["generator_device"] = self.generator.device.type
        return state

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        state = dict(state)
        generator_state = state.pop("generator_state", None)
        saved_on = state.pop("generator_device", None)
        super().load_state_dict(state, device)
        if generator_state is None:
            return
        if saved_on != self.generator.device.type:  # a CPU and a CUDA generator's states differ in kind
            self.ctx.log(
                f"AMSS: the checkpoint's mask generator ran on {saved_on}, this run on {self.generator.device.type}: "
                "its draws continue from the run's seed instead"
            )
            return
        self.generator.set_state(generator_state.cpu())

    def significance(self, out: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, ξ, fallback) of this batch, one entry per modality (in the model's order); detached."""
        with torch.no_grad():
            logits = self.model.modality_logits(out)
            modalities = self.model.modalities
            ce = torch.stack([torch.nn.functional.cross_entropy(logits[m].float(), y) for m in modalities])
            h_features = torch.stack([feature_entropy(out.features[m]) for m in modalities])
            h_labels = label_entropy(y, self.label_entropy)
            return update_ratios(ce, h_features, h_labels, self.temperature, self.offset)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        rate, self.ratio, fallback = self.significance(out, y)
        modalities = self.model.modalities
        self.track(rate=dict(zip(modalities, rate)), ratio=dict(zip(modalities, self.ratio)), fallback=fallback)
        return fused_ce(out, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        plus = self.variant == "amss+"
        kept = {}
        for i, (m, units) in enumerate(self.units.items()):
            total, count = 0.0, 0
            for p, index, rows in units:
                if p.grad is None:
                    continue
                g = p.grad if index is None else p.grad[index]  # basic indexing: a view, masked in place
                mask = unit_mask(g, self.ratio[i], plus, rows, self.generator)
                g.mul_(mask)
                total = total + mask.float().sum()
                count += mask.numel()
            if count:
                kept[m] = total / count
        self.track(mask_mean=kept)  # the mean multiplier over the masked units (AMSS: the share drawn)
