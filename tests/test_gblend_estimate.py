"""G-Blend's weight estimation (Alg. 1) on enough data and with its uncertainty: G, O and w from per-clip measures by
hand, averaging over held-out draws, bootstrap intervals, the O guard, the held-out floor, honest notes, the
validation-split option (never the test split) and online G-Blend's per-super-epoch history."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from benchmark.balancers.gblend import (
    FUSED_HEAD,
    GBlendOnline,
    blend_estimate,
    blend_weights,
    carve_holdout,
    head_notes,
    super_epoch_length,
)
from benchmark.config import validate_config
from benchmark.grid import RunSpec

HEADS = ("audio", "visual", FUSED_HEAD)


def draw(values: dict, v_groups=None, t_groups=None) -> dict:
    """A draw from per-head (V before, T' before, V after, T' after) per-clip values."""
    first = next(iter(values.values()))
    return {
        "groups": {
            "V": v_groups or [f"v{i}" for i in range(len(first[0]))],
            "T'": t_groups or [f"t{i}" for i in range(len(first[1]))],
        },
        "heads": {
            h: {"before": {"V": np.array(vb), "T'": np.array(tb)}, "after": {"V": np.array(va), "T'": np.array(ta)}}
            for h, (vb, tb, va, ta) in values.items()
        },
    }


# per head: V before, T' before, V after, T' after (two clips each); the means are test_balancers' example:
#   audio  V 2.0 -> 1.2, T' 2.1 -> 0.6: G = 0.8, O = (1.2 - 0.6) - (2.0 - 2.1) = 0.7
#   visual V 2.1 -> 1.6, T' 2.1 -> 1.4: G = 0.5, O = 0.2
#   fused  V 2.0 -> 1.0, T' 2.0 -> 0.2: G = 1.0, O = 0.8
BY_HAND = {
    "audio": ([1.9, 2.1], [2.0, 2.2], [1.0, 1.4], [0.5, 0.7]),
    "visual": ([2.0, 2.2], [2.1, 2.1], [1.5, 1.7], [1.3, 1.5]),
    "fused": ([1.5, 2.5], [1.8, 2.2], [0.9, 1.1], [0.1, 0.3]),
}


def test_g_o_and_w_from_per_clip_losses_by_hand():
    est = blend_estimate([draw(BY_HAND)], "loss", resamples=200, seed=0, o_floor="none")
    G = {h: est["heads"][h]["G"] for h in HEADS}
    Ov = {h: est["heads"][h]["O"] for h in HEADS}
    assert G == pytest.approx({"audio": 0.8, "visual": 0.5, "fused": 1.0})
    assert Ov == pytest.approx({"audio": 0.7, "visual": 0.2, "fused": 0.8})
    # G/O²: 1.6327, 12.5, 1.5625 -> Z = 15.6952 (the paper's rule: the weights sum to 1)
    assert est["weights"] == pytest.approx({"audio": 0.1040228, "visual": 0.7964242, "fused": 0.0995530}, abs=1e-6)
    assert sum(est["weights"].values()) == pytest.approx(1.0)
    assert est["heads"]["audio"]["before"] == pytest.approx({"V": 2.0, "T'": 2.1})


def test_two_held_out_draws_average_g_and_o_before_the_weights():
    second = {  # every loss shifted: audio V 3.0 -> 1.8 (G 1.2), T' 3.0 -> 1.0: O = 0.8 - 0 = 0.8
        "audio": ([3.0, 3.0], [3.0, 3.0], [1.8, 1.8], [1.0, 1.0]),
        "visual": ([2.0, 2.0], [2.0, 2.0], [1.5, 1.5], [1.1, 1.1]),  # G 0.5, O 0.4
        "fused": ([2.0, 2.0], [2.0, 2.0], [1.0, 1.0], [0.4, 0.4]),  # G 1.0, O 0.6
    }
    est = blend_estimate([draw(BY_HAND), draw(second)], "loss", resamples=100, seed=0, o_floor="none")
    G = {h: est["heads"][h]["G"] for h in HEADS}
    Ov = {h: est["heads"][h]["O"] for h in HEADS}
    assert G == pytest.approx({"audio": 1.0, "visual": 0.5, "fused": 1.0})
    assert Ov == pytest.approx({"audio": 0.75, "visual": 0.3, "fused": 0.7})
    # G/O²: 1.77778, 5.55556, 2.04082 -> Z = 9.37415
    assert est["weights"] == pytest.approx({"audio": 0.189646, "visual": 0.592645, "fused": 0.217709}, abs=1e-5)
    assert [d["G"] for d in est["heads"]["audio"]["draws"]] == pytest.approx([0.8, 1.2])


def test_accuracy_metric_uses_the_error_and_the_same_rule():
    hits = {  # V accuracy 0 -> 1/2, T' 0 -> 1: G = 0.5, O = (0.5 - 0) - (1 - 1) = 0.5 (error = 1 - accuracy)
        "audio": ([0, 0], [0, 0], [1, 0], [1, 1]),
        "visual": ([0, 0], [0, 0], [1, 1], [1, 1]),  # G = 1, O = 0 -> O² floored at eps: all the weight
        "fused": ([0, 0], [0, 0], [0, 0], [1, 0]),  # G = 0 -> weight 0
    }
    est = blend_estimate([draw(hits)], "accuracy", resamples=50, seed=0, o_floor="none")
    assert est["heads"]["audio"]["G"] == pytest.approx(0.5) and est["heads"]["audio"]["O"] == pytest.approx(0.5)
    assert est["weights"]["fused"] == 0 and est["weights"]["visual"] == pytest.approx(1.0, abs=1e-6)


def noisy_case(rng_seed: int = 0, n: int = 60) -> dict:
    rng = np.random.default_rng(rng_seed)
    values = {}
    for h, (g, o, noise) in {"audio": (0.6, 0.5, 0.3), "visual": (0.4, 0.3, 0.3), "fused": (0.8, 0.4, 0.3)}.items():
        vb = 2.0 + noise * rng.standard_normal(n)
        tb = 2.0 + noise * rng.standard_normal(n)
        va = vb - g + noise * rng.standard_normal(n)
        ta = tb - g - o + noise * rng.standard_normal(n)
        values[h] = (vb, tb, va, ta)
    return draw(values)


def test_bootstrap_intervals_contain_the_estimate_and_are_reproducible_with_the_seed():
    data = noisy_case()
    a = blend_estimate([data], "loss", resamples=1000, seed=3)
    b = blend_estimate([data], "loss", resamples=1000, seed=3)
    c = blend_estimate([data], "loss", resamples=1000, seed=4)
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    assert a["weights_ci"] != c["weights_ci"]  # another seed, other resamples
    for h in HEADS:
        e = a["heads"][h]
        for key in ("G", "O", "w"):
            lo, hi = e[f"{key}_ci"]
            assert lo <= e[key] <= hi, (h, key)
        assert e["O_std"] > 0 and not e["O_within_noise"]
    assert a["weights_ci"] == {h: a["heads"][h]["w_ci"] for h in HEADS}
    assert all(0 <= lo <= hi <= 1 for lo, hi in a["weights_ci"].values())


def test_bootstrap_resamples_a_videos_clips_together():
    # two videos in V, each of two clips with equal values: every resample's mean is one of 1, 2 (or 3: both videos)
    values = {h: ([1.0, 1.0, 3.0, 3.0], [1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0]) for h in HEADS}
    est = blend_estimate([draw(values, v_groups=["a", "a", "b", "b"])], "loss", resamples=500, seed=0)
    G_lo, G_hi = est["heads"]["audio"]["G_ci"]
    assert G_lo == pytest.approx(1.0) and G_hi == pytest.approx(3.0)  # never a mix within a video


def test_o_guard_floors_an_o_within_its_noise_and_names_the_head():
    data = noisy_case()
    v = data["heads"]["visual"]
    # the visual head's gap barely changes: T' falls as much as V, so O = 0.001, far below its noise (the clips of
    # V still vary by 0.3: O's bootstrap std is about 0.3·√2/√60 ≈ 0.05)
    v["after"]["T'"] = v["before"]["T'"] + (v["after"]["V"].mean() - v["before"]["V"].mean()) - 0.001
    guarded = blend_estimate([data], "loss", resamples=1000, seed=0, o_floor="std")
    raw = blend_estimate([data], "loss", resamples=1000, seed=0, o_floor="none")
    gv = guarded["heads"]["visual"]
    assert gv["O"] == pytest.approx(0.001) and abs(gv["O"]) < gv["O_std"]
    assert gv["O_within_noise"] and gv["O_floored"] and gv["O_ci"][0] <= 0 <= gv["O_ci"][1]
    assert raw["weights"]["visual"] > 0.999  # the paper's rule: 1/O² of a near-zero O takes everything
    G = {h: guarded["heads"][h]["G"] for h in HEADS}
    Ov = {h: guarded["heads"][h]["O"] for h in HEADS}
    floor = {h: guarded["heads"][h]["O_std"] ** 2 for h in HEADS}
    assert guarded["weights"] == pytest.approx(blend_weights(G, Ov, o2_floor=floor)[0])  # O² floored at std²
    assert guarded["weights"]["visual"] < raw["weights"]["visual"]
    assert guarded["weights"]["audio"] > 10 * raw["weights"]["audio"]
    assert not guarded["heads"]["audio"]["O_floored"] and not guarded["heads"]["fused"]["O_floored"]
    floored = [n for n in guarded["notes"] if "floored" in n]
    assert len(floored) == 1 and floored[0].startswith("head 'visual'") and "within its noise" in floored[0]
    assert any(n.startswith("head 'visual'") and "o_floor: none" in n for n in raw["notes"])
    assert raw["heads"]["visual"]["O_within_noise"] and not raw["heads"]["visual"]["O_floored"]


def test_normalise_fused_is_an_option_not_the_default():
    G, Ov = {"audio": 0.2, "visual": 0.5, "fused": 0.4}, {"audio": 0.4, "visual": 0.5, "fused": 0.2}
    paper, _ = blend_weights(G, Ov)
    fused, notes = blend_weights(G, Ov, normalise="fused")
    assert sum(paper.values()) == pytest.approx(1.0) and fused["fused"] == pytest.approx(1.0) and not notes
    assert fused["audio"] == pytest.approx(paper["audio"] / paper["fused"])
    zero, notes = blend_weights({**G, "fused": -0.1}, Ov, normalise="fused")
    assert zero["fused"] == 0 and sum(zero.values()) == pytest.approx(1.0) and "sum to 1" in notes[0]


# --- honest notes ------------------------------------------------------------------------------------------------
def measured(loss: tuple[float, float], acc: tuple[float, float]) -> dict:
    """by_metric for one fused head whose held-out loss and accuracy move as given (and one head that learns)."""
    out = {}
    for metric, (b, a) in (("loss", loss), ("accuracy", acc)):
        sign = 1 if metric == "loss" else -1
        heads = {
            "audio": {"G": 0.5, "before": {"V": b}, "after": {"V": a}},
            "fused": {"G": sign * (b - a), "before": {"V": b}, "after": {"V": a}},
        }
        out[metric] = {"heads": heads, "weights": {"audio": 0.5, "fused": 0.5 if sign * (b - a) > 0 else 0.0}}
    return out


def test_a_head_whose_loss_rose_while_its_accuracy_rose_is_described_as_such():
    notes = head_notes(measured(loss=(2.53, 2.61), acc=(0.12, 0.62)), "loss", 4, 1)
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith("head 'fused': its held-out loss rose from 2.53 to 2.61 over the 4 estimate epochs")
    assert "accuracy meanwhile rose from 12.0% to 62.0%" in note and "metric: accuracy would give it weight 0.5" in note
    assert "no generalisation" not in note


def test_no_generalisation_is_said_only_when_neither_measure_improved():
    (note,) = head_notes(measured(loss=(2.5, 2.7), acc=(0.3, 0.25)), "loss", 2, 3)
    assert "its held-out accuracy did not rise either (30.0% to 25.0%): no generalisation measured on V" in note
    assert "mean of 3 held-out draws" in note
    (note,) = head_notes(measured(loss=(2.5, 2.1), acc=(0.3, 0.3)), "accuracy", 2, 1)
    assert note.startswith("head 'fused': its held-out accuracy did not rise") and "loss meanwhile fell" in note
    assert head_notes(measured(loss=(2.5, 2.1), acc=(0.3, 0.5)), "loss", 2, 1) == []  # nothing to say
    (note,) = head_notes(measured(loss=(2.08151, 2.08159), acc=(0.125, 0.125)), "loss", 1, 1)
    assert "rose from 2.0815 to 2.0816" in note  # as many digits as it takes to see the change


# --- the held-out set -----------------------------------------------------------------------------------------------
def test_min_holdout_raises_the_held_out_share_and_keeps_it_stratified():
    labels = torch.arange(8).repeat_interleave(45)  # 360 clips, 8 classes: 10% is 4 a class, 32 clips
    held, rest, subset = carve_holdout(labels, 0.1, 0)
    assert len(held) == 32
    held64, rest64, subset64 = carve_holdout(labels, 0.1, 0, min_size=64)
    assert len(held64) >= 64 and len(held64) < 72  # the smallest fraction that reaches the floor
    assert set(held) <= set(held64)  # the same seeded order: V only grows
    assert sorted(held64 + rest64) == list(range(360)) and len(subset64) == len(held64)
    assert set(subset64) <= set(rest64)
    per_class = np.bincount(labels[held64].numpy(), minlength=8)
    assert per_class.max() - per_class.min() <= 1
    assert carve_holdout(labels, 0.1, 0, min_size=10) == (held, rest, subset)  # a floor below V changes nothing


def test_min_holdout_that_would_leave_too_little_to_train_is_an_error():
    labels = torch.arange(4).repeat_interleave(10)  # 40 clips
    assert len(carve_holdout(labels, 0.1, 0, min_size=20)[0]) == 20
    with pytest.raises(ValueError, match=r"at least 21 clips \(min_holdout\).*40 clips"):
        carve_holdout(labels, 0.1, 0, min_size=21)


def test_super_epochs_as_shares_of_the_schedule_give_the_papers_10_and_5():
    online = GBlendOnline()  # defaults "22%" and "11%"
    assert online.super_epoch_starts(45) == [0, 10, 15, 20, 25, 30, 35, 40]  # the paper's Fig. 5
    assert online.super_epoch_starts(8) == [0, 2, 3, 4, 5, 6, 7]
    assert super_epoch_length("11%", 4) == 1 and super_epoch_length(3, 100) == 3
    assert GBlendOnline(first_super_epoch=2, super_epoch=2).super_epoch_starts(8) == [0, 2, 4, 6]
    with pytest.raises(ValueError):
        GBlendOnline(super_epoch=0)


# --- on the tiny data ---------------------------------------------------------------------------------------------
QUIET = lambda s: None  # noqa: E731


@pytest.fixture
def small_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 3
    cfg["balancers"]["gblend"] = {
        "estimate_epochs": 1,
        "min_holdout": 4,
        "holdout_draws": 2,
        "bootstrap": 200,
    }
    cfg["balancers"]["gblend_online"] = {"first_super_epoch": 1, "super_epoch": "50%", "min_holdout": 4}
    return cfg


def test_estimate_on_two_draws_of_the_training_split_records_intervals(small_cfg, tmp_path):
    from benchmark.data.cache import load_part
    from benchmark.estimate import estimate_gblend
    from tests.conftest import tiny_data_dirs

    est = estimate_gblend(validate_config(small_cfg), "synthetic-av", "small_cnn", "concat", 0, tmp_path / "w.json")
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["weights"] == est["weights"] and sum(est["weights"].values()) == pytest.approx(1.0)
    assert set(saved["weights_ci"]) == set(HEADS) and saved["bootstrap"]["resamples"] == 200
    assert saved["holdout"] == "train" and saved["holdout_draws"] == 2 and len(saved["draws"]) == 2
    train_ids = set(load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits).ids())
    for d in saved["draws"]:
        held, subset = set(d["holdout_clip_ids"]), set(d["train_subset_clip_ids"])
        assert len(held) >= 4 and held <= train_ids and subset <= train_ids and held.isdisjoint(subset)
    assert saved["draws"][0]["holdout_clip_ids"] != saved["draws"][1]["holdout_clip_ids"]
    assert saved["holdout_clip_ids"] == saved["draws"][0]["holdout_clip_ids"]
    for head in saved["heads"].values():
        assert len(head["draws"]) == 2
        assert head["G"] == pytest.approx(np.mean([d["G"] for d in head["draws"]]))
        assert head["G"] == pytest.approx(head["before"]["V"] - head["after"]["V"])
        assert 0 <= head["w_ci"][0] <= head["w_ci"][1] <= 1 and head["O_std"] > 0
    assert saved["other_metric"]["metric"] == "accuracy" and set(saved["other_metric"]["weights"]) == set(HEADS)


def test_validation_holdout_never_reads_the_test_split(small_cfg, tmp_path, monkeypatch):
    from benchmark.data import splits
    from benchmark.data.cache import load_part
    from benchmark.estimate import estimate_gblend
    from tests.conftest import tiny_data_dirs

    real = splits.read_split
    parts = []

    def guarded(processed_dir, fold, part, *rest):
        if part == "test":
            raise AssertionError("the test split was read")
        parts.append(part)
        return real(processed_dir, fold, part, *rest)

    monkeypatch.setattr(splits, "read_split", guarded)
    small_cfg["balancers"]["gblend"].update(holdout="val")
    est = estimate_gblend(validate_config(small_cfg), "synthetic-av", "small_cnn", "concat", 0, tmp_path / "w.json")
    val_ids = load_part(tiny_data_dirs().processed, "main", "val", splits_dir=tiny_data_dirs().splits).ids()
    train_ids = set(load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits).ids())
    assert "test" not in parts and est["holdout"] == "val" and est["holdout_clip_ids"] == val_ids
    assert all(set(d["train_subset_clip_ids"]) <= train_ids for d in est["draws"])
    assert all(d["train_clips"] == len(train_ids) for d in est["draws"])  # T: the whole training split
    assert any(n.startswith("extension: the held-out set V is the validation split") for n in est["notes"])
    small_cfg["balancers"]["gblend"].update(min_holdout=len(val_ids) + 1)
    with pytest.raises(ValueError, match="fewer than min_holdout"):
        estimate_gblend(validate_config(small_cfg), "synthetic-av", "small_cnn", "concat", 0, tmp_path / "x.json")


def test_online_history_has_g_o_and_w_of_every_head_per_super_epoch(small_cfg, tmp_path):
    from benchmark.run import train_run

    m = train_run(
        validate_config(small_cfg),
        RunSpec("synthetic-av", "small_cnn", "concat", "gblend_online", 0),
        tmp_path / "run",
        log=QUIET,
    )
    assert m["status"] == "ok"
    history = m["history"]  # super-epochs: epoch 0 (1 epoch), epochs 1-2 ("50%" of 3: 2 epochs)
    for row in history:
        for h in HEADS:
            for key in (f"gb_G_{h}", f"gb_O_{h}", f"w_{h}", f"gb_w_lo_{h}", f"gb_w_hi_{h}"):
                assert key in row and np.isfinite(row[key]), key
            assert 0 <= row[f"gb_w_lo_{h}"] <= row[f"gb_w_hi_{h}"] <= 1
        assert sum(row[f"w_{h}"] for h in HEADS) == pytest.approx(1.0, abs=1e-5)
    same = lambda a, b: all(a[f"gb_G_{h}"] == b[f"gb_G_{h}"] for h in HEADS)  # noqa: E731
    assert same(history[1], history[2]) and not same(history[0], history[1])
    assert m["notes"][0].startswith("online G-Blend holds out V = ")
    heads_named = [n.split("'")[1] for n in m["notes"][1:] if "head '" in n]
    kinds = [(n.split("'")[1], n.split("'")[2][:12]) for n in m["notes"][1:] if "head '" in n]
    assert len(kinds) == len(set(kinds)) and set(heads_named) <= set(HEADS)  # one note per head and finding
