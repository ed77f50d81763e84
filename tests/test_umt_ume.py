"""UMT and UME (Du et al. 2023): the teachers are frozen copies outside the model, the distillation loss and its
gradient by hand, UME's heads and gradients by hand and its training step for step against separately trained
unimodal models; then resume and runs with the harness (the unimodal runs trained first, as the DAG does)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.joint import Joint
from benchmark.balancers.unimodal_teacher import UME, UMT, UnimodalEnsemble
from benchmark.config import validate_config
from benchmark.grid import NO_FUSION, RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel, fingerprint
from benchmark.run import prepare_run, train_run
from benchmark.settings import Resolver
from benchmark.train import make_optimizer
from tests.conftest import small_batch, small_model, tiny_config
from tests.test_balancers import CTX, grads_after, reference_grads
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ("audio", "visual")
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


def unimodal_checkpoints(tmp_path, seed: int = 7) -> dict:
    """model.pt files as the unimodal runs write them, holding the encoders of a model initialised with ``seed``."""
    donor = small_model("concat", seed=seed)
    artifacts = {}
    for m in MODALITIES:
        state = {f"encoders.{m}.{k}": v for k, v in donor.encoders[m].state_dict().items()}
        state["fusion.head.weight"] = torch.zeros(3, donor.encoders[m].out_dim)  # the unimodal run's classifier
        torch.save({"state_dict": state, "status": "ok"}, tmp_path / f"{m}.pt")
        artifacts[f"unimodal_checkpoint/{m}"] = tmp_path / f"{m}.pt"
    return artifacts


def umt_ready(tmp_path, model=None, epoch: int = 0, **params):
    model = model or small_model("concat")
    umt = UMT(**params)
    umt.configure_model(model)
    umt.setup(model, RunContext(**CTX, artifacts=unimodal_checkpoints(tmp_path), epoch=epoch))
    return umt, model


# --- UMT ---------------------------------------------------------------------------------------------------------


def test_umt_teachers_hold_the_unimodal_encoders_frozen_and_outside_the_model(tmp_path):
    plain = small_model("concat")
    umt, model = umt_ready(tmp_path)
    donor = small_model("concat", seed=7)
    for m in MODALITIES:
        teacher = umt.teachers[m]
        for (k, v), (_, w) in zip(teacher.state_dict().items(), donor.encoders[m].state_dict().items()):
            assert torch.equal(v, w), (m, k)
        assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # the model is untouched: the same keys and weights as a joint model's, and the optimizer never sees a teacher
    assert list(model.state_dict()) == list(plain.state_dict()) and fingerprint(model) == fingerprint(plain)
    teacher_ids = {id(p) for t in umt.teachers.values() for p in t.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert not teacher_ids & {id(p) for g in make_optimizer(model, SGD).param_groups for p in g["params"]}
    state = umt.state_dict()  # the method's checkpointed state: no teacher weights (setup reloads them)
    assert "teachers" not in state and not any(isinstance(v, torch.nn.Module) for v in state.values())
    model.train()  # the loop's model.train() leaves the teachers in eval mode
    assert not any(t.training for t in umt.teachers.values())


def test_umt_loss_and_feature_gradients_hand_computed(tmp_path):
    inputs, y = small_batch()
    umt, model = umt_ready(tmp_path, distill_weight=10.0)
    teacher = small_model("concat", seed=7).eval()
    with torch.no_grad():
        target = {m: teacher.encoders[m](inputs[m]) for m in MODALITIES}

    out = umt.forward(model, inputs)
    for f in out.features.values():
        f.retain_grad()
    loss = umt.loss(out, y)
    by_hand = F.cross_entropy(out.logits, y) + 10.0 * sum(
        ((out.features[m] - target[m]) ** 2).sum() / target[m].numel() for m in MODALITIES
    )
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    umt_feature_grads = {m: out.features[m].grad.clone() for m in MODALITIES}
    head_grad = model.fusion.head.weight.grad.clone()
    assert all(p.grad is None for t in umt.teachers.values() for p in t.parameters())

    model.zero_grad(set_to_none=True)
    joint = model(inputs)
    for f in joint.features.values():
        f.retain_grad()
    F.cross_entropy(joint.logits, y).backward()
    for m in MODALITIES:  # d/dφ of λ·mean((φ − t)²) is 2λ(φ − t)/(B·d), on top of the task gradient
        expected = joint.features[m].grad + 2 * 10.0 * (joint.features[m] - target[m]).detach() / target[m].numel()
        torch.testing.assert_close(umt_feature_grads[m], expected)
    torch.testing.assert_close(head_grad, model.fusion.head.weight.grad)  # the distillation never reaches the head


def test_umt_without_weight_or_outside_the_window_is_joint_training(tmp_path):
    inputs, y = small_batch()
    joint = grads_after(small_model("concat"), Joint(), inputs, y)
    umt, model = umt_ready(tmp_path, distill_weight=0.0)
    model.zero_grad(set_to_none=True)
    umt.loss(umt.forward(model, inputs), y).backward()
    for k, g in joint.items():
        torch.testing.assert_close(dict(model.named_parameters())[k].grad, g)
    umt, model = umt_ready(tmp_path, epoch=0, start_epoch=2, end_epoch=3)
    out = umt.forward(model, inputs)
    assert umt._targets is None  # the teachers do not even run outside the window
    assert umt.loss(out, y).item() == pytest.approx(F.cross_entropy(out.logits, y).item())
    umt.ctx.epoch = 2
    assert umt.loss(umt.forward(model, inputs), y).item() > F.cross_entropy(out.logits, y).item()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_umt_teachers_stay_frozen_through_optimizer_steps(tmp_path, mode):
    umt, model = umt_ready(tmp_path, teacher_mode=mode)
    before = {m: copy.deepcopy(t.state_dict()) for m, t in umt.teachers.items()}
    optimizer = make_optimizer(model, SGD)
    student_before = fingerprint(model)
    for seed in range(2):
        inputs, y = small_batch(seed=seed)
        optimizer.zero_grad(set_to_none=True)
        umt.loss(umt.forward(model, inputs), y).backward()
        optimizer.step()
    assert fingerprint(model) != student_before
    for m, teacher in umt.teachers.items():
        for k, v in teacher.state_dict().items():
            if mode == "train" and k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # BalanceBenchmark's training-mode teacher: its normalisation statistics drift, unused
            assert torch.equal(v, before[m][k]), (m, k)
        assert teacher.training == (mode == "train")


def test_umt_reports_a_missing_failed_or_empty_unimodal_checkpoint(tmp_path):
    artifacts = unimodal_checkpoints(tmp_path)

    def setup(**override):
        UMT().setup(small_model("concat"), RunContext(**CTX, artifacts={**artifacts, **override}))

    with pytest.raises(FileNotFoundError, match="weights were not kept"):
        setup(**{"unimodal_checkpoint/audio": tmp_path / "absent.pt"})
    torch.save({"state_dict": None, "status": "failed", "reason": "diverged"}, tmp_path / "failed.pt")
    with pytest.raises(ValueError, match="failed \\(diverged\\)"):
        setup(**{"unimodal_checkpoint/visual": tmp_path / "failed.pt"})
    torch.save({"state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no weights for the audio encoder"):
        setup(**{"unimodal_checkpoint/audio": tmp_path / "empty.pt"})


def test_umt_reads_the_unimodal_runs_of_the_same_seed_and_they_are_in_its_identity():
    r = Resolver(validate_config(tiny_config(balancers=["joint", "umt"])))
    umt = r.run(RunSpec("synthetic-av", "small_cnn", "concat", "umt", 0))
    for m in MODALITIES:
        unimodal = r.run(RunSpec("synthetic-av", "small_cnn", NO_FUSION, "unimodal", 0, m))
        assert umt.artifacts()[f"unimodal_checkpoint/{m}"] == unimodal.path / "model.pt"
        assert umt.record()["prerequisites"][f"unimodal_checkpoint/{m}"] == unimodal.identity


# --- UME ---------------------------------------------------------------------------------------------------------


def test_ume_logits_are_the_mean_of_the_unimodal_classifiers_and_the_model_keys_are_theirs():
    inputs, y = small_batch()
    model = UME().configure_model(small_model("concat"))
    assert isinstance(model.fusion, UnimodalEnsemble)
    out = model(inputs)
    heads = {m: out.features[m] @ model.fusion.heads[m].weight.T + model.fusion.heads[m].bias for m in MODALITIES}
    torch.testing.assert_close(out.logits, (heads["audio"] + heads["visual"]) / 2)
    for m, z in model.modality_logits(out).items():  # acc_<m>: each unimodal model's own logits
        torch.testing.assert_close(z, heads[m])
    ume = UME()
    ume.setup(model, RunContext(**CTX))
    trained = ume.forward(model, inputs)  # the training forward gives the evaluation logits
    torch.testing.assert_close(trained.logits, out.logits)
    assert {k.split(".")[0] for k in model.state_dict()} == {"absent", "encoders", "fusion"}
    assert {k for k in model.state_dict() if k.startswith("fusion.")} == {
        f"fusion.heads.{m}.{p}" for m in MODALITIES for p in ("weight", "bias")
    }
    with pytest.raises(RuntimeError, match="configure_model"):
        UME().setup(small_model("concat"), RunContext(**CTX))


def test_ume_is_the_same_model_and_random_stream_whatever_the_grid_fusion():
    concat = UME().configure_model(small_model("concat"))
    after_concat = torch.random.get_rng_state()
    assert fingerprint(concat) == fingerprint(UME().configure_model(small_model("sum")))
    assert torch.equal(torch.random.get_rng_state(), after_concat)  # augmentation draws follow the same stream
    assert fingerprint(concat) != fingerprint(UME().configure_model(small_model("concat", seed=1)))


def test_ume_each_encoder_learns_from_its_own_unimodal_loss_only():
    inputs, y = small_batch()
    model = UME().configure_model(small_model("concat"))
    grads = grads_after(model, UME(), inputs, y)
    for m in MODALITIES:
        own = reference_grads(model, lambda out, y, m=m: F.cross_entropy(model.modality_logits(out)[m], y), inputs, y)
        for k, g in grads.items():
            if k.startswith((f"encoders.{m}.", f"fusion.heads.{m}.")):
                torch.testing.assert_close(g, own[k])
        z = model.modality_logits(model(inputs))[m].detach()  # dCE/db_m = mean_i (softmax(z_i) − onehot(y_i))
        torch.testing.assert_close(grads[f"fusion.heads.{m}.bias"], (z.softmax(1) - F.one_hot(y, 3)).mean(0))
    other = dict(inputs, visual=torch.randn_like(inputs["visual"]))  # the visual input cannot move audio's gradient
    changed = grads_after(model, UME(), other, y)
    for k, g in grads.items():
        if k.startswith(("encoders.audio.", "fusion.heads.audio.")):
            torch.testing.assert_close(changed[k], g)


def test_ume_trains_step_for_step_as_separately_trained_unimodal_models():
    model = UME().configure_model(small_model("concat"))
    alone = {}
    for m in MODALITIES:  # the unimodal run's model: the encoder and a one-modality concat head (a Linear)
        head = ConcatFusion({m: model.encoders[m].out_dim}, 3)
        head.head.load_state_dict(model.fusion.heads[m].state_dict())
        alone[m] = MultimodalModel({m: copy.deepcopy(model.encoders[m])}, head, 3)
    ume = UME()
    ume.setup(model, RunContext(**CTX))
    optimizers = [make_optimizer(model, SGD)] + [make_optimizer(alone[m], SGD) for m in MODALITIES]
    for seed in range(3):
        inputs, y = small_batch(seed=seed)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        ume.loss(ume.forward(model, inputs), y).backward()
        for m in MODALITIES:
            F.cross_entropy(alone[m]({m: inputs[m]}).logits, y).backward()
        for opt in optimizers:
            opt.step()
    for m in MODALITIES:
        for (k, v), (_, w) in zip(model.encoders[m].state_dict().items(), alone[m].encoders[m].state_dict().items()):
            torch.testing.assert_close(v, w, msg=f"{m} {k}")
        torch.testing.assert_close(model.fusion.heads[m].weight, alone[m].fusion.head.weight)
        torch.testing.assert_close(model.fusion.heads[m].bias, alone[m].fusion.head.bias)


def test_ume_multi_label_loss_is_the_sum_of_the_classifiers_binary_cross_entropies():
    inputs, _ = small_batch()
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    model = UME().configure_model(small_model("concat"))
    ume = UME()
    ume.setup(model, RunContext(**CTX))
    out = ume.forward(model, inputs)
    by_hand = sum(F.binary_cross_entropy_with_logits(z, y) for z in model.modality_logits(out).values())
    assert ume.loss(out, y).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_declarations_fusions_and_notes():
    concat, sum_, film = (FUSIONS.get(f) for f in ("concat", "sum", "film"))
    assert UME.not_applicable(concat, 2, True) is None and UME.not_applicable(sum_, 3, False) is None
    for name in ("film", "gated", "mid_mlp", "se_gate", "mid_concat"):
        assert UME.not_applicable(FUSIONS.get(name), 2, False), name
    assert UMT.not_applicable(film, 2, True) is None and UMT.needs == ("unimodal_checkpoints",)
    assert UMT.not_applicable(FUSIONS.get("mid_concat"), 2, False)  # no per-modality features to distil
    assert any("extension" in n for n in UMT.notes(FUSIONS.get("se_gate"), 2))
    assert any("extension" in n for n in UMT.notes(concat, 3)) and not UMT.notes(concat, 2)
    assert any("does not use fusion 'sum'" in n for n in UME.notes(sum_, 2))
    with pytest.raises(ValueError, match="teacher_mode"):
        UMT(teacher_mode="frozen")
    assert any("training mode" in n for n in UMT(teacher_mode="train").run_notes)


# --- the harness: resume and runs ----------------------------------------------------------------------------------


@pytest.fixture
def workspace(tiny_workspace, tmp_path, monkeypatch) -> dict:
    """A copy of the tiny workspace (4 epochs, batches of 8) holding the unimodal runs UMT reads, where the DAG
    would put them."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace, root, ignore=shutil.ignore_patterns("results"))
    monkeypatch.chdir(root)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["train"].update(epochs=4, batch_size=8)
    cfg = validate_config(cfg)
    for m in MODALITIES:
        train_run(cfg, RunSpec("synthetic-av", "small_cnn", NO_FUSION, "unimodal", 0, m), log=quiet)
    return cfg


def test_umt_resumes_and_its_checkpoint_has_the_models_keys_only(workspace, tmp_path, monkeypatch):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "umt", 0)
    full, _ = resume_reproduces(workspace, spec, tmp_path, monkeypatch)
    assert full["status"] == "ok" and all(row["loss_distill_audio"] > 0 for row in full["history"])
    keys = set(torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"])
    joint = prepare_run(workspace, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)).model
    assert keys == set(joint.state_dict())  # a joint model's keys: encoders, fusion head, absent inputs; no teacher


def test_weights_missing_after_a_fresh_clone_are_restored_by_training_the_unimodal_run_again(workspace):
    """Committed results carry no weights: UMT's teacher checkpoint is re-made when its run's metrics are reproduced,
    and refused (with what to do) when they are not."""
    resolver = Resolver(workspace)
    audio = resolver.run(RunSpec("synthetic-av", "small_cnn", NO_FUSION, "unimodal", 0, "audio"))
    original = torch.load(audio.path / "model.pt", weights_only=True)["state_dict"]
    (audio.path / "model.pt").unlink()
    lines: list[str] = []
    prepare_run(workspace, RunSpec("synthetic-av", "small_cnn", "concat", "umt", 0), log=lines.append)
    restored = torch.load(audio.path / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(restored[k], v) for k, v in original.items()) and set(restored) == set(original)
    assert any("restored" in line for line in lines) and not list(audio.path.glob(".restore-*"))

    (audio.path / "model.pt").unlink()
    record = json.loads((audio.path / "metrics.json").read_text())
    record["metrics"]["best"]["test"]["accuracy"] += 0.01  # a recorded number this machine does not reproduce
    (audio.path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="did not reproduce its recorded metrics"):
        prepare_run(workspace, RunSpec("synthetic-av", "small_cnn", "concat", "umt", 0), log=quiet)
    assert not (audio.path / "model.pt").exists()


def test_ume_resumes_and_is_the_same_run_under_concat_and_sum(in_tiny_workspace, tmp_path, monkeypatch):
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"].update(epochs=4, batch_size=8)
    cfg = validate_config(cfg)  # UME needs no prerequisite: the shared workspace, every output under tmp_path
    full, _ = resume_reproduces(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "ume", 0), tmp_path, monkeypatch)
    assert full["status"] == "ok" and {"acc_audio", "acc_visual"} <= set(full["metrics"]["best"]["test"])
    assert all(row["loss_uni_visual"] > 0 for row in full["history"])
    cfg = json.loads(json.dumps(cfg))
    cfg["train"]["epochs"] = 1
    cfg = validate_config(cfg)
    runs = [
        train_run(cfg, RunSpec("synthetic-av", "small_cnn", f, "ume", 0), tmp_path / f, log=quiet)
        for f in ("concat", "sum")
    ]
    assert all(m["status"] == "ok" and len(m["history"]) == 1 for m in runs)
    assert runs[0]["metrics"] == runs[1]["metrics"] and runs[0]["history"] == runs[1]["history"]
