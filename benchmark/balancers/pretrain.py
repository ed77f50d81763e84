"""Unimodal pre-training, then joint fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from benchmark.balancers.base import BALANCERS, RunContext
from benchmark.balancers.joint import Joint


def unimodal_encoder_state(ctx: RunContext, modality: str, purpose: str) -> dict[str, torch.Tensor]:
    """The encoder weights of ``modality``'s unimodal run (``ctx.artifacts['unimodal_checkpoint/<m>']``, a DAG input
    of methods whose ``needs`` include ``unimodal_checkpoints``): the file must exist, the run must have succeeded,
    and it must hold the encoder's weights (keys ``encoders.<m>.*``); ``purpose`` ends the failed-run message."""
    path = Path(ctx.artifacts[f"unimodal_checkpoint/{modality}"])
    if not path.exists():  # the run's metrics exist (the DAG tracks those) but its weights were not kept
        raise FileNotFoundError(
            f"{path} is missing: the unimodal {modality} run's weights were not kept with its results; "
            f"delete {path.parent} so that the DAG trains it again"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("status", "ok") != "ok" or saved.get("state_dict") is None:
        raise ValueError(
            f"{path}: the unimodal {modality} run failed ({saved.get('reason', 'no weights')}), so there is {purpose}"
        )
    prefix = f"encoders.{modality}."
    state = {k[len(prefix) :]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no weights for the {modality} encoder")
    return state


@BALANCERS.register("pretrain")
class Pretrain(Joint):
    """Pre-training baseline (G-Blend paper, Fig. 1): each encoder starts from the best-validation checkpoint of the
    same dataset/backbone/seed's unimodal run — produced once by the DAG and shared, not retrained — and the fused
    model is then fine-tuned end to end with joint cross-entropy (the fusion head starts fresh)."""

    display_name: ClassVar[str] = "Pre-training"
    paper = "Wang et al. 2020 (G-Blend), Fig. 1 (pre-training baseline)"
    needs = ("unimodal_checkpoints",)

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        for m in model.modalities:
            model.encoders[m].load_state_dict(unimodal_encoder_state(ctx, m, "nothing to start from"))
