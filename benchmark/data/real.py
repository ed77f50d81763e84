"""Real audio-visual datasets, from their published raw files (native layout and naming) to a manifest.

Each adapter reads the dataset as its publisher distributes it. ``source.path`` always wins: it names a local folder
in the native layout (linked into ``data/raw/<dataset>/files``). Without it, a dataset with a public direct source
is downloaded (resumable, checksummed, see ``benchmark.data.sources``); the others (YouTube-ID collections, files
behind a form) stop with a message saying where to get the files and where to put them. The clips found are
checked against the dataset's official list: the missing ones are written to ``missing.txt``, and too many stop
the step. Preprocessing presets reproduce the settings of the papers; each names its source.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np

from benchmark.data.carving import carve_validation
from benchmark.data.datasets import (
    DATASETS,
    REJECTED_ROWS,
    SPLITS,
    Dataset,
    RejectedRow,
    write_manifest,
    write_rejected_rows,
)
from benchmark.data.media import MediaError, decode_audio
from benchmark.data.sources import NotAvailable, SourceError, check_complete, extract, fetch

LOG = logging.getLogger(__name__)

FILES = "files"  # data/raw/<dataset>/files: the native tree (a link to source.path, or the download)


class RawDataset(Dataset):
    """A dataset distributed as raw files. Subclasses say how to index the native tree and how to split it."""

    config_sections = ("source", "split")
    source_defaults: ClassVar[dict] = {"path": None, "max_missing_fraction": 0.05}
    #: preprocessing presets: name -> {"source": citation, "audio": {...}, "visual": {...}}
    presets: ClassVar[dict[str, dict]] = {}
    #: where to get the files when they cannot be downloaded (shown in errors and the README)
    obtain: ClassVar[str] = ""

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raw_dir = Path(raw_dir)
        root = self.local_tree(raw_dir) if self.settings["source"]["path"] else self.fetch_tree(raw_dir, workers)
        rows, official, *rest = self.index(root, workers)
        refused = list(rest[0]) if rest else []
        write_rejected_rows(raw_dir / REJECTED_ROWS, refused)
        listed = len(official) + len(refused)
        if refused:
            first = refused[0]
            summary = f"{len(refused)} of {listed} listed rows rejected (listed in {raw_dir / REJECTED_ROWS})"
            LOG.info(f"[source] {root}: {summary}")
            limit = self.settings["source"]["max_missing_fraction"]
            if len(refused) > limit * listed:
                raise SourceError(
                    f"{summary}, more than source.max_missing_fraction={limit}; first: {first.where}: {first.reason} "
                    f"({first.detail})"
                )
        present = set(
            check_complete(
                [r["clip_id"] for r in rows],
                official,
                self.settings["source"]["max_missing_fraction"],
                raw_dir / "missing.txt",
                str(root),
            )
        )
        rows = [
            dict(
                r,
                path=os.path.relpath(root / r["path"], raw_dir),
                **({"audio_path": os.path.relpath(root / r["audio_path"], raw_dir)} if r.get("audio_path") else {}),
            )
            for r in rows
            if r["clip_id"] in present
        ]
        write_manifest(raw_dir / "manifest.csv", rows)

    def local_tree(self, raw_dir: Path) -> Path:
        source = Path(self.settings["source"]["path"]).expanduser().resolve()
        if not source.is_dir():
            raise SourceError(f"datasets.{self.name}.source.path: {source} is not a folder")
        link = raw_dir / FILES
        raw_dir.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == source:
                return link
            if link.is_symlink():
                link.unlink()
            else:
                raise SourceError(f"{link} exists and is not a link to {source}; remove it")
        link.symlink_to(source, target_is_directory=True)
        return link

    def fetch_tree(self, raw_dir: Path, workers: int) -> Path:
        """Download the native tree into raw_dir/files (only datasets with a public direct source)."""
        raise SourceError(
            f"dataset '{self.name}' has no public direct download: {self.obtain} "
            f"Then set datasets.{self.name}.source.path to that folder."
        )

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]] | tuple[list[dict], list[str], list]:
        """(manifest rows with paths relative to ``root``, the official list of clip ids[, the listed rows refused,
        as ``RejectedRow``s: written to ``rejected_rows.csv`` and counted against ``source.max_missing_fraction``])."""
        raise NotImplementedError


def read_class_list(given: str | list[str] | None) -> list[str] | None:
    """A class list from config: a list, or a file with one class per line (None when not given)."""
    if not given:
        return None
    return (
        list(given)
        if isinstance(given, list)
        else [c.strip() for c in Path(given).read_text().splitlines() if c.strip()]
    )


def stft_preset(source: str, sample_rate: int, duration: float, n_fft: int, hop_length: int, num_frames: int) -> dict:
    """A preset of the papers' common recipe: log |STFT| of audio tiled to ``duration``, frames at 1 fps, 224×224."""
    return {
        "source": source,
        "audio": {
            "sample_rate": sample_rate,
            "duration": duration,
            "pad_mode": "tile",
            "transform": "stft",
            "n_fft": n_fft,
            "hop_length": hop_length,
            "log_offset": 1.0e-7,
        },
        "visual": {"fps": 1, "num_frames": num_frames, "size": 224},
    }


def _read_list(path: Path, column: str | None = None) -> list[str]:
    """Ids from a text file (one per line) or from one column of a CSV file."""
    text = Path(path).read_text().splitlines()
    if column and text and column in text[0]:
        return [r[column].strip() for r in csv.DictReader(text) if r[column].strip()]
    return [line.strip().split(",")[0] for line in text if line.strip()]


# --- CREMA-D -------------------------------------------------------------------------------------------------

CREMAD_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")


@DATASETS.register("cremad")
class CremaD(RawDataset):
    """CREMA-D (Cao et al. 2014): 7,442 clips of 91 actors, 6 emotions; audio (AudioWAV/*.wav) and video
    (VideoFlash/*.flv) in separate files named ActorID_Sentence_Emotion_Level. Folds: 'ogm-ge' (the OGM-GE split:
    their train/test lists when given as split.lists, else a seeded stratified split of the same sizes, 6,698 / 744,
    with validation carved from training) or 'actor-folds' (three actor-disjoint train/val/test folds, as MLB)."""

    display_name: ClassVar[str] = "CREMA-D"
    paper: ClassVar[str] = "Cao et al. 2014 (CREMA-D)"
    emotions = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    source_defaults = {
        "path": None,
        "max_missing_fraction": 0.05,
        "list": None,
        "workers": 8,
        "url": "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master",
        "pointer_url": "https://raw.githubusercontent.com/CheyneyComputerScience/CREMA-D/master",
    }
    split_defaults = {"scheme": "actor-folds", "val_fraction": 0.1, "seed": 0, "lists": None, "test_size": 744}
    presets = {
        "ogm-ge": stft_preset(
            "Peng et al. 2022 (OGM-GE), CREMA-D: 22,050 Hz tiled to 3 s, STFT 512/353, log|S| -> 257x188; "
            "1 frame at 1 fps",
            22050,
            3.0,
            512,
            353,
            1,
        ),
        "mlb": stft_preset(
            "Kontras et al. 2024 (MLB), CREMA-D ResNet setting: OGM-GE's audio, 3 frames at 1 fps",
            22050,
            3.0,
            512,
            353,
            3,
        ),
    }
    obtain = "CREMA-D is at https://github.com/CheyneyComputerScience/CREMA-D (Git LFS; AudioWAV and VideoFlash)."

    def classes(self, rows: list[dict]) -> list[str]:
        return list(self.emotions)

    def official_list(self, root: Path | None) -> list[str] | None:
        given = self.settings["source"]["list"]
        return _read_list(Path(given), "FileName") if given else None

    def fetch_tree(self, raw_dir: Path, workers: int) -> Path:
        """Every file from the Git LFS mirror, each verified against the SHA-256 in its LFS pointer."""
        src = self.settings["source"]
        root = raw_dir / FILES
        listing = fetch(f"{src['pointer_url']}/processedResults/summaryTable.csv", root / "summaryTable.csv")
        stems = _read_list(listing, "FileName")

        def one(relative: str) -> None:
            try:
                pointer = fetch(f"{src['pointer_url']}/{relative}", raw_dir / "lfs" / relative, log=lambda s: None)
                oid = re.search(r"oid sha256:([0-9a-f]{64})", pointer.read_text())
                fetch(
                    f"{src['url']}/{relative}",
                    root / relative,
                    sha256=oid.group(1) if oid else None,
                    log=lambda s: None,
                )
            except NotAvailable as err:  # listed but not served: reported in missing.txt by the completeness check
                LOG.info(f"[download] {err}")

        files = [f"AudioWAV/{s}.wav" for s in stems] + [f"VideoFlash/{s}.flv" for s in stems]
        with ThreadPoolExecutor(max_workers=src["workers"]) as pool:
            list(pool.map(one, files))
        return root

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]]:
        audio = {p.stem for p in (root / "AudioWAV").glob("*.wav")}
        video = {p.stem for p in (root / "VideoFlash").glob("*.flv")}
        if not audio and not video:
            raise SourceError(
                f"{root} has no AudioWAV/*.wav or VideoFlash/*.flv: not the CREMA-D layout. {self.obtain}"
            )
        rows = []
        for stem in sorted(audio & video):
            m = CREMAD_NAME.match(stem)
            if m:
                rows.append(
                    {
                        "clip_id": stem,
                        "path": f"VideoFlash/{stem}.flv",
                        "audio_path": f"AudioWAV/{stem}.wav",
                        "label": m["emotion"],
                        "actor": m["actor"],
                    }
                )
        listed = self.official_list(root)
        if listed is None and (root / "summaryTable.csv").exists():  # the repository's own list, when present
            listed = _read_list(root / "summaryTable.csv", "FileName")
        # without an official list, every clip that has one of its two files is expected to have both
        return rows, listed if listed is not None else sorted(audio | video)

    def folds(self) -> list[str]:
        scheme = self.settings["split"]["scheme"]
        if scheme == "ogm-ge":
            return ["ogm-ge"]
        if scheme == "actor-folds":
            return ["fold1", "fold2", "fold3"]
        raise ValueError(f"datasets.{self.name}.split.scheme: unknown scheme '{scheme}' (ogm-ge | actor-folds)")

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        s = self.settings["split"]
        labels = {r["clip_id"]: r["label"] for r in rows}
        if fold == "ogm-ge":
            if s["lists"]:
                train, test = set(_read_list(Path(s["lists"]["train"]))), set(_read_list(Path(s["lists"]["test"])))
                assignment = {c: "train" if c in train else "test" for c in labels if c in train or c in test}
            else:
                rng = np.random.default_rng(s["seed"])
                clips = sorted(labels)
                test = set(rng.permutation(clips)[: round(s["test_size"] * len(clips) / 7442)].tolist())
                assignment = {c: "test" if c in test else "train" for c in clips}
            return carve_validation(assignment, labels, s["val_fraction"], s["seed"])
        k = int(fold.removeprefix("fold")) - 1
        actors = sorted({r["actor"] for r in rows})
        groups = np.array_split(np.random.default_rng(s["seed"]).permutation(actors), 3)
        test_actors = set(groups[k].tolist())
        assignment = {r["clip_id"]: "test" if r["actor"] in test_actors else "train" for r in rows}
        return carve_validation(
            assignment, labels, s["val_fraction"], s["seed"] + k, groups={r["clip_id"]: r["actor"] for r in rows}
        )


# --- AVE -----------------------------------------------------------------------------------------------------


@DATASETS.register("ave")
class AVE(RawDataset):
    """AVE (Tian et al. 2018): 4,143 ten-second videos of 28 events, with the annotated event segment; the official
    trainSet/valSet/testSet lists (lines Category&VideoID&Quality&StartTime&EndTime) give the splits. Native tree:
    AVE/<VideoID>.mp4 beside Annotations.txt and the three lists."""

    display_name: ClassVar[str] = "AVE"
    paper: ClassVar[str] = "Tian et al. 2018 (AVE)"
    source_defaults = {"path": None, "max_missing_fraction": 0.05, "segment": True}
    presets = {
        "mlb": stft_preset(
            "Kontras et al. 2024 (MLB), AVE: 16 kHz, STFT 512/353 (CREMA-D's), 4 frames at 1 fps of the event "
            "segment; audio tiled to the 4 s the frames cover (the paper does not give a length)",
            16000,
            4.0,
            512,
            353,
            4,
        ),
    }
    obtain = (
        "AVE is distributed by its authors (https://github.com/YapengTian/AVE-ECCV18, a Google Drive archive "
        "AVE_Dataset.zip); unpack it so the folder holds AVE/*.mp4, Annotations.txt, trainSet.txt, valSet.txt, "
        "testSet.txt."
    )

    @staticmethod
    def _lines(path: Path) -> list[list[str]]:
        rows = [line.strip().split("&") for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if len(r) >= 5 and r[1] != "VideoID"]

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]]:
        if not (root / "Annotations.txt").exists():
            raise SourceError(f"{root} has no Annotations.txt: not the AVE layout. {self.obtain}")
        part_of = {}
        for part, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
            for r in self._lines(root / name) if (root / name).exists() else []:
                part_of[r[1]] = part
        rows, official = [], []
        videos = {p.stem for p in (root / "AVE").glob("*.mp4")}
        for category, video_id, _quality, start, end, *_ in self._lines(root / "Annotations.txt"):
            official.append(video_id)
            if video_id in videos:
                row = {
                    "clip_id": video_id,
                    "path": f"AVE/{video_id}.mp4",
                    "label": category,
                    "split": part_of.get(video_id, ""),
                }
                if self.settings["source"]["segment"]:
                    row.update(start=start, end=end)
                rows.append(row)
        return rows, official


# --- Kinetics-Sounds and VGGSound (clips gathered from YouTube ids) --------------------------------------------


class YouTubeClips(RawDataset):
    """Clips cut from YouTube videos, gathered by the user (videos disappear, so no two copies are equal): the
    official list names each clip by YouTube id and start time; ``source.file_pattern`` says how the gathered files
    are named (fields: youtube_id, start, end, label, split, and for Kinetics kinetics_split)."""

    def gathered(self, root: Path, entries: list[dict]) -> tuple[list[dict], list[str]]:
        pattern = self.settings["source"]["file_pattern"]
        rows, official = [], []
        for e in entries:
            clip_id = f"{e['youtube_id']}_{int(e['start']):06d}"
            official.append(clip_id)
            relative = pattern.format(**e)
            if (root / relative).exists():
                rows.append({"clip_id": clip_id, "path": relative, "label": e["label"], "split": e["split"]})
        return rows, official


@DATASETS.register("kinetics_sounds")
class KineticsSounds(YouTubeClips):
    """Kinetics-Sounds (Arandjelović & Zisserman 2017): the 31 Kinetics-400 classes OGM-GE uses, named in
    ``source.classes`` (a file with one class per line, or a list); the clips are Kinetics-400's, listed by its
    annotation files (label,youtube_id,time_start,time_end,split). Training comes from Kinetics' train list, test
    from its validate list, validation is carved from training."""

    display_name: ClassVar[str] = "Kinetics-Sounds"
    paper: ClassVar[str] = "Arandjelović & Zisserman 2017 (Kinetics-Sounds)"
    source_defaults = {
        "path": None,
        "max_missing_fraction": 0.05,
        "classes": None,
        "annotations": None,
        "annotations_url": "https://storage.googleapis.com/deepmind-media/Datasets/kinetics400.tar.gz",
        "file_pattern": "{kinetics_split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4",
    }
    presets = {
        "ogm-ge": {
            "source": "Peng et al. 2022 (OGM-GE), Kinetics-Sounds: Kaldi fbank, 128 mel bins, 10 ms shift, 1,024 "
            "frames, "
            "normalised (x + 4.50) / (2 · 5.14); 3 frames at 1 fps",
            "audio": {
                "sample_rate": 16000,
                "duration": 10.0,
                "pad_mode": "zero",
                "transform": "fbank",
                "n_mels": 128,
                "frame_shift_ms": 10.0,
                "target_frames": 1024,
                "norm_mean": -4.50,
                "norm_std": 5.14,
            },
            "visual": {"fps": 1, "num_frames": 3, "size": 224},
        },
    }
    obtain = (
        "Kinetics clips are gathered from YouTube with the ids in Kinetics-400's annotation lists "
        "(e.g. with the kinetics-dataset downloader), into <split>/<label>/<youtube_id>_<start>_<end>.mp4."
    )

    def class_list(self) -> list[str]:
        given = self.settings["source"]["classes"]
        if not given:
            raise SourceError(
                f"datasets.{self.name}.source.classes is not set: name the 31 Kinetics-Sounds classes "
                f"(a file with one per line, e.g. the class list of the OGM-GE repository, or a list)"
            )
        return read_class_list(given)

    def classes(self, rows: list[dict]) -> list[str]:
        return sorted(self.class_list())

    def annotation_files(self, raw_dir: Path) -> dict[str, Path]:
        given = self.settings["source"]["annotations"]
        if given:
            return {k: Path(v) for k, v in given.items()}
        archive = fetch(self.settings["source"]["annotations_url"], raw_dir / "lists" / "kinetics400.tar.gz")
        extract(archive, raw_dir / "lists")
        return {
            "train": raw_dir / "lists/kinetics400/train.csv",
            "validate": raw_dir / "lists/kinetics400/validate.csv",
        }

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        self._lists = self.annotation_files(Path(raw_dir))
        super().download(raw_dir, workers)

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]]:
        wanted = set(self.class_list())
        entries = []
        for part, kinetics_split in (("train", "train"), ("test", "validate")):
            with Path(self._lists[kinetics_split]).open(newline="") as f:
                for r in csv.DictReader(f):
                    if r["label"] in wanted:
                        entries.append(
                            {
                                "youtube_id": r["youtube_id"],
                                "start": int(float(r["time_start"])),
                                "end": int(float(r["time_end"])),
                                "label": r["label"],
                                "split": part,
                                "kinetics_split": r.get("split", kinetics_split),
                            }
                        )
        return self.gathered(root, entries)


@DATASETS.register("vggsound")
class VGGSound(YouTubeClips):
    """VGGSound (Chen et al. 2020): ten-second clips of 309 classes listed in vggsound.csv
    (youtube_id,start_seconds,label,split, no header) with the official train/test split; validation is carved
    from training."""

    display_name: ClassVar[str] = "VGGSound"
    paper: ClassVar[str] = "Chen et al. 2020 (VGGSound)"
    source_defaults = {
        "path": None,
        "max_missing_fraction": 0.05,
        "list": None,
        "list_url": "https://www.robots.ox.ac.uk/~vgg/data/vggsound/vggsound.csv",
        "file_pattern": "{youtube_id}_{start:06d}.mp4",
    }
    presets = {
        "ogm-ge": stft_preset(
            "Peng et al. 2022 (OGM-GE), VGGSound: 16 kHz, STFT 256/128, log|S| of 5 s -> 129x626; 3 frames at 1 fps",
            16000,
            5.0,
            256,
            128,
            3,
        ),
    }
    obtain = "VGGSound clips are gathered from YouTube with the ids in vggsound.csv (https://www.robots.ox.ac.uk/~vgg/data/vggsound/)."

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        given = self.settings["source"]["list"]
        self._list = (
            Path(given)
            if given
            else fetch(self.settings["source"]["list_url"], Path(raw_dir) / "lists" / "vggsound.csv")
        )
        super().download(raw_dir, workers)

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]]:
        entries = []
        with self._list.open(newline="") as f:
            for r in csv.reader(f):
                if len(r) >= 4 and r[1].strip().isdigit():
                    start = int(r[1])
                    entries.append(
                        {
                            "youtube_id": r[0],
                            "start": start,
                            "end": start + 10,
                            "label": r[2].strip(),
                            "split": "test" if r[3].strip() == "test" else "train",
                        }
                    )
        return self.gathered(root, entries)


# --- UCF101, the classes with audio ---------------------------------------------------------------------------

UCF_NAME = re.compile(r"^v_(?P<cls>\w+?)_g(?P<group>\d{2})_c(?P<clip>\d{2})$")


def has_audio(path: Path) -> bool:
    try:
        decode_audio(path, 8000, start=0.0, end=0.2)
        return True
    except MediaError:
        return False


@DATASETS.register("ucf101_av")
class UCF101AV(RawDataset):
    """UCF101 (Soomro et al. 2012), the classes whose videos carry sound (51 in the official release; found by probing
    each clip for an audio stream, and written to classes_with_audio.txt): UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    with ucfTrainTestlist/ (classInd.txt, trainlist0k.txt, testlist0k.txt). Three official folds; validation is
    carved from each fold's training part by whole recording groups (gGG), so no group is in both."""

    display_name: ClassVar[str] = "UCF101 (with audio)"
    paper: ClassVar[str] = "Soomro et al. 2012 (UCF101)"
    source_defaults = {
        "path": None,
        "max_missing_fraction": 0.05,
        "audio_class_fraction": 0.5,
        "sha256": None,
        "url": "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
        "splits_url": "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
    }
    presets = {
        "mlb": stft_preset(
            "Kontras et al. 2024 (MLB), UCF101: as AVE (16 kHz, STFT 512/353), 3 frames at 1 fps; audio tiled to 3 s",
            16000,
            3.0,
            512,
            353,
            3,
        ),
    }
    obtain = "UCF101 is at https://www.crcv.ucf.edu/data/UCF101.php (UCF101.rar and the recognition train/test lists)."

    def fetch_tree(self, raw_dir: Path, workers: int) -> Path:
        src = self.settings["source"]
        root = raw_dir / FILES
        for url, sha in ((src["url"], src["sha256"]), (src["splits_url"], None)):
            archive = fetch(url, raw_dir / "archives" / url.rsplit("/", 1)[-1], sha256=sha)
            extract(archive, root)
        return root

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str]]:
        lists = root / "ucfTrainTestlist"
        if not (lists / "classInd.txt").exists():
            raise SourceError(f"{root} has no ucfTrainTestlist/classInd.txt: not the UCF101 layout. {self.obtain}")

        def listed(name: str) -> set[str]:
            return {Path(line.split()[0]).stem for line in (lists / name).read_text().splitlines() if line.strip()}

        fold_parts = {k: (listed(f"trainlist0{k}.txt"), listed(f"testlist0{k}.txt")) for k in (1, 2, 3)}
        official = sorted(fold_parts[1][0] | fold_parts[1][1])
        videos = {p.stem: p for p in (root / "UCF-101").glob("*/*.avi")}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            sound = dict(zip(videos, pool.map(has_audio, videos.values())))
        by_class: dict[str, list[str]] = {}
        for stem in videos:
            m = UCF_NAME.match(stem)
            if m:
                by_class.setdefault(m["cls"], []).append(stem)
        keep = sorted(
            c
            for c, stems in by_class.items()
            if sum(sound[s] for s in stems) >= self.settings["source"]["audio_class_fraction"] * len(stems)
        )
        (root.parent / "classes_with_audio.txt").write_text("".join(f"{c}\n" for c in keep))
        rows = []
        for c in keep:
            for stem in sorted(by_class[c]):
                row = {
                    "clip_id": stem,
                    "path": os.path.relpath(videos[stem], root),
                    "label": c,
                    "group": UCF_NAME.match(stem)["group"],
                }
                for k, (train, test) in fold_parts.items():  # the official folds, kept in the manifest
                    row[f"fold{k}"] = "train" if stem in train else ("test" if stem in test else "")
                rows.append(row)
        official = [s for s in official if UCF_NAME.match(s) and UCF_NAME.match(s)["cls"] in keep]
        return rows, official

    def folds(self) -> list[str]:
        return ["fold1", "fold2", "fold3"]

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        assignment = {r["clip_id"]: r[fold] for r in rows if r.get(fold)}
        s = self.settings["split"]
        return carve_validation(
            assignment,
            {r["clip_id"]: r["label"] for r in rows},
            s["val_fraction"],
            s["seed"],
            groups={r["clip_id"]: r["group"] for r in rows},
        )


# --- any folder of videos --------------------------------------------------------------------------------------


@DATASETS.register("video_folder")
class VideoFolder(RawDataset):
    """Any collection: a folder of videos and a CSV (``source.csv``, relative to the folder or absolute) with the
    columns path, label and optionally split (train/val/test). Without a split column, test and validation parts
    are carved from all clips (stratified, seeded: split.test_fraction, split.val_fraction); without val, val is
    carved from train. This is how Kinetics-400, EPIC-Kitchens or AudioSet subsets come in.

    The CSV is checked row by row, each refusal naming its line (``rejected_rows.csv``): an empty path or label, a
    label outside ``source.classes`` (a list or a file with one class per line; without it the classes are the
    labels found), an unknown split, a row without a split where others have one, and a repeated path or clip id
    (the first one is kept)."""

    display_name: ClassVar[str] = "Video folder"
    paper: ClassVar[str] = ""
    source_defaults = {"path": None, "csv": "labels.csv", "classes": None, "max_missing_fraction": 0.05}
    split_defaults = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    obtain = "video_folder reads a folder you provide."

    def classes(self, rows: list[dict]) -> list[str]:
        return read_class_list(self.settings["source"]["classes"]) or super().classes(rows)

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str], list[RejectedRow]]:
        listing = Path(self.settings["source"]["csv"])
        listing = listing if listing.is_absolute() else root / listing
        if not listing.exists():
            raise SourceError(
                f"datasets.{self.name}.source.csv: {listing} does not exist (columns: path,label[,split])"
            )
        classes = read_class_list(self.settings["source"]["classes"])
        entries, refused = checked_label_rows(listing, classes)
        rows, official = [], []
        for e in entries:
            official.append(e["clip_id"])
            if (root / e["path"]).is_file():
                rows.append({k: e[k] for k in ("clip_id", "path", "label", "split")})
        return rows, official, refused

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        s = self.settings["split"]
        labels = {r["clip_id"]: r["label"] for r in rows}
        if any(r.get("split") for r in rows):
            return super().split(rows, fold)
        assignment = carve_validation({c: "train" for c in labels}, labels, s["test_fraction"], s["seed"], into="test")
        return carve_validation(assignment, labels, s["val_fraction"] / (1 - s["test_fraction"]), s["seed"] + 1)


def checked_label_rows(listing: Path, classes: list[str] | None) -> tuple[list[dict], list[RejectedRow]]:
    """The rows of a path,label[,split] CSV that can be used (with their clip id and line), and the refused ones."""
    with listing.open(newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = {"path", "label"} - set(reader.fieldnames or ())
        if missing_cols:
            raise SourceError(
                f"{listing} lacks column(s) {', '.join(sorted(missing_cols))} (columns: path,label[,split])"
            )
        entries = [(reader.line_num, r) for r in reader]
    has_split = any((r.get("split") or "").strip() for _, r in entries)
    known = set(classes or ())
    seen_path: dict[str, int] = {}
    seen_id: dict[str, int] = {}
    kept, refused = [], []
    for line, r in entries:
        path, label = (r.get("path") or "").strip(), (r.get("label") or "").strip()
        split = (r.get("split") or "").strip()

        def refuse(reason: str, detail: str = "") -> None:
            refused.append(RejectedRow(f"{listing.name}:{line}", line, path, label, reason, detail))

        clip_id = Path(path).with_suffix("").as_posix().replace("/", "__") if path else ""
        if not path:
            refuse("empty path")
        elif not label:
            refuse("no label")
        elif classes is not None and label not in known:
            close = difflib.get_close_matches(label, classes, n=1)
            refuse("label not in source.classes", repr(label) + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif split and split not in SPLITS:
            refuse("unknown split", f"{split!r} (train | val | test)")
        elif has_split and not split:
            refuse("no split", "other rows give one: give every row a split, or none")
        elif path in seen_path:
            refuse("duplicate row", f"same path as line {seen_path[path]}")
        elif clip_id in seen_id:
            refuse("duplicate clip id", f"{clip_id!r} as line {seen_id[clip_id]} (paths differ only by extension)")
        else:
            seen_path[path], seen_id[clip_id] = line, line
            kept.append({"clip_id": clip_id, "path": path, "label": label, "split": split, "line": line})
    return kept, refused
