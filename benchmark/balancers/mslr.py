"""Modality-specific learning rates (MSLR)."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.balancers.base import (
    BALANCERS,
    Balancer,
    estimator_note,
    fused_ce,
    in_window,
    modality_parameter_groups,
    scale_grads,
)
from benchmark.models.model import ModelOutput
from benchmark.params import EpochBound, Positive, PositiveInt


def mslr_coefficient(initial: float, accuracy: float, recent: list[float]) -> float:
    """k_m = k_m⁰ · acc_m / mean(recent acc_m); k_m⁰ until there is a history to compare with."""
    if not recent or sum(recent) == 0:
        return initial
    return initial * accuracy / (sum(recent) / len(recent))


@BALANCERS.register("mslr")
class MSLR(Balancer):
    """MSLR (Yao & Mihalcea 2022), the dynamic variant as the balancing benchmarks run it: cross-entropy on the
    fused output; after each epoch, k_m = k_m⁰ · acc_m / mean(acc_m over the previous ``window`` epochs), acc_m the
    validation accuracy of modality m's logits (k_m = k_m⁰ until ``window`` epochs are known); inside the epoch
    window the gradients of modality m's encoder and its slice of the fused head are multiplied by k_m, which is
    a modality-specific learning rate for SGD."""

    display_name: ClassVar[str] = "MSLR"
    reads_validation = True

    paper = "Yao & Mihalcea 2022 (MSLR)"

    def __init__(
        self,
        *,
        window: PositiveInt = 5,
        initial: dict[str, Positive] | None = None,
        start_epoch: EpochBound = 0,
        end_epoch: EpochBound = 50,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window, self.initial, self.start_epoch, self.end_epoch = (
            window,
            dict(initial or {}),
            start_epoch,
            end_epoch,
        )

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        return estimator_note(fusion_cls)

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        unknown = set(self.initial) - set(model.modalities)
        if unknown:
            raise ValueError(
                f"mslr.initial names modalities {sorted(unknown)} that this run does not have ({model.modalities})"
            )
        self.groups = modality_parameter_groups(model, with_unimodal_heads=False)
        self.k0 = {m: float(self.initial.get(m, 1.0)) for m in model.modalities}
        self.k = dict(self.k0)
        self.memory: dict[str, list[float]] = {m: [] for m in model.modalities}

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return fused_ce(out, y)

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        if in_window(self.ctx.epoch, self.start_epoch, self.end_epoch, self.ctx.num_epochs):
            for m, group in self.groups.items():
                scale_grads(group, torch.tensor(self.k[m]))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for m in self.model.modalities:
            acc = metrics[f"val_acc_{m}"]
            recent = self.memory[m]
            self.k[m] = mslr_coefficient(self.k0[m], acc, recent) if len(recent) == self.window else self.k0[m]
            self.memory[m] = (recent + [acc])[-self.window :]
        self.track(k={m: torch.tensor(v) for m, v in self.k.items()})
