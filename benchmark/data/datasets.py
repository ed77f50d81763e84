"""Dataset adapters: how a dataset's raw clips are obtained and which modalities they carry.

A dataset writes ``<raw_dir>/manifest.csv`` (clip_id, path relative to raw_dir, label, split) from its
``download`` method; everything after that (decoding, spectrograms, caching) is generic and lives in
``benchmark.data.preprocess``. Users add a dataset by subclassing ``Dataset`` and naming the class in
config (``datasets: {mine: {class: 'pkg.module:MyDataset', ...}}``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

from benchmark.data import synthetic
from benchmark.registry import Registry

#: every manifest has these; optional ones: split (train/val/test), audio_path (audio in a separate file),
#: start/end (seconds: decode only that segment), and any metadata a dataset splits by (actor, group, ...)
MANIFEST_COLUMNS = ("clip_id", "path", "label")
SPLITS = ("train", "val", "test")


class Dataset:
    """Base class. ``modalities`` maps each modality name to its source in the clip files (audio, video,
    video_diff). ``download`` writes the manifest; ``folds`` and ``split`` define the train/val/test parts."""

    name: ClassVar[str]
    modalities: ClassVar[dict[str, str]] = {"audio": "audio", "visual": "video"}
    #: config sections (besides 'preprocess') whose keys the class declares as ``<section>_defaults``
    config_sections: ClassVar[tuple[str, ...]] = ("split",)
    split_defaults: ClassVar[dict] = {"val_fraction": 0.1, "seed": 0}

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raise NotImplementedError

    def classes(self, rows: list[dict]) -> list[str]:
        """Class names in label-index order (default: sorted names found in the manifest)."""
        return sorted({r["label"] for r in rows})

    def folds(self) -> list[str]:
        """Names of the dataset's folds (each one complete train/val/test assignment)."""
        return ["main"]

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        """clip_id -> train/val/test for the accepted clips ``rows`` (default: the manifest's split column, with a
        validation part carved from training when the manifest has none)."""
        from benchmark.data.splits import carve_validation

        assignment = {r["clip_id"]: r["split"] for r in rows if r.get("split")}
        if "val" not in assignment.values():
            s = self.settings["split"]
            assignment = carve_validation(assignment, {r["clip_id"]: r["label"] for r in rows}, s["val_fraction"], s["seed"])
        return assignment


DATASETS: Registry[Dataset] = Registry("dataset", base=Dataset)


def write_manifest(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(MANIFEST_COLUMNS) + [c for c in dict.fromkeys(k for r in rows for k in r) if c not in MANIFEST_COLUMNS]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in columns} for r in rows)
    tmp.replace(path)


def read_manifest(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}; needs {', '.join(MANIFEST_COLUMNS)}")
        return list(reader)


@DATASETS.register("synthetic-av")
class SyntheticAV(Dataset):
    """Generated audio-visual clips with a built-in modality imbalance (see benchmark.data.synthetic)."""

    config_sections = ("generate", "split")
    generate_defaults = {
        "num_clips": 720, "seed": 0, "duration": 2.0, "fps": 8, "size": 64, "sample_rate": 16000,
        "split_fractions": [0.6, 0.2, 0.2], "audio_snr_db": 0.0, "visual_contrast": 0.3, "visual_noise": 0.25,
    }

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        rows = synthetic.generate(Path(raw_dir), workers=workers, **self.settings["generate"])
        write_manifest(Path(raw_dir) / "manifest.csv", rows)

    def classes(self, rows: list[dict]) -> list[str]:
        return [f"class{i}" for i in range(synthetic.NUM_CLASSES)]


@DATASETS.register("synthetic-avm")
class SyntheticAVM(SyntheticAV):
    """synthetic-av with a third modality, motion: the differences of consecutive frames at the sampled positions.
    The drifting grating moves across its stripes, so motion carries the video's bits through another channel."""

    modalities = {"audio": "audio", "visual": "video", "motion": "video_diff"}
