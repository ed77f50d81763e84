"""Fusions that act between the streams inside the encoders: the G-Blend paper's architecture baselines (Fig. 1,
supplement §6.2-6.4). Each runs the encoders block by block (``Backbone.blocks``), so it needs a backbone made of
blocks (small_cnn: 4, resnet18: 5 — the grid reports other backbones as n/a), and states which block it acts after.

* ``se_gate``: squeeze-and-excitation between streams — every stream's channels are rescaled by weights computed
  from the other streams' globally pooled features, with a residual connection (§6.3).
* ``nl_gate``: a non-local (query-key-value) gate — each query stream attends over the positions of all streams
  and adds the result to itself; the output projection starts at zero, so the block starts as the identity (§6.4).
* ``mid_concat``: mid-level fusion by concatenation — after block k the other streams, pooled to one vector per
  time step, are tiled over the target stream's positions and concatenated to its channels; the merged stream
  goes on through the target's remaining blocks (§6.2; 3-D concat into frames, 2-D concat into a spectrogram).

The gates keep one stream per modality and end in the late-concatenation head; mid_concat ends in one stream, so
it has no per-modality features (methods that need them are n/a there).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from annotated_types import MinLen
from torch import nn
from torch.nn import functional as F

from benchmark.models.backbones import Backbone, pool_maps
from benchmark.models.fusions import FUSIONS, ConcatFusion, Fusion
from benchmark.params import PositiveInt


def _check_block(name: str, block: int, encoders: dict[str, Backbone]) -> None:
    for m, enc in encoders.items():
        n = len(enc.block_ends)
        if not 1 <= block <= n:
            raise ValueError(f"{name}: block must be in 1..{n} for backbone '{enc.name}' ({m}), not {block}")


def run_blocks(
    encoders: dict[str, Backbone], maps: dict[str, torch.Tensor], lo: int, hi: int | None
) -> dict[str, torch.Tensor]:
    """Every stream's feature maps through its blocks lo..hi-1."""
    out = {}
    for m, h in maps.items():
        for blk in encoders[m].blocks()[lo:hi]:
            h = blk(h)
        out[m] = h
    return out


def per_sample_scale(h: torch.Tensor, w: torch.Tensor, kind: str) -> torch.Tensor:
    """Multiply feature maps by per-sample channel weights w [B, C] (frames: the same weights for every frame)."""
    if kind == "frames":
        w = w.repeat_interleave(len(h) // len(w), dim=0)
    return h * w[:, :, None, None]


def to_positions(h: torch.Tensor, batch: int) -> torch.Tensor:
    """Feature maps -> [B, positions, C] (frames: time × height × width; spectrogram: frequency × time)."""
    if h.shape[0] != batch:  # frames: [B·T, C, H, W]
        return h.unflatten(0, (batch, -1)).permute(0, 1, 3, 4, 2).flatten(1, 3)
    return h.flatten(2).transpose(1, 2)


def from_positions(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_positions`` for maps shaped like ``like``."""
    b = p.shape[0]
    if like.shape[0] != b:
        t = like.shape[0] // b
        _, c, hh, ww = like.shape
        return p.view(b, t, hh, ww, c).permute(0, 1, 4, 2, 3).flatten(0, 1)
    return p.transpose(1, 2).reshape(like.shape)


def temporal_vectors(h: torch.Tensor, batch: int, kind: str) -> torch.Tensor:
    """One vector per time step [B, C, T]: frames pooled over space, a spectrogram pooled over frequency."""
    if kind == "frames":
        return h.unflatten(0, (batch, -1)).mean(dim=(3, 4)).transpose(1, 2)
    return h.mean(dim=2)


class BlockFusion(ConcatFusion):
    """Base of the gates: streams through blocks 1..k, the gate, blocks k+1..n, then late concatenation."""

    needs_blocks = True
    modality_logits_exact = False
    modality_logits_rule = (
        "W_m·φ_m + b/M of the concatenation head, where φ_m is stream m after the gates "
        "(it has seen the other modalities through them)"
    )

    def __init__(self, feature_dims: dict[str, int], num_classes: int, *, block: PositiveInt) -> None:
        super().__init__(feature_dims, num_classes)
        self.block = block

    def bind(self, encoders: dict[str, Backbone]) -> None:
        """Build the gate's layers for these encoders (called once by ``build_model``)."""
        _check_block(self.name, self.block, encoders)
        self.kinds = {m: e.kind for m, e in encoders.items()}
        self.build({m: e.block_channels(self.block) for m, e in encoders.items()})

    def build(self, channels: dict[str, int]) -> None:
        raise NotImplementedError

    def gate(self, maps: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = len(next(iter(inputs.values())))
        maps = {m: encoders[m].maps(inputs[m]) for m in self.modalities}
        maps = self.gate(run_blocks(encoders, maps, 0, self.block), batch)
        maps = run_blocks(encoders, maps, self.block, None)
        return {m: encoders[m].pool(h, batch) for m, h in maps.items()}


@FUSIONS.register("se_gate")
class SEGateFusion(BlockFusion):
    """SE-gate between streams (G-Blend supplement §6.3, after Hu et al.'s squeeze-and-excitation): after block k,
    for every stream m, w_m = σ(W₂ ReLU(W₁ s)) with s the globally pooled features of the other streams
    (concatenated: the supplement's variant that learns the weights from both streams, for any number of them),
    and stream m becomes h_m + h_m ⊙ w_m (residual) or h_m ⊙ w_m. All directions at once (the paper's best: both
    directions, after block 3); then late concatenation."""

    display_name: ClassVar[str] = "SE-gate"
    paper: ClassVar[str] = "Wang et al. 2020 (G-Blend), supplement §6.3"

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_classes: int,
        *,
        block: PositiveInt = 3,
        reduction: PositiveInt = 16,
        residual: bool = True,
    ) -> None:
        super().__init__(feature_dims, num_classes, block=block)
        self.reduction, self.residual = reduction, residual

    def build(self, channels: dict[str, int]) -> None:
        gates = {}
        for m in self.modalities:
            inner = sum(channels[o] for o in self.modalities if o != m)
            hidden = max(1, inner // self.reduction)
            gates[m] = nn.Sequential(nn.Linear(inner, hidden), nn.ReLU(), nn.Linear(hidden, channels[m]), nn.Sigmoid())
        self.gates = nn.ModuleDict(gates)

    def gate(self, maps: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        pooled = {m: pool_maps(h, batch, self.kinds[m]) for m, h in maps.items()}
        out = {}
        for m, h in maps.items():
            w = self.gates[m](torch.cat([pooled[o] for o in self.modalities if o != m], dim=1))
            scaled = per_sample_scale(h, w, self.kinds[m])
            out[m] = h + scaled if self.residual else scaled
        return out


@FUSIONS.register("nl_gate")
class NLGateFusion(BlockFusion):
    """NL-gate (G-Blend supplement §6.4, the non-local block of Wang et al. 2018 as a query-key-value gate): after
    block k, each query stream q (default: every frame stream; the paper gates the visual stream) is updated as
    h_q + W_z · softmax(θ(h_q) φ(K)ᵀ) g(K), where the keys/values K are the positions of all streams (each projected
    to ``inner`` channels by its own 1×1 map) — the project's form of the paper's audio-visual "2-D concat" key-value.
    W_z starts at zero, so the gate starts as the identity (as the non-local block's zero-initialised BN). Paper's
    best: after block 4; then late concatenation."""

    display_name: ClassVar[str] = "NL-gate"
    paper: ClassVar[str] = "Wang et al. 2020 (G-Blend), supplement §6.4"

    def __init__(
        self,
        feature_dims: dict[str, int],
        num_classes: int,
        *,
        block: PositiveInt = 4,
        queries: Annotated[list[str], MinLen(1)] | None = None,
        inner: PositiveInt = 64,
    ) -> None:
        super().__init__(feature_dims, num_classes, block=block)
        self.queries_given, self.inner = queries, inner

    def build(self, channels: dict[str, int]) -> None:
        queries = self.queries_given or [m for m in self.modalities if self.kinds[m] == "frames"] or self.modalities[:1]
        unknown = [q for q in queries if q not in self.modalities]
        if unknown:
            raise ValueError(f"nl_gate: query modality {unknown[0]!r} is not one of {self.modalities}")
        self.queries = list(queries)
        d = self.inner
        self.theta = nn.ModuleDict({q: nn.Linear(channels[q], d, bias=False) for q in self.queries})
        self.phi = nn.ModuleDict({m: nn.Linear(channels[m], d, bias=False) for m in self.modalities})
        self.g = nn.ModuleDict({m: nn.Linear(channels[m], d, bias=False) for m in self.modalities})
        self.out = nn.ModuleDict({q: nn.Linear(d, channels[q]) for q in self.queries})
        for layer in self.out.values():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def gate(self, maps: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        positions = {m: to_positions(h, batch) for m, h in maps.items()}
        keys = torch.cat([self.phi[m](positions[m]) for m in self.modalities], dim=1)
        values = torch.cat([self.g[m](positions[m]) for m in self.modalities], dim=1)
        out = dict(maps)
        for q in self.queries:
            attention = torch.softmax(self.theta[q](positions[q]) @ keys.transpose(1, 2), dim=-1)
            out[q] = maps[q] + from_positions(self.out[q](attention @ values), maps[q])
        return out


@FUSIONS.register("mid_concat")
class MidConcatFusion(Fusion):
    """Mid-level fusion by concatenation (G-Blend supplement §6.2): after block k, every other stream is pooled to
    one vector per time step (frames over space, a spectrogram over frequency), resampled to the target stream's
    time steps (average pooling down, repetition up), tiled over the target's positions and concatenated to its
    channels — 3-D concat into a frame stream (the paper's best on Kinetics, after block 3), 2-D concat into a
    spectrogram. A 1×1 convolution with BN and ReLU maps the concatenation back to the target's width (the project's
    way of feeding the target's remaining blocks unchanged), which then runs blocks k+1..n; a linear head follows.
    The other streams' later blocks are unused (they stay in the model, so ``params`` counts them). One stream
    remains, named 'fused': there are no per-modality features or logits."""

    display_name: ClassVar[str] = "Mid-level concatenation"
    paper: ClassVar[str] = "Wang et al. 2020 (G-Blend), supplement §6.2"
    needs_blocks = True
    per_modality_features = False
    modality_logits_rule = "none: the streams merge inside the encoders"

    def __init__(
        self, feature_dims: dict[str, int], num_classes: int, *, block: PositiveInt = 3, into: str | None = None
    ) -> None:
        super().__init__(feature_dims, num_classes)
        self.block, self.into_given = block, into
        self.picked: list[str] = []

    def choices(self) -> list[str]:
        return list(self.picked)

    def bind(self, encoders: dict[str, Backbone]) -> None:
        _check_block(self.name, self.block, encoders)
        self.kinds = {m: e.kind for m, e in encoders.items()}
        self.into = self.into_given or next(
            (m for m in self.modalities if self.kinds[m] == "frames"), self.modalities[0]
        )
        if self.into not in self.modalities:
            raise ValueError(f"mid_concat: 'into' modality {self.into!r} is not one of {self.modalities}")
        self.picked = (
            []
            if self.into_given
            else [
                f"mid_concat: the streams merge into modality '{self.into}' (into: null: the first frames modality)"
            ]
        )
        channels = {m: e.block_channels(self.block) for m, e in encoders.items()}
        width = channels[self.into]
        self.merge = nn.Sequential(
            nn.Conv2d(sum(channels.values()), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(self.feature_dims[self.into], self.num_classes)

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = len(next(iter(inputs.values())))
        maps = run_blocks(encoders, {m: encoders[m].maps(inputs[m]) for m in self.modalities}, 0, self.block)
        target = maps[self.into]
        if self.kinds[self.into] == "frames":
            steps, height, width = target.shape[0] // batch, target.shape[2], target.shape[3]
        else:
            steps, height, width = target.shape[3], target.shape[2], None
        parts = [target]
        for m in self.modalities:
            if m == self.into:
                continue
            seq = F.adaptive_avg_pool1d(temporal_vectors(maps[m], batch, self.kinds[m]), steps)  # [B, C, steps]
            if width is not None:  # tile over every frame's H × W
                parts.append(seq.transpose(1, 2).flatten(0, 1)[:, :, None, None].expand(-1, -1, height, width))
            else:  # tile over the spectrogram's frequency axis
                parts.append(seq[:, :, None, :].expand(-1, -1, height, -1))
        merged = self.merge(torch.cat(parts, dim=1))
        fused = run_blocks(encoders, {self.into: merged}, self.block, None)[self.into]
        return {"fused": encoders[self.into].pool(fused, batch)}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features["fused"])

    def modality_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}
