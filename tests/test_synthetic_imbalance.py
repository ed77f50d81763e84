"""The built-in dataset exhibits the problem the benchmark exists for (on its default settings).

Audio learns fast but alone caps at 50%; video learns slowly, alone also caps at 50% yet gets well above
chance (12.5%); only a model using both can separate all 8 classes.
"""

from __future__ import annotations

import copy

import pytest

from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.run import train_run
from tests.conftest import build_data, default_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    cfg = validate_config(default_config())
    build_data(root, cfg)
    return root, cfg


def run(cfg, root, method, epochs, monkeypatch, fusion="concat"):
    cfg = copy.deepcopy(cfg)
    cfg["train"]["epochs"] = epochs
    monkeypatch.chdir(root)
    spec = RunSpec.from_method(
        "synthetic-av", "small_cnn", "none" if method.startswith("unimodal") else fusion, method, 0
    )
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
