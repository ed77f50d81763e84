"""Dataset adapters: how a dataset's raw clips are obtained and which modalities they carry.

A dataset writes ``<raw_dir>/manifest.csv`` (clip_id, path relative to raw_dir, label, split) from its
``download`` method; everything after that (decoding, spectrograms, caching) is generic and lives in
``benchmark.data.preprocess``. A dataset may instead hand over tensors: a modality declared as an input kind
(``benchmark.data.kinds``: vector, sequence, image, tokens, or a user's) is read by the dataset's ``tensors`` per
manifest row, checked against ``tensor_specs`` and cached in the same shards. Users add a dataset by subclassing
``Dataset`` and naming the class in config (``datasets: {mine: {class: 'pkg.module:MyDataset', ...}}``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmark.data import synthetic
from benchmark.data.carving import carve_validation
from benchmark.registry import Registry

#: a multi-label clip's label column lists its labels separated by this
LABEL_SEPARATOR = ";"

#: every manifest has these; optional ones: split (train/val/test), audio_path (audio in a separate file),
#: start/end (seconds: decode only that segment), and any metadata a dataset splits by (actor, group, ...)
MANIFEST_COLUMNS = ("clip_id", "path", "label")
SPLITS = ("train", "val", "test")


def split_labels(label: str) -> list[str]:
    """The labels of a multi-label manifest entry ('a;b' -> ['a', 'b'])."""
    return [name.strip() for name in label.split(LABEL_SEPARATOR) if name.strip()]


class Dataset:
    """Base class. ``modalities`` maps each modality name to its source in the clip files (audio, video,
    video_diff, video_flow) or to the input kind of tensors the dataset hands over itself (vector, sequence, image,
    tokens, a kind of the config's ``input_kinds``); a config entry's ``modalities`` mapping replaces it (e.g. to
    add optical flow). ``download`` writes the manifest; ``folds`` and ``split`` define the train/val/test parts.
    ``multi_label`` datasets list several labels per clip, separated by ';'.

    A dataset with tensor modalities implements ``tensor_specs`` (each one's shape and dtype, and what its kind needs,
    e.g. ``vocab_size``) and ``tensors`` (one manifest row's arrays). A sample that cannot be used raises
    ``benchmark.data.media.MediaError(reason, detail)`` and is listed in ``rejected.csv``; one that does not match
    its spec is rejected by the kind's check."""

    name: ClassVar[str]
    modalities: dict[str, str] = {"audio": "audio", "visual": "video"}
    multi_label: ClassVar[bool] = False
    #: config sections (besides 'preprocess') whose keys the class declares as ``<section>_defaults``
    config_sections: ClassVar[tuple[str, ...]] = ("split",)
    split_defaults: ClassVar[dict] = {"val_fraction": 0.1, "seed": 0}

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        if settings.get("modalities"):
            self.modalities = dict(settings["modalities"])

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raise NotImplementedError

    def tensor_specs(self, raw_dir: Path, rows: list[dict]) -> dict[str, dict]:
        """Tensor modalities only: {modality: {"shape": [...], "dtype": "float32", ...}} for the manifest ``rows``
        (the dtype is optional: the kind's storage dtype)."""
        raise NotImplementedError(f"dataset '{self.name}' declares tensor modalities but no tensor_specs")

    def tensors(self, raw_dir: Path, row: dict) -> dict:
        """Tensor modalities only: one manifest row's arrays (NumPy or torch), {modality: array}."""
        raise NotImplementedError(f"dataset '{self.name}' declares tensor modalities but no tensors")

    def kind_class(self, kind: str) -> str | None:
        """The ``module:Class`` of a user's input kind named in the config's ``input_kinds`` (None: built in)."""
        return (self.settings.get("kinds") or {}).get(kind)

    def classes(self, rows: list[dict]) -> list[str]:
        """Class names in label-index order (default: sorted names found in the manifest)."""
        if self.multi_label:
            return sorted({name for r in rows for name in split_labels(r["label"])})
        return sorted({r["label"] for r in rows})

    def folds(self) -> list[str]:
        """Names of the dataset's folds (each one complete train/val/test assignment)."""
        return ["main"]

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        """clip_id -> train/val/test for the accepted clips ``rows`` (default: the manifest's split column, with a
        validation part carved from training when the manifest has none)."""
        assignment = {r["clip_id"]: r["split"] for r in rows if r.get("split")}
        if "val" not in assignment.values():
            s = self.settings["split"]
            assignment = carve_validation(
                assignment, {r["clip_id"]: r["label"] for r in rows}, s["val_fraction"], s["seed"]
            )
        return assignment


DATASETS: Registry[Dataset] = Registry("dataset", base=Dataset)


def write_manifest(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(MANIFEST_COLUMNS) + [
        c for c in dict.fromkeys(k for r in rows for k in r) if c not in MANIFEST_COLUMNS
    ]
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
            raise ValueError(
                f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}; needs {', '.join(MANIFEST_COLUMNS)}"
            )
        return list(reader)


#: the rows of a dataset's own listing (e.g. video_folder's labels.csv) refused before decoding, with their reasons
REJECTED_ROWS = "rejected_rows.csv"
REJECTED_ROW_COLUMNS = ("line", "path", "label", "reason", "detail")


@dataclass(frozen=True)
class RejectedRow:
    """One refused row of a listing: ``where`` names the file and line (``labels.csv:7``)."""

    where: str
    line: int
    path: str
    label: str
    reason: str
    detail: str = ""


def write_rejected_rows(path: Path, refused: list[RejectedRow]) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REJECTED_ROW_COLUMNS)
        writer.writerows([r.line, r.path, r.label, r.reason, r.detail] for r in refused)


def read_rejected_rows(raw_dir: Path) -> list[dict]:
    """The refused listing rows of a download (none when the dataset has no listing of its own)."""
    path = Path(raw_dir) / REJECTED_ROWS
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@DATASETS.register("synthetic-av")
class SyntheticAV(Dataset):
    """Generated audio-visual clips with a built-in modality imbalance (see benchmark.data.synthetic)."""

    display_name: ClassVar[str] = "Synthetic AV"
    paper: ClassVar[str] = ""
    config_sections = ("generate", "split")
    generate_defaults = {
        "num_clips": 720,
        "seed": 0,
        "duration": 2.0,
        "fps": 8,
        "size": 64,
        "sample_rate": 16000,
        "split_fractions": [0.6, 0.2, 0.2],
        "audio_snr_db": 0.0,
        "visual_contrast": 0.3,
        "visual_noise": 0.25,
        "audio_missing": 0.0,  # share of clips whose audio lacks the class tone (config.yaml: 0.25 for synthetic-av)
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

    display_name: ClassVar[str] = "Synthetic AV + motion"
    paper: ClassVar[str] = ""
    modalities = {"audio": "audio", "visual": "video", "motion": "video_diff"}


@DATASETS.register("synthetic-ml")
class SyntheticMultiLabel(SyntheticAV):
    """The synthetic-av clips as a multi-label, three-modality dataset (the G-Blend paper's RGB + optical flow +
    audio, mini-AudioSet style). Every clip carries three labels: its class ``class<c>`` (named by the audio's pitch
    and by the video's grating, so either modality alone), its tone ``tone<g>`` (a pair of neighbouring pitches:
    audio alone) and its stripes ``stripes-vertical|horizontal`` (the
    grating's orientation: video or flow alone). Class volumes are therefore uneven (1/8, 1/4 and 1/2 of the
    clips), which the supplement's Algorithm 1 (``balance``) evens out. Modalities: audio, RGB frames and dense
    optical flow between consecutive frames."""

    display_name: ClassVar[str] = "Synthetic multi-label"
    paper: ClassVar[str] = ""
    modalities = {"audio": "audio", "visual": "video", "flow": "video_flow"}
    multi_label = True

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        rows = synthetic.generate(Path(raw_dir), workers=workers, **self.settings["generate"])
        for row in rows:
            c = int(row["label"].removeprefix("class"))
            _, _, vertical = synthetic.class_bits(c)
            row["label"] = LABEL_SEPARATOR.join(
                [f"class{c}", f"tone{c >> 1}", f"stripes-{'vertical' if vertical else 'horizontal'}"]
            )
        write_manifest(Path(raw_dir) / "manifest.csv", rows)

    def classes(self, rows: list[dict]) -> list[str]:
        return Dataset.classes(self, rows)
