"""The rest of the method library: each rule on a hand-computed case and at gradient level, every fusion and
backbone on two and three modalities."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from benchmark.balancers.agm import AGM, agm_coefficients
from benchmark.balancers.base import RunContext
from benchmark.balancers.gblend import GBlendOnline
from benchmark.balancers.mmcosine import MMCosine
from benchmark.balancers.mslr import MSLR, mslr_coefficient
from benchmark.balancers.pmr import PMR, pmr_coefficients, prototype_logits
from benchmark.balancers.regularizers import AuxLoss, FeatureDropout, ModalityDropout
from benchmark.models.backbones import BACKBONES
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.models.shapley import shapley_shares
from tests.conftest import small_batch, small_model, tiny_data_dirs
from tests.test_balancers import CTX, grads_after, reference_grads

JOINT = lambda out, y: F.cross_entropy(out.logits, y)  # noqa: E731


# --- Shapley shares (AGM, and the estimator of nonlinear fusions) -------------------------------------------


def test_shapley_shares_two_modalities_hand_computed():
    f = {frozenset(): 1.0, frozenset("a"): 3.0, frozenset("v"): 2.0, frozenset("av"): 7.0}
    shares = shapley_shares(lambda s: torch.tensor(f[s]), ["a", "v"])
    assert shares["a"].item() == pytest.approx(4.0)  # ½(7 − 2 + 3)
    assert shares["v"].item() == pytest.approx(3.0)  # ½(7 − 3 + 2)


def test_shapley_shares_three_modalities_hand_computed():
    # f = 1 + 10·[a] + 2·[b][c]: a owns 10, b and c split their interaction, each takes 1/3 of f(∅)
    f = lambda s: torch.tensor(1.0 + 10 * ("a" in s) + 2 * ("b" in s and "c" in s))  # noqa: E731
    shares = shapley_shares(f, ["a", "b", "c"])
    assert {m: v.item() for m, v in shares.items()} == pytest.approx({"a": 10 + 1 / 3, "b": 1 + 1 / 3, "c": 1 + 1 / 3})


def test_estimator_equals_the_exact_split_of_a_linear_head():
    model = small_model("concat")
    inputs, _ = small_batch()
    features = model.encode(inputs)
    exact = model.fusion.modality_logits(features)
    estimated = super(ConcatFusion, model.fusion).modality_logits(features)  # the generic Shapley estimator
    for m in exact:
        torch.testing.assert_close(estimated[m], exact[m])


def three_modality_model(fusion: str, unimodal_heads: bool = False) -> tuple[MultimodalModel, dict]:
    torch.manual_seed(0)
    encoders = {m: BACKBONES.get("small_cnn")("spectrogram", (1, 16, 16), width=2) for m in ("a", "b", "c")}
    model = MultimodalModel(
        encoders, FUSIONS.get(fusion)({m: e.out_dim for m, e in encoders.items()}, 4), 4, unimodal_heads
    )
    return model, {m: torch.randn(5, 1, 16, 16) for m in ("a", "b", "c")}


@pytest.mark.parametrize("fusion", ["concat", "sum", "mid_mlp", "film", "gated", "transformer", "lmf"])
@pytest.mark.parametrize("modalities", [2, 3])
def test_every_fusion_on_two_and_three_modalities(fusion, modalities):
    if modalities == 2:
        model, (inputs, _) = small_model(fusion, num_classes=4), small_batch()
    else:
        model, inputs = three_modality_model(fusion)
    model.eval()  # the transformer's dropout off, so the shares add up exactly
    out = model(inputs)
    assert out.logits.shape == (len(next(iter(inputs.values()))), 4)
    shares = model.modality_logits(out)
    assert set(shares) == set(model.modalities)
    torch.testing.assert_close(sum(shares.values()), out.logits, atol=1e-5, rtol=1e-4)  # Σ_m m_m = f(N)
    model.train()
    model(inputs).logits.sum().backward()
    assert all(
        p.grad is not None for p in model.fusion.parameters() if p.requires_grad and "bias" not in p.shape.__str__()
    )


@pytest.mark.parametrize("backbone", ["conformer", "r2plus1d_18"])
def test_sequence_backbones_on_spectrograms_and_frames(backbone):
    cls = BACKBONES.get(backbone)
    spec, frames = cls("spectrogram", (1, 32, 33)), cls("frames", (2, 3, 24, 24))
    assert spec(torch.randn(3, 1, 32, 33)).shape == (3, spec.out_dim)
    assert frames(torch.randn(3, 2, 3, 24, 24)).shape == (3, frames.out_dim)


# --- AGM ---------------------------------------------------------------------------------------------------


def test_agm_coefficients_hand_computed():
    k = agm_coefficients(torch.tensor([0.5, 1.0]), torch.tensor([0.8, 0.9]), alpha=0.5)
    # k_a = exp(0.5·(exp(0.9−0.8) − exp(1.0−0.5))), k_v = exp(0.5·(exp(0.8−0.9) − exp(0.5−1.0)))
    assert k.tolist() == pytest.approx([0.7620256, 1.1608510], abs=1e-6)
    capped = agm_coefficients(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 100.0]), alpha=1.0)
    assert capped[0].item() == pytest.approx(torch.exp(torch.tensor(10.0)).item())  # the exponent is capped at 10·α


def test_agm_scales_each_modalitys_share_of_the_gradient():
    """For a concat head m_a = W_a φ_a + b/2, so the audio encoder and head block get k_a × the joint gradient,
    the visual ones k_v ×, and the shared bias (k_a + k_v)/2 × (the feature-masking option: the released input
    masking is tested in tests/test_agm.py)."""
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, JOINT, inputs, y)
    agm = AGM(alpha=0.5, masking="feature")
    agm.setup(model, RunContext(**CTX))
    model.zero_grad()
    out = agm.forward(model, inputs)
    with torch.no_grad():
        shares = model.fusion.modality_logits(out.features)
        scores = torch.stack([-torch.log_softmax(v, 1).gather(1, y[:, None]).mean() for v in shares.values()])
        k = agm_coefficients(scores, torch.zeros(2), 0.5)  # first step: the running means are still zero
    agm.loss(out, y).backward()
    k = dict(zip(["audio", "visual"], k))
    d = model.encoders["audio"].out_dim
    for name, p in model.named_parameters():
        if name.startswith("encoders."):
            torch.testing.assert_close(p.grad, k[name.split(".")[1]] * ref[name], rtol=1e-4, atol=1e-6)
    g = model.fusion.head.weight.grad
    torch.testing.assert_close(g[:, :d], k["audio"] * ref["fusion.head.weight"][:, :d], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g[:, d:], k["visual"] * ref["fusion.head.weight"][:, d:], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        model.fusion.head.bias.grad, (k["audio"] + k["visual"]) / 2 * ref["fusion.head.bias"], rtol=1e-4, atol=1e-6
    )
    assert agm.running.tolist() == pytest.approx(scores.tolist())  # S̄ after one step is that step's score


# --- MSLR --------------------------------------------------------------------------------------------------


def test_mslr_coefficient_and_memory():
    assert mslr_coefficient(0.9, 0.6, [0.4, 0.5, 0.6, 0.5, 0.5]) == pytest.approx(1.08)
    mslr = MSLR(window=2, initial={"audio": 0.9})
    mslr.setup(small_model("concat"), RunContext(**CTX))
    history = [(0.5, 0.2), (0.5, 0.3), (0.6, 0.5), (0.6, 0.4)]
    ks = []
    for epoch, (a, v) in enumerate(history):
        mslr.on_epoch_end(epoch, {"val_acc_audio": a, "val_acc_visual": v})
        ks += [mslr.k["audio"], mslr.k["visual"]]
    # k⁰ until two accuracies are remembered, then k⁰ · acc / mean(previous two)
    assert ks == pytest.approx([0.9, 1.0, 0.9, 1.0, 0.9 * 0.6 / 0.5, 0.5 / 0.25, 0.9 * 0.6 / 0.55, 0.4 / 0.4])


def test_mslr_scales_encoder_and_head_slice():
    inputs, y = small_batch()
    model = small_model("concat")
    ref = reference_grads(model, JOINT, inputs, y)
    mslr = MSLR()
    got = grads_after(model, mslr, inputs, y)  # setup with k = k⁰ = 1: identical to joint
    assert all(torch.allclose(got[n], ref[n]) for n in got)
    mslr.k = {"audio": 2.0, "visual": 0.5}
    model.zero_grad()
    out = model(inputs)
    mslr.loss(out, y).backward()
    mslr.after_backward(out, y)
    d = model.encoders["audio"].out_dim
    for name, p in model.named_parameters():
        if name.startswith("encoders."):
            torch.testing.assert_close(p.grad, mslr.k[name.split(".")[1]] * ref[name])
    torch.testing.assert_close(model.fusion.head.weight.grad[:, :d], 2.0 * ref["fusion.head.weight"][:, :d])
    torch.testing.assert_close(model.fusion.head.weight.grad[:, d:], 0.5 * ref["fusion.head.weight"][:, d:])
    torch.testing.assert_close(model.fusion.head.bias.grad, ref["fusion.head.bias"])


# --- PMR ---------------------------------------------------------------------------------------------------


def test_pmr_rules_hand_computed():
    sim = prototype_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert sim.tolist() == [[-5.0, -4.0]]
    assert pmr_coefficients(torch.tensor([1.5, 1.0])).tolist() == pytest.approx([0.0, 0.5])  # audio leads: ρ = 1.5
    assert pmr_coefficients(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([1.0, 0.0])  # min(3 − 1, 1) = 1


def test_pmr_prototypes_are_class_means_and_only_the_weak_encoder_gets_the_prototype_loss(in_tiny_workspace):
    from benchmark.data.cache import BatchPreparer, load_info, load_part

    info = load_info(tiny_data_dirs().processed)
    data = load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits)
    prep = BatchPreparer(info["modalities"], {"mean": [0.5] * 3, "std": [0.25] * 3}, torch.device("cpu"))
    torch.manual_seed(0)
    encoders = {
        m: BACKBONES.get("small_cnn")(k, tuple(info["modalities"][m]["shape"]), width=2)
        for m, k in (("audio", "spectrogram"), ("visual", "frames"))
    }
    model = MultimodalModel(encoders, ConcatFusion({m: e.out_dim for m, e in encoders.items()}, 8), 8)
    pmr = PMR(alpha=1.0, prototype_fraction=1.0)  # prototypes from all batches; the released constant weight
    ctx = RunContext(**CTX, train=data, prep=prep, settings={"eval_batch_size": 7, "batch_size": 7})
    pmr.setup(model, ctx)
    pmr.on_epoch_start(0)
    model.eval()
    with torch.no_grad():
        inputs, y = prep(data.__getitems__(list(range(len(data)))))
        features = model.encode(inputs)
    for m in ("audio", "visual"):
        means = torch.stack([features[m][y == c].mean(0) for c in range(8)])
        torch.testing.assert_close(pmr.prototypes[m], means, rtol=1e-4, atol=1e-5)
    model.train()
    inputs, y = prep(data.__getitems__(list(range(16))))
    ref = reference_grads(model, JOINT, inputs, y)
    model.zero_grad()
    out = model(inputs)
    pmr.loss(out, y).backward()
    weights = dict(
        zip(
            ("audio", "visual"),
            pmr_coefficients(
                torch.stack(
                    [
                        torch.softmax(prototype_logits(out.features[m].detach(), pmr.prototypes[m]), 1)
                        .gather(1, y[:, None])
                        .sum()
                        for m in ("audio", "visual")
                    ]
                )
            ),
        )
    )
    strong = min(weights, key=lambda m: weights[m])
    weak = max(weights, key=lambda m: weights[m])
    assert weights[strong] == 0 and weights[weak] > 0
    for name, p in model.named_parameters():
        if name.startswith(f"encoders.{strong}."):
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-4, atol=1e-7)  # untouched by the prototype loss
    assert any(
        not torch.allclose(p.grad, ref[n]) for n, p in model.named_parameters() if n.startswith(f"encoders.{weak}.")
    )


# --- MMCosine, dropout, modality dropout, auxiliary losses --------------------------------------------------


def test_mmcosine_logits_hand_computed_and_inapplicable_to_mixing_fusions():
    fusion = ConcatFusion({"a": 2, "v": 2}, 2)
    with torch.no_grad():
        fusion.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0]]))
        fusion.head.bias.fill_(5.0)  # unused by the cosine head
    model = MultimodalModel({"a": torch.nn.Identity(), "v": torch.nn.Identity()}, fusion, 2)
    model = MMCosine(scale=10.0).configure_model(model)
    out = model({"a": torch.tensor([[3.0, 4.0]]), "v": torch.tensor([[0.0, 2.0]])})
    # a: [0.6, 0.8]·rows [1,0],[0,1] -> [6, 8]; v: [0, 1]·rows [0,1],[1,0] -> [10, 0]
    assert out.logits.tolist() == [[16.0, 8.0]]
    assert MMCosine.unsupported(FUSIONS.get("mid_mlp"), 2) and MMCosine.unsupported(FUSIONS.get("sum"), 2) is None


def test_feature_dropout_only_in_training():
    inputs, y = small_batch()
    model = small_model("concat")
    model.eval()
    drop = FeatureDropout(p=0.5)
    torch.manual_seed(0)
    dropped = drop.forward(model, inputs).logits
    assert not torch.allclose(dropped, model(inputs).logits)
    assert torch.allclose(FeatureDropout(p=0.0).forward(model, inputs).logits, model(inputs).logits)


def test_modality_dropout_mask_and_zeroed_inputs(monkeypatch):
    md = ModalityDropout(p=0.5)
    torch.manual_seed(0)
    keep = md.keep_mask(10_000, 3, torch.device("cpu"))
    assert (keep.sum(1) >= 1).all()  # no sample loses every modality
    assert keep.mean().item() == pytest.approx(1 - 0.5 + 0.5**3 / 3, abs=0.02)  # rescued rows keep one of three
    inputs, y = small_batch()
    model = small_model("concat")
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    monkeypatch.setattr(md, "keep_mask", lambda *a: mask)
    md.setup(model, RunContext(**CTX))
    manual = {
        "audio": inputs["audio"] * mask[:, 0, None, None, None],
        "visual": inputs["visual"] * mask[:, 1, None, None, None, None],
    }
    ref = reference_grads(model, JOINT, manual, y)
    got = grads_after(model, md, inputs, y)
    assert all(torch.allclose(got[n], ref[n]) for n in got)


def test_aux_loss_is_the_mean_of_the_head_losses():
    inputs, y = small_batch()
    model = small_model("sum", unimodal_heads=True)
    aux = AuxLoss()
    aux.setup(model, RunContext(**CTX))
    out = model(inputs)
    expected = (F.cross_entropy(out.logits, y) + sum(F.cross_entropy(v, y) for v in out.unimodal.values())) / 3
    torch.testing.assert_close(aux.loss(out, y), expected)


# --- online G-Blend ----------------------------------------------------------------------------------------


def test_gblend_online_super_epochs_and_held_out_split(in_tiny_workspace):
    from benchmark.data.cache import load_part

    gb = GBlendOnline(first_super_epoch=4, super_epoch=3, holdout_fraction=0.25, min_holdout=4)
    assert gb.super_epoch_starts(10) == [0, 4, 7] and gb.super_epoch_starts(3) == [0]
    train = load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits)
    kept = gb.training_split(train, seed=0)
    held = set(gb.held_out["V"].ids())
    assert held.isdisjoint(kept.ids()) and len(held) + len(kept) == len(train)
    assert set(gb.held_out["T'"].ids()) <= set(kept.ids())


def test_pretrain_starts_every_encoder_from_its_unimodal_checkpoint(tmp_path):
    from benchmark.balancers.pretrain import Pretrain

    model = small_model("concat")
    artifacts = {}
    for m in ("audio", "visual"):
        donor = small_model("concat", seed=7)  # a different initialisation, standing in for the unimodal run
        state = {f"encoders.{m}.{k}": v for k, v in donor.encoders[m].state_dict().items()}
        torch.save({"state_dict": state}, tmp_path / f"{m}.pt")
        artifacts[f"unimodal_checkpoint/{m}"] = tmp_path / f"{m}.pt"
    head_before = model.fusion.head.weight.clone()
    Pretrain().setup(model, RunContext(**CTX, artifacts=artifacts))
    donor = small_model("concat", seed=7)
    for m in ("audio", "visual"):
        for (k, v), (_, w) in zip(model.encoders[m].state_dict().items(), donor.encoders[m].state_dict().items()):
            assert torch.equal(v, w), (m, k)
    assert torch.equal(model.fusion.head.weight, head_before)  # the fusion head starts fresh
    torch.save({"state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no weights for the audio encoder"):
        Pretrain().setup(
            small_model("concat"),
            RunContext(**CTX, artifacts={**artifacts, "unimodal_checkpoint/audio": tmp_path / "empty.pt"}),
        )


def test_gblend_online_reestimates_at_every_super_epoch(in_tiny_workspace):
    import yaml

    from benchmark.config import validate_config
    from benchmark.data.cache import load_part
    from benchmark.grid import RunSpec
    from benchmark.run import execute_run

    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"]["gblend_online"] = {
        "first_super_epoch": 2,
        "super_epoch": 1,
        "holdout_fraction": 0.25,
        "min_holdout": 4,
    }
    lines = []
    metrics, _ = execute_run(
        validate_config(cfg), RunSpec("synthetic-av", "small_cnn", "concat", "gblend_online", 0), log=lines.append
    )
    starts = [line for line in lines if line.startswith("[gblend_online] super-epoch from epoch")]
    assert [s.split()[4] for s in starts] == ["0", "2", "3"]  # super-epochs [0, 2), [2, 3), [3, 4)
    assert metrics["selection"]["trained_on"] < len(
        load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits)
    )  # V held out
    weights = [{h: row[f"w_{h}"] for h in ("audio", "visual", "fused")} for row in metrics["history"]]
    assert all(sum(w.values()) == pytest.approx(1.0) for w in weights)
    assert weights[0] == weights[1]  # fixed inside the first super-epoch


def test_backbone_weights_per_modality(tmp_path):
    from benchmark.models.model import build_model

    donor = BACKBONES.get("small_cnn")("frames", (2, 3, 8, 8), width=2)
    torch.save(donor.state_dict(), tmp_path / "visual.pt")
    model = build_model(
        modality_info={
            "audio": {"source": "audio", "shape": [1, 16, 16]},
            "visual": {"source": "video", "shape": [2, 3, 8, 8]},
        },
        num_classes=3,
        backbone_cls=BACKBONES.get("small_cnn"),
        backbone_params={"width": 2, "weights": {"visual": str(tmp_path / "visual.pt")}},
        fusion_cls=FUSIONS.get("concat"),
        fusion_params={},
        unimodal_heads=False,
        seed=0,
    )
    assert all(
        torch.equal(a, b) for a, b in zip(model.encoders["visual"].state_dict().values(), donor.state_dict().values())
    )
    torch.save({"nonsense.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="keys not in"):
        BACKBONES.get("small_cnn")("frames", (2, 3, 8, 8), width=2, weights=str(tmp_path / "bad.pt"))
