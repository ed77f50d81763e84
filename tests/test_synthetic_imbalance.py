"""The built-in dataset exhibits the problem the benchmark exists for (on its default settings).

Audio learns fast but alone caps at 50%; video learns slowly, alone also caps at 50% yet gets well above
chance (12.5%); only a model using both can separate all 8 classes.
"""
from __future__ import annotations

import copy

import pytest

from benchmark.config import dataset_settings, validate_config
from benchmark.data.datasets import DATASETS
from benchmark.data.preprocess import preprocess
from benchmark.data.splits import write_splits
from benchmark.grid import RunSpec
from benchmark.run import train_run
from tests.conftest import default_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    cfg = validate_config(default_config())
    settings = dataset_settings(cfg, "synthetic-av")
    ds = DATASETS.get("synthetic-av")(settings)
    ds.download(root / "data/raw/synthetic-av", workers=2)
    preprocess(ds, root / "data/raw/synthetic-av", root / "data/processed/synthetic-av", settings["preprocess"], workers=2, log=lambda s: None)
    write_splits(ds, root / "data/raw/synthetic-av", root / "data/processed/synthetic-av", log=lambda s: None)
    return root, cfg


def run(cfg, root, method, epochs, monkeypatch, fusion="concat"):
    cfg = copy.deepcopy(cfg)
    cfg["train"]["epochs"] = epochs
    monkeypatch.chdir(root)
    spec = RunSpec.from_method("synthetic-av", "small_cnn", "none" if method.startswith("unimodal") else fusion, method, 0)
    return train_run(cfg, spec, root / "runs" / f"{method}-{epochs}", log=lambda s: None)


def test_audio_leads_video_early_video_learns_late_and_fusion_beats_both(default_data, monkeypatch):
    root, cfg = default_data
    audio = run(cfg, root, "unimodal-audio", 8, monkeypatch)
    video = run(cfg, root, "unimodal-visual", 20, monkeypatch)
    joint = run(cfg, root, "joint", 12, monkeypatch)
    val = lambda m, e: m["history"][e]["val_accuracy"]  # noqa: E731
    # after the first epochs audio is far ahead of video
    for epoch in (0, 1):
        assert val(audio, epoch) >= val(video, epoch) + 0.15, (epoch, val(audio, epoch), val(video, epoch))
    assert val(video, 1) < 0.25
    # audio cannot separate the classes on its own (50% cap) ...
    assert max(h["val_accuracy"] for h in audio["history"]) < 0.65
    # ... video alone gets well above chance (12.5%) given enough training ...
    assert video["metrics"]["best"]["test"]["accuracy"] >= 0.3
    # ... and the multimodal model beats both unimodal ones clearly
    best_uni = max(audio["metrics"]["best"]["test"]["accuracy"], video["metrics"]["best"]["test"]["accuracy"])
    assert joint["metrics"]["best"]["test"]["accuracy"] >= best_uni + 0.2
