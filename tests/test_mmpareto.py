"""MMPareto on hand-computed cases at gradient level: the two-objective min-norm weights, the direction and magnitude
rules (whole encoder and the released per-tensor variant), which parameters get what in a tiny linear model, the
released code's procedure (one backward per loss) reproduced, fusions between the encoder blocks, and resume."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.mmpareto import MMPareto, min_norm_weight, mmpareto_gradient
from benchmark.config import validate_config
from benchmark.models.backbones import SmallCNN
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.models.stream_fusions import MidConcatFusion, SEGateFusion
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ["a", "v"]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def ready(balancer: MMPareto, model: MultimodalModel) -> MMPareto:
    mods = list(model.modalities)
    balancer.setup(model, RunContext(modalities=mods, num_epochs=4, device=torch.device("cpu")))
    return balancer


def step(balancer: MMPareto, model: MultimodalModel, inputs: dict, y: torch.Tensor, after: bool = True):
    """One training step as the loop runs it (forward, loss, zero_grad, backward, after_backward); the gradients."""
    out = balancer.forward(model, inputs)
    loss = balancer.loss(out, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    if after:
        balancer.after_backward(out, y)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- the rule on vectors ----------------------------------------------------------------------------------------


def test_min_norm_weight_hand_computed():
    # g_f = (2, 0), g_u = (−1, 1): c = (‖g_u‖² − ⟨g_f, g_u⟩) / ‖g_f − g_u‖² = (2 + 2) / 10 = 0.4;
    # the point 0.4·g_f + 0.6·g_u = (0.2, 0.6) is orthogonal to g_f − g_u = (3, −1): the segment's min-norm point
    c = min_norm_weight(t(4.0), t(2.0), t(-2.0))
    assert c.item() == pytest.approx(0.4)
    assert torch.dot(c * t(2.0, 0.0) + (1 - c) * t(-1.0, 1.0), t(3.0, -1.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert min_norm_weight(t(1.0), t(9.0), t(2.0)).item() == 1.0  # one end is the min-norm point: clamped
    assert min_norm_weight(t(1.0), t(1.0), t(1.0)).item() == 0.5  # equal gradients


def test_conflict_takes_pareto_weights_and_the_uniform_sums_magnitude_times_gamma():
    g, stats = mmpareto_gradient([t(2.0, 0.0)], [t(-1.0, 1.0)], gamma=1.5)
    # h = 2·(0.2, 0.6) = (0.4, 1.2), ‖h‖ = √1.6; rescaled to ‖g_f + g_u‖ = ‖(1, 1)‖ = √2, then × 1.5
    torch.testing.assert_close(g[0], 1.5 * math.sqrt(2 / 1.6) * t(0.4, 1.2))
    assert stats["conflict"].item() == 1.0 and stats["weight_fused"].item() == pytest.approx(0.4)
    assert stats["cos"].item() == pytest.approx(-2 / (2 * math.sqrt(2)))
    assert stats["norm_ratio"].item() == pytest.approx(2 / math.sqrt(2))
    g, _ = mmpareto_gradient([t(2.0, 0.0)], [t(-1.0, 1.0)], gamma=1.0)  # gamma 1: exactly the uniform magnitude
    assert torch.linalg.vector_norm(g[0]).item() == pytest.approx(math.sqrt(2))


def test_no_conflict_is_the_uniform_sum_times_gamma_and_orthogonal_counts_as_no_conflict():
    g, stats = mmpareto_gradient([t(1.0, 0.0)], [t(1.0, 1.0)], gamma=1.5)
    assert torch.equal(g[0], t(3.0, 1.5)) and stats["conflict"].item() == 0.0
    assert stats["weight_fused"].item() == 0.5
    g, stats = mmpareto_gradient([t(1.0, 0.0)], [t(0.0, 1.0)], gamma=1.5)  # cos = 0
    assert torch.equal(g[0], t(1.5, 1.5)) and stats["conflict"].item() == 0.0


def test_weights_and_magnitude_are_over_the_whole_encoder_and_tensor_rescales_each_tensor_only_upwards():
    # the conflicting pair above, as two one-element parameter tensors: the weights (0.4, 0.6) come from the whole
    f, u = [t(2.0), t(0.0)], [t(-1.0), t(1.0)]
    g, _ = mmpareto_gradient(f, u, gamma=1.5, magnitude="encoder")
    k = 1.5 * math.sqrt(2 / 1.6)
    torch.testing.assert_close(torch.cat(g), k * t(0.4, 1.2))
    # released: h = (0.4, 1.2); tensor 1: |f + u| = 1 > 0.4, so 0.4 → 1 (× 2.5); tensor 2: |f + u| = 1 < 1.2: kept
    g, _ = mmpareto_gradient(f, u, gamma=1.5, magnitude="tensor")
    torch.testing.assert_close(torch.cat(g), 1.5 * t(1.0, 1.2))
    with pytest.raises(ValueError, match="magnitude"):
        mmpareto_gradient(f, u, magnitude="layer")


def test_anti_parallel_gradients_give_zero_not_nan():
    # g_f = −3·g_u: the min-norm point of the segment is 0 (c = 1/4, exact in floating point) while g_f + g_u ≠ 0;
    # the released code divides ‖g_f + g_u‖ by ‖h‖ = 0 there (NaN)
    for magnitude in ("encoder", "tensor"):
        g, stats = mmpareto_gradient([t(3.0, 0.0)], [t(-1.0, 0.0)], magnitude=magnitude)
        assert torch.equal(g[0], t(0.0, 0.0)), magnitude
        assert stats["weight_fused"].item() == 0.25


# --- a tiny linear model, every gradient by hand ------------------------------------------------------------------


def tiny_model() -> MultimodalModel:
    """Linear encoders φ_m = W_m x + b_m (3 → 2), a concat head, unimodal heads. Small weights, so every softmax is
    near uniform. Audio's unimodal head is minus its block of the fused head (fused bias 0): its two losses push φ_a
    in nearly opposite directions (a conflict); visual's is equal to its block: they agree."""
    torch.manual_seed(0)
    encoders = {m: nn.Linear(3, 2) for m in MODALITIES}
    for e in encoders.values():
        e.out_dim = 2
    model = MultimodalModel(encoders, ConcatFusion({m: 2 for m in MODALITIES}, 3), 3, unimodal_heads=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
        head = model.fusion.head
        head.bias.zero_()
        model.unimodal_heads["a"].weight.copy_(-head.weight[:, 0:2])
        model.unimodal_heads["v"].weight.copy_(head.weight[:, 2:4])
        for h in model.unimodal_heads.values():
            h.bias.zero_()
    return model.double()  # float64: the hand computation below is compared tightly


def tiny_batch(n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(n, 3, generator=g, dtype=torch.float64) for m in MODALITIES}, torch.arange(n) % 3


def by_hand(model: MultimodalModel, inputs: dict, y: torch.Tensor) -> dict:
    """Every loss's gradient from the softmax residuals: ∂CE/∂z = (softmax(z) − onehot(y)) / B."""
    with torch.no_grad():
        onehot, b = F.one_hot(y, 3).double(), len(y)
        phi = {m: inputs[m] @ model.encoders[m].weight.T + model.encoders[m].bias for m in MODALITIES}
        head = model.fusion.head
        z = torch.cat([phi["a"], phi["v"]], 1) @ head.weight.T + head.bias
        r_fused = (torch.softmax(z, 1) - onehot) / b
        hand = {
            "loss": F.cross_entropy(z, y).item(),
            "fusion.head.weight": r_fused.T @ torch.cat([phi["a"], phi["v"]], 1),
            "fusion.head.bias": r_fused.sum(0),
        }
        for i, m in enumerate(MODALITIES):
            uh = model.unimodal_heads[m]
            zu = phi[m] @ uh.weight.T + uh.bias
            r_uni = (torch.softmax(zu, 1) - onehot) / b
            hand["loss"] += F.cross_entropy(zu, y).item()
            hand[f"unimodal_heads.{m}.weight"], hand[f"unimodal_heads.{m}.bias"] = r_uni.T @ phi[m], r_uni.sum(0)
            d_fused = r_fused @ head.weight[:, 2 * i : 2 * i + 2]  # ∂CE(fused)/∂φ_m
            d_uni = r_uni @ uh.weight  # ∂CE(unimodal_m)/∂φ_m
            # φ = W x + b: ∂/∂W = dᵀ x, ∂/∂b = Σ_i d_i
            hand[m] = {
                "fused": [d_fused.T @ inputs[m], d_fused.sum(0)],
                "uni": [d_uni.T @ inputs[m], d_uni.sum(0)],
            }
    return hand


def combine_by_hand(f: list[torch.Tensor], u: list[torch.Tensor], gamma: float, per_tensor: bool):
    """Alg. 1 written out: cos over the encoder; (1/2, 1/2) or the min-norm weights; h = 2(w_f f + w_u u); the
    magnitude of f + u (whole encoder, or per tensor where larger as the released code); × gamma."""
    fv, uv = torch.cat([x.flatten() for x in f]), torch.cat([x.flatten() for x in u])
    if torch.dot(fv, uv) >= 0:
        w = 0.5
    else:
        w = (torch.dot(uv, uv) - torch.dot(fv, uv)) / torch.dot(fv - uv, fv - uv)
    h = [2 * w * a + 2 * (1 - w) * b for a, b in zip(f, u)]
    if per_tensor:
        return [gamma * x * max(1.0, (a + b).norm() / x.norm()) for x, a, b in zip(h, f, u)], w
    k = (fv + uv).norm() / torch.cat([x.flatten() for x in h]).norm()
    return [gamma * k * x for x in h], w


@pytest.mark.parametrize("magnitude", ["encoder", "tensor"])
def test_tiny_model_encoders_get_the_mmpareto_gradient_and_heads_their_own_losses(magnitude):
    model = tiny_model()
    inputs, y = tiny_batch()
    hand = by_hand(model, inputs, y)
    balancer = ready(MMPareto(gamma=1.5, magnitude=magnitude), model)
    loss, got = step(balancer, model, inputs, y)
    assert loss.item() == pytest.approx(hand["loss"], rel=1e-6)  # CE(fused) + Σ_m CE(unimodal_m)
    stats = balancer.epoch_summary()
    assert stats["conflict_a"] == 1.0 and stats["conflict_v"] == 0.0  # the construction above
    assert stats["cos_a"] < -0.9 and stats["cos_v"] > 0.9
    for m in MODALITIES:
        expected, w = combine_by_hand(hand[m]["fused"], hand[m]["uni"], 1.5, magnitude == "tensor")
        assert stats[f"weight_fused_{m}"] == pytest.approx(float(w), rel=1e-5)
        torch.testing.assert_close(got[f"encoders.{m}.weight"], expected[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got[f"encoders.{m}.bias"], expected[1], rtol=1e-9, atol=1e-12)
    # no conflict for visual: exactly 1.5 × the summed gradient
    torch.testing.assert_close(
        got["encoders.v.weight"], 1.5 * (hand["v"]["fused"][0] + hand["v"]["uni"][0]), rtol=1e-9, atol=1e-12
    )
    for name in (
        "fusion.head.weight",
        "fusion.head.bias",
        *[f"unimodal_heads.{m}.{k}" for m in "av" for k in ("weight", "bias")],
    ):
        torch.testing.assert_close(got[name], hand[name], rtol=1e-9, atol=1e-12)  # their own loss, no gamma
    assert balancer._pending is None and balancer._features is None  # nothing kept across steps


def test_the_loops_backward_does_not_reach_the_encoders_only_after_backward_sets_them():
    model = tiny_model()
    inputs, y = tiny_batch()
    balancer = ready(MMPareto(), model)
    _, got = step(balancer, model, inputs, y, after=False)
    assert not any(n.startswith("encoders.") for n in got)  # the heads trained on detached features
    assert {"fusion.head.weight", "unimodal_heads.a.weight"} <= set(got)


@pytest.mark.parametrize("fusion", ["concat", "mid_mlp", "gated"])
def test_released_procedure_one_backward_per_loss_is_reproduced_with_the_tensor_option(fusion):
    """code/MMPareto.py: back-propagate each loss alone, keep the encoder gradients, combine per tensor with gamma
    1.5 after the summed backward; non-encoder parameters keep the summed loss's gradient."""
    model = small_model(fusion, unimodal_heads=True).double()  # float64: the comparisons below are tight
    inputs, y = small_batch()
    inputs = {m: x.double() for m, x in inputs.items()}
    _, got = step(ready(MMPareto(gamma=1.5, magnitude="tensor"), model), model, inputs, y)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    total = grads(lambda o: F.cross_entropy(o.logits, y) + sum(F.cross_entropy(v, y) for v in o.unimodal.values()))
    fused = grads(lambda o: F.cross_entropy(o.logits, y))
    expected = dict(total)
    for m in ("audio", "visual"):
        uni = grads(lambda o: F.cross_entropy(o.unimodal[m], y))
        names = [n for n in fused if n.startswith(f"encoders.{m}.")]
        combined, _ = combine_by_hand([fused[n] for n in names], [uni[n] for n in names], 1.5, per_tensor=True)
        expected.update(zip(names, combined))
    assert set(got) == set(expected)
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name], rtol=1e-9, atol=1e-12)


def test_fusion_between_blocks_adds_the_other_unimodal_loss_and_gates_get_the_summed_gradient():
    torch.manual_seed(0)
    encoders = {
        "audio": SmallCNN("spectrogram", (1, 16, 16), width=2),
        "visual": SmallCNN("frames", (2, 3, 8, 8), width=2),
    }
    fusion = SEGateFusion({m: e.out_dim for m, e in encoders.items()}, 3, block=2, reduction=1)
    fusion.bind(encoders)
    model = MultimodalModel(encoders, fusion, 3, unimodal_heads=True).double()
    inputs, y = small_batch()
    inputs = {m: x.double() for m, x in inputs.items()}
    _, got = step(ready(MMPareto(gamma=1.5), model), model, inputs, y)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    total = grads(lambda o: F.cross_entropy(o.logits, y) + sum(F.cross_entropy(v, y) for v in o.unimodal.values()))
    fused = grads(lambda o: F.cross_entropy(o.logits, y))
    uni = {m: grads(lambda o: F.cross_entropy(o.unimodal[m], y)) for m in ("audio", "visual")}
    for m, other in (("audio", "visual"), ("visual", "audio")):
        names = [n for n in fused if n.startswith(f"encoders.{m}.")]
        combined, _ = combine_by_hand([fused[n] for n in names], [uni[m][n] for n in names], 1.5, per_tensor=False)
        assert any(
            n in uni[other] and uni[other][n].abs().max() > 0 for n in names
        )  # the gate carries the other stream's loss here
        for n, g in zip(names, combined):
            torch.testing.assert_close(got[n], g + uni[other].get(n, 0), rtol=1e-9, atol=1e-12)
    gates = [n for n in got if n.startswith("fusion.gates.")]
    assert gates
    for n in gates + ["fusion.head.weight"]:
        torch.testing.assert_close(got[n], total[n], rtol=1e-9, atol=1e-12)


def test_what_it_runs_on_and_the_notes():
    assert MMPareto.not_applicable(ConcatFusion, 2, multi_label=True) is None  # its losses take multi-label targets
    assert "does not have" in MMPareto.not_applicable(MidConcatFusion, 2, multi_label=False)  # merged streams: n/a
    assert MMPareto.notes(ConcatFusion, 2) == []
    assert (
        all(n.startswith("extension:") for n in MMPareto.notes(SEGateFusion, 3))
        and len(MMPareto.notes(SEGateFusion, 3)) == 2
    )
    assert MMPareto.unimodal_heads and MMPareto().run_notes == [] and MMPareto(magnitude="tensor").run_notes
    assert MMPareto.presets["released"]["gamma"] == 1.5 and MMPareto.presets["released"]["magnitude"] == "tensor"


def test_three_modalities_each_encoder_has_its_own_two_objectives():
    torch.manual_seed(0)
    encoders = {m: nn.Linear(3, 2) for m in ("a", "b", "c")}
    for e in encoders.values():
        e.out_dim = 2
    model = MultimodalModel(encoders, FUSIONS.get("concat")({m: 2 for m in encoders}, 3), 3, unimodal_heads=True)
    model = model.double()
    inputs = {m: torch.randn(6, 3, dtype=torch.float64) for m in encoders}
    y = torch.arange(6) % 3
    _, got = step(ready(MMPareto(), model), model, inputs, y)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused = grads(lambda o: F.cross_entropy(o.logits, y))
    for m in encoders:
        uni = grads(lambda o: F.cross_entropy(o.unimodal[m], y))
        names = [f"encoders.{m}.weight", f"encoders.{m}.bias"]
        combined, _ = combine_by_hand([fused[n] for n in names], [uni[n] for n in names], 1.5, per_tensor=False)
        for n, g in zip(names, combined):
            torch.testing.assert_close(got[n], g, rtol=1e-9, atol=1e-12)


# --- the harness: one epoch, and resume ---------------------------------------------------------------------------


@pytest.fixture
def mmpareto_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["mmpareto"] = {"gamma": 1.5, "magnitude": "encoder"}
    return cfg


def test_one_epoch_with_the_harness(mmpareto_cfg):
    from benchmark.grid import RunSpec
    from benchmark.run import execute_run

    cfg = validate_config(mmpareto_cfg)
    metrics, state = execute_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "mmpareto", 0), log=quiet)
    assert metrics["status"] == "ok"
    assert all(math.isfinite(v) for v in metrics["metrics"]["best"]["test"].values())
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    row = metrics["history"][0]
    assert {"cos_audio", "conflict_visual", "weight_fused_audio", "norm_ratio_visual"} <= set(row)


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(mmpareto_cfg, tmp_path, monkeypatch):

    from benchmark.grid import RunSpec

    mmpareto_cfg["train"]["epochs"] = 4
    cfg = validate_config(mmpareto_cfg)
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "mmpareto", 0)
    full, resumed = resume_reproduces(cfg, spec, tmp_path, monkeypatch)
