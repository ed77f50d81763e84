"""The contract between the one training loop and a balancing method.

Per step the loop calls ``loss(out, y)`` then backward, then ``after_backward(out, y)``, then the optimizer
step; per epoch it calls ``on_epoch_start(epoch)`` and ``on_epoch_end(epoch)``. A method overrides only the
hooks it needs and declares, as class attributes, what it needs from the model and from the DAG.
Coefficients go through ``track`` and stay on the device until the epoch summary, so a step never waits on
the host.

A user method is a subclass named in config (``balancers: {mine: {class: 'pkg.mod:Mine', alpha: 1}}``);
its hyperparameters are the keyword-only arguments of ``__init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch.nn import functional as F

from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.registry import Registry


@dataclass
class RunContext:
    """What a balancer may read about the run it is part of."""

    modalities: list[str]
    num_epochs: int
    device: torch.device
    seed: int = 0
    artifacts: dict[str, Path] = field(default_factory=dict)  # DAG inputs named in ``needs``
    epoch: int = 0


class Balancer:
    name: ClassVar[str]
    #: the paper and equations implemented (shown in outputs and the README)
    paper: ClassVar[str] = ""
    #: the model gets one linear unimodal head per modality (out.unimodal)
    unimodal_heads: ClassVar[bool] = False
    #: one run per modality with that modality alone and no fusion (unimodal baselines)
    per_modality: ClassVar[bool] = False
    #: DAG artefacts the method consumes, e.g. ('gblend_weights',)
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._tracked: dict[str, list[torch.Tensor]] = {}
        #: facts about this run a reader of the leaderboard must know (copied into metrics.json 'notes')
        self.run_notes: list[str] = []

    # --- what the DAG asks before scheduling ---------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type) -> str | None:
        """Why this method cannot run with ``fusion_cls`` (None: it can)."""
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        """Where the harness extends the paper for this combination (written into every metrics file)."""
        return []

    # --- hooks ----------------------------------------------------------------------------------------
    def setup(self, model: MultimodalModel, ctx: RunContext) -> None:
        self.model = model
        self.ctx = ctx

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    # --- coefficient logging ----------------------------------------------------------------------------
    def track(self, **values: torch.Tensor | dict[str, torch.Tensor]) -> None:
        """Record per-step values (scalars, or one per modality); averaged per epoch in the history."""
        tracked = self.__dict__.setdefault("_tracked", {})
        for key, value in values.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for m, v in items:
                tracked.setdefault(f"{key}_{m}" if m else key, []).append(v.detach().float().reshape(()))

    def epoch_summary(self) -> dict[str, float]:
        tracked = self.__dict__.get("_tracked", {})
        summary = {k: torch.stack(v).mean().item() for k, v in tracked.items() if v}
        self._tracked = {}
        return summary


BALANCERS: Registry[Balancer] = Registry("balancer", base=Balancer)


def fused_ce(out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits, y)


def unimodal_ce(out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
    if out.unimodal is None:
        raise RuntimeError("this method needs unimodal heads; its class must set unimodal_heads = True")
    return {m: F.cross_entropy(logits, y) for m, logits in out.unimodal.items()}


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits)_i[y_i] per sample, detached: the 'score' the balancing papers compare."""
    return torch.softmax(logits.detach().float(), dim=1).gather(1, y[:, None]).squeeze(1)


def scale_grads(params: list[tuple[torch.nn.Parameter, tuple | None]], k: torch.Tensor) -> None:
    """Multiply the gradient of each parameter (or of the given slice of it) by ``k`` in place."""
    for p, index in params:
        if p.grad is None:
            continue
        if index is None:
            p.grad.mul_(k)
        else:
            p.grad[index] *= k
