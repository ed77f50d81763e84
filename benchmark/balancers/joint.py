"""Baselines without balancing."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.balancers.base import BALANCERS, Balancer, fused_ce
from benchmark.models.model import ModelOutput


@BALANCERS.register("joint")
class Joint(Balancer):
    """Joint training: cross-entropy on the fused output only (the 'naive' late fusion, G-Blend eq. 2)."""

    display_name: ClassVar[str] = "Joint"
    paper = "Wang et al. 2020 (G-Blend), eq. 2: naive joint training"
    needs_modality_features = False

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return fused_ce(out, y)


@BALANCERS.register("unimodal")
class Unimodal(Joint):
    """One model per modality — that modality's encoder and a linear classifier — trained with cross-entropy
    (G-Blend eq. 1). Reported as '<modality>-only'; it is the reference each balancing method must beat."""

    display_name: ClassVar[str] = "Unimodal"
    paper = "Wang et al. 2020 (G-Blend), eq. 1: uni-modal network"
    per_modality = True
