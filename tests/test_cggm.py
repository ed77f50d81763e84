"""CGGM at gradient level on a tiny model whose every number can be computed by hand: linear encoders and linear
unimodal heads initialised to the identity (features = inputs, classifier logits = features), so the classifiers'
batch accuracies are fixed by the inputs, and a concat (or sum) head whose gradients have the closed form
∂CE/∂W = δᵀφ with δ = (softmax(logits) − onehot(y)) / N."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.cggm import CGGM, NO_CLIP_NOTE, WEIGHTS_NOTE, cggm_coefficients
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion, SumFusion
from benchmark.models.model import MultimodalModel
from benchmark.params import ParamError, check_params
from benchmark.run import train_run
from tests.test_resume import quiet, resume_reproduces

MODS = ["a", "v"]
Y = torch.tensor([0, 1, 0, 1])
# audio: every row's larger entry is its label (accuracy 1); visual: rows 0 and 1 right, 2 and 3 wrong (0.5)
XA = torch.tensor([[2.0, -1.0], [0.5, 1.5], [1.0, 0.0], [-0.5, 1.0]])
XV = torch.tensor([[1.0, 0.5], [-1.0, 0.5], [0.0, 1.5], [2.0, 0.5]])
# a second batch: audio still all right (Δε_a = 0), visual three of four right (0.75, Δε_v = 0.25)
XA2 = torch.tensor([[1.5, 0.0], [0.0, 2.0], [0.5, -0.5], [-1.0, 0.0]])
XV2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 0.5]])


class Identity(nn.Linear):
    """A linear encoder initialised to the identity (out_dim as a Backbone declares)."""

    def __init__(self, d: int) -> None:
        super().__init__(d, d)
        self.out_dim = d
        with torch.no_grad():
            self.weight.copy_(torch.eye(d))
            self.bias.zero_()


def tiny_model(fusion: type = ConcatFusion, mods: list[str] = MODS) -> MultimodalModel:
    torch.manual_seed(0)
    model = MultimodalModel({m: Identity(2) for m in mods}, fusion({m: 2 for m in mods}, 2), 2, unimodal_heads=True)
    with torch.no_grad():
        for head in model.unimodal_heads.values():
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    return model


def ready(cggm: CGGM, model: MultimodalModel) -> CGGM:
    cggm.setup(model, RunContext(modalities=list(model.modalities), num_epochs=4, device=torch.device("cpu")))
    return cggm


def step(cggm: CGGM, model: MultimodalModel, inputs: dict, y: torch.Tensor = Y) -> torch.Tensor:
    """One training step of the loop up to the optimiser: forward, loss, backward, after_backward."""
    model.zero_grad(set_to_none=True)
    out = cggm.forward(model, inputs)
    loss = cggm.loss(out, y)
    loss.backward()
    cggm.after_backward(out, y)
    return loss


def delta(logits: torch.Tensor, y: torch.Tensor = Y) -> torch.Tensor:
    """∂CE/∂logits for mean cross-entropy."""
    return (torch.softmax(logits, 1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)) / len(y)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(), b.flatten()
    return (a @ b) / (a.norm() * b.norm())


# --- the balancing term B -----------------------------------------------------------------------------------


def test_balancing_terms_hand_computed():
    d, b = cggm_coefficients(torch.tensor([0.75, 0.5], dtype=torch.float64), torch.tensor([0.5, 0.25]).double())
    assert d.tolist() == [0.25, 0.25] and b.tolist() == pytest.approx([0.5, 0.5], rel=1e-7)
    s = 0.375 + 1e-8  # S = Σ Δε + 1e-8, exactly as the released code (the guard also in the numerator)
    # two modalities: B_1 = Δε_2 / (Δε_1 + Δε_2): the one that improved less gets more
    _, b = cggm_coefficients(torch.tensor([0.25, 0.125]).double(), torch.zeros(2).double())
    assert b.tolist() == pytest.approx([(s - 0.25) / s, (s - 0.125) / s], abs=1e-12)
    assert b.tolist() == pytest.approx([1 / 3, 2 / 3], rel=1e-7)
    # three modalities: (S − Δε_m) / S with S = 0.6
    _, b = cggm_coefficients(torch.tensor([0.1, 0.2, 0.3]).double(), torch.zeros(3).double())
    assert b.tolist() == pytest.approx([0.5 / 0.6, 0.4 / 0.6, 0.3 / 0.6], rel=1e-7)
    # one improved, one got worse: B < 0 for the improving one (its gradient reverses), > 1 for the other
    _, b = cggm_coefficients(torch.tensor([0.25, -0.125]).double(), torch.zeros(2).double())
    assert b.tolist() == pytest.approx([-1.0, 2.0], abs=1e-6)
    # improvements that cancel: S = 1e-8, |B| ~ 1e8·|Δε| (the released guard, also in the numerator)
    _, b = cggm_coefficients(torch.tensor([-0.5, 0.5]).double(), torch.zeros(2).double())
    assert b.tolist() == pytest.approx([(1e-8 + 0.5) / 1e-8, (1e-8 - 0.5) / 1e-8], rel=1e-9)


# --- magnitude ----------------------------------------------------------------------------------------------


def test_magnitude_scales_each_encoder_by_rho_times_B_and_classifiers_never_reach_the_encoders():
    model = tiny_model()
    cggm = ready(CGGM(rho=1.3, lam=0.0, clip=None), model)
    loss = step(cggm, model, {"a": XA, "v": XV})
    # accuracies 1 and 0.5 after ε = 0: Δε = [1, 0.5], B = [0.5/1.5, 1/1.5]
    assert cggm.previous.tolist() == [1.0, 0.5]
    assert cggm.balance.tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-8)
    w = model.fusion.head.weight.detach()
    phi = torch.cat([XA, XV], 1)
    logits = phi @ w.T + model.fusion.head.bias.detach()
    d = delta(logits)
    uni = {"a": XA, "v": XV}  # classifier logits = features = inputs
    expected = F.cross_entropy(logits, Y) + sum(F.cross_entropy(uni[m], Y) for m in MODS)
    torch.testing.assert_close(loss.detach(), expected)
    # fused head: δᵀφ, unscaled
    torch.testing.assert_close(model.fusion.head.weight.grad, d.T @ phi)
    torch.testing.assert_close(model.fusion.head.bias.grad, d.sum(0))
    # encoders: only the fused loss (the classifiers see detached features), times ρ·B_m
    for i, (m, x) in enumerate((("a", XA), ("v", XV))):
        grad_phi = d @ w[:, 2 * i : 2 * i + 2]
        k = 1.3 * (1 / 3, 2 / 3)[i]
        torch.testing.assert_close(model.encoders[m].weight.grad, k * grad_phi.T @ x)
        torch.testing.assert_close(model.encoders[m].bias.grad, k * grad_phi.sum(0))
        # classifiers: their own loss on the features, unscaled
        du = delta(uni[m])
        torch.testing.assert_close(model.unimodal_heads[m].weight.grad, du.T @ x)


def test_improvement_is_against_the_previous_step_and_a_near_zero_B_stops_that_encoder():
    model = tiny_model()
    cggm = ready(CGGM(rho=1.0, lam=0.0, clip=None), model)
    step(cggm, model, {"a": XA, "v": XV})
    step(cggm, model, {"a": XA2, "v": XV2})
    # ε = [1, 0.75] after [1, 0.5]: Δε = [0, 0.25], S = 0.25 + 1e-8, B = [1, 4e-8]
    s = 0.25 + 1e-8
    assert cggm.balance.tolist() == pytest.approx([s / s, (s - 0.25) / s], rel=1e-9)
    assert model.encoders["v"].weight.grad.abs().max() < 1e-8
    assert torch.count_nonzero(model.encoders["a"].weight.grad) > 0
    history = cggm.epoch_summary()
    assert history["B_a"] == pytest.approx((1 / 3 + 1) / 2) and history["k_v"] == pytest.approx((2 / 3 + 0) / 2)


def test_three_modalities_each_encoder_gets_its_own_B():
    from tests.test_balancers import reference_grads

    mods = ["a", "v", "t"]
    model = tiny_model(SumFusion, mods)
    inputs = {"a": XA, "v": XV, "t": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}  # 1/4 right
    reference = reference_grads(copy.deepcopy(model), lambda out, y: F.cross_entropy(out.logits, y), inputs, Y)
    cggm = ready(CGGM(rho=1.0, lam=0.0, clip=None), model)
    step(cggm, model, inputs)
    # Δε = [1, 0.5, 0.25], S = 1.75: B = [0.75, 1.25, 1.5] / 1.75
    expected = [0.75 / 1.75, 1.25 / 1.75, 1.5 / 1.75]
    assert cggm.balance.tolist() == pytest.approx(expected, abs=1e-8)
    for m, b in zip(mods, expected):
        torch.testing.assert_close(model.encoders[m].weight.grad, b * reference[f"encoders.{m}.weight"])
        torch.testing.assert_close(model.fusion.heads[m].weight.grad, reference[f"fusion.heads.{m}.weight"])


def test_clip_bounds_the_model_gradient_norm_and_leaves_the_classifiers_alone():
    model = tiny_model()
    free = tiny_model()
    step(ready(CGGM(rho=1.3, lam=0.0, clip=None), free), free, {"a": XA, "v": XV})
    cggm = ready(CGGM(rho=1.3, lam=0.0, clip=0.05), model)
    step(cggm, model, {"a": XA, "v": XV})
    names = [n for n, _ in model.named_parameters() if not n.startswith("unimodal_heads")]
    norm = torch.linalg.vector_norm(torch.stack([free.get_parameter(n).grad.norm() for n in names]))
    assert norm > 0.05
    for n in names:
        torch.testing.assert_close(model.get_parameter(n).grad, free.get_parameter(n).grad * 0.05 / (norm + 1e-6))
    for m in MODS:
        torch.testing.assert_close(model.unimodal_heads[m].weight.grad, free.unimodal_heads[m].weight.grad)


# --- direction ----------------------------------------------------------------------------------------------


def test_gradient_direction_loss_value_and_gradients_match_the_closed_form():
    model = tiny_model()
    ref = copy.deepcopy(model)
    cggm = ready(CGGM(rho=1.0, lam=0.5, clip=None), model)
    loss = step(cggm, model, {"a": XA, "v": XV})
    b = (1 / 3, 2 / 3)
    # by hand (closed form, with the graph): g_Ω,m = δᵀφ_m (the head's columns of m), g_m = δ_mᵀφ_m (constant)
    phi = {m: ref.encoders[m](x) for m, x in (("a", XA), ("v", XV))}
    logits = ref.fusion(phi)
    d = delta(logits)
    uni = {m: ref.unimodal_heads[m](phi[m].detach()) for m in MODS}
    cosines = [cos((delta(uni[m]).T @ phi[m]).detach(), d.T @ phi[m]) for m in MODS]
    l_gm = (sum(b) - b[0] * cosines[0] - b[1] * cosines[1]) / 2
    total = F.cross_entropy(logits, Y) + sum(F.cross_entropy(uni[m], Y) for m in MODS) + 0.5 * l_gm
    total.backward()
    torch.testing.assert_close(loss.detach(), total.detach())
    assert cggm.epoch_summary()["l_gm"] == pytest.approx(l_gm.item(), abs=1e-6)
    for n, p in model.named_parameters():
        scale = b[MODS.index(n.split(".")[1])] if n.startswith("encoders") else 1.0
        torch.testing.assert_close(p.grad, scale * ref.get_parameter(n).grad, msg=n)
    # the direction term does reach the encoders: without it their gradients differ
    plain = tiny_model()
    step(ready(CGGM(rho=1.0, lam=0.0, clip=None), plain), plain, {"a": XA, "v": XV})
    assert not torch.allclose(plain.encoders["a"].weight.grad, model.encoders["a"].weight.grad)


def test_weights_direction_is_the_released_one_step_late_term_on_the_fused_head_only():
    model = tiny_model()
    cggm = ready(CGGM(rho=1.0, lam=0.5, direction="weights", clip=None), model)
    assert cggm.run_notes == [WEIGHTS_NOTE, NO_CLIP_NOTE]
    loss = step(cggm, model, {"a": XA, "v": XV})
    # step 1: no term yet (the released code's l_gm is None on the first step)
    w = model.fusion.head.weight.detach().clone()
    logits = torch.cat([XA, XV], 1) @ w.T + model.fusion.head.bias.detach()
    uni = {"a": XA, "v": XV}
    torch.testing.assert_close(
        loss.detach(), F.cross_entropy(logits, Y) + sum(F.cross_entropy(uni[m], Y) for m in MODS)
    )
    # pending: l_gm from this step's weights, cos(W_m, W_Ω,m) with W_m = I, and its gradient at these weights
    b = (1 / 3, 2 / 3)
    eye = torch.eye(2)
    blocks = {"a": w[:, :2], "v": w[:, 2:]}
    cosines = {m: cos(eye, blocks[m]) for m in MODS}
    value = (sum(b) - b[0] * cosines["a"] - b[1] * cosines["v"]) / 2
    torch.testing.assert_close(cggm.pending["value"], value)
    for i, m in enumerate(MODS):
        wm = blocks[m]
        dcos = eye / (eye.norm() * wm.norm()) - cosines[m] * wm / wm.norm() ** 2  # ∂cos(a, w)/∂w
        torch.testing.assert_close(cggm.pending["grad"][m], -b[i] / 2 * dcos)
    pending = copy.deepcopy(cggm.pending)
    # an optimiser step moves the head; step 2 adds λ·(step 1's l_gm) with step 1's gradient, to the head only
    with torch.no_grad():
        model.fusion.head.weight.add_(0.1)
    ref = copy.deepcopy(model)
    loss2 = step(cggm, model, {"a": XA2, "v": XV2})
    phi2 = torch.cat([XA2, XV2], 1)
    logits2 = ref.fusion({"a": XA2, "v": XV2})
    d2 = delta(logits2)
    uni2 = {"a": XA2, "v": XV2}
    expected = F.cross_entropy(logits2, Y) + sum(F.cross_entropy(uni2[m], Y) for m in MODS) + 0.5 * pending["value"]
    torch.testing.assert_close(loss2.detach(), expected.detach())
    head = d2.T @ phi2 + 0.5 * torch.cat([pending["grad"]["a"], pending["grad"]["v"]], 1)
    torch.testing.assert_close(model.fusion.head.weight.grad, head.detach())
    # encoders: B = [1, 4e-8] on the second batch times the fused loss only (the term never reaches them)
    w2 = model.fusion.head.weight.detach()
    grad_phi_a = d2 @ w2[:, :2]
    torch.testing.assert_close(model.encoders["a"].weight.grad, (grad_phi_a.T @ XA2).detach())
    assert model.encoders["v"].weight.grad.abs().max() < 1e-8


def test_no_clip_is_noted_and_parameters_are_checked():
    assert CGGM(clip=None).run_notes == [NO_CLIP_NOTE]
    assert CGGM().run_notes == [] and CGGM(lam=0.0, direction="weights").run_notes == []
    with pytest.raises(ParamError):
        check_params(CGGM, {"direction": "features"})
    with pytest.raises(ParamError):
        check_params(CGGM, {"rho": 0.0})
    check_params(CGGM, {"rho": 1.0, "lam": 0.1, "direction": "weights", "clip": None})
    assert CGGM.presets["food101"]["lam"] == 0.05 and "run/food_run.py" in CGGM.presets["food101"]["source"]


def test_fusions_without_a_per_modality_head_block_are_not_applicable():
    assert CGGM.not_applicable(ConcatFusion, 2, False) is None
    assert CGGM.not_applicable(SumFusion, 3, True) is None  # multi-label: accuracy is the top-1 hit rate
    for name in ("film", "gated", "transformer", "mid_mlp", "lmf"):
        reason = CGGM.not_applicable(FUSIONS.get(name), 2, False)
        assert reason and "per-modality block" in reason, name
    assert "merge inside the encoders" in CGGM.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert CGGM.notes(ConcatFusion, 2)[0].startswith("adaptation:")


# --- with the harness ---------------------------------------------------------------------------------------


@pytest.fixture
def cggm_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"]["cggm_weights"] = {"class": "benchmark.balancers.cggm:CGGM", "direction": "weights"}
    return validate_config(cfg)


@pytest.mark.parametrize("method", ["cggm", "cggm_weights"])
def test_resuming_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(
    cggm_cfg, tmp_path, monkeypatch, method
):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
    full, resumed = resume_reproduces(cggm_cfg, spec, tmp_path, monkeypatch)


def test_one_epoch_with_the_harness_finishes_ok(in_tiny_workspace, tmp_path):
    cfg = validate_config(yaml.safe_load((in_tiny_workspace / "config.yaml").read_text()))
    metrics = train_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "cggm", 0), tmp_path / "run", log=quiet)
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    row = metrics["history"][0]
    assert {"B_audio", "B_visual", "k_audio", "l_gm", "cos_audio", "acc_head_visual", "grad_norm"} <= set(row)
    record = json.loads((tmp_path / "run/metrics.json").read_text())
    assert any(note.startswith("adaptation:") for note in record["notes"])
