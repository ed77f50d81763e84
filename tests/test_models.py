"""Shapes through every backbone × fusion, seeded construction, and the registries' user-class loading."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import registry
from benchmark.models.backbones import BACKBONES
from benchmark.models.fusions import FUSIONS
from benchmark.models.model import build_model, fingerprint

INFO = {"audio": {"source": "audio", "shape": [1, 32, 33]}, "visual": {"source": "video", "shape": [2, 3, 24, 24]}}
PARAMS = {"small_cnn": {"width": 4}, "resnet18": {}}


@pytest.mark.parametrize("backbone", sorted(PARAMS))
@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("unimodal_heads", [False, True])
def test_shapes_through_every_backbone_and_fusion(backbone, fusion, unimodal_heads):
    model = build_model(
        modality_info=INFO,
        num_classes=8,
        backbone_cls=BACKBONES.get(backbone),
        backbone_params=PARAMS[backbone],
        fusion_cls=FUSIONS.get(fusion),
        fusion_params={},
        unimodal_heads=unimodal_heads,
        seed=0,
    )
    inputs = {"audio": torch.randn(3, 1, 32, 33), "visual": torch.randn(3, 2, 3, 24, 24)}
    out = model(inputs)
    dim = model.encoders["audio"].out_dim
    assert out.logits.shape == (3, 8)
    assert out.features["audio"].shape == (3, dim) and out.features["visual"].shape == (3, dim)
    assert {m: v.shape for m, v in model.modality_logits(out).items()} == {"audio": (3, 8), "visual": (3, 8)}
    if unimodal_heads:
        assert {m: v.shape for m, v in out.unimodal.items()} == {"audio": (3, 8), "visual": (3, 8)}
    else:
        assert out.unimodal is None
    out.logits.sum().backward()


def test_frames_are_pooled_over_time():
    enc = BACKBONES.get("small_cnn")("frames", (3, 3, 16, 16), width=4).eval()
    x = torch.randn(2, 3, 3, 16, 16)
    torch.testing.assert_close(enc(x), enc(x.flip(1)))  # average over frames: order-free


def test_seeded_construction_is_reproducible():
    kw = dict(
        modality_info=INFO,
        num_classes=8,
        backbone_cls=BACKBONES.get("small_cnn"),
        backbone_params={"width": 4},
        fusion_cls=FUSIONS.get("concat"),
        fusion_params={},
        unimodal_heads=True,
    )
    assert fingerprint(build_model(seed=3, **kw)) == fingerprint(build_model(seed=3, **kw))
    assert fingerprint(build_model(seed=3, **kw)) != fingerprint(build_model(seed=4, **kw))


def test_local_weights_for_resnet18(tmp_path):
    net = BACKBONES.get("resnet18")("spectrogram", (1, 32, 33))
    state = {k.replace("trunk.0.", "conv1."): v for k, v in net.state_dict().items() if k.startswith("trunk.0.")}
    torch.save({"conv1.weight": torch.ones_like(state["conv1.weight"])}, tmp_path / "w.pt")
    loaded = BACKBONES.get("resnet18")("spectrogram", (1, 32, 33), weights=str(tmp_path / "w.pt"))
    assert torch.all(loaded.trunk[0].weight == 1)
    with pytest.raises(FileNotFoundError):
        BACKBONES.get("resnet18")("spectrogram", (1, 32, 33), weights=str(tmp_path / "missing.pt"))


def test_user_class_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_fusions.py").write_text(
        "from benchmark.models.fusions import ConcatFusion\nclass Wide(ConcatFusion):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = registry("fusions").get("wide", class_path="my_fusions:Wide")
    assert cls.__name__ == "Wide" and cls.name == "wide"
    with pytest.raises(TypeError, match="must subclass"):
        registry("balancers").get("x", class_path="my_fusions:Wide")
