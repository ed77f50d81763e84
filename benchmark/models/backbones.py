"""Per-modality encoders. Each turns one modality's batch into a feature vector [B, out_dim].

Two input kinds: a spectrogram [B, 1, F, T] (an image with one channel) and frames [B, T, C, H, W], which go
through the same 2-D network frame by frame and are average-pooled over time and space, as in OGM-GE's
visual encoder. A backbone only provides ``trunk`` (image -> feature map) and ``out_dim``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from benchmark.registry import Registry


class Backbone(nn.Module):
    """Base class: ``trunk`` maps [N, C, H, W] to a feature map [N, out_dim, h, w]."""

    name: ClassVar[str]
    trunk: nn.Module
    out_dim: int

    def __init__(self, kind: str, in_channels: int) -> None:
        super().__init__()
        if kind not in ("spectrogram", "frames"):
            raise ValueError(f"unknown input kind '{kind}' (spectrogram | frames)")
        self.kind = kind
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "frames":
            b, t = x.shape[:2]
            fmap = self.trunk(x.flatten(0, 1))
            return fmap.unflatten(0, (b, t)).mean(dim=(1, 3, 4))
        return self.trunk(x).mean(dim=(2, 3))


BACKBONES: Registry[Backbone] = Registry("backbone", base=Backbone)


def load_local_weights(module: nn.Module, path: str | None) -> None:
    """Optional pretrained weights from a local state_dict file (nothing is ever downloaded)."""
    if not path:
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{p}: unexpected keys {unexpected[:5]}")


@BACKBONES.register("resnet18")
class ResNet18(Backbone):
    """torchvision's ResNet-18 without its classifier; 1-channel stem for spectrograms (as OGM-GE)."""

    def __init__(self, kind: str, in_channels: int, *, weights: str | None = None) -> None:
        super().__init__(kind, in_channels)
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        load_local_weights(net, weights)
        self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_dim = 512


@BACKBONES.register("small_cnn")
class SmallCNN(Backbone):
    """Four conv-BN-ReLU blocks (widths w, 2w, 4w, 4w): a ResNet-shaped encoder small enough for CPU runs."""

    def __init__(self, kind: str, in_channels: int, *, width: int = 32) -> None:
        super().__init__(kind, in_channels)
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.out_dim = chans[-1]
