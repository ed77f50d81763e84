"""The multimodal model: head∘fusion over one encoder per modality, plus optional unimodal heads.

Every part is swappable through its registry (MultiBench's decomposition): encoders come from the backbone
registry, the fusion (with its classifier) from the fusion registry. Methods that need unimodal predictions
(Multi-Loss, MLB, G-Blend) ask for one extra linear head per modality.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from benchmark.data.kinds import modality_kind
from benchmark.models.backbones import Backbone
from benchmark.models.fusions import Fusion


@dataclass
class ModelOutput:
    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    unimodal: dict[str, torch.Tensor] | None = None


class AbsentInputs(nn.Module):
    """What an absent modality's input is: one tensor per modality, the shape of one sample.

    Zero means "no signal" only for inputs normalised to zero mean; a log-spectrogram or a user's tensors are not, so
    by default (``train.absent_input: mean``) an absent modality is the training split's mean input (element-wise,
    after the batch preparer's normalisation), set once before training (``fit``) and saved with the model.
    ``zero`` keeps literal zeros (the released AGM and Shapley code). Shapley values, the missing-modality table,
    AGM's masked passes and input-level modality dropout all read it from here."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], fixed: Iterable[str] = ()) -> None:
        super().__init__()
        for m, shape in shapes.items():
            self.register_buffer(m, torch.zeros(shape))
        self.modalities = list(shapes)
        #: modalities whose absent input stays zero whatever the data (their kind says so: padding tokens)
        self.fixed = set(fixed)

    def like(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """The absent input of ``modality`` for a batch shaped like ``x``."""
        if modality not in self.modalities:  # a model built without shapes: literal zeros
            return torch.zeros_like(x)
        return getattr(self, modality).to(x.dtype).expand_as(x)

    @torch.no_grad()
    def fit(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Set every modality's absent input to the mean of ``batches`` (prepared inputs, no augmentation); a kind
        whose absence is fixed (token ids: all padding) keeps zeros."""
        fitted = [m for m in self.modalities if m not in self.fixed]
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for inputs in batches:
            for m in fitted:
                x = inputs[m].double().sum(0)
                sums[m] = x if m not in sums else sums[m] + x
            count += len(next(iter(inputs.values())))
        for m in fitted:
            getattr(self, m).copy_((sums[m] / max(1, count)).float())


class MultimodalModel(nn.Module):
    def __init__(
        self,
        encoders: dict[str, Backbone],
        fusion: Fusion,
        num_classes: int,
        unimodal_heads: bool = False,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        fixed_absent: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.modalities = list(encoders)
        self.absent = AbsentInputs(input_shapes or {}, fixed_absent)
        self.num_classes = num_classes
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.unimodal_heads = (
            nn.ModuleDict({m: nn.Linear(e.out_dim, num_classes) for m, e in encoders.items()})
            if unimodal_heads
            else None
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        return self.decode(self.encode(inputs))

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality features φ_m (a fusion between encoder blocks runs the encoders itself)."""
        if getattr(self.fusion, "needs_blocks", False):
            return self.fusion.encode(self.encoders, inputs)
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def decode(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        """Fused logits (and unimodal-head logits) from features; methods may alter features in between."""
        unimodal = (
            {m: h(features[m]) for m, h in self.unimodal_heads.items()} if self.unimodal_heads is not None else None
        )
        return ModelOutput(self.fusion(features), features, unimodal)

    def modality_logits(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        """Per-modality logits taken from the fused head (the fusion defines how)."""
        return self.fusion.modality_logits(out.features)

    def without(self, inputs: dict[str, torch.Tensor], keep: Iterable[str]) -> dict[str, torch.Tensor]:
        """``inputs`` with every modality outside ``keep`` replaced by its absent input (``AbsentInputs``)."""
        keep = set(keep)
        return {m: x if m in keep else self.absent.like(m, x) for m, x in inputs.items()}


def input_kind(info: dict) -> tuple[str, tuple[int, ...]]:
    """(encoder input layout, per-sample shape) of a cached modality described in a dataset's info.json."""
    return modality_kind(info).layout, tuple(info["shape"])


def build_model(
    *,
    modality_info: dict[str, dict],
    num_classes: int,
    backbone_cls: type[Backbone],
    backbone_params: dict,
    fusion_cls: type[Fusion],
    fusion_params: dict,
    unimodal_heads: bool,
    seed: int,
    encoders: dict[str, tuple[type[Backbone], dict]] | None = None,
) -> MultimodalModel:
    """Construct the model with a seeded initialisation: the same arguments always give the same weights.

    Every modality gets ``backbone_cls``, except those in ``encoders`` (modality -> (class, parameters)): a
    modality whose layout the backbone does not take gets its kind's encoder (``benchmark.settings`` resolves
    which, and records it in the run's settings)."""
    torch.manual_seed(seed)
    built, shapes, fixed = {}, {}, []
    for m, info in modality_info.items():
        kind = modality_kind(info)
        shape = tuple(info["shape"])
        shapes[m] = shape
        if not kind.fit_absent:
            fixed.append(m)
        cls, params = (encoders or {}).get(m, (backbone_cls, backbone_params))
        if not cls.accepts(kind.layout):
            raise ValueError(
                f"modality '{m}' is {kind.layout} input, which backbone '{getattr(cls, 'name', cls.__name__)}' does "
                f"not take ({' | '.join(cls.kinds)}), and no encoder was chosen for it"
            )
        params = dict(params)
        if isinstance(params.get("weights"), dict):  # one weights file per modality
            params["weights"] = params["weights"].get(m)
        built[m] = cls(kind.layout, shape, **{**params, **kind.encoder_arguments(info)})  # the data say e.g. vocab_size
    fusion = fusion_cls({m: e.out_dim for m, e in built.items()}, num_classes, **fusion_params)
    if getattr(fusion, "needs_blocks", False):
        fusion.bind(built)
    return MultimodalModel(
        built, fusion, num_classes, unimodal_heads=unimodal_heads, input_shapes=shapes, fixed_absent=fixed
    )


def fingerprint(model: nn.Module) -> str:
    """Hash of all weights and buffers: equal fingerprints mean identical models."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
