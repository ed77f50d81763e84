"""Every real dataset from a fixture tree in its native layout: download-from-local-folder -> preprocess -> split; and
downloads (resume, checksums) against a local HTTP server — nothing here reaches the network."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from benchmark.config import ConfigError, dataset_settings, validate_config
from benchmark.data.cache import load_part
from benchmark.data.datasets import DATASETS, read_manifest
from benchmark.data.preprocess import preprocess
from benchmark.data.sources import NotAvailable, SourceError, fetch
from benchmark.data.splits import write_splits
from tests import native_trees
from tests.conftest import RangeHandler, tiny_config

SMALL = {
    "audio": {"sample_rate": 16000, "duration": 1.0, "transform": "mel", "n_fft": 256, "hop_length": 400, "n_mels": 16},
    "visual": {"fps": 2, "num_frames": 2, "size": 16},
}


def run_pipeline(tmp_path: Path, name: str, entry: dict) -> tuple[object, Path, Path, dict]:
    cfg = tiny_config(datasets=[name])
    entry.setdefault("preprocess", SMALL)
    cfg["datasets"] = {name: entry}
    cfg = validate_config(cfg)
    settings = dataset_settings(cfg, name)
    ds = DATASETS.get(name)(settings)
    raw, processed = tmp_path / "raw", tmp_path / "processed"
    ds.download(raw, workers=2)
    preprocess(ds, raw, processed, settings["preprocess"], workers=2, log=lambda s: None)
    write_splits(ds, raw, processed, log=lambda s: None)
    return ds, raw, processed, settings


def parts(processed: Path, fold: str) -> dict[str, set[str]]:
    return {p: set(load_part(processed, fold, p).ids()) for p in ("train", "val", "test")}


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("CREMA-D")
    native_trees.cremad_tree(root)
    return root


def test_cremad_actor_folds_are_actor_disjoint(tmp_path, cremad_root):
    ds, raw, processed, _ = run_pipeline(
        tmp_path, "cremad", {"source": {"path": str(cremad_root)}, "split": {"scheme": "actor-folds"}}
    )
    rows = read_manifest(raw / "manifest.csv")
    assert len(rows) == 36 and {r["label"] for r in rows} == set(ds.emotions)
    assert all(
        r["path"].startswith("files/VideoFlash/") and r["audio_path"].startswith("files/AudioWAV/") for r in rows
    )
    assert (raw / "missing.txt").read_text().split() == ["1091_IEO_HAP_HI"]  # listed officially, not on disk
    actor = {r["clip_id"]: r["actor"] for r in rows}
    assert ds.folds() == ["fold1", "fold2", "fold3"]
    tests = set()
    for fold in ds.folds():
        p = parts(processed, fold)
        assert all(p.values()) and sum(map(len, p.values())) == 36
        actors = {name: {actor[c] for c in ids} for name, ids in p.items()}
        assert (
            actors["train"].isdisjoint(actors["val"])
            and actors["train"].isdisjoint(actors["test"])
            and actors["val"].isdisjoint(actors["test"])
        )
        tests |= actors["test"]
    assert tests == set(actor.values())  # every actor is tested in exactly one fold


def test_cremad_ogm_ge_preset_and_split(tmp_path, cremad_root):
    lists = tmp_path / "lists"
    lists.mkdir()
    stems = sorted(p.stem for p in (cremad_root / "AudioWAV").glob("*.wav"))
    (lists / "train.csv").write_text("".join(f"{s},{s.split('_')[2]}\n" for s in stems[:30]))
    (lists / "test.csv").write_text("".join(f"{s},{s.split('_')[2]}\n" for s in stems[30:]))
    entry = {
        "source": {"path": str(cremad_root)},
        "split": {"scheme": "ogm-ge", "lists": {"train": str(lists / "train.csv"), "test": str(lists / "test.csv")}},
        "preprocess": {"preset": "ogm-ge", "visual": {"size": 32}},
    }
    ds, raw, processed, settings = run_pipeline(tmp_path, "cremad", entry)
    audio = settings["preprocess"]["audio"]
    assert (audio["sample_rate"], audio["duration"], audio["n_fft"], audio["hop_length"], audio["transform"]) == (
        22050,
        3.0,
        512,
        353,
        "stft",
    )
    assert (
        settings["preprocess"]["visual"]["num_frames"] == 1 and settings["preprocess"]["visual"]["size"] == 32
    )  # override kept
    info = json.loads((processed / "info.json").read_text())
    assert info["modalities"]["audio"]["shape"] == [1, 257, 188]  # OGM-GE's CREMA-D spectrogram
    assert info["modalities"]["visual"]["shape"] == [1, 3, 32, 32]
    p = parts(processed, "ogm-ge")
    assert p["test"] == set(stems[30:]) and p["train"] | p["val"] == set(stems[:30]) and p["val"]


def test_unknown_preset_is_a_config_error():
    cfg = tiny_config(datasets=["cremad"])
    cfg["datasets"] = {"cremad": {"source": {"path": "/x"}, "preprocess": {"preset": "ogmge"}}}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.key == "datasets.cremad.preprocess.preset" and "ogm-ge" in str(info.value)


def test_too_many_missing_clips_stop_with_the_list(tmp_path, cremad_root):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"1050_DFA_ANG_{i:02d}\n" for i in range(40)) + "1001_DFA_ANG_XX\n")
    cfg = tiny_config(datasets=["cremad"])
    cfg["datasets"] = {"cremad": {"source": {"path": str(cremad_root), "list": str(listing)}, "preprocess": SMALL}}
    ds = DATASETS.get("cremad")(dataset_settings(validate_config(cfg), "cremad"))
    with pytest.raises(SourceError, match=r"40 of 41 clips .* missing .*missing\.txt"):
        ds.download(tmp_path / "raw")
    assert len((tmp_path / "raw/missing.txt").read_text().split()) == 40


def test_ave_official_lists_and_event_segments(tmp_path):
    root = tmp_path / "AVE_Dataset"
    ids = native_trees.ave_tree(root)
    ds, raw, processed, _ = run_pipeline(tmp_path, "ave", {"source": {"path": str(root)}})
    rows = read_manifest(raw / "manifest.csv")
    assert {r["clip_id"] for r in rows} == set(ids) and all((r["start"], r["end"]) == ("0", "2") for r in rows)
    assert len({r["label"] for r in rows}) == 3
    p = parts(processed, "main")
    split_of = {r["clip_id"]: r["split"] for r in rows}
    for name, clip_ids in p.items():
        assert all(split_of[c] == name for c in clip_ids)  # exactly the official lists


def test_kinetics_sounds_from_annotation_lists(tmp_path):
    root, lists = tmp_path / "k400", tmp_path / "lists"
    native_trees.kinetics_tree(root, lists)
    entry = {
        "source": {
            "path": str(root),
            "classes": str(lists / "classes.txt"),
            "max_missing_fraction": 0.2,
            "annotations": {"train": str(lists / "train.csv"), "validate": str(lists / "validate.csv")},
        }
    }
    ds, raw, processed, _ = run_pipeline(tmp_path, "kinetics_sounds", entry)
    rows = read_manifest(raw / "manifest.csv")
    assert {r["label"] for r in rows} == {"playing violin", "bowling"}  # knitting is not a Kinetics-Sounds class
    assert (raw / "missing.txt").read_text().split() == ["ytgoneabcdef_000000"]
    p = parts(processed, "main")
    assert all(c.endswith("_000030") for c in p["test"]) and p["val"] and p["train"]  # Kinetics validate -> test


def test_kinetics_sounds_needs_its_class_list(tmp_path):
    cfg = tiny_config(datasets=["kinetics_sounds"])
    cfg["datasets"] = {
        "kinetics_sounds": {"source": {"path": str(tmp_path), "annotations": {"train": "a", "validate": "b"}}}
    }
    ds = DATASETS.get("kinetics_sounds")(dataset_settings(validate_config(cfg), "kinetics_sounds"))
    with pytest.raises(SourceError, match="source.classes is not set"):
        ds.download(tmp_path / "raw")


def test_vggsound_from_its_csv(tmp_path):
    root = tmp_path / "vggsound"
    native_trees.vggsound_tree(root, tmp_path / "vggsound.csv")
    ds, raw, processed, _ = run_pipeline(
        tmp_path, "vggsound", {"source": {"path": str(root), "list": str(tmp_path / "vggsound.csv")}}
    )
    p = parts(processed, "main")
    assert len(p["test"]) == 3 and all(c.endswith("_000033") for c in p["test"])
    assert len(read_manifest(raw / "manifest.csv")) == 12


def test_ucf101_audio_classes_and_official_folds(tmp_path):
    root = tmp_path / "UCF101"
    native_trees.ucf101_tree(root)
    ds, raw, processed, _ = run_pipeline(tmp_path, "ucf101_av", {"source": {"path": str(root)}})
    assert (raw / "classes_with_audio.txt").read_text().split() == ["BandMarching", "Drumming", "PlayingGuitar"]
    rows = read_manifest(raw / "manifest.csv")
    group = {r["clip_id"]: r["group"] for r in rows}
    for k in (1, 2, 3):
        p = parts(processed, f"fold{k}")
        assert {group[c] for c in p["test"]} == {f"{2 * k - 1:02d}", f"{2 * k:02d}"}
        assert {group[c] for c in p["val"]}.isdisjoint({group[c] for c in p["train"]})  # whole groups moved


@pytest.mark.parametrize("with_split", [True, False])
def test_video_folder(tmp_path, with_split):
    root = tmp_path / "mine"
    native_trees.video_folder_tree(root, with_split)
    ds, raw, processed, _ = run_pipeline(
        tmp_path, "video_folder", {"source": {"path": str(root)}, "split": {"test_fraction": 0.34}}
    )
    p = parts(processed, "main")
    assert sum(map(len, p.values())) == 12 and all(p.values())
    if with_split:
        assert all(c.endswith(("__4", "__5")) for c in p["test"])


def test_video_folder_rows_are_checked_by_line(tmp_path):
    # a new user's labels.csv with planted faults: each bad row is refused with its line and reason, nothing
    # becomes a class of its own, and the refusals reach the one rejected-clips report
    root = tmp_path / "mine"
    native_trees.video_folder_tree(root, with_split=True)
    good = (root / "labels.csv").read_text()
    planted = [
        ("clips/a/0.mp4,kat,train", "label not in source.classes", "'kat' (did you mean 'cat'?)"),
        ("clips/a/1.mp4,,train", "no label", ""),
        (",a,train", "empty path", ""),
        ("clips/a/2.mp4,a,train", "duplicate row", "same path as line 4"),
        ("clips/b/0.mp4,b,", "no split", "other rows give one: give every row a split, or none"),
        ("clips/b/1.mp4,b,holdout", "unknown split", "'holdout' (train | val | test)"),
    ]
    (root / "labels.csv").write_text(good + "".join(row + "\n" for row, _, _ in planted))
    entry = {
        "source": {"path": str(root), "classes": ["a", "b", "cat"], "max_missing_fraction": 0.5},
        "split": {"test_fraction": 0.34},
    }
    ds, raw, processed, _ = run_pipeline(tmp_path, "video_folder", entry)
    with (raw / "rejected_rows.csv").open() as f:
        refused = [(int(r["line"]), r["reason"], r["detail"]) for r in csv.DictReader(f)]
    assert refused == [(14 + k, reason, detail) for k, (_, reason, detail) in enumerate(planted)]
    with (processed / "rejected.csv").open() as f:
        report = [r for r in csv.DictReader(f)]
    assert [(r["stage"], int(r["line"]), r["reason"]) for r in report] == [
        ("listing", 14 + k, reason) for k, (_, reason, _) in enumerate(planted)
    ]
    info = json.loads((processed / "info.json").read_text())
    assert info["classes"] == ["a", "b", "cat"] and info["clips"] == 12 and info["rejected_listing_rows"] == 6
    assert sum(map(len, parts(processed, "main").values())) == 12


def test_video_folder_stops_when_too_many_rows_are_refused(tmp_path):
    root = tmp_path / "mine"
    native_trees.video_folder_tree(root, with_split=False)
    rows = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([rows[0], *[r.replace(",a", ",kat") for r in rows[1:]]]) + "\n")
    entry = {"source": {"path": str(root), "classes": ["a", "b"]}}
    with pytest.raises(SourceError, match=r"6 of 12 listed rows rejected .* first: labels.csv:2: label not in source"):
        run_pipeline(tmp_path, "video_folder", entry)


# --- downloads ------------------------------------------------------------------------------------------------


def test_fetch_resumes_verifies_and_records(server, tmp_path):
    www, url = server
    payload = bytes(range(256)) * 4000
    (www / "big.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dl" / "big.bin"
    dest.parent.mkdir()
    (tmp_path / "dl" / "big.bin.part").write_bytes(payload[:300_000])  # an interrupted earlier download
    fetch(f"{url}/big.bin", dest, sha256=digest, log=lambda s: None)
    assert dest.read_bytes() == payload and RangeHandler.ranges == ["bytes=300000-"]
    record = json.loads((tmp_path / "dl" / "big.bin.source.json").read_text())
    assert record["sha256"] == digest and record["url"] == f"{url}/big.bin" and record["verified_against"] == "expected"
    with pytest.raises(SourceError, match="does not match"):
        fetch(f"{url}/big.bin", tmp_path / "other.bin", sha256="0" * 64, log=lambda s: None)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()
    with pytest.raises(NotAvailable, match="does not have this file"):
        fetch(f"{url}/nope.bin", tmp_path / "nope.bin", log=lambda s: None)
    with pytest.raises(SourceError, match="cannot download .* next run resumes"):
        fetch("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", log=lambda s: None, timeout=5)  # nothing listens there


def test_cremad_downloads_from_its_lfs_mirror(server, tmp_path, cremad_root):
    www, url = server
    media, pointers = www / "media", www / "pointers"
    shutil.copytree(cremad_root, media)
    (pointers / "processedResults").mkdir(parents=True)
    with (cremad_root / "summaryTable.csv").open() as f:
        listed = [r["FileName"] for r in csv.DictReader(f)][:8]
    with (pointers / "processedResults/summaryTable.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "FileName"])
        w.writerows([i, s] for i, s in enumerate(listed))
    for sub, ext in (("AudioWAV", "wav"), ("VideoFlash", "flv")):
        (pointers / sub).mkdir()
        for stem in listed[:7]:  # the 8th exists in the list only: reported missing
            blob = (media / sub / f"{stem}.{ext}").read_bytes()
            (pointers / sub / f"{stem}.{ext}").write_text(
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(blob).hexdigest()}\nsize "
                f"{len(blob)}\n"
            )
    (media / "AudioWAV" / f"{listed[0]}.wav").write_bytes(b"corrupted")  # does not match its pointer
    cfg = tiny_config(datasets=["cremad"])
    cfg["datasets"] = {
        "cremad": {
            "source": {
                "url": f"{url}/media",
                "pointer_url": f"{url}/pointers",
                "workers": 2,
                "max_missing_fraction": 0.5,
            },
            "preprocess": SMALL,
        }
    }
    ds = DATASETS.get("cremad")(dataset_settings(validate_config(cfg), "cremad"))
    with pytest.raises(SourceError, match="does not match"):
        ds.download(tmp_path / "raw")
    shutil.copy(cremad_root / "AudioWAV" / f"{listed[0]}.wav", media / "AudioWAV" / f"{listed[0]}.wav")
    ds.download(tmp_path / "raw")
    rows = read_manifest(tmp_path / "raw/manifest.csv")
    assert len(rows) == 7 and (tmp_path / "raw/missing.txt").read_text().split() == [listed[7]]
    assert (
        json.loads((tmp_path / f"raw/files/AudioWAV/{listed[1]}.wav.source.json").read_text())["verified_against"]
        == "expected"
    )


def test_ucf101_downloads_and_unpacks_its_archives(server, tmp_path):
    www, url = server
    tree = tmp_path / "tree"
    native_trees.ucf101_tree(tree)
    with zipfile.ZipFile(www / "UCF101.zip", "w") as z:
        for p in (tree / "UCF-101").rglob("*.avi"):
            z.write(p, p.relative_to(tree))
    with zipfile.ZipFile(www / "splits.zip", "w") as z:
        for p in (tree / "ucfTrainTestlist").iterdir():
            z.write(p, p.relative_to(tree))
    cfg = tiny_config(datasets=["ucf101_av"])
    cfg["datasets"] = {
        "ucf101_av": {
            "source": {
                "url": f"{url}/UCF101.zip",
                "splits_url": f"{url}/splits.zip",
                "sha256": hashlib.sha256((www / "UCF101.zip").read_bytes()).hexdigest(),
            },
            "preprocess": SMALL,
        }
    }
    ds = DATASETS.get("ucf101_av")(dataset_settings(validate_config(cfg), "ucf101_av"))
    ds.download(tmp_path / "raw", workers=2)
    assert len(read_manifest(tmp_path / "raw/manifest.csv")) == 18  # the three classes with sound
    assert json.loads((tmp_path / "raw/archives/UCF101.zip.source.json").read_text())["verified_against"] == "expected"
