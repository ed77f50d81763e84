"""The G-Blend paper's full setting: multi-label targets and metrics, Algorithm 1, optical flow, K clips per video,
the regularisation and architecture baselines, modality subsets, and a three-modality multi-label DAG run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, RunContext
from benchmark.balancers.gblend import carve_holdout
from benchmark.config import ConfigError, dataset_settings, load_config, validate_config
from benchmark.data.balance import balance_multilabel
from benchmark.data.cache import CachedSplit
from benchmark.data.preprocess import optical_flow, window_starts
from benchmark.grid import RunSpec, grid_runs
from benchmark.metrics import (
    accuracy,
    classification_metrics,
    mean_auc,
    multilabel_average_precision,
    roc_auc,
    task_loss,
)
from benchmark.models.backbones import BACKBONES, ResNet18, SmallCNN
from benchmark.models.fusions import FUSIONS
from benchmark.models.stream_fusions import temporal_vectors
from benchmark.settings import Resolver
from tests.conftest import REPO, data_dirs, default_config, tiny_config


# --- multi-label metrics and loss ----------------------------------------------------------------------------------
def test_multilabel_loss_is_mean_binary_cross_entropy_by_hand():
    logits, y = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 0.0]])
    # BCE(0, 1) = log 2; BCE(log 3, 0) = log(1 + 3) = 2 log 2; mean over the two classes = 1.5 log 2
    assert task_loss(logits, y).item() == pytest.approx(1.5 * math.log(2))
    assert task_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])).item() == pytest.approx(math.log(4 / 3))


def test_multilabel_map_mauc_and_topk_by_hand():
    # class 0: scores 0.9 (+), 0.8 (−), 0.1 (+) -> AP = (1/2)(1/1) + (1/2)(2/3) = 5/6; AUC = 1/2 (pairs: (0.9>0.8)
    # yes, (0.1>0.8) no)
    # class 1: scores 0.2 (−), 0.7 (+), 0.7 (−) -> AP: the tie at 0.7 is one threshold, P = 1/2 -> AP = 1/2; AUC = (1
    # + 0.5)/2 = 3/4
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.1, 0.7]])
    y = torch.tensor([[1, 0], [0, 1], [1, 0]])
    logits = torch.logit(probs.double())
    assert roc_auc(logits[:, 0], y[:, 0]) == pytest.approx(0.5)
    assert roc_auc(logits[:, 1], y[:, 1]) == pytest.approx(0.75)
    assert multilabel_average_precision(logits, y) == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert mean_auc(logits, y) == pytest.approx((0.5 + 0.75) / 2)
    # top-1 "hit": the highest-scored class is a label — rows 0 yes (0.9, class 0), 1 no (class 0), 2 yes (class 1?)
    # no: 0.7 is class 1, label 0
    assert accuracy(logits, y) == pytest.approx(1 / 3)
    assert accuracy(logits, y, k=2) == pytest.approx(1.0)


def test_single_label_top5_and_video_level_top_k():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5, 6], [0.0, 1, 2, 3, 4, 5, 6]])
    y = torch.tensor([4, 0, 0])  # rank 5, rank 7, rank 7
    out = classification_metrics(logits, y, clip_ids=["a#0", "b#0", "b#1"])
    assert out["accuracy"] == 0 and out["top5"] == pytest.approx(1 / 3)
    assert out["video_accuracy"] == 0 and out["video_top5"] == pytest.approx(0.5)  # video a: rank 5, video b: rank 7
    assert "top5" not in classification_metrics(logits[:, :5], y.clamp(max=4))  # 5 classes: top-5 says nothing


def test_multilabel_video_level_averages_sigmoid_probabilities():
    # video v: clips with probabilities (0.9, 0.1) and (0.3, 0.5) -> mean (0.6, 0.3); video w: (0.2, 0.8)
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.5], [0.2, 0.8]], dtype=torch.float64)
    y = torch.tensor([[1, 0], [1, 0], [0, 1]])
    out = classification_metrics(torch.logit(probs), y, clip_ids=["v#0", "v#1", "w#0"])
    assert {"mAP", "mAUC", "video_mAP", "video_mAUC", "video_accuracy"} <= set(out) and "ece" not in out
    assert out["video_accuracy"] == 1.0 and out["video_mAUC"] == 1.0
    assert out["accuracy"] == pytest.approx(2 / 3)  # clip v#1 ranks class 1 first


# --- Algorithm 1 -----------------------------------------------------------------------------------------------------
class ScriptedDraws:
    """The permutation and the integers Algorithm 1 draws, fixed by the test."""

    def __init__(self, order: list[int], integers: list[int]) -> None:
        self.order, self.values, self.calls = order, list(integers), []

    def permutation(self, n: int) -> np.ndarray:
        assert n == len(self.order)
        return np.array(self.order)

    def integers(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        return self.values.pop(0)


def test_algorithm_1_on_a_hand_traced_manifest():
    rows = [
        {"clip_id": "c0", "label": "a;b"},
        {"clip_id": "c1", "label": "a"},
        {"clip_id": "c2", "label": "a;rare"},
        {"clip_id": "c3", "label": "b"},
        {"clip_id": "c4", "label": "rare2"},
        {"clip_id": "c5", "label": "a;b"},
    ]
    # volumes in D: a 4, b 3, rare 1, rare2 1 -> with M = 2, 'rare' and 'rare2' are removed; c4 has no label left
    # N = 2. Visit order c0, c1, c2, c3, c4, c5:
    #  c0 {a, b}: V'a = V'b = 0, b rarer in D -> c = b; r in [0, 3]: draw 1 < 2 - 0 -> select (V'a 1, V'b 1)
    #  c1 {a}: r in [0, 4 - 1]: draw 1 < 2 - 1 = 1? no -> skip
    #  c2 {a}: r in [0, 3]: draw 0 < 1 -> select, label 'rare' dropped (V'a 2)
    #  c3 {b}: r in [0, 3 - 1]: draw 2 < 1? no -> skip
    #  c4: no kept label -> counted, no draw
    #  c5 {a, b}: V'a 2, V'b 1 -> c = b; r in [0, 2]: draw 0 < 1 -> select (V'a 3, V'b 2)
    draws = ScriptedDraws([0, 1, 2, 3, 4, 5], [1, 1, 0, 2, 0])
    selected, report = balance_multilabel(rows, 2, 2, draws)
    assert [r["clip_id"] for r in selected] == ["c0", "c2", "c5"]
    assert [r["label"] for r in selected] == ["a;b", "a", "a;b"]
    assert draws.calls == [(0, 4), (0, 4), (0, 4), (0, 3), (0, 3)]  # numpy's high is exclusive: [0, V_c − V'_c]
    assert report["removed_classes"] == ["rare", "rare2"] and report["clips_without_kept_label"] == 1
    assert report["volume_after"] == {"a": 3, "b": 2} and report["clips_after"] == 3


def test_algorithm_1_balances_a_synthetic_multilabel_manifest():
    rng = np.random.default_rng(0)
    rows = []
    volumes = {"common": 400, "mid": 120, "rare": 30, "tiny": 5}
    for name, n in volumes.items():
        rows += [{"clip_id": f"{name}{i}", "label": name} for i in range(n)]
    for i in range(200):  # co-occurring labels: a 'mid' clip that is also 'common'
        rows.append({"clip_id": f"pair{i}", "label": "common;mid" if rng.random() < 0.5 else "common"})
    selected, report = balance_multilabel(rows, 10, 60, np.random.default_rng(1))
    assert report["removed_classes"] == ["tiny"]
    after = report["volume_after"]
    assert after["rare"] == 30  # below the target: every clip is kept (r ≤ V_c − V'_c < N − V'_c always)
    assert after["mid"] <= 60 and after["common"] <= 60 + after["mid"]  # only co-occurrence can pass the target
    assert after["common"] < volumes["common"] / 2 and after["mid"] >= 20
    recount = {}
    for r in selected:
        for name in r["label"].split(";"):
            recount[name] = recount.get(name, 0) + 1
    assert recount == after and "tiny" not in recount


def test_balance_needs_a_multilabel_dataset_and_names_the_key():
    cfg = default_config()
    cfg["datasets"]["synthetic-av"]["balance"] = {"min_class_volume": 1, "target_class_volume": 5}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.key == "datasets.synthetic-av.balance"


def test_balance_settings_do_not_change_other_datasets_hashes():
    cfg = validate_config(default_config())
    assert "balance" not in dataset_settings(cfg, "synthetic-av") and "modalities" not in dataset_settings(
        cfg, "synthetic-av"
    )
    assert dataset_settings(cfg, "synthetic-ml")["balance"]["target_class_volume"] == 60


# --- optical flow, K clips per video -----------------------------------------------------------------------------
def test_optical_flow_of_a_one_pixel_shift():
    yy, xx = np.mgrid[0:32, 0:32]

    def pattern(shift):
        return (127 + 100 * np.sin(2 * np.pi * (xx - shift) / 16) * np.cos(2 * np.pi * yy / 16)).astype(np.uint8)

    frames = np.stack([np.repeat(pattern(s)[..., None], 3, axis=2) for s in (0, 1)])
    flow = optical_flow(frames, np.array([0, 1]), bound=4.0).astype(np.float64)
    decoded = flow / 255.0 * 8.0 - 4.0  # the uint8 code back to pixels
    centre = decoded[0, 8:24, 8:24]
    assert centre[..., 0].mean() == pytest.approx(1.0, abs=0.15) and abs(centre[..., 1].mean()) < 0.15
    assert np.abs(decoded[1] - 0.0).max() <= 4.0 / 255 * 2  # the last frame has no successor: zero flow
    assert flow.dtype == np.float64 and optical_flow(frames, np.array([0]), 4.0).shape == (1, 32, 32, 2)


def test_window_starts_spread_k_clips_over_the_video():
    assert window_starts(10.0, 2.0, 5) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert window_starts(2.0, 1.0, 2) == [0.0, 1.0]
    assert window_starts(1.0, 3.0, 3) == [0.0, 0.0, 0.0] and window_starts(5.0, 1.0, 1) == [0.0]


def test_holdout_keeps_a_videos_clips_together_and_stratifies_label_sets():
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]] * 5)
    ids = [f"v{i // 2}#{i % 2}" for i in range(20)]
    held, rest, subset = carve_holdout(labels, 0.2, 0, ids)
    videos = lambda idx: {ids[i].split("#")[0] for i in idx}  # noqa: E731
    assert not videos(held) & videos(rest) and len(held) % 2 == 0 and set(subset) <= set(rest)
    held_labels = {tuple(labels[i].tolist()) for i in held}
    assert held_labels == {(1, 0), (0, 1)}  # one video per label set


# --- methods with multi-label targets ------------------------------------------------------------------------------
def test_single_label_methods_are_na_on_multilabel_data_and_others_run():
    concat = FUSIONS.get("concat")
    for name in ("ogm", "ogm_ge", "mlb", "agm", "pmr", "mmcosine"):
        reason = BALANCERS.get(name).not_applicable(concat, 3, multi_label=True)
        assert reason and reason.startswith("needs single-label data"), name
        assert BALANCERS.get(name).not_applicable(concat, 3, multi_label=False) is None
    for name in (
        "joint",
        "gblend",
        "gblend_online",
        "multi_loss",
        "aux_loss",
        "dropout",
        "pretrain",
        "early_stop",
        "mslr",
    ):
        assert BALANCERS.get(name).not_applicable(concat, 3, multi_label=True) is None, name


def test_gblend_loss_on_multilabel_targets_is_the_weighted_bce_sum():
    from tests.conftest import small_batch, small_model

    model = small_model(unimodal_heads=True)
    inputs, _ = small_batch()
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    gb = BALANCERS.get("aux_loss")()
    gb.setup(model, RunContext(modalities=["audio", "visual"], num_epochs=1, device=torch.device("cpu")))
    out = model(inputs)
    by_hand = (
        F.binary_cross_entropy_with_logits(out.logits, y)
        + F.binary_cross_entropy_with_logits(out.unimodal["audio"], y)
        + F.binary_cross_entropy_with_logits(out.unimodal["visual"], y)
    ) / 3
    assert gb.loss(out, y).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_early_stop_trains_a_fraction_of_the_schedule():
    es = BALANCERS.get("early_stop")(fraction=0.5)
    assert [es.stop_epoch(n) for n in (1, 3, 4, 10)] == [1, 2, 2, 5]
    es.ctx = RunContext(modalities=["a"], num_epochs=4, device=torch.device("cpu"))
    assert [es.finished(e) for e in range(4)] == [False, True, True, True]
    with pytest.raises(ValueError):
        BALANCERS.get("early_stop")(fraction=0)


# --- fusions between encoder blocks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,kind,shape,blocks", [(SmallCNN, "frames", (2, 3, 16, 16), 4), (ResNet18, "spectrogram", (1, 32, 32), 5)]
)
def test_blocks_compose_to_the_backbones_forward(cls, kind, shape, blocks):
    torch.manual_seed(0)
    enc = cls(kind, shape).eval()
    x = torch.randn(3, *shape)
    h = enc.maps(x)
    for blk in enc.blocks():
        h = blk(h)
    assert len(enc.blocks()) == blocks and torch.allclose(enc.pool(h, 3), enc(x), atol=1e-6)


def _streams(fusion: str, **params):
    from benchmark.models.model import build_model

    info = {"audio": {"source": "audio", "shape": [1, 16, 12]}, "visual": {"source": "video", "shape": [3, 3, 16, 16]}}
    model = build_model(
        modality_info=info,
        num_classes=4,
        backbone_cls=SmallCNN,
        backbone_params={"width": 4},
        fusion_cls=FUSIONS.get(fusion),
        fusion_params=params,
        unimodal_heads=False,
        seed=0,
    ).eval()
    g = torch.Generator().manual_seed(1)
    return model, {"audio": torch.randn(2, 1, 16, 12, generator=g), "visual": torch.randn(2, 3, 3, 16, 16, generator=g)}


def test_se_gate_rescales_each_stream_by_weights_from_the_other():
    model, x = _streams("se_gate", block=2, reduction=2, residual=True)
    fusion = model.fusion
    maps = {m: model.encoders[m].maps(x[m]) for m in ("audio", "visual")}
    for m in maps:
        for blk in model.encoders[m].blocks()[:2]:
            maps[m] = blk(maps[m])
    for gate in fusion.gates.values():  # zero last layer: w = σ(0) = 1/2 -> h + h/2
        torch.nn.init.zeros_(gate[2].weight)
        torch.nn.init.zeros_(gate[2].bias)
    out = fusion.gate(maps, 2)
    assert torch.allclose(out["audio"], 1.5 * maps["audio"]) and torch.allclose(out["visual"], 1.5 * maps["visual"])
    # the visual weights are a function of the audio stream's pooled features only: per sample, the same for all frames
    torch.nn.init.normal_(fusion.gates["visual"][2].weight)
    out = fusion.gate(maps, 2)
    w = fusion.gates["visual"](maps["audio"].mean(dim=(2, 3)))  # [B, C_visual] from the pooled audio map
    by_hand = maps["visual"] * (1 + w.repeat_interleave(3, dim=0)[:, :, None, None])  # every frame of a sample
    assert torch.allclose(out["visual"], by_hand, atol=1e-6) and torch.allclose(out["audio"], 1.5 * maps["audio"])


def test_nl_gate_starts_as_identity_and_attends_over_all_streams():
    model, x = _streams("nl_gate", block=3, inner=8)
    fusion = model.fusion
    assert fusion.queries == ["visual"]
    maps = {m: model.encoders[m].maps(x[m]) for m in ("audio", "visual")}
    for m in maps:
        for blk in model.encoders[m].blocks()[:3]:
            maps[m] = blk(maps[m])
    assert torch.equal(fusion.gate(maps, 2)["visual"], maps["visual"])  # W_z = 0 at initialisation
    torch.nn.init.normal_(fusion.out["visual"].weight)
    got = fusion.gate(maps, 2)
    assert torch.equal(got["audio"], maps["audio"])  # audio is not a query
    # by hand for sample 0: queries = visual positions (T·H·W), keys/values = audio positions then visual positions
    v = maps["visual"].unflatten(0, (2, 3))[0].permute(0, 2, 3, 1).reshape(-1, maps["visual"].shape[1])
    a = maps["audio"][0].flatten(1).T
    keys = torch.cat([fusion.phi["audio"](a), fusion.phi["visual"](v)])
    values = torch.cat([fusion.g["audio"](a), fusion.g["visual"](v)])
    update = fusion.out["visual"](torch.softmax(fusion.theta["visual"](v) @ keys.T, dim=-1) @ values)
    mine = got["visual"].unflatten(0, (2, 3))[0].permute(0, 2, 3, 1).reshape(-1, maps["visual"].shape[1])
    assert torch.allclose(mine, v + update, atol=1e-5)


def test_mid_concat_tiles_the_other_streams_time_vectors_into_the_frames():
    model, x = _streams("mid_concat", block=2)
    seen = {}
    model.fusion.merge[0].register_forward_hook(lambda mod, inp, out: seen.update(input=inp[0]))  # returns None
    out = model(x)
    assert list(out.features) == ["fused"] and out.logits.shape == (2, 4) and model.modality_logits(out) == {}
    audio = model.encoders["audio"].maps(x["audio"])
    for blk in model.encoders["audio"].blocks()[:2]:
        audio = blk(audio)
    per_frame = F.adaptive_avg_pool1d(temporal_vectors(audio, 2, "spectrogram"), 3)  # [B, C, T=3 frames]
    merged = seen["input"].unflatten(0, (2, 3))  # [B, T, C_v + C_a, H, W]
    c_v = merged.shape[2] - per_frame.shape[1]
    assert torch.allclose(merged[:, :, c_v:, 2, 1], per_frame.transpose(1, 2), atol=1e-6)  # tiled over H × W
    assert torch.allclose(merged[:, :, c_v:, 0, 0], merged[:, :, c_v:, 3, 3])


def test_block_fusions_are_na_on_backbones_without_blocks_and_methods_without_features():
    cfg = default_config()
    cfg["grid"] = {
        "datasets": ["synthetic-av"],
        "backbones": ["small_cnn", "conformer"],
        "fusions": ["se_gate", "mid_concat"],
        "balancers": ["joint", "ogm_ge", "dropout"],
        "seeds": [0],
    }
    runs, skipped = grid_runs(validate_config(cfg))
    reasons = {(s.backbone, s.fusion, s.balancer): r for s, r in skipped}
    assert "no block structure" in reasons[("conformer", "se_gate", "joint")]
    assert "per-modality" in reasons[("small_cnn", "mid_concat", "ogm_ge")]
    assert {(s.fusion, s.balancer) for s in runs} == {
        ("se_gate", "joint"),
        ("se_gate", "ogm_ge"),
        ("se_gate", "dropout"),
        ("mid_concat", "joint"),
        ("mid_concat", "dropout"),
    }


# --- modality subsets -----------------------------------------------------------------------------------------------
def test_grid_modality_subsets_are_runs_of_their_own():
    cfg = default_config()
    cfg["grid"] = {
        "datasets": ["synthetic-ml"],
        "backbones": ["small_cnn"],
        "fusions": ["concat"],
        "balancers": ["gblend", "unimodal"],
        "seeds": [0],
        "modalities": [["flow", "visual"], ["audio", "visual", "flow"], ["audio", "flow"]],
    }
    cfg = validate_config(cfg)
    runs, _ = grid_runs(cfg)
    methods = sorted(s.method for s in runs)
    assert methods == [
        "gblend",
        "gblend-audio+flow",
        "gblend-visual+flow",
        "unimodal-audio",
        "unimodal-flow",
        "unimodal-visual",
    ]
    spec = RunSpec.from_method("synthetic-ml", "small_cnn", "concat", "gblend-visual+flow", 0)
    resolved = Resolver(cfg).run(spec)
    assert resolved.settings["modalities"] == ["visual", "flow"]
    weights = resolved.artifacts()["gblend_weights"]
    assert weights.parent.as_posix().endswith("concat/gblend-visual+flow") and weights.name.startswith("seed0-")
    cfg["grid"][0]["modalities"] = [["visual", "depth"]]
    with pytest.raises(ConfigError) as err:
        grid_runs(cfg)
    assert err.value.key == "grid.modalities[0]" and "depth" in str(err.value)


# --- through the DAG ------------------------------------------------------------------------------------------------
def gblend_setting_config() -> dict:
    """synthetic-ml (multi-label, audio + RGB + flow, 2 clips per video) shrunk to a couple of minutes."""
    cfg = tiny_config(
        datasets=["synthetic-ml"],
        fusions=["concat", "se_gate", "mid_concat"],
        balancers=["joint", "unimodal", "gblend", "ogm", "early_stop"],
        modalities=[["audio", "visual", "flow"], ["visual", "flow"]],
    )
    ml = cfg["datasets"]["synthetic-ml"]
    ml["generate"].update(num_clips=64, size=32, fps=4)
    ml["balance"] = {"min_class_volume": 4, "target_class_volume": 6, "seed": 0}
    ml["preprocess"]["visual"].update(size=16, fps=2)
    cfg["train"]["epochs"] = 2
    cfg["balancers"]["early_stop"] = {"fraction": 0.5}
    # a few dozen training clips: a held-out floor of a few clips, two held-out draws
    cfg["balancers"]["gblend"].update(min_holdout=2, holdout_draws=2, bootstrap=200)
    return cfg


@pytest.mark.slow
def test_three_modality_multilabel_run_through_the_dag(tmp_path):
    from tests.test_workflow import job_counts, resolved, run_path, snakemake

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(gblend_setting_config()))
    dry = snakemake(tmp_path, "-n", configfile=tmp_path / "cfg.yaml")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout)
    assert counts["balance"] == 1 and counts["estimate"] == 4  # all modalities and the [visual, flow] subset, 2 fusions
    res = snakemake(tmp_path, configfile=tmp_path / "cfg.yaml")
    assert res.returncode == 0, res.stderr[-3000:]

    dirs = data_dirs(load_config([tmp_path / "cfg.yaml"], base=REPO / "config.yaml"), "synthetic-ml")
    assert dirs.manifest.startswith("manifest.balanced-")
    report = yaml.safe_load((tmp_path / dirs.raw / dirs.balance_report).read_text())
    assert (
        report["clips_after"] < report["clips_before"] == 64
        and max(v for k, v in report["volume_after"].items() if k.startswith("class")) <= 6
    )
    cache = CachedSplit(tmp_path / dirs.processed)
    clips = cache.__getitems__(list(range(len(cache))))
    assert clips["label"].shape == (2 * report["clips_after"], 14) and clips["flow"].shape[1:] == (2, 2, 16, 16)
    split = pd.read_csv(tmp_path / dirs.split_file("main"))
    split["video"] = split["clip_id"].str.split("#").str[0]
    assert (split.groupby("video")["split"].nunique() == 1).all() and (split.groupby("video").size() == 2).all()

    board = pd.read_csv(
        tmp_path / "results/default/leaderboard.csv", keep_default_na=False, na_values=[""]
    )  # 'n/a' is a status
    ok = board[board["status"] == "ok"]
    assert set(ok["method"]) == {
        "joint",
        "joint [visual+flow]",
        "gblend",
        "gblend [visual+flow]",
        "early_stop",
        "early_stop [visual+flow]",
        "audio-only",
        "visual-only",
        "flow-only",
    }
    for col in (
        "test_map_mean",
        "test_mauc_mean",
        "test_acc_mean",
        "test_top5_mean",
        "test_video_acc_mean",
        "test_video_top5_mean",
    ):
        assert ok[col].between(0, 1).all(), col
    na = board[board["status"] == "n/a"].set_index(["method", "fusion"])["reason"]
    assert (
        na[("ogm", "concat")].startswith("needs single-label data") and "per-modality" in na[("gblend", "mid_concat")]
    )
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert (
        "| test mAP | Δ vs joint | p | p Holm | mAUC | top-1 | top-1 95% CI | top-5 | video top-1 | video top-5 | "
        "video mAP | video mAUC |" in md
    )
    assert "early stopping: trained 1 of 2 epochs" in md

    overlay = tmp_path / "cfg.yaml"
    metrics = yaml.safe_load(
        (run_path(tmp_path, overlay, "gblend-visual+flow", dataset="synthetic-ml") / "metrics.json").read_text()
    )
    assert metrics["run"]["modalities"] == ["visual", "flow"] and metrics["run"]["multi_label"] is True
    assert metrics["selection"]["criterion"].startswith("validation mAP")
    estimate = resolved(
        overlay, RunSpec.from_method("synthetic-ml", "small_cnn", "concat", "gblend-visual+flow", 0), "estimate"
    )
    weights = yaml.safe_load((tmp_path / estimate.path).read_text())
    assert set(weights["weights"]) == {"visual", "flow", "fused"} == set(weights["weights_ci"])
    assert len(weights["draws"]) == 2 and all(len(d["holdout_clip_ids"]) % 2 == 0 for d in weights["draws"])
    es = yaml.safe_load(
        (run_path(tmp_path, overlay, "early_stop", dataset="synthetic-ml") / "metrics.json").read_text()
    )
    assert len(es["history"]) == 1 and es["selection"]["epochs_trained"] == 1


def test_multilabel_rows_with_no_or_unknown_labels_are_rejected_with_a_reason():
    from benchmark.data.datasets import SyntheticMultiLabel
    from benchmark.data.media import MediaError
    from benchmark.data.preprocess import ClipDecoder

    cfg = validate_config(default_config())
    decoder = ClipDecoder(
        SyntheticMultiLabel(dataset_settings(cfg, "synthetic-ml")),
        REPO,
        dataset_settings(cfg, "synthetic-ml")["preprocess"],
        ["a", "b", "c"],
    )
    assert decoder.label({"label": "c;a"}).tolist() == [1, 0, 1]
    for label, reason in (("", "no label"), (" ; ", "no label"), ("a;zz", "label not in class list")):
        with pytest.raises(MediaError) as err:
            decoder.label({"label": label})
        assert err.value.reason == reason


def test_adagrad_is_available_for_the_optimizer_comparison():
    from benchmark.train import make_optimizer

    opt = make_optimizer(torch.nn.Linear(2, 2), {"name": "adagrad", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    assert isinstance(opt, torch.optim.Adagrad) and opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18", "conformer", "r2plus1d_18"])
def test_every_frame_backbone_takes_optical_flow(backbone):
    from benchmark.models.model import build_model

    info = {"flow": {"source": "video_flow", "shape": [2, 2, 16, 16]}}
    params = {"conformer": {"dim": 16, "layers": 1, "heads": 2, "ffn_dim": 32, "frame_width": 4}}.get(backbone, {})
    model = build_model(
        modality_info=info,
        num_classes=3,
        backbone_cls=BACKBONES.get(backbone),
        backbone_params=params,
        fusion_cls=FUSIONS.get("concat"),
        fusion_params={},
        unimodal_heads=False,
        seed=0,
    )
    logits = model({"flow": torch.randn(2, 2, 2, 16, 16)}).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
