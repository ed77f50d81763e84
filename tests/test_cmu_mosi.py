"""cmu_mosi and cmu_mosei on small trees of the CMU Multimodal SDK's computational sequences (tests/sdk_trees.py):
the manifest and its official folds, the refused segments, both alignments on a hand-computed case, padding and
truncation, the specs, MOSEI's label column, and the source errors."""

from __future__ import annotations

import ast
import json
import pickle
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

import benchmark.data.cmu_mosi as cmu
from benchmark.data.cmu_mosi import CMUMOSEI, CMUMOSI, official_folds, sdk_seven
from benchmark.data.datasets import DATASETS, read_manifest, read_rejected_rows
from benchmark.data.media import MediaError
from benchmark.data.sources import SourceError
from tests.sdk_trees import EXTRA_VIDEO, write_csd, write_sdk_tree


def settings(name: str = "cmu_mosi", path: Path | None = None, source: dict | None = None, **task) -> dict:
    """What the harness passes: every declared section with its defaults and the entry's values."""
    cls = DATASETS.get(name)
    src = {**cls.source_defaults, "path": str(path) if path else None, "max_missing_fraction": 1.0, **(source or {})}
    return {
        "name": name,
        "source": src,
        "task": {**cls.task_defaults, **task},
        "split": dict(cls.split_defaults),
        "preprocess": {},
    }


@pytest.fixture(scope="module")
def mosi(tmp_path_factory) -> dict:
    return write_sdk_tree(tmp_path_factory.mktemp("sdk") / "CMU_MOSI")


def download(tree: dict, tmp_path: Path, name: str = "cmu_mosi", **task) -> tuple[CMUMOSI, Path, list[dict]]:
    ds = DATASETS.get(name)(settings(name, tree["root"], **task))
    raw = tmp_path / "raw"
    ds.download(raw)
    return ds, raw, read_manifest(raw / "manifest.csv")


def official_split(video: str, key: str = "cmu_mosi") -> str:
    return next({"valid": "val"}.get(f, f) for f, ids in official_folds(key).items() if video in ids)


@pytest.mark.parametrize("zero", ["exclude", "positive", "negative"])
def test_binary_manifest_follows_the_official_folds(mosi, tmp_path, zero):
    ds, raw, rows = download(mosi, tmp_path, binary_zero=zero)
    expected = mosi["counts"]["exclude" if zero == "exclude" else "positive"]
    assert Counter(r["split"] for r in rows) == expected
    assert ds.split(rows, "main") == {r["clip_id"]: r["split"] for r in rows} and ds.folds() == ["main"]
    assert ds.classes(rows) == ["negative", "positive"]
    for r in rows:
        video, k = r["clip_id"].rstrip("]").split("[")
        start, end, score = mosi["segments"][video][int(k)]
        assert (r["video"], r["path"]) == (video, "files/CMU_MOSI_Opinion_Labels.csd")
        assert (float(r["start"]), float(r["end"]), float(r["score"])) == (start, end, score)  # exact round trip
        assert r["split"] == official_split(video)
        assert r["label"] == ("negative" if score < 0 or (score == 0 and zero == "negative") else "positive")
    assert (zero == "exclude") == all(float(r["score"]) != 0 for r in rows)


def test_seven_classes(mosi, tmp_path):
    ds, _, rows = download(mosi, tmp_path, classes="seven")
    assert ds.classes(rows) == ["-3", "-2", "-1", "0", "1", "2", "3"]
    assert Counter(r["split"] for r in rows) == mosi["counts"]["positive"]  # no segment is excluded
    for r in rows:
        assert r["label"] == str(int(np.round(np.clip(float(r["score"]), -3, 3))))
    ds.settings["task"]["seven_rule"] = "sdk"  # the MOSEI README's bins
    assert [ds.label_of(s) for s in (-2.2, -2.0, -0.4, 0.0, 0.4, 1.0, 1.2, 2.6, 3.4)] == "-3 -2 -1 0 1 1 2 3 3".split()
    assert sdk_seven(-1e-9) == -1 and sdk_seven(2.0) == 2


def test_refused_segments_are_listed_with_their_reasons(mosi, tmp_path):
    _, raw, rows = download(mosi, tmp_path)
    refused = read_rejected_rows(raw)
    by_reason = Counter(r["reason"] for r in refused)
    usable = [v for f in mosi["folds"].values() for v in f if v != mosi["no_visual_video"]]
    neutral = sum(s == 0 for v in usable for *_, s in mosi["segments"][v])
    segments = len(mosi["segments"][EXTRA_VIDEO])
    assert by_reason == {
        "not in the official folds": segments,
        "no visual features for this video": segments,
        "neutral sentiment (binary task excludes 0)": neutral,
    }
    assert all(r["path"] == "files/CMU_MOSI_Opinion_Labels.csd" for r in refused)
    assert any(r["detail"].startswith(f"{EXTRA_VIDEO}[0]: ") for r in refused)
    assert any(r["detail"].startswith(f"{mosi['no_visual_video']}[") for r in refused)
    assert sorted(int(r["line"]) for r in refused) == sorted(set(int(r["line"]) for r in refused))
    assert len(rows) + len(refused) == sum(len(s) for s in mosi["segments"].values())
    listed = sum(len(ids) for ids in official_folds("cmu_mosi").values())
    missing = (raw / "missing.txt").read_text().split()
    assert len(missing) == listed - len(usable) and mosi["no_visual_video"] in missing


def test_too_many_missing_videos_stop_the_download(mosi, tmp_path):
    ds = CMUMOSI(settings(path=mosi["root"], source={"max_missing_fraction": 0.05}))
    with pytest.raises(SourceError, match="max_missing_fraction=0.05"):
        ds.download(tmp_path / "raw")


def test_source_errors_say_what_to_do(mosi, tmp_path):
    with pytest.raises(SourceError) as err:
        CMUMOSI(settings()).download(tmp_path / "raw")
    message = str(err.value)
    assert "datasets.cmu_mosi.source.path" in message
    assert "http://immortal.multicomp.cs.cmu.edu/CMU-MOSI/labels/CMU_MOSI_Opinion_Labels.csd" in message
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "CMU_MOSI_Opinion_Labels.csd").write_bytes((mosi["root"] / "CMU_MOSI_Opinion_Labels.csd").read_bytes())
    with pytest.raises(SourceError, match=r"lacks CMU_MOSI_TimestampedWordVectors.csd \(source.text\)"):
        CMUMOSI(settings(path=partial)).download(tmp_path / "raw2")


def test_settings_are_checked_with_their_key():
    with pytest.raises(ValueError, match="datasets.cmu_mosi.task.classes must be binary or seven"):
        CMUMOSI(settings(classes="three"))
    with pytest.raises(ValueError, match="datasets.cmu_mosi.task.binary_zero must be exclude, positive or negative"):
        CMUMOSI(settings(binary_zero="drop"))
    with pytest.raises(ValueError, match="datasets.cmu_mosi.task.align must be none or words"):
        CMUMOSI(settings(align="phones"))
    with pytest.raises(ValueError, match="datasets.cmu_mosi.task.max_len"):
        CMUMOSI(settings(max_len=0))
    with pytest.raises(ValueError, match="datasets.cmu_mosi.task.colour: unknown key"):
        CMUMOSI(settings(colour="blue"))


def test_specs_and_tensors_of_the_fixture(mosi, tmp_path):
    ds, raw, rows = download(mosi, tmp_path)
    specs = ds.tensor_specs(raw, rows)
    assert specs == {m: {"shape": [50, mosi["dims"][m]], "dtype": "float32"} for m in ("text", "audio", "visual")}
    assert ds.tensor_specs(raw, []) == specs  # from the file, not from the rows
    text_right = audio_right = 0
    for r in rows:
        x = ds.tensors(raw, r)
        assert all(x[m].dtype == np.float32 and list(x[m].shape) == specs[m]["shape"] for m in x)
        words = x["text"][np.any(x["text"] != 0, axis=1)]
        frames = x["audio"][np.any(x["audio"] != 0, axis=1)]
        positive = r["label"] == "positive"
        text_right += (words[:, 0].mean() > 0) == positive
        audio_right += (frames[:, 0].mean() > 0) == positive
    assert text_right == len(rows)  # the sign is plain in the words
    assert len(rows) / 2 < audio_right < len(rows)  # and weakly in the audio
    again = pickle.loads(pickle.dumps(ds))  # open files stay behind (process pools)
    assert np.array_equal(again.tensors(raw, rows[0])["audio"], ds.tensors(raw, rows[0])["audio"])


def hand_tree(root: Path, video: str) -> Path:
    """One video: five words (one zero-length), six audio rows written out of order, three visual rows; segments
    [1, 3], [3.5, 4] and [5, 6] (no rows at all)."""
    root.mkdir(parents=True)
    words = (
        [[1.0, 1.5], [1.5, 2.0], [2.0, 2.0], [2.0, 3.0], [3.5, 4.0]],
        [[1, 0], [2, 0], [9, 9], [3, 0], [4, 4]],
    )
    audio = (
        [[1.5, 1.75], [0.5, 1.25], [1.25, 1.5], [1.75, 2.0], [3.0, 3.5], [3.5, 4.0]],
        [[30, 1], [10, 1], [20, 1], [40, 1], [50, 1], [60, 1]],
    )
    visual = ([[0.0, 1.2], [1.2, 2.6], [2.6, 4.0]], [[7], [8], [9]])
    labels = ([[1.0, 3.0], [3.5, 4.0], [5.0, 6.0]], [[1.4], [-0.6], [2.0]])
    for name, root_name, (iv, ft) in (
        ("CMU_MOSI_TimestampedWordVectors.csd", "glove_vectors", words),
        ("CMU_MOSI_COVAREP.csd", "COVAREP", audio),
        ("CMU_MOSI_Visual_Facet_41.csd", "FACET_4.1", visual),
        ("CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", labels),
    ):
        data = {video: (np.array(iv, dtype=np.float64), np.array(ft, dtype=np.float32))}
        write_csd(root / name, root_name, data, "cmu_mosi", "hand-made", [])
    return root


@pytest.mark.parametrize(
    "align, expected",
    [
        (
            "none",
            {
                "text": [[1, 0], [2, 0], [3, 0], [0, 0]],  # the zero-length word is no row; padded at the end
                "audio": [[10, 1], [20, 1]],  # four rows overlap [1, 3] (not [3, 3.5]); the first two kept
                "visual": [[7], [8], [9], [0], [0]],
            },
        ),
        (
            "words",
            {
                "text": [[1, 0], [2, 0], [3, 0], [0, 0]],
                "audio": [[15, 1], [35, 1]],  # means over [1, 1.5] and [1.5, 2]; [2, 3] has no audio: zeros
                "visual": [[7.5], [8], [8.5], [0], [0]],
            },
        ),
    ],
)
def test_alignment_on_a_hand_computed_video(tmp_path, align, expected):
    video = official_folds("cmu_mosi")["test"][0]
    root = hand_tree(tmp_path / "sdk", video)
    ds = CMUMOSI(settings(path=root, align=align, max_len={"text": 4, "audio": 2, "visual": 5}))
    raw = tmp_path / "raw"
    ds.download(raw)
    rows = read_manifest(raw / "manifest.csv")
    assert [r["clip_id"] for r in rows] == [f"{video}[0]", f"{video}[1]", f"{video}[2]"]
    assert [r["label"] for r in rows] == ["positive", "negative", "positive"] and rows[0]["split"] == "test"
    assert ds.tensor_specs(raw, rows) == {
        "text": {"shape": [4, 2], "dtype": "float32"},
        "audio": {"shape": [2, 2], "dtype": "float32"},
        "visual": {"shape": [5, 1], "dtype": "float32"},
    }
    first = ds.tensors(raw, rows[0])
    for m, want in expected.items():
        np.testing.assert_array_equal(first[m], np.array(want, dtype=np.float32), err_msg=m)
    second = ds.tensors(raw, rows[1])  # [3.5, 4]: audio [3, 3.5] only touches it
    np.testing.assert_array_equal(second["text"], [[4, 4], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(second["audio"], [[60, 1], [0, 0]])
    np.testing.assert_array_equal(second["visual"], [[9], [0], [0], [0], [0]])
    with pytest.raises(MediaError) as err:
        ds.tensors(raw, rows[2])
    assert (err.value.reason, err.value.detail) == ("empty segment", "text: no rows in [5, 6]")
    audio_all = CMUMOSI(settings(path=root, align=align, max_len=8)).tensors(raw, rows[0])["audio"]
    assert len(audio_all) == 8 and not audio_all[4:].any()  # padding only after the rows


def test_non_finite_values_pass_through(tmp_path):
    video = official_folds("cmu_mosi")["train"][0]
    root = hand_tree(tmp_path / "sdk", video)
    with h5py.File(root / "CMU_MOSI_COVAREP.csd", "r+") as f:
        f["COVAREP/data"][video]["features"][1, 0] = -np.inf  # the row [0.5, 1.25]
    ds = CMUMOSI(settings(path=root))
    ds.download(tmp_path / "raw")
    row = read_manifest(tmp_path / "raw" / "manifest.csv")[0]
    assert ds.tensors(tmp_path / "raw", row)["audio"][0, 0] == -np.inf


def test_mosei_reads_the_sentiment_column(tmp_path):
    tree = write_sdk_tree(tmp_path / "CMU_MOSEI", dataset="cmu_mosei", videos_per_fold=(2, 1, 1), segments=4)
    with h5py.File(tree["root"] / "CMU_MOSEI_Labels.csd", "r") as f:
        assert list(f) == ["All Labels"] and f["All Labels/data"][tree["folds"]["test"][0]]["features"].shape == (4, 7)
    ds, raw, rows = download(tree, tmp_path, name="cmu_mosei", classes="seven")
    assert isinstance(ds, CMUMOSEI) and ds.name == "cmu_mosei"
    assert Counter(r["split"] for r in rows) == tree["counts"]["positive"]
    for r in rows:
        video, k = r["clip_id"].rstrip("]").split("[")
        assert float(r["score"]) == tree["segments"][video][int(k)][2]
        assert r["split"] == official_split(video, "cmu_mosei")
    assert ds.tensor_specs(raw, rows)["visual"] == {"shape": [50, 6], "dtype": "float32"}
    with pytest.raises(SourceError, match="7 label columns; the cmu_mosi labels file has 1"):
        CMUMOSI(
            settings(
                path=tree["root"],
                source={k: CMUMOSEI.source_defaults[k] for k in ("text", "audio", "visual", "labels")},
            )
        ).download(tmp_path / "raw2")


def test_folds_file_names_its_source():
    folds = json.loads(cmu.FOLDS_FILE.read_text())
    for key, sizes in (("cmu_mosi", (52, 10, 31)), ("cmu_mosei", (2249, 300, 678))):
        entry = folds[key]
        assert entry["source"]["repository"] == "https://github.com/A2Zadeh/CMU-MultimodalSDK"
        assert len(entry["source"]["commit"]) == 40 and entry["source"]["path"].endswith("_std_folds.py")
        ids = [entry["folds"][f] for f in ("train", "valid", "test")]
        assert tuple(map(len, ids)) == sizes and len(set().union(*map(set, ids))) == sum(sizes)


def test_the_module_reads_with_h5py_and_numpy_only():
    tree = ast.parse(Path(cmu.__file__).read_text())
    imported, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    allowed = set("__future__ functools json logging os threading collections pathlib typing h5py numpy".split())
    assert imported <= allowed | {"benchmark"}
    assert not names & {"pickle", "load", "allow_pickle", "eval", "exec", "compile", "__import__", "torch", "joblib"}


@pytest.mark.slow
def test_cmu_mosi_from_its_sdk_files_through_the_dag_with_every_diagnostic(tmp_path):
    """Three feature sequences from the SDK layout to the leaderboard: G-Blend and MLB run, OGM-GE is n/a with its
    reason (the sequence encoder has no convolutions), and probes, Shapley and the missing-modality table are there."""
    import pandas as pd
    import yaml

    from tests.conftest import tiny_config
    from tests.test_workflow import snakemake

    tree = write_sdk_tree(tmp_path / "CMU_MOSI", videos_per_fold=(6, 3, 3), segments=8)
    cfg = tiny_config(datasets=["cmu_mosi"], backbones=["sequence"], balancers=["joint", "ogm_ge", "mlb", "gblend"])
    cfg["datasets"] = {
        "cmu_mosi": {
            "source": {"path": str(tree["root"]), "max_missing_fraction": 1.0},
            "task": {"classes": "binary", "max_len": 10},
            "preprocess": {"nonfinite": "zero", "max_rejected_fraction": 0.05},
        }
    }
    cfg["backbones"]["sequence"] = {"dim": 16, "layers": 1, "heads": 2, "ffn_dim": 32}
    cfg["train"]["epochs"] = 3
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "m.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv", keep_default_na=False)
    assert dict(zip(board["method"], board["status"])) == {"joint": "ok", "mlb": "ok", "gblend": "ok", "ogm_ge": "n/a"}
    assert "no convolution weights" in (tmp_path / "results/default/leaderboard.md").read_text()
    metrics = json.loads(
        next((tmp_path / "results/runs/cmu_mosi/main/sequence/concat/joint").glob("*/metrics.json")).read_text()
    )
    d = metrics["diagnostics"]
    assert set(d["linear_probe"]["test"]) == {"text", "audio", "visual"}
    assert len(d["shapley"]["test"]["masked_accuracy"]) == 8  # every coalition of three modalities
    info = json.loads(next((tmp_path / "data/processed/cmu_mosi").glob("*/info.json")).read_text())
    assert {m: v["shape"][0] for m, v in info["modalities"].items()} == {"text": 10, "audio": 10, "visual": 10}
    assert info["rejected_listing_rows"] > 0  # neutral segments, the extra video, the video without visual features
