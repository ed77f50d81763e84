"""Each balancing rule on a hand-computed case, and at gradient level: which parameters, scaled by how much."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.gblend import GBlend, blend_weights, generalization_overfitting
from benchmark.balancers.joint import Joint
from benchmark.balancers.multi_loss import MLB, MultiLoss, mlb_coefficients
from benchmark.balancers.ogm import OGM, OGMGE, modulated_parameters, ogm_coefficients, ogm_scores
from tests.conftest import small_batch, small_model

CTX = dict(modalities=["audio", "visual"], num_epochs=10, device=torch.device("cpu"))


def grads_after(model, balancer, inputs, y, epoch=0) -> dict[str, torch.Tensor]:
    balancer.setup(model, RunContext(**CTX, epoch=epoch))
    model.zero_grad(set_to_none=True)
    out = balancer.forward(model, inputs)
    balancer.loss(out, y).backward()
    balancer.after_backward(out, y)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_grads(model, loss_fn, inputs, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model(inputs), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def is_conv_weight(model, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, torch.nn.Conv2d) and name.endswith("weight")


# --- OGM / OGM-GE ---------------------------------------------------------------------------------------


def test_ogm_scores_and_coefficients_hand_computed():
    y = torch.tensor([0, 1])
    audio = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))  # p(y) = 0.8, 0.6 -> s_a = 1.4
    visual = torch.log(torch.tensor([[0.5, 0.5], [0.7, 0.3]]))  # p(y) = 0.5, 0.3 -> s_v = 0.8
    scores = ogm_scores({"audio": audio, "visual": visual}, y)
    assert scores.tolist() == pytest.approx([1.4, 0.8], abs=1e-6)
    rho, k = ogm_coefficients(scores, alpha=0.5)
    assert rho.tolist() == pytest.approx([1.75, 0.8 / 1.4], abs=1e-6)  # ρ_a = s_a/s_v, ρ_v = s_v/s_a
    assert k.tolist() == pytest.approx([0.2960944, 1.0], abs=1e-6)  # 1 - tanh(0.5 * 1.75); visual untouched


def test_ogm_tie_slows_audio_as_the_official_code():
    rho, k = ogm_coefficients(torch.tensor([2.0, 2.0]), alpha=0.5)
    assert rho.tolist() == [1.0, 1.0]
    assert k.tolist() == pytest.approx([0.5378828, 1.0], abs=1e-6)


def test_ogm_three_modalities_extension():
    rho, k = ogm_coefficients(torch.tensor([3.0, 1.0, 2.0]), alpha=0.5)
    assert rho.tolist() == pytest.approx([2.0, 0.4, 1.0])  # s_m / mean of the others
    assert k.tolist() == pytest.approx([0.2384058, 1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_fusion_modality_logits_add_up_to_fused_logits(fusion):
    model = small_model(fusion)
    inputs, _ = small_batch()
    out = model(inputs)
    parts = model.modality_logits(out)
    if fusion == "concat":
        torch.testing.assert_close(sum(parts.values()), out.logits)  # W_a φ_a + b/2 + W_v φ_v + b/2
    else:
        torch.testing.assert_close(sum(parts.values()), out.logits)  # Σ (W_m φ_m + b_m)


def test_ogm_scales_only_the_dominant_encoders_conv_weights():
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, lambda out, y: F.cross_entropy(out.logits, y), inputs, y)
    ogm = OGM(alpha=0.5)
    got = grads_after(model, ogm, inputs, y)
    # the coefficient comes from the fused head's own split (eq. 8)
    with torch.no_grad():
        out = model(inputs)
        w, b = model.fusion.head.weight, model.fusion.head.bias
        d = out.features["audio"].shape[1]
        manual = {
            "audio": out.features["audio"] @ w[:, :d].T + b / 2,
            "visual": out.features["visual"] @ w[:, d:].T + b / 2,
        }
        _, k_expected = ogm_coefficients(ogm_scores(manual, y), 0.5)
    k = torch.stack([ogm.k["audio"], ogm.k["visual"]])
    torch.testing.assert_close(k, k_expected)
    assert (k < 1).sum() == 1, "exactly one (the dominant) modality is slowed"
    scaled = 0
    for name, g in got.items():
        modality = name.split(".")[1] if name.startswith("encoders.") else None
        if modality and is_conv_weight(model, name):
            torch.testing.assert_close(g, ogm.k[modality] * ref[name])
            scaled += ogm.k[modality].item() < 1
        else:  # BatchNorm, fusion head: untouched
            torch.testing.assert_close(g, ref[name])
    assert scaled == 4  # the four conv layers of the slowed encoder


def test_ogm_modulate_all_scales_every_encoder_parameter():
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, lambda out, y: F.cross_entropy(out.logits, y), inputs, y)
    ogm = OGM(alpha=0.5, modulate="all")
    got = grads_after(model, ogm, inputs, y)
    for name, g in got.items():
        if name.startswith("encoders."):
            torch.testing.assert_close(g, ogm.k[name.split(".")[1]] * ref[name])
        else:
            torch.testing.assert_close(g, ref[name])
    assert len(modulated_parameters(model.encoders["audio"], "all")) > len(
        modulated_parameters(model.encoders["audio"], "conv")
    )


def test_ogm_window_is_inclusive_and_nothing_changes_outside():
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, lambda out, y: F.cross_entropy(out.logits, y), inputs, y)
    for epoch, inside in ((2, True), (3, True), (4, False)):
        ogm = OGM(alpha=0.5, start_epoch=2, end_epoch=3)
        got = grads_after(model, ogm, inputs, y, epoch=epoch)
        changed = any(not torch.equal(got[n], ref[n]) for n in got)
        assert changed == inside, f"epoch {epoch}"


def test_ogm_ge_noise_has_the_unscaled_gradients_std():
    torch.manual_seed(0)
    g = 3.0 * torch.randn(200_000)
    k = torch.tensor(0.4)
    out = OGMGE().modulate_grad(g, k)
    noise = out - k * g
    assert noise.mean().item() == pytest.approx(0.0, abs=0.03)
    assert noise.std().item() == pytest.approx(g.std().item(), rel=0.02)  # σ of the *unscaled* gradient


def test_ogm_ge_adds_noise_to_both_encoders_conv_weights_only():
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, lambda out, y: F.cross_entropy(out.logits, y), inputs, y)
    torch.manual_seed(1)
    got = grads_after(model, OGMGE(alpha=0.5), inputs, y)
    for name, g in got.items():
        if name.startswith("encoders.") and is_conv_weight(model, name):
            assert not torch.equal(g, ref[name]), f"{name}: GE noise missing (also for the modality with k = 1)"
        else:
            torch.testing.assert_close(g, ref[name])
    torch.manual_seed(1)
    again = grads_after(model, OGMGE(alpha=0.5), inputs, y)
    assert all(torch.equal(got[n], again[n]) for n in got), "noise must follow the seed"


# --- Multi-Loss / MLB -----------------------------------------------------------------------------------


def test_mlb_coefficients_hand_computed():
    r, k = mlb_coefficients(torch.tensor([0.8, 0.4]), alpha=0.5, beta_max=10)
    assert r.tolist() == pytest.approx([0.5, 2.0])
    # leading audio: β = 2, k = 1 + tanh(0.5·(0.5−1)); lagging visual: β = 10, k = 1 + 9·tanh(0.5·(2−1))
    assert k.tolist() == pytest.approx([0.7550813, 5.1590544], abs=1e-6)
    _, k_equal = mlb_coefficients(torch.tensor([0.6, 0.6]), alpha=0.5, beta_max=10)
    assert k_equal.tolist() == pytest.approx([1.0, 1.0])  # balancing phases out as scores converge


def multi_loss_ref(out, y):
    return F.cross_entropy(out.logits, y) + sum(F.cross_entropy(v, y) for v in out.unimodal.values())


def test_multi_loss_is_fused_plus_unimodal_cross_entropies():
    inputs, y = small_batch()
    model = small_model("concat", unimodal_heads=True)
    out = model(inputs)
    MultiLoss().setup(model, RunContext(**CTX))
    torch.testing.assert_close(MultiLoss().loss(out, y), multi_loss_ref(out, y))


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_mlb_scales_encoder_unimodal_head_and_fused_head_slice(fusion):
    inputs, y = small_batch()
    model = small_model(fusion, unimodal_heads=True)
    ref = reference_grads(model, multi_loss_ref, inputs, y)
    mlb = MLB(alpha=0.5, beta_max=10)
    got = grads_after(model, mlb, inputs, y)
    with torch.no_grad():
        out = model(inputs)
        scores = torch.stack(
            [torch.softmax(out.unimodal[m], 1).gather(1, y[:, None]).mean() for m in ("audio", "visual")]
        )
    _, k = mlb_coefficients(scores, 0.5, 10)
    k = dict(zip(("audio", "visual"), k))
    assert not torch.allclose(k["audio"], torch.tensor(1.0))
    for name, g in got.items():
        parts = name.split(".")
        if parts[0] in ("encoders", "unimodal_heads"):
            torch.testing.assert_close(g, k[parts[1]] * ref[name])
        elif fusion == "concat" and name == "fusion.head.weight":
            d = model.encoders["audio"].out_dim
            torch.testing.assert_close(g[:, :d], k["audio"] * ref[name][:, :d])
            torch.testing.assert_close(g[:, d:], k["visual"] * ref[name][:, d:])
        elif fusion == "sum" and parts[1] == "heads":
            torch.testing.assert_close(g, k[parts[2]] * ref[name])
        else:  # the shared bias of the concat head
            torch.testing.assert_close(g, ref[name])


# --- G-Blend --------------------------------------------------------------------------------------------


def test_gblend_weights_hand_computed():
    G = {"audio": 0.2, "visual": 0.5, "fused": 0.4}
    O = {"audio": 0.4, "visual": 0.5, "fused": 0.2}
    w, notes = blend_weights(G, O)  # G/O² = 1.25, 2, 10; Z = 13.25
    assert w == pytest.approx({"audio": 0.0943396, "visual": 0.1509434, "fused": 0.7547170}, abs=1e-6)
    assert notes == []


def test_gblend_weights_from_train_and_validation_losses():
    # per head: loss on the held-out set V and the train subset T' at N (before) and N+n (after)
    losses = {
        "audio": ({"V": 2.0, "T'": 2.1}, {"V": 1.2, "T'": 0.6}),  # G = 0.8, O = 0.6 + 0.1 = 0.7
        "visual": ({"V": 2.1, "T'": 2.1}, {"V": 1.6, "T'": 1.4}),  # G = 0.5, O = 0.2
        "fused": ({"V": 2.0, "T'": 2.0}, {"V": 1.0, "T'": 0.2}),
    }  # G = 1.0, O = 0.8
    G, O = {}, {}
    for head, (before, after) in losses.items():
        G[head], O[head] = generalization_overfitting(before, after, "loss")
    assert G == pytest.approx({"audio": 0.8, "visual": 0.5, "fused": 1.0})
    assert O == pytest.approx({"audio": 0.7, "visual": 0.2, "fused": 0.8})
    w, _ = blend_weights(G, O)  # G/O²: 1.6327, 12.5, 1.5625 -> Z = 15.6952
    assert w == pytest.approx({"audio": 0.1040228, "visual": 0.7964242, "fused": 0.0995530}, abs=1e-6)
    # the accuracy variant: error = 1 - accuracy
    g, o = generalization_overfitting({"V": 0.2, "T'": 0.2}, {"V": 0.6, "T'": 0.9}, "accuracy")
    assert (g, o) == pytest.approx((0.4, 0.3))


def test_gblend_head_without_generalisation_gets_zero_and_all_bad_falls_back():
    w, _ = blend_weights({"audio": -0.1, "visual": 0.3, "fused": 0.3}, {"audio": 0.1, "visual": 0.3, "fused": 0.3})
    assert w["audio"] == 0 and w["visual"] == pytest.approx(0.5)
    w, notes = blend_weights({"a": -1.0, "f": 0.0}, {"a": 1.0, "f": 1.0})
    assert w == {"a": 0.5, "f": 0.5} and notes


def test_gblend_loss_is_the_weighted_sum_of_head_losses(tmp_path):
    import json

    from benchmark.models.model import fingerprint

    inputs, y = small_batch()
    model = small_model("concat", unimodal_heads=True)
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps({"weights": {"audio": 0.2, "visual": 0.5, "fused": 0.3}, "init_fingerprint": fingerprint(model)})
    )
    gb = GBlend()
    gb.setup(model, RunContext(**CTX, artifacts={"gblend_weights": path}))
    out = model(inputs)
    expected = (
        0.3 * F.cross_entropy(out.logits, y)
        + 0.2 * F.cross_entropy(out.unimodal["audio"], y)
        + 0.5 * F.cross_entropy(out.unimodal["visual"], y)
    )
    torch.testing.assert_close(gb.loss(out, y), expected)


def test_gblend_refuses_weights_estimated_from_another_initial_model(tmp_path):
    import json

    from benchmark.models.model import fingerprint

    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "weights": {"audio": 0.2, "visual": 0.5, "fused": 0.3},
                "init_fingerprint": fingerprint(small_model("concat", unimodal_heads=True, seed=1)),
            }
        )
    )
    with pytest.raises(ValueError, match="different initial model"):
        GBlend().setup(
            small_model("concat", unimodal_heads=True, seed=0), RunContext(**CTX, artifacts={"gblend_weights": path})
        )


def test_joint_is_plain_cross_entropy():
    inputs, y = small_batch()
    model = small_model("sum")
    out = model(inputs)
    assert math.isclose(Joint().loss(out, y).item(), F.cross_entropy(out.logits, y).item())
