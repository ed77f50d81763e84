"""OPM and OPG (Wei et al., TPAMI 2024) on hand-computed cases, at gradient level, resumed, and in the harness.

OPM's cases use a two-modality model whose every number can be written down: linear encoders (the dominant one the
identity), a concat head whose dominant block is 3·I, so that the fused logits, the scores, the drop probabilities
and every gradient have closed forms."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.ogm import OGM, OGMGE, ogm_coefficients, ogm_scores
from benchmark.balancers.opm import (
    OPG,
    OPM,
    discrepancy_ratios,
    opg_coefficients,
    opm_drop_probabilities,
)
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.run import execute_run
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces

# --- the rules ----------------------------------------------------------------------------------------------


def test_discrepancy_ratios_and_drop_probabilities_hand_computed():
    rho = discrepancy_ratios(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(rho, torch.tensor([3.0, 1 / 3]))
    q = opm_drop_probabilities(rho, q_base=0.5, lam=0.5)
    torch.testing.assert_close(q, torch.tensor([0.5 * (1 + 0.5 * math.tanh(2.0)), 0.0]))  # the weaker: never
    # a tie drops nothing; q is clipped to 1
    assert torch.equal(opm_drop_probabilities(discrepancy_ratios(torch.tensor([2.0, 2.0])), 0.5, 0.5), torch.zeros(2))
    torch.testing.assert_close(opm_drop_probabilities(torch.tensor([3.0, 1 / 3]), 0.9, 1.0), torch.tensor([1.0, 0.0]))
    # three modalities: the mean of the pairwise ratios; the two above the others are dropped, the weakest never
    rho3 = discrepancy_ratios(torch.tensor([4.0, 2.0, 1.0]))
    torch.testing.assert_close(rho3, torch.tensor([(2 + 4) / 2, (0.5 + 2) / 2, (0.25 + 0.5) / 2]))
    q3 = opm_drop_probabilities(rho3, 0.5, 0.5)
    expected = torch.tensor([0.5 * (1 + 0.5 * math.tanh(2.0)), 0.5 * (1 + 0.5 * math.tanh(0.25)), 0.0])
    torch.testing.assert_close(q3, expected)


def test_opg_coefficients_are_ogm_ge_for_two_modalities_and_differ_on_a_tie_and_for_three():
    scores = torch.tensor([3.0, 1.0])
    rho, k = discrepancy_ratios(scores), opg_coefficients(discrepancy_ratios(scores), 0.5)
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.5), 1.0]))
    ogm_rho, ogm_k = ogm_coefficients(scores, 0.5)
    torch.testing.assert_close(rho, ogm_rho)
    torch.testing.assert_close(k, ogm_k)
    tie = torch.tensor([2.0, 2.0])
    assert torch.equal(opg_coefficients(discrepancy_ratios(tie), 0.5), torch.ones(2))  # nobody slowed
    assert ogm_coefficients(tie, 0.5)[1][0] < 1  # ogm_ge (the CVPR code) slows the first
    three = torch.tensor([4.0, 2.0, 1.0])
    k3 = opg_coefficients(discrepancy_ratios(three), 0.5)
    torch.testing.assert_close(k3, torch.tensor([1 - math.tanh(1.5), 1 - math.tanh(0.625), 1.0]))
    assert ogm_coefficients(three, 0.5)[1][1] == 1  # ogm_ge's s_m / mean(others) = 0.8 leaves the middle one alone


# --- OPM at gradient level ------------------------------------------------------------------------------------


class Linear(nn.Module):
    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.linear, self.out_dim = nn.Linear(d_in, d), d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def tiny_model() -> MultimodalModel:
    """φ_a = x_a (identity encoder, 3 dims), φ_v = W_v x_v + b_v (2 dims); head block of a = 3·I: a dominates."""
    torch.manual_seed(0)
    model = MultimodalModel({"a": Linear(3, 3), "v": Linear(4, 2)}, ConcatFusion({"a": 3, "v": 2}, 3), 3)
    with torch.no_grad():
        model.encoders["a"].linear.weight.copy_(torch.eye(3))
        model.encoders["a"].linear.bias.zero_()
        model.fusion.head.weight[:, :3] = 3 * torch.eye(3)
    return model


def tiny_batch(n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    return {
        "a": 2 * F.one_hot(y, 3).float() + 0.3 * torch.randn(n, 3, generator=g),
        "v": torch.randn(n, 4, generator=g),
    }, y


def setup(balancer, model, epoch: int = 0, num_epochs: int = 10):
    balancer.setup(
        model,
        RunContext(modalities=list(model.modalities), num_epochs=num_epochs, device=torch.device("cpu"), epoch=epoch),
    )
    return balancer


def step(balancer, model, inputs, y):
    model.zero_grad(set_to_none=True)
    out = balancer.forward(model, inputs)
    loss = balancer.loss(out, y)
    loss.backward()
    balancer.after_backward(out, y)
    return out, loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def scores_by_hand(model, inputs, y) -> torch.Tensor:
    w, b = model.fusion.head.weight.detach(), model.fusion.head.bias.detach()
    phi_a = inputs["a"]  # identity encoder
    lin = model.encoders["v"].linear
    phi_v = inputs["v"] @ lin.weight.detach().T + lin.bias.detach()
    s = []
    for phi, block in ((phi_a, slice(0, 3)), (phi_v, slice(3, 5))):
        p = torch.softmax(phi @ w[:, block].T + b / 2, 1)
        s.append(sum(p[i, y[i]] for i in range(len(y))))
    return torch.stack(s)


def test_opm_drops_the_dominant_features_and_gradients_follow_by_hand():
    """q_base 1 and p_exe 1: the dominant modality (a) is dropped for every sample, θ = 3·1/(3 + 2) = 0.6, so the
    fused logits are W_v·(φ_v / 0.4) + b and nothing reaches a's encoder or a's block of the head."""
    model = tiny_model()
    inputs, y = tiny_batch()
    s = scores_by_hand(model, inputs, y)
    assert s[0] > s[1]  # a dominates
    opm = setup(OPM(q_base=1.0, lam=0.5, p_exe=1.0, start_epoch=0), model)
    out, loss, grads = step(opm, model, inputs, y)
    torch.testing.assert_close(opm.q, torch.tensor([1.0, 0.0]))
    w, b = model.fusion.head.weight.detach(), model.fusion.head.bias.detach()
    lin = model.encoders["v"].linear
    phi_v = inputs["v"] @ lin.weight.detach().T + lin.bias.detach()
    scale = 1 / (1 - 0.6)
    logits = scale * phi_v @ w[:, 3:].T + b
    torch.testing.assert_close(out.logits, logits)  # the step's output is the dropped pass (training accuracy)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    g = (torch.softmax(logits, 1) - F.one_hot(y, 3).float()) / len(y)  # ∂L/∂logits
    assert torch.equal(grads["encoders.a.linear.weight"], torch.zeros(3, 3))
    assert torch.equal(grads["encoders.a.linear.bias"], torch.zeros(3))
    assert torch.equal(grads["fusion.head.weight"][:, :3], torch.zeros(3, 3))
    torch.testing.assert_close(grads["fusion.head.weight"][:, 3:], scale * g.T @ phi_v)
    torch.testing.assert_close(grads["fusion.head.bias"], g.sum(0))
    d_phi_v = scale * g @ w[:, 3:]
    torch.testing.assert_close(grads["encoders.v.linear.weight"], d_phi_v.T @ inputs["v"])
    torch.testing.assert_close(grads["encoders.v.linear.bias"], d_phi_v.sum(0))
    torch.testing.assert_close(opm.epoch_summary()["q_a"], 1.0)


def test_opm_masks_are_per_sample_bernoulli_of_the_dominant_only_and_the_step_executes_with_p_exe():
    torch.manual_seed(0)
    opm = OPM(p_exe=1.0)
    n = 4000
    features = {"a": torch.randn(n, 3), "v": torch.randn(n, 2)}
    q = torch.tensor([0.7, 0.0])
    dropped, keep, executed = opm.drop(features, q)
    theta = 3 * 0.7 / 5
    assert executed and keep[1].all() and abs(keep[0].float().mean().item() - 0.3) < 0.04  # Bernoulli(1 − q) per sample
    kept = keep[0]
    assert torch.equal(dropped["a"][~kept], torch.zeros_like(dropped["a"][~kept]))
    torch.testing.assert_close(dropped["a"][kept], features["a"][kept] / (1 - theta))
    torch.testing.assert_close(dropped["v"], features["v"] / (1 - theta))  # every modality is rescaled
    plain, keep, _ = OPM(p_exe=1.0, rescale=False).drop(features, q)
    torch.testing.assert_close(plain["a"][keep[0]], features["a"][keep[0]])
    torch.testing.assert_close(plain["v"], features["v"])
    opm = OPM(p_exe=0.7)
    draws = [opm.drop({"a": torch.ones(1, 3), "v": torch.ones(1, 2)}, torch.tensor([1.0, 0.0])) for _ in range(2000)]
    assert all(bool(ex) == (not kp[0, 0]) for _, kp, ex in draws)  # with q = 1: executed ⇔ dropped
    assert abs(sum(bool(ex) for _, _, ex in draws) / 2000 - 0.7) < 0.04  # one draw per step, probability p_exe


def test_opm_outside_the_window_is_plain_cross_entropy_and_previous_step_q_lags_one_step():
    model = tiny_model()
    inputs, y = tiny_batch()
    reference = copy.deepcopy(model)
    ref_out = reference(inputs)
    F.cross_entropy(ref_out.logits, y).backward()
    ref = {n: p.grad for n, p in reference.named_parameters()}
    opm = setup(OPM(q_base=1.0, p_exe=1.0, start_epoch=1), model, epoch=0)
    out, _, grads = step(opm, model, inputs, y)
    torch.testing.assert_close(out.logits, ref_out.logits)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref[name])
    assert opm.epoch_summary()["q_a"] == 0.0
    # q_step previous: the first step drops with q = 0, the second with the first step's q
    opm = setup(OPM(q_base=1.0, p_exe=1.0, start_epoch=0, q_step="previous"), model)
    out, _, _ = step(opm, model, inputs, y)
    torch.testing.assert_close(out.logits, ref_out.logits)
    torch.testing.assert_close(opm.q, torch.tensor([1.0, 0.0]))
    out, _, grads = step(opm, model, inputs, y)
    assert torch.equal(grads["encoders.a.linear.weight"], torch.zeros(3, 3))
    assert opm.run_notes and opm.run_notes[0].startswith("option:")


# --- OPG at gradient level ------------------------------------------------------------------------------------


def test_opg_is_ogm_ge_on_two_modalities_scaling_only_the_dominant_encoders_conv_weights():
    inputs, y = small_batch()
    model = small_model("concat")
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs).logits, y).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    opg = setup(OPG(alpha=0.5, start_epoch=0, noise=False), model)
    _, _, got = step(opg, model, inputs, y)
    with torch.no_grad():
        rho = discrepancy_ratios(ogm_scores(model.modality_logits(model(inputs)), y))
    k = torch.stack([opg.k["audio"], opg.k["visual"]])
    torch.testing.assert_close(k, torch.where(rho > 1, 1 - torch.tanh(0.5 * rho), torch.ones(2)))
    assert (k < 1).sum() == 1
    ogm = setup(OGM(alpha=0.5), model)
    _, _, expected = step(ogm, model, inputs, y)
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name])
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if name.startswith("encoders.") and isinstance(module, nn.Conv2d) and name.endswith("weight"):
            torch.testing.assert_close(g, opg.k[name.split(".")[1]] * ref[name])
        else:
            torch.testing.assert_close(g, ref[name])
    # with noise: exactly OGM-GE's rule and noise draws
    torch.manual_seed(3)
    _, _, noisy = step(setup(OPG(alpha=0.5, start_epoch=0), model), model, inputs, y)
    torch.manual_seed(3)
    _, _, ge = step(setup(OGMGE(alpha=0.5), model), model, inputs, y)
    assert all(torch.equal(noisy[n], ge[n]) for n in noisy)
    assert any(not torch.equal(noisy[n], got[n]) for n in noisy)


def test_opg_default_window_is_the_released_warm_up_and_window_and_no_tie_note():
    inputs, y = small_batch()
    model = small_model("concat")
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs).logits, y).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    for epoch, inside in ((5, False), (6, True), (60, True), (61, False)):
        opg = setup(OPG(noise=False), model, epoch=epoch, num_epochs=100)
        _, _, got = step(opg, model, inputs, y)
        assert any(not torch.equal(got[n], ref[n]) for n in got) == inside, f"epoch {epoch}"
    assert not any(n.startswith("on a tie") for n in opg.run_notes) and "noise: false" in opg.run_notes[0]
    assert OPG.notes(ConcatFusion, 2) == [] and OPG.notes(ConcatFusion, 3)[0].startswith("extension:")
    assert OPM.notes(ConcatFusion, 3)[0].startswith("extension:")


def test_three_modalities_use_the_mean_of_pairwise_ratios_and_the_weakest_is_never_dropped():
    torch.manual_seed(0)
    model = MultimodalModel({m: Linear(3, 2) for m in "abc"}, ConcatFusion({m: 2 for m in "abc"}, 3), 3)
    inputs, y = {m: torch.randn(400, 3) for m in "abc"}, torch.arange(400) % 3
    with torch.no_grad():
        scores = ogm_scores(model.modality_logits(model(inputs)), y)
    rho = discrepancy_ratios(scores)
    opm = setup(OPM(start_epoch=0, p_exe=1.0), model)
    step(opm, model, inputs, y)
    summary = opm.epoch_summary()
    q = opm_drop_probabilities(rho, 0.5, 0.5)
    assert (q > 0).any() and q[scores.argmin()] == 0
    for i, m in enumerate("abc"):
        torch.testing.assert_close(summary[f"q_{m}"], q[i].item())
        assert abs(summary[f"kept_{m}"] - (1 - q[i].item())) < 0.08
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs).logits, y).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    opg = setup(OPG(start_epoch=0, modulate="all", noise=False), model)
    _, _, got = step(opg, model, inputs, y)
    k = opg_coefficients(rho, 0.8)
    for name, g in got.items():
        factor = k["abc".index(name.split(".")[1])] if name.startswith("encoders.") else 1.0
        torch.testing.assert_close(g, factor * ref[name])


# --- in the harness -----------------------------------------------------------------------------------------

ENTRIES = {
    "opm": {},
    "opg": {},
    "opm_previous": {"class": "benchmark.balancers.opm:OPM", "q_step": "previous"},
}


@pytest.fixture
def opm_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"].update(copy.deepcopy(ENTRIES))
    return validate_config(cfg)


@pytest.mark.parametrize("method", list(ENTRIES))
def test_resuming_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(
    opm_cfg, tmp_path, monkeypatch, method
):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
    full, resumed = resume_reproduces(opm_cfg, spec, tmp_path, monkeypatch)
    history = json.loads((tmp_path / "full/metrics.json").read_text())["history"]
    assert "rho_audio" in history[0] and ("q_audio" in history[0] or "k_audio" in history[0])


@pytest.mark.parametrize("method", ["opm", "opg"])
def test_one_epoch_in_the_harness_finishes_ok(opm_cfg, method):
    cfg = copy.deepcopy(opm_cfg)
    cfg["train"]["epochs"] = 1
    cfg["balancers"]["opm"] = {"p_exe": 1.0}  # one step (24 clips): the drop must be executed to be seen
    metrics, _ = execute_run(validate_config(cfg), RunSpec("synthetic-av", "small_cnn", "concat", method, 0), log=quiet)
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    row = metrics["history"][0]
    if method == "opm":  # the dominant modality was dropped on some samples, the other never
        assert max(row["q_audio"], row["q_visual"]) > 0 and min(row["kept_audio"], row["kept_visual"]) < 1
        assert row["executed"] == 1
    else:
        assert min(row["k_audio"], row["k_visual"]) < 1
