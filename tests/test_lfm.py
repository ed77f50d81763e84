"""LFM (benchmark/balancers/lfm.py): the released α schedule, the alignment term, the loss's gradient on a
hand-computed case, and the method in the harness (one epoch, resume)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from benchmark.balancers.base import RunContext
from benchmark.balancers.lfm import LFM, alignment, alpha_fitted
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.run import execute_run
from tests.test_resume import quiet, resume_reproduces


def test_the_fitted_schedule_moves_from_alignment_to_classification():
    assert alpha_fitted(0) == pytest.approx((0.204623704, 0.795376296))
    # by hand from the six released coefficients
    assert alpha_fitted(100)[0] == pytest.approx(0.2046237 + 0.3354727 + 1.2298956 - 2.9294742 + 2.2383549 - 0.5397175)
    assert alpha_fitted(199)[0] == pytest.approx(
        0.916, abs=1e-3
    )  # 0.2046 + 0.6676 + 4.8705 - 23.0860 + 35.1027 - 16.8435
    assert all(math.isclose(sum(alpha_fitted(e)), 1.0) for e in (0, 50, 150))


def test_progress_maps_the_run_onto_the_released_200_epochs():
    method = LFM()
    method.ctx = RunContext(modalities=["a", "v"], num_epochs=16, device=torch.device("cpu"))
    assert method.alpha(8) == pytest.approx(alpha_fitted(100))
    method.schedule = "released"
    assert method.alpha(8) == pytest.approx(alpha_fitted(8))


def test_alignment_is_the_released_reversed_kl_or_the_jensen_shannon_divergence():
    za, zb = torch.tensor([[0.8, 0.2]]).log(), torch.tensor([[0.2, 0.8]]).log()
    # q = (0.5, 0.5): KL(q || p_a) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2), the same for p_b
    assert alignment([za, zb]).item() == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2))
    # JS: KL(p_a || q) = 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5)
    assert alignment([za, zb], "js").item() == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4))


class Logits:
    """A stand-in model whose per-modality logits are given leaves."""

    modalities = ["audio", "visual"]

    def __init__(self, za, zb):
        self.z = {"audio": za, "visual": zb}

    def modality_logits(self, out):
        return self.z


def test_the_gradient_on_a_modalitys_logits_by_hand():
    za = torch.tensor([[0.8, 0.2]]).log().requires_grad_()
    zb = torch.tensor([[0.2, 0.8]]).log().requires_grad_()
    method = LFM(schedule="released")
    method.setup(Logits(za, zb), RunContext(modalities=["audio", "visual"], num_epochs=4, device=torch.device("cpu")))
    method.loss(None, torch.tensor([0])).backward()
    a1, a2 = alpha_fitted(0)
    # CE of the mean logits (equal, softmax (0.5, 0.5)): d/dz_a = (p - e_y)/2 = (-0.25, 0.25);
    # alignment: the path through q is constant over classes (no gradient through softmax), the direct one is
    # -q/(2 p_a) = (-0.3125, -1.25), through softmax p_a*(g - p_a.g) = (0.15, -0.15)
    expected = 2 * (a1 * torch.tensor([-0.25, 0.25]) + a2 * torch.tensor([0.15, -0.15]))
    torch.testing.assert_close(za.grad[0], expected)
    # for z_b the same CE gradient; alignment -q/(2 p_b) = (-1.25, -0.3125), through softmax (-0.15, 0.15)
    torch.testing.assert_close(zb.grad[0], 2 * (a1 * torch.tensor([-0.25, 0.25]) + a2 * torch.tensor([-0.15, 0.15])))


@pytest.fixture
def lfm_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["lfm"] = {"schedule": "progress"}
    return cfg


def test_one_epoch_with_the_harness(lfm_cfg):
    cfg = validate_config(lfm_cfg)
    metrics, _ = execute_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "lfm", 0), log=quiet)
    assert metrics["status"] == "ok"
    assert {"loss_cls", "loss_align", "alpha_cls"} <= set(metrics["history"][0])


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(lfm_cfg, tmp_path, monkeypatch):
    lfm_cfg["train"]["epochs"] = 4
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "lfm", 0)
    resume_reproduces(validate_config(lfm_cfg), spec, tmp_path, monkeypatch)
