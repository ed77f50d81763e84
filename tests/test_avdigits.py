"""avdigits on the real FSDD recordings in ../shared/data/fsdd (absent in a user's clone: skipped there with that
reason, failed under CI, as the other system-dependent tests are)."""

from __future__ import annotations

import csv
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmark.config import dataset_settings, validate_config
from benchmark.data.avdigits import FSDD_DIGEST, pair_images, recordings_digest, still_frames
from benchmark.data.cache import load_part
from benchmark.data.datasets import DATASETS, read_manifest
from benchmark.data.preprocess import preprocess
from benchmark.data.sources import SourceError
from benchmark.data.splits import write_splits
from tests.conftest import fsdd_or_skip, tiny_config


@pytest.fixture(scope="module")
def fsdd() -> Path:
    return fsdd_or_skip()


def pipeline(tmp_path: Path, source: dict, scheme: str = "all"):
    cfg = tiny_config(datasets=["avdigits"])
    entry = cfg["datasets"]["avdigits"]  # config.yaml's entry (its preprocessing), with this source and scheme
    entry["source"].update(source)
    entry["split"]["scheme"] = scheme
    cfg["datasets"] = {"avdigits": entry}
    settings = dataset_settings(validate_config(cfg), "avdigits")
    ds = DATASETS.get("avdigits")(settings)
    raw, processed = tmp_path / "raw", tmp_path / "processed"
    ds.download(raw, workers=2)
    preprocess(ds, raw, processed, settings["preprocess"], workers=2, log=lambda s: None)
    write_splits(ds, raw, processed, log=lambda s: None)
    return ds, raw, processed


def test_the_shared_copy_is_fsdd_at_the_pinned_commit(fsdd):
    assert recordings_digest(fsdd / "recordings") == FSDD_DIGEST


def test_pairing_keeps_images_apart_across_speakers_and_the_official_test_takes():
    recordings = [
        {"file": f"{d}_{s}_{t}.wav", "digit": d, "speaker": s, "take": t}
        for d in range(10)
        for s in ("ann", "bob", "cid")
        for t in range(12)
    ]
    targets = np.repeat(np.arange(10), 30)  # 30 images per digit: 10 per speaker, 5 of them for takes 0-4
    chosen = pair_images(recordings, targets, seed=0)
    assert chosen == pair_images(recordings, targets, seed=0) != pair_images(recordings, targets, seed=1)
    assert all(targets[chosen[r["file"]]] == r["digit"] for r in recordings)
    owners: dict[int, set] = {}
    for r in recordings:
        owners.setdefault(chosen[r["file"]], set()).add((r["speaker"], r["take"] < 5))
    assert all(len(o) == 1 for o in owners.values())  # an image belongs to one speaker and one side of the split
    test_images = [chosen[r["file"]] for r in recordings if r["take"] < 5]
    assert len(set(test_images)) == len(test_images)  # each official test take has its own image


def test_still_frames_upscale_the_image_as_ink_on_white():
    image = np.zeros((8, 8))
    image[2, 3] = 16
    frames = still_frames(image, 32, 3)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    assert (frames[:, 8:12, 12:16] == 0).all() and frames.sum() == 3 * 3 * 255 * (32 * 32 - 16)


@pytest.mark.slow
def test_avdigits_from_the_real_recordings_speaker_disjoint_and_official_folds(tmp_path, fsdd):
    ds, raw, processed = pipeline(tmp_path, {"path": str(fsdd), "takes": 6})
    rows = read_manifest(raw / "manifest.csv")
    assert len(rows) == 6 * 10 * 6 and Counter(r["label"] for r in rows) == {str(d): 36 for d in range(10)}
    assert ds.folds() == ["speakers1", "speakers2", "speakers3", "official"]
    speaker = {r["clip_id"]: r["speaker"] for r in rows}
    tested = set()
    for fold in ("speakers1", "speakers2", "speakers3"):
        p = {part: set(load_part(processed, fold, part).ids()) for part in ("train", "val", "test")}
        by = {part: {speaker[c] for c in ids} for part, ids in p.items()}
        assert len(by["test"]) == 2 and len(by["val"]) == 1 and len(by["train"]) == 3
        assert by["test"].isdisjoint(by["train"] | by["val"]) and by["val"].isdisjoint(by["train"])
        tested |= by["test"]
    assert len(tested) == 6
    take = {r["clip_id"]: int(r["take"]) for r in rows}
    official = {part: set(load_part(processed, "official", part).ids()) for part in ("train", "val", "test")}
    assert {take[c] for c in official["test"]} == {0, 1, 2, 3, 4} and {take[c] for c in official["train"]} == {5}
    clips = load_part(processed, "official", "test")
    batch = clips.__getitems__([0, 1])
    assert batch["visual"].shape[1:] == (1, 3, 32, 32) and batch["audio"].dtype.is_floating_point


def test_changed_recordings_are_refused_by_their_digest(tmp_path, fsdd):
    copy = tmp_path / "fsdd/recordings"
    copy.mkdir(parents=True)
    for path in sorted((fsdd / "recordings").glob("0_*.wav"))[:3]:
        shutil.copy(path, copy / path.name)
    with pytest.raises(SourceError, match="digest .* is not datasets.avdigits.source.sha256"):
        pipeline(tmp_path, {"path": str(tmp_path / "fsdd")})


def test_avdigits_downloads_the_pinned_archive_and_checks_it(tmp_path, fsdd, server):
    # the archive of the pinned commit as GitHub serves it (<repo>-<commit>/recordings/...), here a subset of it
    # served from localhost, with the subset's digest as the expected one
    www, url = server
    names = sorted(p.name for p in (fsdd / "recordings").glob("*_*_[0-5].wav"))
    top = "free-spoken-digit-dataset-26eb9aaf76e81b692f806f9140c2d2777410d7a1"
    with zipfile.ZipFile(www / "fsdd.zip", "w") as z:
        for name in names:
            z.write(fsdd / "recordings" / name, f"{top}/recordings/{name}")
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in names:
        shutil.copy(fsdd / "recordings" / name, subset / name)
    source = {"url": f"{url}/fsdd.zip", "sha256": recordings_digest(subset)}
    ds, raw, processed = pipeline(tmp_path / "run", source, scheme="official")
    with (raw / "manifest.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(names) == 6 * 10 * 6
    assert set(load_part(processed, "official", "test").ids()).isdisjoint(
        load_part(processed, "official", "train").ids()
    )
