"""DI-MML as its released code trains it: effective dimensions, the one-way DUC loss (against a transcription of the
released SupConLoss), the shared-classifier head and its certainty-aware fusion on hand-computed cases, gradient
isolation between the encoders, the DAG's n/a declarations, plus resume and harness runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, RunContext
from benchmark.balancers.dimml import (
    DIMML,
    DetachedSharedHead,
    certainty_weights,
    class_centroids,
    dimension_hits,
    duc_loss,
    duc_term,
    effective_dimensions,
)
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion, SumFusion
from benchmark.models.model import MultimodalModel
from benchmark.run import train_run
from tests.conftest import small_batch, small_model
from tests.test_pmr_mmcosine import Flat
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ["audio", "visual"]
LN3 = math.log(3.0)


class FixedBatches(RunContext):
    """A context whose training data are given batches of (inputs, labels)."""

    def __init__(self, batches, **kw) -> None:
        super().__init__(**kw)
        self.given = batches

    def batches(self, data=None, batch_size=None):
        yield from self.given


def ready(dimml: DIMML, model, epoch: int = 0, num_epochs: int = 150, batches=()) -> DIMML:
    ctx = FixedBatches(
        list(batches), modalities=list(model.modalities), num_epochs=num_epochs, device=torch.device("cpu")
    )
    dimml.setup(model, ctx)
    dimml.ctx.epoch = epoch
    return dimml


def identity_model(dimml: DIMML, dim: int = 2, num_classes: int = 2, modalities=MODALITIES) -> MultimodalModel:
    """Pass-through encoders and a shared classifier W = I, b = 0 (C = d): z_m = φ_m."""
    model = dimml.configure_model(
        MultimodalModel(
            {m: Flat(dim) for m in modalities}, ConcatFusion({m: dim for m in modalities}, num_classes), num_classes
        )
    )
    with torch.no_grad():
        model.fusion.shared.weight.copy_(torch.eye(num_classes, dim))
        model.fusion.shared.bias.zero_()
    return model


# --- effective dimensions ------------------------------------------------------------------------------------------

# y = [0, 0, 1, 1]; dim 0 separates the classes (hit rate 1), dim 1 has equal centroids (a tie: class 0 wins, rate
# 1/2), dim 2 has centroids 1 and 2 (samples 0, 1, 3 hit: 3/4). Mean rate 3/4: only dim 0 is above it (strictly).
FEATURES = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [2.0, 2.0, 3.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_effective_dimensions_hand_computed_ties_and_strict_mean():
    centroids, counts = class_centroids(FEATURES, LABELS, 2)
    torch.testing.assert_close(centroids, torch.tensor([[0.0, 1.0, 1.0], [2.0, 1.0, 2.0]]))
    hits = dimension_hits(FEATURES, LABELS, centroids, counts > 0)
    assert hits.tolist() == [4, 2, 3]
    assert effective_dimensions(hits / 4.0).tolist() == [True, False, False]  # 3/4 is the mean: not above it


def test_a_class_without_samples_takes_no_part_in_the_nearest_centroid_test():
    centroids, counts = class_centroids(FEATURES, LABELS, 3)  # class 2 absent: its centroid would be (0, 0, 0)
    assert counts.tolist() == [2.0, 2.0, 0.0]
    assert dimension_hits(FEATURES, LABELS, centroids, counts > 0).tolist() == [4, 2, 3]
    # left in, the empty class's zero centroid would take the samples at 0 on dim 1 (on dim 0 class 0 wins the tie)
    assert dimension_hits(FEATURES, LABELS, centroids, torch.ones(3, dtype=torch.bool)).tolist() == [4, 1, 3]


def test_compute_effective_runs_over_the_training_batches_in_eval_mode_and_restores_the_mode():
    dimml = DIMML()
    model = identity_model(dimml, dim=3, num_classes=2)
    batches = [({"audio": FEATURES[:3], "visual": FEATURES[:3].flip(1)}, LABELS[:3]),
               ({"audio": FEATURES[3:], "visual": FEATURES[3:].flip(1)}, LABELS[3:])]  # fmt: skip
    ready(dimml, model, batches=batches)
    model.train()
    effective = dimml.compute_effective()
    assert model.training
    assert effective["audio"].tolist() == [True, False, False]
    assert effective["visual"].tolist() == [False, False, True]  # the same dimensions, reversed


def test_effective_dimensions_computed_once_when_the_duc_loss_starts_unless_refreshed():
    dimml = DIMML(start_epoch=2)
    model = identity_model(dimml, dim=3, num_classes=2)
    ready(dimml, model, num_epochs=6, batches=[({"audio": FEATURES, "visual": FEATURES.flip(1)}, LABELS)])
    calls = []
    original = dimml.compute_effective
    dimml.compute_effective = lambda: calls.append(1) or original()
    for epoch in range(6):
        dimml.ctx.epoch = epoch
        dimml.on_epoch_start(epoch)
        assert dimml.duc_active(epoch) == (epoch >= 2)
        summary = dimml.epoch_summary()
        if epoch >= 2:
            assert summary["effective_dims_audio"] == 1 and summary["duc_dims_audio_to_visual"] == 1
        else:
            assert summary == {}
    assert len(calls) == 1 and dimml.effective_epoch == 2
    refreshed = DIMML(start_epoch="0%", refresh_every=2)
    model = identity_model(refreshed, dim=3, num_classes=2)
    ready(refreshed, model, num_epochs=6, batches=[({"audio": FEATURES, "visual": FEATURES.flip(1)}, LABELS)])
    epochs = []
    original = refreshed.compute_effective
    refreshed.compute_effective = lambda: epochs.append(refreshed.ctx.epoch) or original()
    for epoch in range(6):
        refreshed.ctx.epoch = epoch
        refreshed.on_epoch_start(epoch)
    assert epochs == [0, 2, 4] and any("refresh_every: 2" in n for n in refreshed.run_notes)


def test_the_released_start_is_epoch_20_of_150():
    dimml = ready(DIMML(), identity_model(DIMML()), num_epochs=150)
    assert dimml.duc_start() == 20
    dimml.ctx.num_epochs = 16
    assert dimml.duc_start() == 2


# --- the DUC loss --------------------------------------------------------------------------------------------------


def test_duc_term_and_its_one_way_gradient_hand_computed():
    s = torch.tensor([[1.0, 5.0], [0.0, 7.0]], requires_grad=True)
    t = torch.tensor([[1.0, 9.0], [2.0, -3.0]], requires_grad=True)
    dims = torch.tensor([True, False])  # S = {0}: ⟨s_i, t_j⟩_S = s_i0·t_j0 -> sim = [[1, 2], [0, 0]]
    loss = duc_term(s, t, dims, temperature=1.0)
    e = math.e
    assert loss.item() == pytest.approx(0.5 * ((math.log(e + e**2) - 1) + math.log(2)), rel=1e-6)
    loss.backward()
    # ∂ℓ/∂s_i = (1/B)·(Σ_j p_ij·t_j − t_i)/τ on S, 0 elsewhere; the teacher is detached
    torch.testing.assert_close(s.grad, torch.tensor([[e / (1 + e) / 2, 0.0], [-0.25, 0.0]]))
    assert t.grad is None
    half = duc_term(s.detach() * 2, t, dims, temperature=2.0)  # τ scales the similarities
    assert half.item() == pytest.approx(loss.item(), rel=1e-6)


#: the transcription keeps the released ``.T`` of 1-D tensors (a no-op that torch warns about)
RELEASED_T = pytest.mark.filterwarnings("ignore:The use of `x.T` on tensors of dimension other than 2")


def released_supcon(a, v, audio_only, image_only, temperature):
    """loss/contrast_loss.py's SupConLoss.forward, transcribed (per-sample loop, exp/sum)."""
    batch_size = a.shape[0]
    a_loss, v_loss = 0, 0
    audio_only_features, image_audio_only_features = a[:, audio_only], v[:, audio_only]
    image_only_features, audio_image_only_features = v[:, image_only], a[:, image_only]
    for i in range(batch_size):
        v_loss += -torch.log(
            torch.exp(torch.matmul(image_audio_only_features[i], audio_only_features[i].detach().T) / temperature).sum()
            / torch.exp(torch.matmul(image_audio_only_features[i], audio_only_features.detach().T) / temperature).sum()
        )
        a_loss += -torch.log(
            torch.exp(torch.matmul(audio_image_only_features[i], image_only_features[i].detach().T) / temperature).sum()
            / torch.exp(torch.matmul(audio_image_only_features[i], image_only_features.detach().T) / temperature).sum()
        )
    return v_loss / batch_size + a_loss / batch_size


@RELEASED_T
@pytest.mark.parametrize("temperature", [1.0, 10.0, 50.0])
def test_duc_loss_equals_the_released_supcon_loss_with_its_gradients(temperature):
    g = torch.Generator().manual_seed(3)
    a = torch.relu(torch.randn(8, 16, generator=g)).requires_grad_()
    v = torch.relu(torch.randn(8, 16, generator=g)).requires_grad_()
    effective = {"audio": torch.rand(16, generator=g) > 0.5, "visual": torch.rand(16, generator=g) > 0.5}
    audio_only = torch.nonzero(effective["audio"] & ~effective["visual"])[:, 0].tolist()
    image_only = torch.nonzero(effective["visual"] & ~effective["audio"])[:, 0].tolist()
    assert audio_only and image_only
    reference = released_supcon(a, v, audio_only, image_only, temperature)
    ga, gv = torch.autograd.grad(reference, (a, v))
    ours, terms = duc_loss({"audio": a, "visual": v}, effective, temperature)
    assert set(terms) == {"audio_to_visual", "visual_to_audio"}
    torch.testing.assert_close(ours, reference)
    oa, ov = torch.autograd.grad(ours, (a, v))
    torch.testing.assert_close(oa, ga)
    torch.testing.assert_close(ov, gv)


@RELEASED_T
def test_no_teacher_only_dimension_gives_log_b_without_gradient_as_the_released_code():
    a = torch.randn(4, 3, requires_grad=True)
    v = torch.randn(4, 3, requires_grad=True)
    same = torch.tensor([True, False, True])
    loss, _ = duc_loss({"audio": a, "visual": v}, {"audio": same, "visual": same}, 50.0)
    assert loss.item() == pytest.approx(2 * math.log(4), rel=1e-6)
    torch.testing.assert_close(released_supcon(a, v, [], [], 50.0), loss)
    ga, gv = torch.autograd.grad(loss, (a, v))
    assert not ga.any() and not gv.any()


def test_three_modalities_every_ordered_pair_divided_by_m_minus_one():
    g = torch.Generator().manual_seed(0)
    f = {m: torch.randn(5, 6, generator=g) for m in "abc"}
    e = {m: torch.rand(6, generator=g) > 0.4 for m in "abc"}
    loss, terms = duc_loss(f, e, 2.0)
    assert len(terms) == 6
    expected = sum(duc_term(f[s], f[t], e[t] & ~e[s], 2.0) for t in "abc" for s in "abc" if s != t) / 2
    torch.testing.assert_close(loss, expected)
    assert any("extension" in n for n in DIMML.notes(ConcatFusion, 3)) and len(DIMML.notes(ConcatFusion, 2)) == 1


# --- the head and the loss ----------------------------------------------------------------------------------------


def test_certainty_weighting_and_sum_hand_computed():
    za = torch.tensor([[LN3, 0.0]])  # top probability 3/4
    zv = torch.tensor([[0.0, 0.0]])  # 1/2
    w = certainty_weights({"audio": za, "visual": zv}, 1.0)
    wa = math.exp(0.75) / (math.exp(0.75) + math.exp(0.5))
    torch.testing.assert_close(w, torch.tensor([[wa], [1 - wa]]))
    wa3 = math.exp(0.25) / (math.exp(0.25) + math.exp(0.5 / 3))  # T = 3 flattens the weights
    torch.testing.assert_close(certainty_weights({"audio": za, "visual": zv}, 3.0)[:, 0], torch.tensor([wa3, 1 - wa3]))
    for evaluate, expected in (("certainty", wa * za + (1 - wa) * zv), ("sum", za + zv)):
        dimml = DIMML(evaluate=evaluate)
        model = identity_model(dimml).eval()
        out = model({"audio": za, "visual": zv})
        torch.testing.assert_close(out.logits, expected)
        torch.testing.assert_close(model.modality_logits(out)["audio"], za)


def test_detached_loss_and_feature_gradients_hand_computed():
    dimml = DIMML(temperature=1.0, start_epoch=0)
    model = identity_model(dimml)
    ready(dimml, model, epoch=0)
    dimml.effective = {"audio": torch.tensor([True, False]), "visual": torch.tensor([False, True])}
    y = torch.tensor([0, 1])
    fa = torch.tensor([[LN3, 0.0], [0.0, LN3]], requires_grad=True)  # p(y) = 3/4 for both samples
    fv = torch.tensor([[0.0, 0.0], [LN3, 0.0]], requires_grad=True)  # p(y) = 1/2, 1/4
    out = model({"audio": fa, "visual": fv})
    loss = dimml.loss(out, y)
    ce_a = -math.log(0.75)
    ce_v = (-math.log(0.5) - math.log(0.25)) / 2
    # visual learns on dim 0 from audio's [ln3, 0]: its dim 0 is [0, ln3] -> sim = [[0, 0], [ln3², 0]]
    l_v = 0.5 * (math.log(2) + (math.log(math.exp(LN3**2) + 1) - 0.0))
    # audio learns on dim 1 from visual's [0, 0]: every similarity 0 -> log 2 per sample
    l_a = math.log(2)
    assert loss.item() == pytest.approx(ce_a + ce_v + l_v + l_a, rel=1e-6)
    loss.backward()
    onehot = F.one_hot(y, 2).float()
    g_a = (torch.softmax(fa.detach(), 1) - onehot) / 2  # CE only: the DUC term on dim 1 is flat (teacher zeros)
    q = 1 / (1 + math.exp(-(LN3**2)))  # sample 1's softmax weight on teacher 0
    g_v = (torch.softmax(fv.detach(), 1) - onehot) / 2 + torch.tensor([[LN3 / 2 - LN3, 0.0], [q * LN3, 0.0]]) / 2
    torch.testing.assert_close(fa.grad, g_a)
    torch.testing.assert_close(fv.grad, g_v)
    summary = dimml.epoch_summary()
    assert summary["loss_ce_audio"] == pytest.approx(ce_a, rel=1e-6)
    assert summary["loss_duc"] == pytest.approx(l_v + l_a, rel=1e-6)
    assert summary["duc_term_audio_to_visual"] == pytest.approx(l_v, rel=1e-6)
    assert 0 < summary["eval_weight_audio"] < 1


def test_before_the_start_only_the_detached_cross_entropies():
    dimml = DIMML(start_epoch=5)
    model = identity_model(dimml)
    ready(dimml, model, epoch=4)
    dimml.effective = {"audio": torch.tensor([True, False]), "visual": torch.tensor([False, True])}
    y = torch.tensor([0, 1])
    fa, fv = torch.randn(2, 2), torch.randn(2, 2)
    loss = dimml.loss(model({"audio": fa, "visual": fv}), y)
    torch.testing.assert_close(loss, F.cross_entropy(fa, y) + F.cross_entropy(fv, y))
    assert "loss_duc" not in dimml.epoch_summary()


def test_no_modality_gradient_reaches_another_encoder_on_a_real_model():
    inputs, y = small_batch()
    dimml = DIMML(temperature=1.0, start_epoch=0, private_heads=True)
    model = dimml.configure_model(small_model("concat"))
    ready(dimml, model)
    head = model.fusion
    dimml.effective = {"audio": torch.tensor([True, False] * 4), "visual": torch.tensor([False, True] * 4)}
    assert head.dim == 8 and not head.project  # small_model: both encoders give 8 features
    out = model(inputs)
    common = head.common(out.features)
    total = dimml.loss(out, y)
    _, terms = duc_loss(common, dimml.effective, 1.0)
    shared, private = head.shared_logits(common), head.private_logits(common)
    own = {
        m: F.cross_entropy(shared[m], y) + F.cross_entropy(private[m], y) + terms[f"{o}_to_{m}"]
        for m, o in (("audio", "visual"), ("visual", "audio"))
    }
    torch.testing.assert_close(total, own["audio"] + own["visual"])
    for m, other in (("audio", "visual"), ("visual", "audio")):
        params = list(model.encoders[m].parameters())
        full = torch.autograd.grad(total, params, retain_graph=True)
        mine = torch.autograd.grad(own[m], params, retain_graph=True)
        for a, b in zip(full, mine):
            torch.testing.assert_close(a, b)
        theirs = torch.autograd.grad(own[other], params, retain_graph=True, allow_unused=True)
        assert all(g is None or not g.any() for g in theirs)
    # the shared classifier is the interaction: both modalities' cross-entropies train it
    for m in MODALITIES:
        g = torch.autograd.grad(F.cross_entropy(shared[m], y), head.shared.weight, retain_graph=True)[0]
        assert g.abs().sum() > 0


def test_head_replaces_the_fusion_keeps_state_and_projects_unequal_features():
    dimml = DIMML()
    model = dimml.configure_model(small_model("sum"))
    assert isinstance(model.fusion, DetachedSharedHead) and model.fusion.name == "dimml_shared"
    assert set(model.fusion.state_dict()) == {"shared.weight", "shared.bias"}
    inputs, _ = small_batch()
    model.eval()
    out = model(inputs)
    again = DIMML().configure_model(small_model("sum", seed=1))
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval()(inputs).logits, out.logits)
    for m, z in model.modality_logits(out).items():
        torch.testing.assert_close(z, out.features[m] @ model.fusion.modality_linear(m).T + model.fusion.shared.bias)
    # unequal feature sizes: the smaller modality gets a bias-free map of its own, noted in the run
    uneven = DIMML()
    encoders = {"audio": Flat(3), "visual": Flat(5)}
    model = uneven.configure_model(MultimodalModel(encoders, SumFusion({"audio": 3, "visual": 5}, 2), 2))
    assert list(model.fusion.project) == ["audio"] and model.fusion.project["audio"].bias is None
    assert any("different sizes" in n for n in uneven.run_notes)
    z = model.modality_logits(model({"audio": torch.randn(2, 3), "visual": torch.randn(2, 5)}))
    assert z["audio"].shape == z["visual"].shape == (2, 2)
    params = [p for p, _ in model.fusion.modality_head_params("audio")]
    assert params == [model.fusion.project["audio"].weight] and model.fusion.modality_head_params("visual") == []


def test_declarations_notes_and_options():
    assert BALANCERS.get("dimml") is DIMML
    for fusion in ("concat", "sum"):
        assert DIMML.not_applicable(FUSIONS.get(fusion), 2, False) is None
        assert "dimml_shared" in DIMML.notes(FUSIONS.get(fusion), 2)[0]
    for fusion in ("gated", "film", "mid_mlp", "transformer", "lmf"):
        assert "mixes the modalities" in DIMML.not_applicable(FUSIONS.get(fusion), 2, False)
    for fusion in ("se_gate", "nl_gate"):
        assert "between the encoders" in DIMML.not_applicable(FUSIONS.get(fusion), 2, False)
    assert DIMML.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert "single-label" in DIMML.not_applicable(ConcatFusion, 2, True)
    assert "two or more" in DIMML.not_applicable(ConcatFusion, 1, False)
    assert any("certainty" in n for n in DIMML().run_notes)
    assert any("evaluate: sum" in n for n in DIMML(evaluate="sum").run_notes)
    assert any("private_heads" in n for n in DIMML(private_heads=True).run_notes)
    with pytest.raises(ValueError, match="evaluate"):
        DIMML(evaluate="mean")
    with pytest.raises(RuntimeError, match="configure_model"):
        DIMML().setup(small_model("concat"), RunContext(MODALITIES, 4, torch.device("cpu")))
    assert DIMML.presets["ave"]["temperature"] == 10.0 and DIMML.presets["cremad"]["temperature"] == 50.0


# --- the harness: resume and runs ----------------------------------------------------------------------------------

ENTRIES = {
    "dimml": {"temperature": 50.0, "duc_weight": 1.0, "start_epoch": "13.33%", "refresh_every": 0,
              "evaluate": "certainty", "eval_temperature": 1.0, "private_heads": False},
}  # fmt: skip


@pytest.fixture
def tiny_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4  # the DUC loss starts at epoch round(0.1333·4) = 1
    cfg["train"]["batch_size"] = 8
    cfg["balancers"].update(json.loads(json.dumps(ENTRIES)))
    cfg["balancers"]["dimml_variant"] = {
        "class": "benchmark.balancers.dimml:DIMML",
        **ENTRIES["dimml"],
        "temperature": 1.0,
        "start_epoch": 0,
        "refresh_every": 1,
        "evaluate": "sum",
        "private_heads": True,
    }
    return validate_config(cfg)


def test_resume_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "dimml", 0)
    full, _ = resume_reproduces(tiny_cfg, spec, tmp_path, monkeypatch)  # the effective dimensions cross the resume
    assert full["status"] == "ok"
    history = full["history"]
    assert "loss_duc" not in history[0] and all(row["loss_duc"] > 0 for row in history[1:])
    assert all(row["effective_dims_audio"] > 0 for row in history[1:])
    assert any("dimml_shared" in n and "replaces fusion 'concat'" in n for n in full["notes"])


def test_one_epoch_of_the_variant_under_sum_with_the_harness_finishes_ok(tiny_cfg, tmp_path):
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"]["epochs"] = 1
    spec = RunSpec("synthetic-av", "small_cnn", "sum", "dimml_variant", 0)
    m = train_run(validate_config(cfg), spec, tmp_path, log=quiet)
    assert m["status"] == "ok" and len(m["history"]) == 1
    row = m["history"][0]  # start_epoch 0, private heads, evaluate sum
    assert row["loss_ce_audio"] > 0 and row["loss_private_visual"] > 0 and row["loss_duc"] > 0
    assert "eval_weight_audio" not in row
    assert any("replaces fusion 'sum'" in n for n in m["notes"]) and any("private_heads" in n for n in m["notes"])
