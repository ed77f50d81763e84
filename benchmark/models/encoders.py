"""Encoders of tensor modalities: pre-extracted feature vectors (``vector`` [B, D]), sequences of feature vectors
such as CMU-MOSI's COVAREP (audio), FACET (face) and GloVe (word) features (``sequence`` [B, T, D], padded with
all-zero rows), and token ids of captions or transcripts (``tokens`` [B, L], 0 the padding id).

They are small on purpose: the defaults (a 128-wide MLP, two 64-wide Transformer layers) train on a CPU, and the
features they take were already extracted by larger networks. None of them has convolutions, so OGM-style methods
scale what ``modulated_parameters`` declares instead (``modulate: declared``): the weight matrices of their linear
maps and the token embedding matrix, the analogue of the released rule's convolution weights. Nothing is downloaded:
``weights`` loads a local state_dict file, and the text encoder's ``embeddings`` a local array of vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.backbones import BACKBONES, Backbone, load_local_weights
from benchmark.params import DropProbability, PositiveInt, WeightsFile


def _check_shape(name: str, shape: tuple[int, ...], ndim: int, layout: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"backbone '{name}' takes {layout} samples of {ndim} dimension(s), not shape {tuple(shape)}")


def _standardise(norm: nn.BatchNorm1d, rows: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to rows [N, D]. A training batch of fewer than two rows (a last batch of one sample: the
    loaders keep it) has no variance to standardise with, so it uses the running statistics instead of failing."""
    if norm.training and rows.shape[0] < 2:
        return F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    return norm(rows)


def _matrix_weights(module: nn.Module) -> list[nn.Parameter]:
    """The trainable weight matrices of ``module``'s linear maps (Linear layers, attention's packed q/k/v projection)
    and embedding tables: no biases, normalisation parameters or positional embeddings (additive, bias-like)."""
    found: list[nn.Parameter] = []
    for mod in module.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            found.append(mod.weight)
        elif isinstance(mod, nn.MultiheadAttention):  # its q/k/v projection is a bare parameter, not a Linear
            packed = mod.in_proj_weight is not None
            names = ("in_proj_weight",) if packed else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
            found += [getattr(mod, n) for n in names]
    unique = {id(p): p for p in found}
    return [p for p in unique.values() if p.requires_grad]


def _transformer(dim: int, layers: int, heads: int, ffn_dim: int, dropout: float) -> nn.TransformerEncoder:
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}): each head takes dim / heads features")
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=ffn_dim, dropout=dropout, batch_first=True, norm_first=True
    )
    # pre-norm layers leave the residual stream unnormalised, hence the final LayerNorm; nested tensors are not
    # used with norm_first (asking for them only warns)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


def _positions(length: int, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(length, dim) * 0.02)


def _encode(transformer: nn.TransformerEncoder, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Transformer over h [B, T, dim], then the mean over the ``valid`` positions [B, T] (None: all of them)."""
    if valid is None:
        return transformer(h).mean(dim=1)
    # a sample with no valid position would leave attention nothing to attend to (NaN): it attends to position 0
    # instead, and its pooled output is the zero vector (no position counts)
    attend = valid.clone()
    attend[:, 0] |= ~valid.any(dim=1)
    out = transformer(h, src_key_padding_mask=~attend)
    weights = valid.unsqueeze(-1).to(out.dtype)
    return (out * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@BACKBONES.register("mlp")
class MLPEncoder(Backbone):
    """A feature vector [B, D] through ``layers`` Linear-ReLU-Dropout blocks of width ``hidden``."""

    display_name: ClassVar[str] = "MLP"
    paper: ClassVar[str] = ""
    has_convolutions = False
    kinds = ("vector",)

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        *,
        hidden: PositiveInt = 128,
        layers: PositiveInt = 2,
        dropout: DropProbability = 0.1,
        input_norm: bool = True,
        weights: WeightsFile = None,
    ) -> None:
        super().__init__(kind, shape)
        _check_shape(self.name, shape, 1, kind)
        # features extracted by someone else's network are rarely standardised (scales differ by orders of magnitude
        # across dimensions), which slows and destabilises training; a BatchNorm learns the standardisation
        self.norm = nn.BatchNorm1d(shape[0]) if input_norm else None
        blocks: list[nn.Module] = []
        width = shape[0]
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        self.trunk = nn.Sequential(*blocks)
        self.out_dim = hidden
        load_local_weights(self, weights)

    def modulated_parameters(self) -> list[nn.Parameter]:
        """The Linear layers' weight matrices (OGM's convolution weights' analogue); not biases or the BatchNorm."""
        return _matrix_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.norm is not None:
            x = _standardise(self.norm, x)
        return self.trunk(x)


@BACKBONES.register("sequence")
class SequenceEncoder(Backbone):
    """A sequence of feature vectors [B, T, D]: each row projected to ``dim``, plus a learned embedding of its
    position (T = the modality's length), a pre-norm Transformer encoder, then the mean over the non-padding rows.

    A row that is exactly zero in every feature is padding (judged on the raw input). ``input_norm`` standardises
    the features with a BatchNorm1d fitted on the non-padding rows only (padding would pull the statistics towards
    zero), and padding rows stay zero; ``mask_padding`` hides padding from attention and pooling (False: every row
    counts, as for a dataset whose zero rows are real)."""

    display_name: ClassVar[str] = "Sequence Transformer"
    paper: ClassVar[str] = ""
    has_convolutions = False
    kinds = ("sequence",)

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        *,
        dim: PositiveInt = 64,
        layers: PositiveInt = 2,
        heads: PositiveInt = 4,
        ffn_dim: PositiveInt = 128,
        dropout: DropProbability = 0.1,
        input_norm: bool = True,
        mask_padding: bool = True,
        weights: WeightsFile = None,
    ) -> None:
        super().__init__(kind, shape)
        _check_shape(self.name, shape, 2, kind)
        length, features = shape
        self.mask_padding = mask_padding
        self.norm = nn.BatchNorm1d(features) if input_norm else None
        self.project = nn.Linear(features, dim)
        self.position = _positions(length, dim)
        self.dropout = nn.Dropout(dropout)
        self.transformer = _transformer(dim, layers, heads, ffn_dim, dropout)
        self.out_dim = dim
        load_local_weights(self, weights)

    def modulated_parameters(self) -> list[nn.Parameter]:
        """The weight matrices of the linear maps: the input projection, attention's q/k/v and output projections and
        the feed-forward layers (OGM's convolution weights' analogue); not biases, LayerNorm/BatchNorm parameters or
        the positional embedding."""
        return _matrix_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        t = x.shape[1]
        if t > len(self.position):
            raise ValueError(f"sequence of {t} rows; the encoder was built for at most {len(self.position)}")
        valid = (x != 0).any(dim=-1)  # [B, T]; on the raw input, before normalisation moves the zeros
        if self.norm is not None:
            x = x.masked_scatter(valid.unsqueeze(-1), _standardise(self.norm, x[valid]))
        h = self.dropout(self.project(x) + self.position[:t])
        return _encode(self.transformer, h, valid if self.mask_padding else None)


def load_embeddings(path: str, vocab_size: int, dim: int) -> torch.Tensor:
    """A local [vocab_size, dim] array of embedding vectors: a .npy file (no pickles) or a torch tensor file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file not found: {p}")
    if p.suffix == ".npy":
        table = torch.from_numpy(np.load(p, allow_pickle=False))
    else:
        table = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(table, torch.Tensor):
            raise ValueError(f"{p}: expected one tensor of embedding vectors, found {type(table).__name__}")
    if tuple(table.shape) != (vocab_size, dim):
        raise ValueError(
            f"{p}: embeddings of shape {tuple(table.shape)}, the text encoder needs (vocab_size, dim) = "
            f"({vocab_size}, {dim}) (set dim to the vectors' width)"
        )
    return table.float()


@BACKBONES.register("text")
class TextEncoder(Backbone):
    """Token ids [B, L] (0 = padding): a token embedding (optionally initialised from ``embeddings``, a local file
    of pretrained vectors, and frozen with ``freeze_embeddings``) plus a learned embedding of each position, a
    pre-norm Transformer encoder that ignores padding, then the mean over the non-padding tokens. An all-padding
    sample (the absent input) gives the zero vector. ``vocab_size`` comes from the tokens modality's spec."""

    display_name: ClassVar[str] = "Text Transformer"
    paper: ClassVar[str] = ""
    has_convolutions = False
    kinds = ("tokens",)

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        *,
        dim: PositiveInt = 64,
        layers: PositiveInt = 2,
        heads: PositiveInt = 4,
        ffn_dim: PositiveInt = 128,
        dropout: DropProbability = 0.1,
        embeddings: str | None = None,
        freeze_embeddings: bool = False,
        vocab_size: PositiveInt | None = None,
        weights: WeightsFile = None,
    ) -> None:
        super().__init__(kind, shape)
        _check_shape(self.name, shape, 1, kind)
        if vocab_size is None:
            raise ValueError("the text encoder needs vocab_size (the tokens modality's spec gives it)")
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        if embeddings:
            with torch.no_grad():
                self.embedding.weight.copy_(load_embeddings(embeddings, vocab_size, dim))
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.position = _positions(shape[0], dim)
        self.dropout = nn.Dropout(dropout)
        self.transformer = _transformer(dim, layers, heads, ffn_dim, dropout)
        self.out_dim = dim
        load_local_weights(self, weights)  # after the embeddings: a saved state_dict is the later word

    def modulated_parameters(self) -> list[nn.Parameter]:
        """The token embedding matrix (unless frozen) and the weight matrices of the linear maps (attention's q/k/v
        and output projections, the feed-forward layers): OGM's convolution weights' analogue; not biases,
        LayerNorm parameters or the positional embedding."""
        return _matrix_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        t = x.shape[1]
        if t > len(self.position):
            raise ValueError(f"{t} tokens; the encoder was built for at most {len(self.position)}")
        h = self.dropout(self.embedding(x) + self.position[:t])
        return _encode(self.transformer, h, x != 0)
