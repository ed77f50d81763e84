"""The study's protocol pieces: per-dataset method settings and presets, epoch windows as shares of the schedule,
OGM-style methods on backbones without convolutions, "absent" inputs, and the test-selection audit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.balancers.base import RunContext, in_window, window_epoch
from benchmark.balancers.ogm import OGM
from benchmark.config import ConfigError, validate_config
from benchmark.grid import grid_runs
from benchmark.models.backbones import Backbone
from benchmark.models.model import AbsentInputs
from benchmark.settings import Resolver
from tests.conftest import small_batch, small_model


def settings_of(cfg: dict, dataset: str = "synthetic-av", backbone: str = "small_cnn", balancer: str = "ogm_ge"):
    cfg = validate_config(cfg)
    runs, _ = grid_runs(cfg)
    spec = next(r for r in runs if (r.dataset, r.backbone, r.balancer) == (dataset, backbone, balancer))
    return Resolver(cfg).run(spec)


def test_per_dataset_and_per_backbone_values_layer_over_the_entry(cfg):
    cfg["grid"] = {"datasets": ["synthetic-av"], "backbones": ["small_cnn"], "fusions": ["concat"],
                   "balancers": ["ogm_ge"], "seeds": [0]}  # fmt: skip
    cfg["balancers"]["ogm_ge"] = {"alpha": 0.5, "per_dataset": {"synthetic-av": {"alpha": 0.3}}}
    assert settings_of(cfg).settings["balancer"]["params"]["alpha"] == 0.3
    cfg["balancers"]["ogm_ge"]["per_backbone"] = {"small_cnn": {"preset": "vggsound"}}
    resolved = settings_of(cfg)
    assert resolved.settings["balancer"]["params"]["alpha"] == 0.1  # the backbone layer is applied last
    (preset,) = resolved.settings["balancer"]["presets"]
    assert preset["preset"] == "vggsound" and "VGGSound" in preset["source"]
    assert preset["at"] == "balancers.ogm_ge.per_backbone.small_cnn.preset"


def test_a_preset_changes_the_run_identity(cfg):
    cfg["grid"] = {"datasets": ["synthetic-av"], "backbones": ["small_cnn"], "fusions": ["concat"],
                   "balancers": ["mlb"], "seeds": [0]}  # fmt: skip
    cfg["balancers"]["mlb"] = {}
    default = settings_of(cfg, balancer="mlb")
    assert default.settings["balancer"]["params"] == {"alpha": 0.8, "beta_max": 2.0}  # the released CREMA-D config
    cfg["balancers"]["mlb"] = {"preset": "ucf101"}
    ucf = settings_of(cfg, balancer="mlb")
    assert ucf.settings["balancer"]["params"]["alpha"] == 1.0
    assert ucf.identity != default.identity


@pytest.mark.parametrize(
    "entry,key,message",
    [
        ({"preset": "kinetics"}, "balancers.ogm_ge.preset", "known: cremad, vggsound"),
        (
            {"per_dataset": {"synthetic-avv": {"alpha": 0.2}}},
            "balancers.ogm_ge.per_dataset.synthetic-avv",
            "no dataset",
        ),
        ({"per_backbone": {"small_cnn": {"alpha": -1.0}}}, "balancers.ogm_ge.per_backbone.small_cnn.alpha", "greater"),
        (
            {"per_dataset": {"synthetic-av": {"alhpa": 0.2}}},
            "balancers.ogm_ge.per_dataset.synthetic-av.alhpa",
            "unknown",
        ),
    ],
)
def test_bad_overrides_name_their_key_path(cfg, entry, key, message):
    cfg["balancers"]["ogm_ge"] = entry
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.key == key and message in str(info.value)


def test_window_bounds_as_shares_of_the_schedule():
    assert window_epoch("50%", 100) == 50 and window_epoch(7, 100) == 7
    # the released OGM-GE window: epochs 0..50 of 100, inclusive
    assert [e for e in range(100) if in_window(e, "0%", "50%", 100)] == list(range(51))
    assert [e for e in range(10) if in_window(e, "0%", "50%", 10)] == [0, 1, 2, 3, 4, 5]
    assert window_epoch("25%", 10) == 3  # 2.5 rounds half up, not to the even 2


class LinearOnly(Backbone):
    """A backbone without convolutions, declared as such."""

    has_convolutions = False

    def __init__(self, kind, shape) -> None:
        super().__init__(kind, shape)
        self.out_dim = 4
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(4))

    def forward(self, x):
        return self.net(x)


class UndeclaredLinear(LinearOnly):
    has_convolutions = None


def test_ogm_on_a_backbone_without_convolutions_is_na_not_a_silent_no_op(cfg, monkeypatch):
    reason = OGM.backbone_unsupported(LinearOnly, {"modulate": "conv"})
    assert "modulate nothing" in reason and "modulate: all" in reason
    assert OGM.backbone_unsupported(LinearOnly, {"modulate": "all"}) is None
    model = small_model()
    for m in model.modalities:
        model.encoders[m] = UndeclaredLinear("spectrogram", (1, 4, 4))
    ctx = RunContext(modalities=model.modalities, num_epochs=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="modulate nothing"):  # undeclared: checked on the built encoders
        OGM().setup(model, ctx)
    ogm = OGM(modulate="all")
    ogm.setup(model, ctx)
    assert any("extension: modulate: all" in n for n in ogm.run_notes)


def test_ogm_on_a_user_backbone_without_convolutions_is_an_na_row(cfg):
    cfg["backbones"]["linear_only"] = {"class": "tests.test_protocol:LinearOnly"}
    cfg["grid"] = {"datasets": ["synthetic-av"], "backbones": ["linear_only"], "fusions": ["concat"],
                   "balancers": ["joint", "ogm", "ogm_ge"], "seeds": [0]}  # fmt: skip
    runs, skipped = grid_runs(validate_config(cfg))
    assert [r.balancer for r in runs] == ["joint"]
    assert {s.balancer for s, _ in skipped} == {"ogm", "ogm_ge"}
    assert all("no convolution weights" in reason for _, reason in skipped)
    cfg["balancers"]["ogm_ge"]["per_backbone"] = {"linear_only": {"modulate": "all"}}  # an explicit choice runs
    runs, _ = grid_runs(validate_config(cfg))
    assert sorted(r.balancer for r in runs) == ["joint", "ogm_ge"]


def test_absent_inputs_are_the_training_mean_and_zero_is_an_option():
    model = small_model()
    inputs, _ = small_batch(6)
    inputs["audio"] = inputs["audio"] + 5.0  # a log-spectrogram is not zero-mean
    model.absent.fit([inputs])
    out = model.without(inputs, keep={"visual"})
    assert torch.allclose(out["audio"], inputs["audio"].mean(0, keepdim=True).expand_as(inputs["audio"]), atol=1e-6)
    assert torch.equal(out["visual"], inputs["visual"])
    assert abs(float(out["audio"].mean()) - 5.0) < 0.5
    assert torch.equal(AbsentInputs({}).like("audio", inputs["audio"]), torch.zeros_like(inputs["audio"]))
    state = model.state_dict()  # saved with the model, so evaluation uses the same absent input
    assert "absent.audio" in state and torch.equal(state["absent.audio"], model.absent.audio)
