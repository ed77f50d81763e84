"""AGM at gradient level on a tiny two-modality model whose every number can be computed by hand: linear encoders
followed by batch normalisation (so a pass in eval mode is visibly different from one in train mode), a linear head
on the concatenated features, and an absent input that is not zero (the training mean)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.agm import AGM, FEATURE_MASKING_NOTE, agm_coefficients, agm_scores, head_weights
from benchmark.balancers.base import RunContext
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.params import ParamError, check_params

A, V = frozenset({"a"}), frozenset({"v"})
NUM_EPOCHS = 30


class LinearBN(nn.Module):
    """φ = BN(W x + b): a linear encoder with batch normalisation."""

    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.linear, self.bn, self.out_dim = nn.Linear(d_in, d), nn.BatchNorm1d(d), d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


def tiny_model(seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    encoders = {"a": LinearBN(3, 2), "v": LinearBN(4, 2)}
    for e in encoders.values():  # running statistics far from any batch's, so eval mode shows
        e.bn.running_mean.copy_(torch.randn(2))
        e.bn.running_var.copy_(torch.rand(2) + 0.5)
        nn.init.normal_(e.bn.weight)
        nn.init.normal_(e.bn.bias)
    model = MultimodalModel(encoders, ConcatFusion({"a": 2, "v": 2}, 3), 3, input_shapes={"a": (3,), "v": (4,)})
    g = torch.Generator().manual_seed(1)
    model.absent.fit([{"a": torch.randn(50, 3, generator=g) + 1.0, "v": torch.randn(50, 4, generator=g) - 0.5}])
    model.train()
    return model


def tiny_batch(n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"a": 2 * torch.randn(n, 3, generator=g), "v": 2 * torch.randn(n, 4, generator=g)}, torch.arange(n) % 3


def setup(agm: AGM, model: MultimodalModel, epoch: int = 0) -> AGM:
    agm.setup(model, RunContext(modalities=["a", "v"], num_epochs=NUM_EPOCHS, device=torch.device("cpu"), epoch=epoch))
    return agm


# --- by hand ----------------------------------------------------------------------------------------------------


def encoder_by_hand(e: LinearBN, x: torch.Tensor, train: bool) -> torch.Tensor:
    z = x @ e.linear.weight.T + e.linear.bias
    if train:  # batch statistics (biased variance)
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:  # running statistics
        mean, var = e.bn.running_mean, e.bn.running_var
    return (z - mean) / torch.sqrt(var + e.bn.eps) * e.bn.weight + e.bn.bias


def network_by_hand(model: MultimodalModel, inputs: dict, train: bool) -> torch.Tensor:
    phi = torch.cat([encoder_by_hand(model.encoders[m], inputs[m], train) for m in ("a", "v")], 1)
    return phi @ model.fusion.head.weight.T + model.fusion.head.bias


def absent(model: MultimodalModel, m: str, x: torch.Tensor) -> torch.Tensor:
    return getattr(model.absent, m).expand_as(x)


def passes_by_hand(model: MultimodalModel, inputs: dict) -> dict[frozenset, torch.Tensor]:
    """f(a,v) in train mode (which moves the BN running statistics once, momentum 0.1, unbiased variance); then
    f(a,∅) and f(∅,v) in eval mode (those running statistics) with the absent input (the training mean).
    ``model`` is a copy: its statistics are updated here by hand."""
    xa, xv = inputs["a"], inputs["v"]
    full = network_by_hand(model, inputs, train=True)
    with torch.no_grad():
        for m in ("a", "v"):
            e = model.encoders[m]
            z = inputs[m] @ e.linear.weight.T + e.linear.bias
            e.bn.running_mean.mul_(0.9).add_(0.1 * z.mean(0))
            e.bn.running_var.mul_(0.9).add_(0.1 * z.var(0, unbiased=True))
    return {
        A | V: full,
        A: network_by_hand(model, {"a": xa, "v": absent(model, "v", xv)}, train=False),
        V: network_by_hand(model, {"a": absent(model, "a", xa), "v": xv}, train=False),
    }


def shares_by_hand(f: dict) -> dict[str, torch.Tensor]:
    return {"a": 0.5 * (f[A | V] - f[V] + f[A]), "v": 0.5 * (f[A | V] - f[A] + f[V])}


def score_by_hand(share: torch.Tensor, y: torch.Tensor) -> float:
    p = torch.softmax(share.detach().double(), 1)
    return sum(-math.log(max(p[i, y[i]].item(), 1e-8)) for i in range(len(y))) / len(y)


def k_by_hand(s: tuple[float, float], running: tuple[float, float], alpha: float, cap=10.0) -> tuple[float, float]:
    def one(m, o):
        x = math.exp(running[o] - running[m]) - math.exp(s[o] - s[m])
        return math.exp(alpha * (min(x, cap) if cap is not None else x))

    return one(0, 1), one(1, 0)


# --- the shares -------------------------------------------------------------------------------------------------


def test_input_masking_shares_are_the_shapley_split_of_full_network_passes_with_absent_inputs():
    model = tiny_model()
    inputs, y = tiny_batch()
    expected_f = passes_by_hand(copy.deepcopy(model), inputs)  # before the forward updates the BN statistics
    assert not torch.allclose(absent(model, "v", inputs["v"]), torch.zeros(1))  # the mean input, not zero
    agm = setup(AGM(), model)
    out = agm.forward(model, inputs)
    for s in (A | V, A, V):
        torch.testing.assert_close(agm._passes[s], expected_f[s], rtol=1e-5, atol=1e-6)
    assert torch.equal(agm._passes[frozenset()], torch.zeros_like(out.logits))  # f(∅) cancels: never computed
    expected = shares_by_hand(expected_f)
    for m in ("a", "v"):
        torch.testing.assert_close(agm._shares[m], expected[m], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agm._shares["a"] + agm._shares["v"], out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, expected_f[A | V], rtol=1e-5, atol=1e-6)  # the loop's logits: train mode


def test_masked_passes_run_in_eval_mode_only_the_full_pass_updates_bn_statistics_and_flags_are_restored():
    model = tiny_model()
    model.encoders["a"].bn.eval()  # a module the caller keeps in eval mode stays there
    before = {m: model.encoders[m].bn.running_mean.clone() for m in ("a", "v")}
    inputs, _ = tiny_batch()
    setup(AGM(), model).forward(model, inputs)
    assert model.training and model.encoders["v"].bn.training and model.fusion.training
    assert not model.encoders["a"].bn.training
    assert model.encoders["v"].bn.num_batches_tracked.item() == 1  # one train-mode pass
    assert model.encoders["a"].bn.num_batches_tracked.item() == 0  # kept in eval mode: never updated
    z = inputs["v"] @ model.encoders["v"].linear.weight.T + model.encoders["v"].linear.bias
    torch.testing.assert_close(model.encoders["v"].bn.running_mean, 0.9 * before["v"] + 0.1 * z.mean(0).detach())
    torch.testing.assert_close(model.encoders["a"].bn.running_mean, before["a"])


def test_feature_masking_is_the_earlier_rule_zeroed_features_after_one_train_mode_pass():
    model = tiny_model()
    inputs, _ = tiny_batch()
    ref = copy.deepcopy(model)
    agm = setup(AGM(masking="feature"), model)
    agm.forward(model, inputs)
    phi = {m: encoder_by_hand(ref.encoders[m], inputs[m], train=True) for m in ("a", "v")}
    head = lambda pa, pv: torch.cat([pa, pv], 1) @ ref.fusion.head.weight.T + ref.fusion.head.bias  # noqa: E731
    zero = torch.zeros_like(phi["a"])
    f = {A | V: head(phi["a"], phi["v"]), A: head(phi["a"], zero), V: head(zero, phi["v"])}
    expected = shares_by_hand(f)
    for m in ("a", "v"):
        torch.testing.assert_close(agm._shares[m], expected[m], rtol=1e-5, atol=1e-6)
    assert agm.run_notes == [FEATURE_MASKING_NOTE] and FEATURE_MASKING_NOTE.startswith("extension:")
    assert setup(AGM(), tiny_model()).run_notes == []
    assert AGM.notes(ConcatFusion, 2) == [] and AGM.notes(ConcatFusion, 3) == []


def test_three_modalities_input_masking_shares_add_up_and_follow_the_shapley_formula():
    torch.manual_seed(0)
    encoders = {m: LinearBN(3, 2) for m in ("a", "b", "c")}
    model = MultimodalModel(encoders, FUSIONS.get("mid_mlp")({m: 2 for m in encoders}, 3, hidden=5), 3)
    inputs = {m: torch.randn(6, 3) for m in encoders}
    agm = setup(AGM(), model)
    out = agm.forward(model, inputs)
    assert len(agm._passes) == 8
    torch.testing.assert_close(sum(agm._shares.values()), out.logits, rtol=1e-5, atol=1e-5)
    f = agm._passes
    fs = lambda *ms: f[frozenset(ms)]  # noqa: E731
    # φ_a (the f(∅) terms cancel): ⅓[f(abc) − f(bc)] + ⅙[f(ab) − f(b)] + ⅙[f(ac) − f(c)] + ⅓ f(a)
    share_a = (
        (fs("a", "b", "c") - fs("b", "c")) / 3 + (fs("a", "b") - fs("b") + fs("a", "c") - fs("c")) / 6 + fs("a") / 3
    )
    torch.testing.assert_close(agm._shares["a"], share_a, rtol=1e-5, atol=1e-6)


# --- gradients --------------------------------------------------------------------------------------------------


def params_of(model, m):
    return list(model.encoders[m].parameters())


def test_input_masking_sends_gradient_into_the_other_encoder_through_the_masked_passes():
    model = tiny_model()
    inputs, _ = tiny_batch()
    agm = setup(AGM(), model)
    agm.forward(model, inputs)
    # f(a, ∅) runs the visual encoder on the absent input: its parameters get gradient from that pass
    grads = torch.autograd.grad(agm._passes[A].sum(), params_of(model, "v"), allow_unused=True, retain_graph=True)
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    grads = torch.autograd.grad(agm._passes[V].sum(), params_of(model, "a"), allow_unused=True)
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_feature_masking_has_no_cross_talk_through_the_masked_passes():
    model = tiny_model()
    inputs, _ = tiny_batch()
    agm = setup(AGM(masking="feature"), model)
    agm.forward(model, inputs)
    assert all(
        g is None
        for g in torch.autograd.grad(agm._passes[A].sum(), params_of(model, "v"), allow_unused=True, retain_graph=True)
    )
    assert all(g is None for g in torch.autograd.grad(agm._passes[V].sum(), params_of(model, "a"), allow_unused=True))


@pytest.mark.parametrize("masking", ["input", "feature"])
def test_k_scales_the_gradient_reaching_each_share_by_the_hand_computed_k(masking):
    model = tiny_model()
    inputs, y = tiny_batch()
    alpha = 0.7
    agm = setup(AGM(alpha=alpha, masking=masking, clip=None), model)
    agm.running = torch.tensor([0.9, 1.3])  # as after earlier steps
    agm.steps = 4
    out = agm.forward(model, inputs)
    s = (score_by_hand(agm._shares["a"], y), score_by_hand(agm._shares["v"], y))
    k = k_by_hand(s, (0.9, 1.3), alpha)
    assert abs(k[0] - 1) > 0.05 and abs(k[1] - 1) > 0.05 and abs(k[0] - k[1]) > 0.05
    seen = {}
    for m in ("a", "v"):
        agm._shares[m].register_hook(lambda g, m=m: seen.__setitem__(m, g))
    loss = agm.loss(out, y)
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, y), rtol=1e-5, atol=1e-6)
    # the running mean is updated after k is computed: S̄ ← S̄ + (s − S̄)/5
    torch.testing.assert_close(
        agm.running, torch.tensor([0.9 + (s[0] - 0.9) / 5, 1.3 + (s[1] - 1.3) / 5]), rtol=1e-5, atol=1e-6
    )
    loss.backward(retain_graph=True)  # the passes are reused below
    dl_dlogits = (torch.softmax(out.logits.detach(), 1) - F.one_hot(y, 3)) / len(y)
    torch.testing.assert_close(seen["a"], k[0] * dl_dlogits, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(seen["v"], k[1] * dl_dlogits, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(agm._tracked["k_a"][-1], torch.tensor(k[0]), rtol=1e-5, atol=1e-6)

    # the gradient of every encoder: the passes weighted by ∂L/∂f(S) = ½(k_a + k_v), ½(k_a − k_v), ½(k_v − k_a)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    weights = {A | V: (k[0] + k[1]) / 2, A: (k[0] - k[1]) / 2, V: (k[1] - k[0]) / 2}
    model.zero_grad(set_to_none=True)
    for s_, w in weights.items():
        (w * (agm._passes[s_] * dl_dlogits).sum()).backward(retain_graph=True)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7)


def test_first_step_uses_zero_running_means():
    model = tiny_model()
    inputs, y = tiny_batch()
    agm = setup(AGM(alpha=0.5), model)
    out = agm.forward(model, inputs)
    s = (score_by_hand(agm._shares["a"], y), score_by_hand(agm._shares["v"], y))
    agm.loss(out, y)
    k = k_by_hand(s, (0.0, 0.0), 0.5)  # exp(0.5·(1 − exp(s_o − s_m)))
    assert [agm._tracked["k_a"][0].item(), agm._tracked["k_v"][0].item()] == pytest.approx(k, rel=1e-5)
    assert agm.running.tolist() == pytest.approx(s, rel=1e-5) and agm.steps == 1


def test_scores_and_coefficients_hand_computed():
    y = torch.tensor([0, 1])
    shares = {"a": torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]])), "v": torch.tensor([[0.0, 40.0], [0.0, 0.0]])}
    s = agm_scores(shares, y)
    # s_a = −(log 0.8 + log 0.6)/2; s_v: p = e^-40 < 1e-8 counts as 1e-8, and p = 0.5
    assert s.tolist() == pytest.approx([-(math.log(0.8) + math.log(0.6)) / 2, -(math.log(1e-8) + math.log(0.5)) / 2])
    k = agm_coefficients(torch.tensor([0.5, 1.0]), torch.tensor([0.8, 0.9]), alpha=0.5)
    assert k.tolist() == pytest.approx(
        [math.exp(0.5 * (math.exp(0.1) - math.exp(0.5))), math.exp(0.5 * (math.exp(-0.1) - math.exp(-0.5)))]
    )
    big = (torch.tensor([0.0, 0.0]), torch.tensor([0.0, 100.0]))
    assert agm_coefficients(*big, alpha=1.0)[0].item() == pytest.approx(math.exp(10.0))  # capped at 10 (CREMA-D)
    assert agm_coefficients(*big, alpha=1.0, cap=7.0)[0].item() == pytest.approx(math.exp(7.0))  # UR-Funny
    assert agm_coefficients(torch.zeros(2), torch.tensor([0.0, 3.0]), 1.0, cap=None)[0].item() == pytest.approx(
        math.exp(math.exp(3.0) - 1)
    )
    # three modalities: mean of the others, = the released exp((mean(s) − s_m)·3/2)
    s3, r3 = torch.tensor([0.2, 0.5, 1.1]), torch.tensor([0.3, 0.4, 0.8])
    mean_s, mean_r = s3.mean(), r3.mean()
    released = torch.exp(torch.clamp(torch.exp((mean_r - r3) * 1.5) - torch.exp((mean_s - s3) * 1.5), max=7.0))
    torch.testing.assert_close(agm_coefficients(s3, r3, 1.0, cap=7.0), released)


# --- the window -------------------------------------------------------------------------------------------------


def applied_k(agm: AGM, model, epoch: int) -> list[float]:
    inputs, y = tiny_batch()
    agm.ctx.epoch = epoch
    agm.loss(agm.forward(model, inputs), y)
    return [agm._tracked["k_a"][-1].item(), agm._tracked["k_v"][-1].item()]


def test_default_window_is_the_released_one_based_0_to_20():
    agm = AGM()
    assert (agm.start_epoch, agm.end_epoch, agm.after_window) == (0, 19, "last")
    model = tiny_model()
    setup(agm, model)
    k19 = applied_k(agm, model, 19)  # epoch 20 of the released schedule: still modulated
    assert k19 != pytest.approx([1.0, 1.0])
    assert applied_k(agm, model, 20) == k19  # after the window the released hooks keep their last scale
    assert agm.steps == 2  # the running means keep being updated outside the window

    model = tiny_model()
    agm = setup(AGM(after_window="one"), model)
    assert applied_k(agm, model, 19) != pytest.approx([1.0, 1.0])
    assert applied_k(agm, model, 20) == [1.0, 1.0]


def test_before_the_window_k_is_one_and_percent_bounds_read_as_shares_of_the_schedule():
    model = tiny_model()
    agm = setup(AGM(start_epoch=2, end_epoch="50%"), model)  # 50% of 30 epochs: epoch 15
    assert applied_k(agm, model, 1) == [1.0, 1.0]
    agm.running = torch.tensor([0.5, 2.0])  # far from this batch's scores: k ≠ 1
    k15 = applied_k(agm, model, 15)
    assert k15 != pytest.approx([1.0, 1.0]) and agm.scale.tolist() == pytest.approx(k15)
    assert applied_k(agm, model, 16) == pytest.approx(k15)  # 'last' holds the epoch-15 value
    assert applied_k(agm, model, 29) == pytest.approx(k15)


def test_presets_are_valid_parameters():
    for name, preset in AGM.presets.items():
        check_params(AGM, {k: v for k, v in preset.items() if k != "source"})
        assert preset["source"].startswith("released AGM code")


def test_parameters_are_checked():
    check_params(AGM, {"start_epoch": "0%", "end_epoch": "20%", "masking": "feature", "cap": None, "clip": 5.0})
    for bad in ({"masking": "pixel"}, {"after_window": "reset"}, {"clip": 0.0}, {"end_epoch": "20"}):
        with pytest.raises(ParamError):
            check_params(AGM, bad)


# --- gradient-norm clipping -------------------------------------------------------------------------------------


def with_grads(model: MultimodalModel, head: float, rest: float, bias: float = 0.0) -> MultimodalModel:
    """Every gradient set by hand: the head weight's entries in [−head, head], the head bias ``bias``, every other
    parameter ``rest``."""
    for n, p in model.named_parameters():
        p.grad = torch.full_like(p, rest)
    w = model.fusion.head.weight
    w.grad = torch.linspace(-head, head, w.numel()).view_as(w)
    model.fusion.head.bias.grad = torch.full_like(model.fusion.head.bias, bias)
    return model


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def released_clip(model, max_norm: float = 1.0) -> dict[str, torch.Tensor]:
    """The gradients after the released ``nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` (on copies)."""
    copies = {}
    for n, p in model.named_parameters():
        copies[n] = nn.Parameter(p.detach().clone())
        copies[n].grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(list(copies.values()), max_norm=max_norm)
    return {n: c.grad for n, c in copies.items()}


@pytest.mark.parametrize(
    "head, bias, clipped",
    [(0.9, 0.0, False), (1.0, 0.0, False), (1.5, 0.0, True), (0.5, 5.0, False)],
    ids=["inside", "exactly-1-is-not-above", "above", "only-the-weight-counts"],
)
def test_clipping_when_a_fused_head_weight_gradient_exceeds_one(head, bias, clipped):
    model = with_grads(tiny_model(), head=head, rest=3.0, bias=bias)  # total norm ≫ 1
    expected = released_clip(model) if clipped else grads(model)
    agm = setup(AGM(), model, epoch=25)  # also outside the modulation window
    agm.after_backward(None, None)
    for n, g in grads(model).items():
        torch.testing.assert_close(g, expected[n], rtol=1e-6, atol=0)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert (abs(total.item() - 1.0) < 1e-5) == clipped
    assert bool(agm._tracked["clipped"][-1]) == clipped


def test_clipping_on_the_negative_side_with_another_threshold_and_off():
    model = with_grads(tiny_model(), head=1.5, rest=3.0)  # min −1.5 < −1 (the max is also 1.5: make it one-sided)
    model.fusion.head.weight.grad.clamp_(max=0.2)
    expected = released_clip(model)
    setup(AGM(), model).after_backward(None, None)
    for n, g in grads(model).items():
        torch.testing.assert_close(g, expected[n], rtol=1e-6, atol=0)

    model = with_grads(tiny_model(), head=4.0, rest=3.0)  # UR-Funny's 5: not above
    before = grads(model)
    setup(AGM(clip=5.0), model).after_backward(None, None)
    assert all(torch.equal(g, before[n]) for n, g in grads(model).items())

    model = with_grads(tiny_model(), head=9.0, rest=3.0)
    before = grads(model)
    setup(AGM(clip=None), model).after_backward(None, None)
    assert all(torch.equal(g, before[n]) for n, g in grads(model).items())


def test_head_weights_of_the_fusions():
    dims = {"a": 4, "v": 4}
    concat, summed, mlp = (FUSIONS.get(f)(dims, 3) for f in ("concat", "sum", "mid_mlp"))
    assert head_weights(concat, 3) == [concat.head.weight]
    assert head_weights(summed, 3) == [h.weight for h in summed.heads.values()]
    assert head_weights(mlp, 3) == [mlp.mlp[2].weight]
