"""PMR (the released rule: constant α for the weaker modality's prototype loss, inside an epoch window, prototypes from
a share of the training batches) and MMCosine's evaluation option, on hand-computed cases at gradient level."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.mmcosine import MMCosine
from benchmark.balancers.pmr import (
    PMR,
    pmr_coefficients,
    pmr_constant_coefficients,
    prototype_batch_count,
    prototype_logits,
    prototype_positions,
    prototype_scores,
)
from benchmark.data.cache import CachedSplit
from benchmark.models.fusions import ConcatFusion, SumFusion
from benchmark.models.model import ModelOutput, MultimodalModel
from tests.conftest import small_batch, small_model
from tests.test_balancers import reference_grads

MODALITIES = ["audio", "visual"]
E2 = math.exp(2.0)


class Flat(nn.Module):
    """An encoder that passes its input through: features are the inputs (out_dim as a Backbone declares)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def flat_model(dim: int = 2, num_classes: int = 2) -> MultimodalModel:
    encoders = {m: Flat(dim) for m in MODALITIES}
    return MultimodalModel(encoders, ConcatFusion({m: dim for m in MODALITIES}, num_classes), num_classes)


def ready(pmr: PMR, model, epoch: int = 0, num_epochs: int = 10, **ctx) -> PMR:
    pmr.setup(model, RunContext(modalities=MODALITIES, num_epochs=num_epochs, device=torch.device("cpu"), **ctx))
    pmr.ctx.epoch = epoch
    return pmr


# Prototypes of both modalities: class 0 at (0, 0), class 1 at (4, 0). Labels y = [0, 1].
PROTOTYPES = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
Y = torch.tensor([0, 1])
# audio: each sample 3 from its own prototype, 5 from the other: sims [-3, -5], [-5, -3] -> p(y) = q each
AUDIO = torch.tensor([[0.0, 3.0], [4.0, 3.0]])
Q = 1 / (1 + math.exp(-2.0))  # 0.8808
# visual: the other way round: sims [-5, -3], [-3, -5] -> p(y) = 1 − q each; s_v < s_a, ρ = s_a/s_v = e²
VISUAL = torch.tensor([[4.0, 3.0], [0.0, 3.0]])
# visual half-way: 2.5 from both prototypes -> p(y) = 1/2 each
VISUAL_EVEN = torch.tensor([[2.0, 1.5], [2.0, 1.5]])


def pmr_step(pmr: PMR, audio: torch.Tensor, visual: torch.Tensor, logits: torch.Tensor | None = None):
    """The loss on leaf features (and fused logits) with fixed prototypes, and the gradients of the leaves."""
    pmr.prototypes = {m: PROTOTYPES.clone() for m in MODALITIES}
    features = {"audio": audio.clone().requires_grad_(), "visual": visual.clone().requires_grad_()}
    logits = (torch.tensor([[0.3, -0.2], [0.1, 0.4]]) if logits is None else logits).clone().requires_grad_()
    loss = pmr.loss(ModelOutput(logits, features), Y)
    loss.backward()
    return loss, {m: f.grad for m, f in features.items()}, logits.grad


def test_constant_alpha_loss_and_weak_feature_gradient_hand_computed():
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    pmr = ready(PMR(alpha=2.0), flat_model())
    loss, grads, logit_grad = pmr_step(pmr, AUDIO, VISUAL, logits)
    # L = CE(fused) + α·CE(sim_v), CE(sim_v) = −log(1 − q) = log(1 + e²); audio (stronger) gets nothing
    assert loss.item() == pytest.approx(F.cross_entropy(logits, Y).item() + 2.0 * math.log(1 + E2), rel=1e-6)
    # ∂/∂z_i = (α/B) Σ_k (p_ik − [k = y_i])·(−(z_i − c_k)/‖z_i − c_k‖):
    # sample 0 at (4, 3): units to the prototypes (0.8, 0.6) and (0, 1) -> (α/2)·q·(0.8, −0.4)
    # sample 1 at (0, 3): units (0, 1) and (−0.8, 0.6) -> (α/2)·q·(−0.8, −0.4)
    expected = Q * torch.tensor([[0.8, -0.4], [-0.8, -0.4]])
    torch.testing.assert_close(grads["visual"], expected)
    assert torch.equal(grads["audio"], torch.zeros(2, 2)), "the stronger modality gets no prototype term"
    torch.testing.assert_close(logit_grad, (torch.softmax(logits, 1) - F.one_hot(Y, 2)) / 2)  # CE(fused) alone
    scores = torch.tensor([2 * Q, 2 * (1 - Q)])
    assert pmr_constant_coefficients(scores).tolist() == [0.0, 1.0]


def test_audio_weaker_gets_the_term_and_a_tie_gets_none():
    pmr = ready(PMR(alpha=2.0), flat_model())
    _, grads, _ = pmr_step(pmr, VISUAL, AUDIO)  # swapped: audio is now the weaker one (ρ = s_a/s_v < 1)
    torch.testing.assert_close(grads["audio"], Q * torch.tensor([[0.8, -0.4], [-0.8, -0.4]]))
    assert torch.equal(grads["visual"], torch.zeros(2, 2))
    loss, grads, _ = pmr_step(pmr, AUDIO, AUDIO)  # equal scores: ρ = 1, neither modality (released code)
    assert all(torch.equal(g, torch.zeros(2, 2)) for g in grads.values())
    assert pmr_constant_coefficients(torch.tensor([1.5, 1.5])).tolist() == [0.0, 0.0]
    assert pmr_constant_coefficients(torch.tensor([3.0, 1.0, 2.0])).tolist() == [0.0, 1.0, 1.0]  # M > 2 extension


def test_window_switches_the_prototype_term_off_outside_it():
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    fused = F.cross_entropy(logits, Y).item()
    for bounds in ((2, 3), ("20%", "30%")):  # of 10 epochs: epochs 2 and 3 either way
        for epoch, inside in ((1, False), (2, True), (3, True), (4, False)):
            pmr = ready(PMR(alpha=2.0, start_epoch=bounds[0], end_epoch=bounds[1]), flat_model(), epoch=epoch)
            loss, grads, _ = pmr_step(pmr, AUDIO, VISUAL, logits)
            assert (loss.item() != pytest.approx(fused)) == inside, (bounds, epoch)
            if not inside:
                assert loss.item() == pytest.approx(fused) and grads["visual"] is None
            assert pmr.epoch_summary()["proto_weight_visual"] == (2.0 if inside else 0.0)
    # the default window: the released scripts' epochs 0-70 of 130 as a share, ["0%", "54%"]
    assert (PMR().start_epoch, PMR().end_epoch) == ("0%", "54%")


def test_rho_scaled_option_gives_the_old_weight():
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    fused = F.cross_entropy(logits, Y).item()
    # s_a = 2q, s_v = 2·(1/2) = 1: ρ = 2q = 1.7616, weight α·min(ρ − 1, 1) = α·(2q − 1) on CE(sim_v) = log 2
    old = ready(PMR(alpha=2.0, weight="rho_scaled"), flat_model())
    loss, grads, _ = pmr_step(old, AUDIO, VISUAL_EVEN, logits)
    w = 2.0 * (2 * Q - 1)
    assert loss.item() == pytest.approx(fused + w * math.log(2), rel=1e-6)
    # both samples at (2, 1.5), 2.5 from each prototype, p = (1/2, 1/2):
    # ∂CE/∂z_0 = (1/2)·(1/2)·((2, 1.5) + (2, −1.5))/2.5 = (0.4, 0) for y = 0, and (−0.4, 0) for y = 1
    torch.testing.assert_close(grads["visual"], w * torch.tensor([[0.4, 0.0], [-0.4, 0.0]]))
    assert torch.equal(grads["audio"], torch.zeros(2, 2))
    assert pmr_coefficients(torch.tensor([2 * Q, 1.0])).tolist() == pytest.approx([0.0, 2 * Q - 1])
    assert any("rho_scaled" in n and n.startswith("extension") for n in old.run_notes)
    new = ready(PMR(alpha=2.0), flat_model())  # the released constant α on the same batch
    loss, grads, _ = pmr_step(new, AUDIO, VISUAL_EVEN, logits)
    assert loss.item() == pytest.approx(fused + 2.0 * math.log(2), rel=1e-6)
    torch.testing.assert_close(grads["visual"], 2.0 * torch.tensor([[0.4, 0.0], [-0.4, 0.0]]))
    assert new.run_notes == [] and PMR.notes(None, 2) == [] and PMR.notes(None, 3)


def test_entropy_term_is_on_the_stronger_modality_only():
    pmr = ready(PMR(alpha=0.0, mu=0.5), flat_model())
    loss, grads, _ = pmr_step(pmr, AUDIO, VISUAL)
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    h = -(Q * math.log(Q) + (1 - Q) * math.log(1 - Q))  # both audio samples: p = (q, 1 − q)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, Y).item() - 0.5 * h, rel=1e-6)
    assert grads["audio"].abs().sum() > 0 and torch.equal(grads["visual"], torch.zeros(2, 2))
    assert any(n.startswith("extension: mu > 0") for n in pmr.run_notes)


def test_real_model_stronger_encoder_untouched_weaker_gets_alpha_times_the_prototype_gradient():
    inputs, y = small_batch()
    model = small_model("concat")
    pmr = ready(PMR(alpha=1.5), model)
    with torch.no_grad():
        model.eval()
        features = model.encode(inputs)
        model.train()
    torch.manual_seed(0)
    pmr.prototypes = {m: features[m][:3].clone() + 0.1 * torch.randn_like(features[m][:3]) for m in MODALITIES}
    ref = reference_grads(model, lambda out, y: F.cross_entropy(out.logits, y), inputs, y)
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    pmr.loss(out, y).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    sims = {m: prototype_logits(out.features[m].detach(), pmr.prototypes[m]) for m in MODALITIES}
    c = pmr_constant_coefficients(prototype_scores(sims, y))
    weak, strong = (MODALITIES[1], MODALITIES[0]) if c[1] == 1 else (MODALITIES[0], MODALITIES[1])
    assert c.sum() == 1
    # the weak encoder's gradient: joint gradient + α·∂CE(sim_weak)/∂θ
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    F.cross_entropy(prototype_logits(out.features[weak], pmr.prototypes[weak]), y).backward()
    extra = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, g in got.items():
        if name.startswith(f"encoders.{weak}."):
            torch.testing.assert_close(g, ref[name] + 1.5 * extra[name], rtol=1e-4, atol=1e-6)
        else:  # the strong encoder and the fused head: exactly the joint gradient
            torch.testing.assert_close(g, ref[name], rtol=1e-5, atol=1e-7)
    assert strong != weak


# --- prototypes from a share of the training batches -------------------------------------------------------


def tiny_split(tmp_path, n: int = 50, num_classes: int = 3, dim: int = 2) -> CachedSplit:
    g = torch.Generator().manual_seed(0)
    data = {
        "clip_id": [f"c{i}" for i in range(n)],
        "label": torch.arange(n) % num_classes,
        "audio": torch.randn(n, dim, generator=g),
        "visual": torch.randn(n, dim, generator=g),
    }
    torch.save(data, tmp_path / "train.pt")
    return CachedSplit(tmp_path / "train.pt")


def prep(batch: dict) -> tuple[dict, torch.Tensor]:
    return {m: batch[m] for m in MODALITIES}, batch["label"]


def class_means(split: CachedSplit, positions, num_classes: int = 3) -> dict[str, torch.Tensor]:
    batch = split.__getitems__(list(positions))
    return {m: torch.stack([batch[m][batch["label"] == k].mean(0) for k in range(num_classes)]) for m in MODALITIES}


def test_batch_count_is_the_released_rule():
    assert prototype_batch_count(105, 0.1) == 10  # CREMA-D: 6,698 clips / 64 -> 105 batches, len(loader) // 10
    assert prototype_batch_count(7, 0.1) == 1  # len // 10 = 0: the released loop still takes the first batch
    assert prototype_batch_count(7, 0.3) == 2 and prototype_batch_count(10, 0.3) == 3  # ⌊0.3·10⌋ despite 2.9999…
    assert prototype_batch_count(7, 1.0) == 7


def test_prototypes_come_from_only_the_first_batches_of_a_shuffled_pass(tmp_path):
    split = tiny_split(tmp_path)  # 50 samples, batch size 8 -> 7 batches; fraction 0.3 -> 2 batches, 16 samples
    model = flat_model(num_classes=3)
    settings = {"batch_size": 8, "eval_batch_size": 5}
    pmr = ready(PMR(prototype_fraction=0.3), model, train=split, prep=prep, settings=settings, seed=4)
    pmr.on_epoch_start(0)
    positions = prototype_positions(50, 8, 0.3, seed=4, epoch=0)
    assert len(positions) == 16 and len(set(positions.tolist())) == 16
    expected = class_means(split, positions.tolist())
    for m in MODALITIES:
        torch.testing.assert_close(pmr.prototypes[m], expected[m])
        assert not torch.allclose(pmr.prototypes[m], class_means(split, range(50))[m])  # not all of them
    # the next epoch draws another share (the released loader is shuffled every epoch), reproducibly
    again = prototype_positions(50, 8, 0.3, seed=4, epoch=1)
    assert not torch.equal(again, positions) and torch.equal(again, prototype_positions(50, 8, 0.3, 4, 1))
    pmr.on_epoch_start(1)
    torch.testing.assert_close(pmr.prototypes["audio"], class_means(split, again.tolist())["audio"])
    # fraction 1: every sample (the released AVE setting)
    full = ready(PMR(prototype_fraction=1.0), model, train=split, prep=prep, settings=settings)
    full.on_epoch_start(0)
    torch.testing.assert_close(full.prototypes["visual"], class_means(split, range(50))["visual"])
    assert PMR().prototype_fraction == 0.1


def test_momentum_and_a_class_missing_from_the_share(tmp_path):
    split = tiny_split(tmp_path)
    model = flat_model(num_classes=4)  # class 3 never occurs
    settings = {"batch_size": 8, "eval_batch_size": 64}
    pmr = ready(PMR(prototype_fraction=1.0, momentum=0.25), model, train=split, prep=prep, settings=settings)
    pmr.on_epoch_start(0)
    first = {m: p.clone() for m, p in pmr.prototypes.items()}
    assert torch.equal(first["audio"][3], torch.zeros(2))  # no prototype yet: zero
    split.replace_modality("audio", lambda t: t + 1.0)  # move the data so the new class means differ
    pmr.on_epoch_start(1)
    new = class_means(split, range(50))["audio"]
    torch.testing.assert_close(pmr.prototypes["audio"][:3], 0.25 * first["audio"][:3] + 0.75 * new)
    assert torch.equal(pmr.prototypes["audio"][3], first["audio"][3])  # absent class keeps its prototype


# --- MMCosine ----------------------------------------------------------------------------------------------


def cosine_sum(model, inputs, scale):
    features = {m: model.encoders[m](inputs[m]) for m in model.modalities}
    return sum(
        scale * F.normalize(features[m], dim=1) @ F.normalize(model.fusion.inner.modality_linear(m), dim=1).T
        for m in model.modalities
    )


@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("evaluate", ["cosine", "linear"])
def test_mmcosine_eval_output_by_option_and_training_output_always_cosine(fusion, evaluate):
    inputs, _ = small_batch()
    model = small_model(fusion)
    with torch.no_grad():
        for p in model.fusion.parameters():  # a bias that matters for the linear head
            p.add_(0.3)
    mmc = MMCosine(scale=10.0, evaluate=evaluate)
    model = mmc.configure_model(model)
    inner = model.fusion.inner
    assert isinstance(inner, ConcatFusion if fusion == "concat" else SumFusion)
    model.train()
    trained = model(inputs).logits
    torch.testing.assert_close(trained, cosine_sum(model, inputs, 10.0))
    model.eval()
    with torch.no_grad():
        evaluated = model(inputs).logits
        features = model.encode(inputs)
        linear = inner(features)
        cosine = cosine_sum(model, inputs, 10.0)
        parts = model.modality_logits(model(inputs))
    torch.testing.assert_close(evaluated, linear if evaluate == "linear" else cosine)
    assert not torch.allclose(linear, cosine)
    torch.testing.assert_close(sum(parts.values()), cosine)  # per-modality logits stay the cosine ones
    assert any(f"evaluate: {evaluate}" in n for n in mmc.run_notes)
    model.train()
    torch.testing.assert_close(model(inputs).logits, trained)  # back to the cosine sum for training


def test_mmcosine_linear_eval_is_the_plain_concat_head_with_bias_hand_computed():
    fusion = ConcatFusion({"a": 2, "v": 2}, 2)
    with torch.no_grad():
        fusion.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0]]))
        fusion.head.bias.copy_(torch.tensor([5.0, -1.0]))
    model = MultimodalModel({"a": nn.Identity(), "v": nn.Identity()}, fusion, 2)
    model = MMCosine(scale=10.0, evaluate="linear").configure_model(model)
    inputs = {"a": torch.tensor([[3.0, 4.0]]), "v": torch.tensor([[0.0, 2.0]])}
    assert model(inputs).logits.tolist() == [[16.0, 8.0]]  # training: cosine sum (a: [6, 8], v: [10, 0])
    model.eval()
    # W[φ_a; φ_v] + b = [3 + 2, 8 + 0] + [5, −1]
    assert model(inputs).logits.tolist() == [[10.0, 7.0]]
    with pytest.raises(ValueError):
        MMCosine(evaluate="mean")
