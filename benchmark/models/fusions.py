"""Fusion modules: per-modality features -> class logits (the fusion layers and the classifier head).

Besides the fused logits, a fusion states how per-modality logits are obtained, because OGM, AGM, PMR, MSLR
and MLB measure each modality's share through them, and which head parameters act on one modality only
(MLB and MSLR scale that slice). The late fusions (concat, sum) split their linear head exactly, as the
papers do; the others use the zero-masking Shapley estimator (``benchmark.models.shapley``), which is
documented in every run that relies on it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from benchmark.models.shapley import masked, shapley_shares
from benchmark.params import DropProbability, PositiveInt
from benchmark.registry import Registry

#: a head parameter, and the index of the part of it that belongs to one modality (None: all of it)
ParamSlice = tuple[nn.Parameter, "tuple[slice, ...] | None"]

SHAPLEY_RULE = (
    "zero-masking Shapley estimate: the modality's Shapley value of the fused logits with absent "
    "modalities' features set to zero, plus 1/M of the all-absent output (as AGM's masking: feature option)"
)


class Fusion(nn.Module):
    name: ClassVar[str]
    #: one line on how ``modality_logits`` is defined (shown in outputs)
    modality_logits_rule: ClassVar[str] = SHAPLEY_RULE
    #: True when the per-modality logits are an exact split of a linear head (the papers' setting)
    modality_logits_exact: ClassVar[bool] = False
    #: the fusion acts between encoder blocks: ``bind(encoders)`` builds it and ``encode`` runs the encoders
    needs_blocks: ClassVar[bool] = False
    #: the features it fuses are one vector per modality (False: the streams merge inside the encoders)
    per_modality_features: ClassVar[bool] = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = list(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.num_classes = num_classes

    def choices(self) -> list[str]:
        """The modalities this fusion picked by a default rule (e.g. the first one), said in the run's notes."""
        return []

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return shapley_shares(lambda keep: self(masked(features, keep)), self.modalities)

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        """Head parameters (or slices) that act on ``modality`` alone (none for fusions that mix first)."""
        return []

    def modality_linear(self, modality: str) -> torch.Tensor | None:
        """The classifier weight block [C, d_m] applied to this modality's features, for linear late fusions."""
        return None


FUSIONS: Registry[Fusion] = Registry("fusion", base=Fusion)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Late fusion: one linear head on the concatenated features, f = W[φ_1; …; φ_M] + b (OGM-GE eq. 1)."""

    display_name: ClassVar[str] = "Concatenation"
    paper: ClassVar[str] = ""
    modality_logits_rule = (
        "W_m·φ_m + b/M: the modality's block of the head plus an equal share of the bias (OGM-GE eq. 8)"
    )
    modality_logits_exact = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.head = nn.Linear(sum(feature_dims.values()), num_classes)
        self.slices: dict[str, slice] = {}
        start = 0
        for m, d in feature_dims.items():
            self.slices[m] = slice(start, start + d)
            start += d

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        share = self.head.bias / len(self.modalities)
        return {m: features[m] @ self.modality_linear(m).T + share for m in self.modalities}

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return [(self.head.weight, (slice(None), self.slices[modality]))]

    def modality_linear(self, modality: str) -> torch.Tensor:
        return self.head.weight[:, self.slices[modality]]


@FUSIONS.register("sum")
class SumFusion(Fusion):
    """One linear head per modality, logits summed: f = Σ_m (W_m φ_m + b_m)."""

    display_name: ClassVar[str] = "Sum"
    paper: ClassVar[str] = ""
    modality_logits_rule = "W_m·φ_m + b_m: the modality's own head with its full bias (official OGM-GE code since 2023)"
    modality_logits_exact = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.heads[m](features[m]) for m in self.modalities]).sum(0)

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](features[m]) for m in self.modalities}

    def modality_head_params(self, modality: str) -> list[ParamSlice]:
        return [(p, None) for p in self.heads[modality].parameters()]

    def modality_linear(self, modality: str) -> torch.Tensor:
        return self.heads[modality].weight


@FUSIONS.register("mid_mlp")
class MidMLPFusion(Fusion):
    """Mid fusion (MLB's Mid-MLP): a two-layer MLP on the concatenated features, Linear-ReLU-Linear."""

    display_name: ClassVar[str] = "Mid-MLP"
    paper: ClassVar[str] = "Kontras et al. 2024 (MLB), Mid-MLP fusion"

    def __init__(self, feature_dims: dict[str, int], num_classes: int, *, hidden: PositiveInt = 256) -> None:
        super().__init__(feature_dims, num_classes)
        self.mlp = nn.Sequential(
            nn.Linear(sum(feature_dims.values()), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([features[m] for m in self.modalities], dim=1))


@FUSIONS.register("film")
class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018): the conditioning modality's features give a per-channel scale γ and shift β
    for the others' (concatenated, projected) features: f = head(γ(φ_c) ⊙ P[φ_others] + β(φ_c)).
    ``conditioning`` names the conditioning modality (default: the first, e.g. audio)."""

    display_name: ClassVar[str] = "FiLM"
    paper: ClassVar[str] = "Perez et al. 2018 (FiLM)"

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_classes: int,
        *,
        conditioning: str | None = None,
        hidden: PositiveInt = 256,
    ) -> None:
        super().__init__(feature_dims, num_classes)
        self.conditioning = conditioning or self.modalities[0]
        self.conditioning_given = conditioning
        if self.conditioning not in feature_dims:
            raise ValueError(f"film: conditioning modality '{self.conditioning}' is not one of {self.modalities}")
        self.others = [m for m in self.modalities if m != self.conditioning]
        self.project = nn.Linear(sum(feature_dims[m] for m in self.others), hidden)
        self.film = nn.Linear(feature_dims[self.conditioning], 2 * hidden)
        self.head = nn.Linear(hidden, num_classes)

    def choices(self) -> list[str]:
        if self.conditioning_given:
            return []
        return [f"film: modality '{self.conditioning}' conditions the others (conditioning: null picks the first)"]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.film(features[self.conditioning]).chunk(2, dim=1)
        x = self.project(torch.cat([features[m] for m in self.others], dim=1))
        return self.head(torch.relu(gamma * x + beta))


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated fusion (gated multimodal unit, Arevalo et al. 2017; the 'Gated' baseline of OGM-GE and MLB):
    h_m = tanh(W_m φ_m), gates z = softmax over modalities of W_z[φ_1; …; φ_M] per hidden unit
    (a sigmoid for two modalities), f = head(Σ_m z_m ⊙ h_m)."""

    display_name: ClassVar[str] = "Gated"
    paper: ClassVar[str] = "Arevalo et al. 2017 (gated multimodal unit)"

    def __init__(self, feature_dims: dict[str, int], num_classes: int, *, hidden: PositiveInt = 256) -> None:
        super().__init__(feature_dims, num_classes)
        self.hidden = hidden
        self.transform = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in feature_dims.items()})
        self.gate = nn.Linear(sum(feature_dims.values()), hidden * len(feature_dims))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        h = torch.stack([torch.tanh(self.transform[m](features[m])) for m in self.modalities], dim=1)
        z = self.gate(torch.cat([features[m] for m in self.modalities], dim=1)).view(
            -1, len(self.modalities), self.hidden
        )
        return self.head((torch.softmax(z, dim=1) * h).sum(1))


@FUSIONS.register("transformer")
class TransformerFusion(Fusion):
    """A small transformer over one token per modality (projected features + a learned modality embedding)
    plus a class token; the class token's output goes to a linear head (MLB's TF fusion, with standard
    transformer layers)."""

    display_name: ClassVar[str] = "Transformer"
    paper: ClassVar[str] = "Kontras et al. 2024 (MLB), TF fusion"

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_classes: int,
        *,
        dim: PositiveInt = 64,
        heads: PositiveInt = 4,
        layers: PositiveInt = 2,
        dropout: DropProbability = 0.1,
    ) -> None:
        super().__init__(feature_dims, num_classes)
        self.tokens = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in feature_dims.items()})
        self.modality_embedding = nn.Parameter(torch.zeros(len(feature_dims), dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.modality_embedding, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([self.tokens[m](features[m]) for m in self.modalities], dim=1) + self.modality_embedding
        x = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.head(self.encoder(x)[:, 0])


@FUSIONS.register("lmf")
class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al. 2018): with z_m = [φ_m; 1], the fused vector is
    Σ_{i=1..r} λ_i · ∏_m (z_m W_m^(i)) + b (the outer-product tensor fusion in rank-r factors), then a linear head."""

    display_name: ClassVar[str] = "LMF"
    paper: ClassVar[str] = "Liu et al. 2018 (low-rank multimodal fusion)"

    def __init__(
        self, feature_dims: dict[str, int], num_classes: int, *, rank: PositiveInt = 4, hidden: PositiveInt = 64
    ) -> None:
        super().__init__(feature_dims, num_classes)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(rank, d + 1, hidden)) for m, d in feature_dims.items()}
        )
        for p in self.factors.values():
            nn.init.xavier_normal_(p)
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        nn.init.xavier_normal_(self.rank_weights)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        product = None
        for m in self.modalities:
            z = torch.cat([features[m], torch.ones_like(features[m][:, :1])], dim=1)
            part = torch.einsum("bd,rdh->brh", z, self.factors[m])
            product = part if product is None else product * part
        fused = torch.einsum("or,brh->bh", self.rank_weights, product) + self.bias
        return self.head(torch.relu(fused))
