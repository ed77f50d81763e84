"""MBSD and AMCo as BalanceBenchmark implements them, on hand-computed cases at gradient level (identity encoders and
an identity concat head, so the per-modality logits are the features themselves), plus resume and a harness run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from benchmark.balancers.amco import AMCo, StarHead, amco_mask_ratio, dependence_shares
from benchmark.balancers.base import RunContext
from benchmark.balancers.mbsd import MBSD, mbsd_pair_terms, mbsd_terms
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.run import train_run
from tests.conftest import small_batch, small_model
from tests.test_pmr_mmcosine import Flat
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ["audio", "visual"]
LN3 = math.log(3.0)


def identity_model(num_classes: int = 2, modalities=MODALITIES) -> MultimodalModel:
    """Features of size C per modality and a concat head W = [I … I], b = 0: z_m = φ_m and fused = Σ_m φ_m."""
    fusion = ConcatFusion({m: num_classes for m in modalities}, num_classes)
    with torch.no_grad():
        fusion.head.weight.copy_(torch.cat([torch.eye(num_classes)] * len(modalities), dim=1))
        fusion.head.bias.zero_()
    return MultimodalModel({m: Flat(num_classes) for m in modalities}, fusion, num_classes)


def ready(balancer, model, epoch: int = 0, num_epochs: int = 100, seed: int = 0):
    ctx = RunContext(modalities=list(model.modalities), num_epochs=num_epochs, device=torch.device("cpu"), seed=seed)
    balancer.setup(model, ctx)
    balancer.ctx.epoch = epoch
    return balancer


# --- MBSD ----------------------------------------------------------------------------------------------------------

# Two samples, two classes, y = [0, 1]. Sample 0: audio p = (3/4, 1/4) right, visual p = (1/4, 3/4) wrong, so
# w = 3/4 − 1/4 = 1/2, s = 3/4, u = 1/4. Sample 1: both p = (3/4, 1/4), both wrong (y = 1): w = 0.
Y = torch.tensor([0, 1])
ZA = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
ZV = torch.tensor([[0.0, LN3], [LN3, 0.0]])
KL0 = 0.25 * (math.log(0.25) - 0.75)  # F.kl_div(s, u) = u·(log u − s)


def test_mbsd_pair_terms_hand_computed():
    kl, rs, w = mbsd_pair_terms(ZA, ZV, Y, "logits")
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0]))
    assert kl.item() == pytest.approx(0.5 * KL0 / 2, rel=1e-6)  # (1/B)·Σ w·kl
    assert rs.item() == pytest.approx(0.5 * LN3**2 / 2, rel=1e-6)  # rs_0 = ((ln 3)² + (ln 3)²)/C = (ln 3)²
    _, rs, _ = mbsd_pair_terms(ZA, ZV, Y, "probabilities")
    assert rs.item() == pytest.approx(0.5 * ((0.5**2 + 0.5**2) / 2) / 2, rel=1e-6)  # (1/2)·(1/4)/2 = 1/16


def test_mbsd_loss_and_feature_gradients_hand_computed_nothing_detached():
    mbsd = ready(MBSD(), identity_model())
    features = {"audio": ZA.clone().requires_grad_(), "visual": ZV.clone().requires_grad_()}
    out = mbsd.model.decode(features)
    loss = mbsd.loss(out, Y)
    loss.backward()
    # CE(fused): fused = [ln3, ln3] (p = 1/2, 1/2) and [2 ln3, 0] (p = 9/10, 1/10, y = 1)
    ce_fused = (math.log(2) + math.log(10)) / 2
    ce_a = (-math.log(0.75) - math.log(0.25)) / 2
    ce_v = (-math.log(0.25) - math.log(0.25)) / 2
    assert loss.item() == pytest.approx(ce_fused + ce_a + ce_v + LN3**2 / 4 + KL0 / 4, rel=1e-6)
    g_fused = torch.tensor([[-0.5, 0.5], [0.9, -0.9]]) / 2
    g_a = torch.tensor([[-0.25, 0.25], [0.75, -0.75]]) / 2
    g_v = torch.tensor([[-0.75, 0.75], [0.75, -0.75]]) / 2
    # distillation D = (w0·(kl0 + rs0))/B on sample 0, w0 = t_a − t_v, kl0 = t_v·(log t_v − t_a), rs0 = ‖z_a − z_v‖²/C
    t_a, t_v, w0, rs0, b = 0.75, 0.25, 0.5, LN3**2, 2
    d_ta = (KL0 + rs0 - w0 * t_v) / b  # through w and through s = t_a
    d_tv = (-(KL0 + rs0) + w0 * (math.log(t_v) + 1 - t_a)) / b  # through w and through u = t_v
    dt_dz = torch.tensor([3 / 16, -3 / 16])  # t·(e_y − p): audio 3/4·(1/4, −1/4), visual 1/4·(3/4, −3/4)
    d_rs = w0 * 2 * torch.tensor([LN3, -LN3]) / 2 / b  # w0·2(z_a − z_v)/C/B
    expected_a = g_fused + g_a
    expected_a[0] += d_ta * dt_dz + d_rs
    expected_v = g_fused + g_v
    expected_v[0] += d_tv * dt_dz - d_rs
    torch.testing.assert_close(features["audio"].grad, expected_a)
    torch.testing.assert_close(features["visual"].grad, expected_v)
    summary = mbsd.epoch_summary()
    assert summary["weight"] == pytest.approx(0.25) and summary["loss_kl"] == pytest.approx(KL0 / 4, rel=1e-6)


@pytest.mark.parametrize("epoch, inside", [(0, True), (80, True), (81, False)])
def test_mbsd_outside_the_window_is_the_fused_cross_entropy_alone(epoch, inside):
    mbsd = ready(MBSD(), identity_model(), epoch=epoch)  # BalanceBenchmark's window: epochs 0-80
    features = {"audio": ZA.clone().requires_grad_(), "visual": ZV.clone().requires_grad_()}
    loss = mbsd.loss(mbsd.model.decode(features), Y)
    loss.backward()
    fused_only = torch.tensor([[-0.5, 0.5], [0.9, -0.9]]) / 2
    assert torch.allclose(features["audio"].grad, fused_only) != inside
    if not inside:
        assert loss.item() == pytest.approx((math.log(2) + math.log(10)) / 2, rel=1e-6)
        torch.testing.assert_close(features["visual"].grad, fused_only)
        assert set(mbsd.epoch_summary()) == {"loss_fused"}


def test_mbsd_three_modalities_compare_probabilities_and_average_the_pairs():
    # a third modality equal to visual: pairs (a, v) and (a, t) as above, (v, t) has w = 0 (both wrong on both)
    logits = {"audio": ZA, "visual": ZV, "third": ZV.clone()}
    kl, rs, _ = mbsd_terms(logits, Y)  # auto: probabilities for three modalities (the released 3-modality branch)
    assert kl.item() == pytest.approx((2 * KL0 / 4) / 3, rel=1e-6)
    assert rs.item() == pytest.approx((2 / 16) / 3, rel=1e-6)
    _, rs, _ = mbsd_terms(logits, Y, "logits")
    assert rs.item() == pytest.approx((2 * LN3**2 / 4) / 3, rel=1e-6)
    _, rs, _ = mbsd_terms({"audio": ZA, "visual": ZV}, Y)  # auto: logits for two (the released 2-modality branch)
    assert rs.item() == pytest.approx(LN3**2 / 4, rel=1e-6)
    fixed = ready(MBSD(discrepancy="probabilities"), identity_model())
    assert any("BalanceBenchmark's trainer compares their logits" in n for n in fixed.run_notes)
    assert ready(MBSD(), identity_model()).run_notes == []
    assert MBSD.notes(ConcatFusion, 3) == [] and any("every pair" in n for n in MBSD.notes(ConcatFusion, 4))


def test_mbsd_reads_the_fused_heads_per_modality_logits_on_a_real_model():
    inputs, y = small_batch()
    mbsd = ready(MBSD(), small_model("concat"))
    out = mbsd.model(inputs)
    loss = mbsd.loss(out, y)
    z = mbsd.model.modality_logits(out)  # W_m·φ_m + b/2, BalanceBenchmark's unimodal_result
    kl, rs, _ = mbsd_terms(z, y)
    expected = F.cross_entropy(out.logits, y) + sum(F.cross_entropy(v, y) for v in z.values()) + kl + rs
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in mbsd.model.parameters())
    assert MBSD.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert "single-label" in MBSD.not_applicable(ConcatFusion, 2, True)
    assert MBSD.notes(FUSIONS.get("gated"), 2)  # per-modality logits estimated: noted


# --- AMCo ----------------------------------------------------------------------------------------------------------


def test_amco_ramp_is_the_released_sine_of_l_equals_k_times_epoch_over_ten():
    assert amco_mask_ratio(0.0, 0.3) == 0.0 and amco_mask_ratio(0.3, 0.3) == 1.0 and amco_mask_ratio(5.0, 0.3) == 1.0
    assert amco_mask_ratio(0.1, 0.3) == pytest.approx(0.5) and amco_mask_ratio(0.2, 0.3) == pytest.approx(3**0.5 / 2)
    # C = 4, ε = 0.4, audio forced dependent: how many of its 4 logits each step zeroes
    features = {"audio": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "visual": torch.tensor([[1.0, 1.0, 1.0, 1.0]])}
    counts = {}
    for epoch in (0, 1, 2):
        amco = ready(AMCo(eps=0.4, star=False), identity_model(4), epoch=epoch)
        amco.on_epoch_start(epoch)
        seen = []
        for _ in range(6):
            amco.dependent = torch.tensor([True, False])
            amco.forward(amco.model, features)
            seen.append(int((amco._z["audio"] == 0).sum()))
            assert torch.equal(amco._z["visual"], features["visual"])  # not dependent: never masked
        counts[epoch] = seen
    # l = k·e/10: epoch 0 stays at 0; epoch 1: sin(π/2·l/0.4) = 0, .38, .71, .92, 1, 1; epoch 2: l = 0, .2, .4, …
    assert counts == {0: [0] * 6, 1: [0, 1, 2, 3, 4, 4], 2: [0, 2, 4, 4, 4, 4]}


def test_amco_dependence_share_hand_computed_and_used_by_the_next_step():
    za = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    zv = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    q = dependence_shares({"audio": za, "visual": zv})
    e2 = math.exp(2)  # sample 0: softmax over [2, 0, 0, 0]; sample 1: all equal (1/2 each)
    expected_a = ((e2 + 1) / (e2 + 3) + 0.5) / 2
    torch.testing.assert_close(q, torch.tensor([expected_a, 1 - expected_a]))
    amco = ready(AMCo(star=False), identity_model(), epoch=1)
    assert amco.dependent.tolist() == [False, False]  # every epoch starts with none
    out = amco.forward(amco.model, {"audio": za, "visual": zv})
    amco.loss(out, torch.tensor([0, 1]))
    assert amco.dependent.tolist() == [True, False]  # q_a = 0.72 > σ = 0.5
    summary = amco.epoch_summary()
    assert summary["dependence_audio"] == pytest.approx(expected_a, rel=1e-6)
    amco.on_epoch_start(2)
    assert amco.dependent.tolist() == [False, False] and amco.progress == 0.0


def test_amco_masked_loss_and_gradients_hand_computed():
    # C = 4, ε = 0.4, epoch 1, third step (l = 0.2): ⌊sin(π/4)·4⌋ = 2 of audio's logits zeroed
    amco = ready(AMCo(eps=0.4, star=False), identity_model(4), epoch=1)
    amco.progress, amco.step = 0.2, 2
    amco.dependent = torch.tensor([True, False])
    y = torch.tensor([0, 3])
    za = torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.3, 0.2, -0.4, 1.5]], requires_grad=True)
    zv = torch.tensor([[0.2, 0.1, -0.3, 0.0], [-1.0, 0.5, 0.7, 0.2]], requires_grad=True)
    out = amco.forward(amco.model, {"audio": za, "visual": zv})
    mask = (amco._z["audio"][0] != 0).float()  # the drawn positions (every za entry is nonzero)
    assert mask.sum() == 2 and mask.tolist() == (amco._z["audio"][1] != 0).float().tolist()  # one mask per batch
    loss = amco.loss(out, y)
    loss.backward()
    fused = za.detach() * mask + zv.detach()
    onehot = F.one_hot(y, 4).float()
    ce = lambda z: -torch.log_softmax(z, 1).gather(1, y[:, None]).mean()  # noqa: E731
    expected = ce(fused) + ce(za.detach() * mask) + ce(zv.detach())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    g = lambda z: (torch.softmax(z, 1) - onehot) / 2  # noqa: E731  ∂CE/∂z
    torch.testing.assert_close(za.grad, mask * (g(fused) + g(za.detach() * mask)))
    torch.testing.assert_close(zv.grad, g(fused) + g(zv.detach()))
    assert (za.grad[:, mask == 0] == 0).all() and (zv.grad != 0).all()
    assert amco.epoch_summary()["mask_share_audio"] == 0.5


def test_amco_mask_positions_reproducible_per_seed_epoch_and_step():
    a = ready(AMCo(), identity_model(10), epoch=3, seed=5)
    b = ready(AMCo(), identity_model(10), epoch=3, seed=5)
    a.step = b.step = 7
    assert torch.equal(a.draw_mask(10, 4, 0), b.draw_mask(10, 4, 0)) and a.draw_mask(10, 4, 0).sum() == 6
    b.step = 8
    masks = {tuple(b.draw_mask(10, 4, 0).tolist())} | {tuple(a.draw_mask(10, 4, 0).tolist())}
    assert len(masks) == 2


def test_amco_feature_masking_option_zeroes_feature_units_of_the_dependent_modality():
    torch.manual_seed(0)
    model = MultimodalModel({m: Flat(6) for m in MODALITIES}, ConcatFusion({m: 6 for m in MODALITIES}, 3), 3)
    amco = ready(AMCo(eps=0.4, mask_on="features", star=False), model, epoch=1)
    assert any(n.startswith("extension: AMCo mask_on: features") for n in amco.run_notes)
    amco.progress, amco.step = 0.2, 2  # sin(π/4) = 0.707: ⌊0.707·6⌋ = 4 of the 6 audio units
    amco.dependent = torch.tensor([True, False])
    fa, fv = torch.randn(2, 6, requires_grad=True), torch.randn(2, 6, requires_grad=True)
    y = torch.tensor([0, 2])
    out = amco.forward(model, {"audio": fa, "visual": fv})
    loss = amco.loss(out, y)
    loss.backward()
    dead = (fa.grad == 0).all(0)
    assert int(dead.sum()) == 4 and (fv.grad != 0).all()
    keep = (~dead).float()
    kept = {"audio": fa.detach() * keep, "visual": fv.detach()}
    torch.testing.assert_close(out.logits, model.fusion(kept))
    z = model.fusion.modality_logits(kept)
    expected = F.cross_entropy(model.fusion(kept), y) + sum(F.cross_entropy(v, y) for v in z.values())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_amco_star_layer_in_training_and_evaluation_per_modality_logits_before_it():
    inputs, y = small_batch()
    amco = AMCo()
    model = amco.configure_model(small_model("concat"))
    assert isinstance(model.fusion, StarHead) and model.fusion.name == "concat+star"
    ready(amco, model, epoch=1)
    model.eval()
    out = model(inputs)
    inner = model.fusion.inner(out.features)
    torch.testing.assert_close(out.logits, model.fusion.star(inner))
    z = model.modality_logits(out)
    torch.testing.assert_close(sum(z.values()), inner)  # the concat split, before L*
    model.train()
    train_out = amco.forward(model, inputs)  # first step of the epoch: l = 0, nothing masked
    torch.testing.assert_close(train_out.logits, model(inputs).logits, rtol=1e-5, atol=1e-6)
    amco.loss(train_out, y).backward()
    assert model.fusion.star.weight.grad.abs().sum() > 0
    assert model.fusion.modality_head_params("audio") == model.fusion.inner.modality_head_params("audio")


def test_amco_outside_the_window_plain_model_and_fused_loss_no_dependence_update():
    amco = ready(AMCo(star=False, start_epoch=2, end_epoch="50%"), identity_model(), epoch=51)
    amco.dependent = torch.tensor([True, False])
    features = {"audio": ZA.clone().requires_grad_(), "visual": ZV.clone().requires_grad_()}
    amco.progress = 1.0  # full ratio, but the window is closed
    out = amco.forward(amco.model, features)
    loss = amco.loss(out, Y)
    loss.backward()
    assert loss.item() == pytest.approx((math.log(2) + math.log(10)) / 2, rel=1e-6)
    torch.testing.assert_close(features["audio"].grad, torch.tensor([[-0.5, 0.5], [0.9, -0.9]]) / 2)
    assert amco.dependent.tolist() == [True, False] and set(amco.epoch_summary()) == {"loss_fused"}


def test_amco_declarations_and_notes():
    assert "single-label" in AMCo.not_applicable(ConcatFusion, 2, True)
    assert AMCo.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert AMCo.notes(ConcatFusion, 2) == [] and AMCo.notes(FUSIONS.get("sum"), 2) == []
    assert len(AMCo.notes(FUSIONS.get("gated"), 2)) == 2 and any("extension" in n for n in AMCo.notes(ConcatFusion, 3))
    assert AMCo(star=False).run_notes and AMCo().run_notes == []
    with pytest.raises(ValueError, match="mask_on"):
        AMCo(mask_on="samples")
    three = identity_model(2, ["a", "b", "c"])
    amco = ready(AMCo(star=False), three, epoch=1)
    out = amco.forward(three, {m: torch.randn(3, 2) for m in "abc"})
    amco.loss(out, torch.tensor([0, 1, 0]))
    assert amco.dependent.shape == (3,)


# --- the harness: resume and a run ---------------------------------------------------------------------------------

ENTRIES = {
    "mbsd": {"start_epoch": 0, "end_epoch": 80, "discrepancy": "auto"},
    "amco": {"sigma": 0.5, "eps": 0.3, "start_epoch": 0, "end_epoch": 80, "mask_on": "logits", "star": True},
}


@pytest.fixture
def tiny_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["train"]["batch_size"] = 4  # several steps per epoch, so AMCo's ramp moves within an epoch
    cfg["balancers"].update(json.loads(json.dumps(ENTRIES)))
    cfg["balancers"]["amco_features"] = {"class": "benchmark.balancers.amco:AMCo", **ENTRIES["amco"]}
    cfg["balancers"]["amco_features"]["mask_on"] = "features"
    return validate_config(cfg)


@pytest.mark.parametrize("method", ["mbsd", "amco", "amco_features"])
def test_resume_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch, method):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
    full, resumed = resume_reproduces(tiny_cfg, spec, tmp_path, monkeypatch)
    assert full["status"] == "ok"
    if method.startswith("amco"):  # the resumed epochs did mask: the state that crosses steps was exercised
        assert any(v > 0 for row in full["history"][2:] for k, v in row.items() if k.startswith("mask_share_"))
    else:
        assert all(row["loss_kl"] != 0 for row in full["history"])


@pytest.mark.parametrize("method, fusion", [("mbsd", "sum"), ("amco", "gated")])
def test_one_epoch_with_the_harness_finishes_ok(tiny_cfg, tmp_path, method, fusion):
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"]["epochs"] = 1
    m = train_run(validate_config(cfg), RunSpec("synthetic-av", "small_cnn", fusion, method, 0), tmp_path, log=quiet)
    assert m["status"] == "ok" and len(m["history"]) == 1
    assert m["history"][0]["loss_uni_audio"] > 0
