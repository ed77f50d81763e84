"""Per-modality encoders. Each turns one modality's batch into a feature vector [B, out_dim].

A backbone is built from the input's layout (``benchmark.data.kinds``: a spectrogram [B, 1, F, T], frames
[B, T, C, H, W], an image [B, C, H, W], a vector [B, D], a sequence [B, T, D], token ids [B, L]) and the per-sample
shape; ``kinds`` lists the layouts it accepts (a modality of another layout gets its kind's encoder instead). The
2-D networks take frames one by one and average their feature maps over time and space, as OGM-GE's visual encoder
does; a backbone with its own notion of time
(Conformer, R(2+1)D) overrides ``forward``. Every backbone takes ``weights``: a local state_dict file, never a
download (a mapping modality -> file gives each modality its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from benchmark.params import DropProbability, PositiveInt, WeightsFile
from benchmark.registry import Registry

#: the layouts of the convolutional backbones: 2-D maps (spectrograms, images) and clips of frames
KINDS = ("spectrogram", "frames")


class Backbone(nn.Module):
    """Base class. Subclasses set ``out_dim`` and either ``trunk`` (image -> feature map) or ``forward``.

    A backbone whose trunk is a sequence of blocks sets ``block_ends`` (the trunk index after each block); fusions
    that act between the streams inside the encoders (SE-gate, NL-gate, mid-concatenation) run it block by block
    through ``maps``, ``blocks`` and ``pool``."""

    name: ClassVar[str]
    trunk: nn.Module
    out_dim: int
    #: the trunk index where each block ends (e.g. ResNet-18: stem, layer1..layer4); empty: no block structure
    block_ends: ClassVar[tuple[int, ...]] = ()
    #: whether the encoder has convolution weights, the parameters OGM/OGM-GE's released rule modulates (None:
    #: not declared; such a method then checks the built encoder before training)
    has_convolutions: ClassVar[bool | None] = None
    #: the input layouts this backbone takes (``benchmark.data.kinds``)
    kinds: ClassVar[tuple[str, ...]] = KINDS

    def __init__(self, kind: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        if kind not in self.kinds:
            raise ValueError(
                f"backbone '{getattr(self, 'name', type(self).__name__)}' takes {' | '.join(self.kinds)} inputs, "
                f"not '{kind}'"
            )
        self.kind = kind
        self.shape = tuple(shape)
        self.in_channels = shape[1] if kind == "frames" else shape[0]

    @classmethod
    def accepts(cls, layout: str) -> bool:
        return layout in cls.kinds

    def modulated_parameters(self) -> list[nn.Parameter]:
        """The parameters OGM-style methods scale (``modulate: declared``): by default the convolution weights, the
        released OGM rule; encoders without convolutions declare their own analogue (named in the run's notes)."""
        return [mod.weight for mod in self.modules() if isinstance(mod, nn.modules.conv._ConvNd)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "frames":
            b, t = x.shape[:2]
            fmap = self.trunk(x.flatten(0, 1))
            return fmap.unflatten(0, (b, t)).mean(dim=(1, 3, 4))
        return self.trunk(x).mean(dim=(2, 3))

    # --- block-wise use (for fusions between encoder blocks) -------------------------------------------------
    @classmethod
    def has_blocks(cls) -> bool:
        return bool(cls.block_ends)

    def blocks(self) -> list[nn.Module]:
        """The trunk's blocks in order (views on the trunk: the same parameters)."""
        if not self.block_ends:
            raise TypeError(f"backbone '{self.name}' has no block structure")
        starts = (0,) + self.block_ends[:-1]
        return [self.trunk[a:b] for a, b in zip(starts, self.block_ends)]

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's input: frames [B, T, C, H, W] become images [B·T, C, H, W]; a spectrogram [B, 1, F, T] or an
        image [B, C, H, W] stays as it is."""
        return x.flatten(0, 1) if self.kind == "frames" else x

    def pool(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        """Feature maps -> one vector per sample (the mean over time and space, as ``forward``)."""
        return pool_maps(h, batch, self.kind)

    def block_channels(self, k: int) -> int:
        """Channels of the feature map after the first k blocks."""
        norms = [m for blk in self.blocks()[:k] for m in blk.modules() if isinstance(m, nn.BatchNorm2d)]
        return norms[-1].num_features


BACKBONES: Registry[Backbone] = Registry("backbone", base=Backbone)


def pool_maps(h: torch.Tensor, batch: int, kind: str) -> torch.Tensor:
    """Feature maps of one input kind -> [B, C]: frames' maps [B·T, C, H, W] averaged over time and space, a
    spectrogram's [B, C, F, T] over frequency and time."""
    if kind == "frames":
        return h.unflatten(0, (batch, -1)).mean(dim=(1, 3, 4))
    return h.mean(dim=(2, 3))


def load_local_weights(module: nn.Module, path: str | None) -> None:
    """Load a local state_dict into ``module`` (keys it lacks are an error; keys it has and the file lacks stay
    initialised). A 3-channel first convolution is averaged over colour for a 1-channel input, the usual way of
    starting a spectrogram network from image weights."""
    if not path:
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ValueError(f"{p}: keys not in the {type(module).__name__} network: {unexpected[:5]}")
    for key, value in list(state.items()):
        target = own[key].shape
        if value.shape != target:
            if value.dim() >= 4 and value.shape[1] != target[1] and target[1] == 1 and value.shape[2:] == target[2:]:
                state[key] = value.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"{p}: '{key}' has shape {tuple(value.shape)}, the network needs {tuple(target)}")
    module.load_state_dict(state, strict=False)


def _resnet18_trunk(in_channels: int, weights: str | None) -> nn.Sequential:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    load_local_weights(net, weights)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


@BACKBONES.register("resnet18")
class ResNet18(Backbone):
    """torchvision's ResNet-18 without its classifier; 1-channel stem for spectrograms (as OGM-GE). Five blocks for
    mid-level fusion: the stem (conv, BN, ReLU, max-pool), then layer1..layer4 (the G-Blend supplement's five)."""

    display_name: ClassVar[str] = "ResNet-18"
    paper: ClassVar[str] = "He et al. 2016 (ResNet)"
    has_convolutions = True
    kinds = (*KINDS, "image")
    block_ends = (4, 5, 6, 7, 8)

    def __init__(self, kind: str, shape: tuple[int, ...], *, weights: WeightsFile = None) -> None:
        super().__init__(kind, shape)
        self.trunk = _resnet18_trunk(self.in_channels, weights)
        self.out_dim = 512


def _small_trunk(in_channels: int, width: int) -> tuple[nn.Sequential, int]:
    chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers), chans[-1]


@BACKBONES.register("small_cnn")
class SmallCNN(Backbone):
    """Four conv-BN-ReLU blocks (widths w, 2w, 4w, 4w): a ResNet-shaped encoder small enough for CPU runs."""

    display_name: ClassVar[str] = "Small CNN"
    paper: ClassVar[str] = ""
    has_convolutions = True
    kinds = (*KINDS, "image")
    block_ends = (3, 6, 9, 12)

    def __init__(
        self, kind: str, shape: tuple[int, ...], *, width: PositiveInt = 32, weights: WeightsFile = None
    ) -> None:
        super().__init__(kind, shape)
        self.trunk, self.out_dim = _small_trunk(self.in_channels, width)
        load_local_weights(self, weights)


@BACKBONES.register("conformer")
class ConformerEncoder(Backbone):
    """torchaudio's Conformer (Gulati et al. 2020) over a sequence: the log-mel frames of a spectrogram (each frame's
    F bins projected to ``dim``), or per-frame embeddings of a clip (a small conv stem per frame, pooled over
    space, projected to ``dim``); the output is averaged over time. MLB's Conformer backbone, minus its pretrained
    front-ends (nothing is downloaded; ``weights`` loads a local file)."""

    display_name: ClassVar[str] = "Conformer"
    paper: ClassVar[str] = "Gulati et al. 2020 (Conformer)"
    has_convolutions = True

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        *,
        dim: PositiveInt = 64,
        layers: PositiveInt = 2,
        heads: PositiveInt = 4,
        ffn_dim: PositiveInt = 128,
        kernel_size: PositiveInt = 7,
        dropout: DropProbability = 0.1,
        frame_width: PositiveInt = 16,
        weights: WeightsFile = None,
    ) -> None:
        super().__init__(kind, shape)
        from torchaudio.models import Conformer

        if kind == "spectrogram":
            self.frame_stem = None
            self.project = nn.Linear(shape[0] * shape[1], dim)
        else:
            self.frame_stem, stem_dim = _small_trunk(self.in_channels, frame_width)
            self.project = nn.Linear(stem_dim, dim)
        self.conformer = Conformer(
            input_dim=dim,
            num_heads=heads,
            ffn_dim=ffn_dim,
            num_layers=layers,
            depthwise_conv_kernel_size=kernel_size,
            dropout=dropout,
        )
        self.out_dim = dim
        load_local_weights(self, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frame_stem is None:
            seq = x.flatten(1, 2).transpose(1, 2)  # [B, C·F, T] -> [B, T, C·F]
        else:
            b, t = x.shape[:2]
            seq = self.frame_stem(x.flatten(0, 1)).mean(dim=(2, 3)).unflatten(0, (b, t))
        seq = self.project(seq)
        lengths = torch.full((len(seq),), seq.shape[1], dtype=torch.long, device=seq.device)
        out, _ = self.conformer(seq, lengths)
        return out.mean(dim=1)


@BACKBONES.register("r2plus1d_18")
class R2Plus1D18(Backbone):
    """torchvision's R(2+1)D-18 video network for clips of frames (its classifier removed): [B, T, C, H, W] is fed as
    a [B, C, T, H, W] clip. It has no spectrogram form, so a spectrogram modality gets ResNet-18 (the audio
    encoder of the papers), which this backbone's name then covers for that modality."""

    display_name: ClassVar[str] = "R(2+1)D-18"
    paper: ClassVar[str] = "Tran et al. 2018 (R(2+1)D)"
    has_convolutions = True

    def __init__(self, kind: str, shape: tuple[int, ...], *, weights: WeightsFile = None) -> None:
        super().__init__(kind, shape)
        if kind == "spectrogram":
            self.trunk = _resnet18_trunk(self.in_channels, weights)
            self.video = None
        else:
            import torchvision

            net = torchvision.models.video.r2plus1d_18(weights=None)
            if self.in_channels != 3:
                stem = net.stem[0]
                net.stem[0] = nn.Conv3d(
                    self.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
                )
            load_local_weights(net, weights)
            net.fc = nn.Identity()
            self.video = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.video is None:
            return super().forward(x)
        return self.video(x.transpose(1, 2))
