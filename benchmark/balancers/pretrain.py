"""Unimodal pre-training, then joint fine-tuning."""

from __future__ import annotations

import torch

from benchmark.balancers.base import BALANCERS
from benchmark.balancers.joint import Joint


@BALANCERS.register("pretrain")
class Pretrain(Joint):
    """Pre-training baseline (G-Blend paper, Fig. 1): each encoder starts from the best-validation checkpoint of the
    same dataset/backbone/seed's unimodal run — produced once by the DAG and shared, not retrained — and the fused
    model is then fine-tuned end to end with joint cross-entropy (the fusion head starts fresh)."""

    paper = "Wang et al. 2020 (G-Blend), Fig. 1 (pre-training baseline)"
    needs = ("unimodal_checkpoints",)

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        for m in model.modalities:
            path = ctx.artifacts[f"unimodal_checkpoint/{m}"]
            if not path.exists():  # the run's metrics exist (the DAG tracks those) but its weights were not kept
                raise FileNotFoundError(
                    f"{path} is missing: the unimodal {m} run's weights were not kept with its results; "
                    f"delete {path.parent} so that the DAG trains it again"
                )
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("status", "ok") != "ok" or saved["state_dict"] is None:
                raise ValueError(
                    f"{path}: the unimodal {m} run failed ({saved.get('reason', 'no weights')}), so there is nothing "
                    "to start from"
                )
            state = saved["state_dict"]
            prefix = f"encoders.{m}."
            encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not encoder_state:
                raise ValueError(f"{path} holds no weights for the {m} encoder")
            model.encoders[m].load_state_dict(encoder_state)
