"""A user's dataset that hands over tensors, with its own input kind and encoder (README, "Your own tensor data").

``SensorViews`` is a wearable-sensor style dataset with two views of each recording: ``accel``, a 3-axis signal
of 64 samples (a kind of its own, ``signal``), and ``summary``, 8 hand-made statistics (a built-in ``vector``). Its
``download`` writes the arrays once (here generated from a seed; a real dataset would read its published files);
the harness reads them row by row through ``tensors``, checks every sample against ``tensor_specs``, caches them in
shards and trains on them like any other modality. ``SignalCNN`` encodes the signal; the vector gets the ``mlp``.

Config (see README)::

    input_kinds: {signal: {class: "examples.my_dataset:Signal", encoder: signal_cnn}}
    backbones: {signal_cnn: {class: "examples.my_dataset:SignalCNN", channels: 16}}
    datasets: {sensors: {class: "examples.my_dataset:SensorViews", track_code: true}}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.data.datasets import Dataset, write_manifest
from benchmark.data.kinds import InputKind
from benchmark.models.backbones import Backbone, load_local_weights
from benchmark.params import PositiveInt, WeightsFile

CLASSES = ("walk", "run", "sit")
ARRAYS = "views.npz"


class Signal(InputKind):
    """A multi-channel signal [C, N] (float32); its absent input is the training mean, as for any feature."""

    layout, ndim, default_encoder = "signal", 2, "signal_cnn"


class SensorViews(Dataset):
    """Generated recordings: the signal carries the class clearly (a class-specific frequency), the summary
    statistics weakly (a small class shift under noise), so the signal dominates joint training."""

    modalities = {"accel": "signal", "summary": "vector"}
    config_sections = ("generate", "split")
    generate_defaults = {"recordings": 600, "seed": 0, "noise": 0.6, "summary_shift": 0.4}

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        g = self.settings["generate"]
        rng = np.random.default_rng(g["seed"])
        n = g["recordings"]
        labels = np.arange(n) % len(CLASSES)
        t = np.linspace(0, 1, 64, dtype=np.float32)
        phase = rng.uniform(0, 2 * np.pi, (n, 3, 1))
        accel = np.sin(2 * np.pi * (1 + 3 * labels)[:, None, None] * t + phase) + rng.normal(0, g["noise"], (n, 3, 64))
        summary = rng.normal(0, 1, (n, 8)) + g["summary_shift"] * labels[:, None]
        raw_dir.mkdir(parents=True, exist_ok=True)
        np.savez(raw_dir / ARRAYS, accel=accel.astype(np.float32), summary=summary.astype(np.float32))
        splits = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2)[rng.permutation(np.arange(n) % 10)]
        rows = [
            {"clip_id": f"rec{i:04d}", "path": ARRAYS, "label": CLASSES[labels[i]], "split": splits[i], "row": i}
            for i in range(n)
        ]
        write_manifest(raw_dir / "manifest.csv", rows)

    def _arrays(self, raw_dir: Path) -> dict:
        if not hasattr(self, "_cache"):
            with np.load(Path(raw_dir) / ARRAYS, allow_pickle=False) as f:  # never unpickles
                self._cache = {k: f[k] for k in f.files}
        return self._cache

    def tensor_specs(self, raw_dir: Path, rows: list[dict]) -> dict[str, dict]:
        arrays = self._arrays(raw_dir)
        return {m: {"shape": list(arrays[m].shape[1:]), "dtype": "float32"} for m in self.modalities}

    def tensors(self, raw_dir: Path, row: dict) -> dict:
        arrays = self._arrays(raw_dir)
        return {m: arrays[m][int(row["row"])] for m in self.modalities}


class SignalCNN(Backbone):
    """Two 1-D convolutions over the samples, averaged over time: a small encoder of ``signal`` inputs. Its
    convolution weights are what OGM-GE modulates (``has_convolutions``)."""

    kinds = ("signal",)
    has_convolutions = True

    def __init__(self, kind: str, shape: tuple[int, ...], *, channels: PositiveInt = 16, weights: WeightsFile = None):
        super().__init__(kind, shape)
        self.net = nn.Sequential(
            nn.Conv1d(shape[0], channels, 5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
        )
        self.out_dim = channels
        load_local_weights(self, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=2)
