"""avdigits: real spoken digits paired with real handwritten digits, as ordinary audio-visual clips.

The audio is the Free Spoken Digit Dataset (FSDD; Z. Jackson et al., CC BY-SA 4.0): 3,000 recordings of the digits
0-9, 8 kHz mono, 6 speakers x 10 digits x 50 takes, named ``{digit}_{speaker}_{index}.wav``. Each recording is
paired by its digit, with a seeded draw, with one of scikit-learn's bundled 8x8 handwritten digit images (UCI
optical recognition of handwritten digits), and written by ffmpeg as an mp4: the image as a still video for the
recording's length, the recording as the sound. After that the dataset runs through the ordinary DAG.

Pairing keeps the images apart wherever the recordings are apart: each (digit, speaker) gets its own images, and the
takes 0-4 (the authors' test split) their own among them, so no image is in both the train and the test part of
any fold.

Folds (``split.scheme``): ``speakers`` (default) are three speaker-disjoint folds, each testing on two speakers and
validating on one other; ``official`` is the authors' split (takes 0-4 of every speaker and digit are test), with
validation carved from training; ``all`` gives the four.
"""

from __future__ import annotations

import hashlib
import logging
import re
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np

from benchmark.data.carving import carve_validation
from benchmark.data.datasets import DATASETS, write_manifest
from benchmark.data.real import FILES, RawDataset
from benchmark.data.sources import SourceError, extract, fetch
from benchmark.data.synthetic import encode_clip

LOG = logging.getLogger(__name__)

#: the FSDD commit the recordings are pinned to (after tag v1.0.9) and the digest of its ``recordings/`` folder
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_ARCHIVE = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.zip"
FSDD_DIGEST = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"
RECORDING = re.compile(r"^(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$")
#: takes 0-4 of every speaker and digit are the authors' test split
OFFICIAL_TEST_TAKES = 5


def recordings_digest(folder: Path) -> str:
    """SHA-256 of the lines ``<sha256>  <file name>`` of every .wav in ``folder``, by name in byte order: what
    ``cd recordings && sha256sum *.wav | sha256sum`` prints in the C locale."""
    lines = []
    for path in sorted(Path(folder).glob("*.wav"), key=lambda p: p.name.encode()):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def read_recording(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM wav as float samples in [-1, 1) and its sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SourceError(f"{path}: {8 * w.getsampwidth()}-bit samples; FSDD recordings are 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1), rate


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (read from the wheel, never downloaded): images [N, 8, 8] in 0-16
    and their digits [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def pair_images(recordings: list[dict], targets: np.ndarray, seed: int) -> dict[str, int]:
    """recording file name -> image index. For each digit its images are shuffled (seeded) and cut into one pool per
    speaker; within a pool the first ``OFFICIAL_TEST_TAKES`` images go one each to takes 0-4 and the takes from 5
    on draw from the rest."""
    rng = np.random.default_rng(seed)
    speakers = sorted({r["speaker"] for r in recordings})
    chosen = {}
    for digit in range(10):
        images = rng.permutation(np.flatnonzero(targets == digit))
        pools = np.array_split(images, len(speakers))
        for speaker, pool in zip(speakers, pools):
            if len(pool) <= OFFICIAL_TEST_TAKES:
                raise SourceError(f"digit {digit}: {len(pool)} images for speaker {speaker}; need more than 5")
            test, rest = pool[:OFFICIAL_TEST_TAKES], pool[OFFICIAL_TEST_TAKES:]
            takes = sorted(
                (r for r in recordings if r["digit"] == digit and r["speaker"] == speaker), key=lambda r: r["take"]
            )
            for r in takes:
                chosen[r["file"]] = int(test[r["take"]] if r["take"] < OFFICIAL_TEST_TAKES else rng.choice(rest))
    return chosen


def still_frames(image: np.ndarray, size: int, n: int) -> np.ndarray:
    """An 8x8 image in 0-16 as ``n`` RGB frames of size x size (nearest-neighbour upscaling; dark ink on white)."""
    grey = np.round(255.0 * (1.0 - image / 16.0)).astype(np.uint8)
    big = np.kron(grey, np.ones((size // 8, size // 8), dtype=np.uint8))
    return np.repeat(big[None, :, :, None], 3, axis=3).repeat(n, axis=0)


@DATASETS.register("avdigits")
class AVDigits(RawDataset):
    """Spoken digits (FSDD recordings) with handwritten digit images: a small real audio-visual dataset. ``source.path``
    is a folder holding FSDD's ``recordings/`` (or the recordings themselves); without it the archive of the pinned
    commit is downloaded. The recordings are always checked against ``source.sha256`` (the digest of the whole
    folder). ``source.takes``: use only takes 0 .. takes-1 of every speaker and digit (a subset; null: all 50)."""

    display_name: ClassVar[str] = "AV digits"
    paper: ClassVar[str] = ""
    source_defaults = {
        "path": None,
        "url": FSDD_ARCHIVE,
        "sha256": FSDD_DIGEST,
        "takes": None,
        "seed": 0,
        "image_size": 32,
        "fps": 4,
    }
    split_defaults = {"scheme": "speakers", "val_fraction": 0.1, "seed": 0}
    obtain = f"FSDD is at https://github.com/Jakobovski/free-spoken-digit-dataset (commit {FSDD_COMMIT})."

    def classes(self, rows: list[dict]) -> list[str]:
        return [str(d) for d in range(10)]

    def recordings_folder(self, root: Path) -> Path:
        for folder in (root / "recordings", root):
            if any(folder.glob("*.wav")):
                return folder
        raise SourceError(f"{root} has no recordings/*.wav: not the FSDD layout. {self.obtain}")

    def fetch_tree(self, raw_dir: Path, workers: int) -> Path:
        archive = fetch(self.settings["source"]["url"], raw_dir / "archive" / f"fsdd-{FSDD_COMMIT[:12]}.zip")
        root = raw_dir / FILES
        if not any(root.glob("*/recordings/*.wav")):
            extract(archive, root)
        tops = sorted(p.parent for p in root.glob("*/recordings"))
        if not tops:
            raise SourceError(f"{archive} has no <top>/recordings folder: not the FSDD archive")
        return tops[0]

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raw_dir = Path(raw_dir)
        src = self.settings["source"]
        root = self.local_tree(raw_dir) if src["path"] else self.fetch_tree(raw_dir, workers)
        folder = self.recordings_folder(root)
        digest = recordings_digest(folder)
        if src["sha256"] and digest != src["sha256"]:
            raise SourceError(
                f"{folder}: the recordings' digest {digest} is not datasets.{self.name}.source.sha256 "
                f"({src['sha256']}): not FSDD at commit {FSDD_COMMIT[:12]}, or files were changed"
            )
        recordings = []
        for path in sorted(folder.glob("*.wav")):
            m = RECORDING.match(path.name)
            if not m:
                raise SourceError(f"{path}: not an FSDD name ({{digit}}_{{speaker}}_{{index}}.wav)")
            recordings.append(
                {"file": path.name, "digit": int(m["digit"]), "speaker": m["speaker"], "take": int(m["take"])}
            )
        images, targets = digit_images()
        image_of = pair_images(recordings, targets, src["seed"])
        if src["takes"]:
            recordings = [r for r in recordings if r["take"] < src["takes"]]
        clips = raw_dir / "clips"
        clips.mkdir(parents=True, exist_ok=True)
        size, fps = src["image_size"], src["fps"]

        def make(r: dict) -> dict:
            clip_id = Path(r["file"]).stem
            samples, rate = read_recording(folder / r["file"])
            n = max(1, int(np.ceil(len(samples) / rate * fps)))
            encode_clip(
                clips / f"{clip_id}.mp4", still_frames(images[image_of[r["file"]]], size, n), samples, fps, rate
            )
            return {
                "clip_id": clip_id,
                "path": f"clips/{clip_id}.mp4",
                "label": str(r["digit"]),
                "speaker": r["speaker"],
                "take": r["take"],
                "image": image_of[r["file"]],
            }

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            rows = list(pool.map(make, recordings))
        write_manifest(raw_dir / "manifest.csv", rows)
        LOG.info(f"[avdigits] {len(rows)} clips from {folder} (digest {digest[:12]}…) in {clips}")

    def folds(self) -> list[str]:
        scheme = self.settings["split"]["scheme"]
        speakers = ["speakers1", "speakers2", "speakers3"]
        return {"speakers": speakers, "official": ["official"], "all": speakers + ["official"]}[scheme]

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        s = self.settings["split"]
        labels = {r["clip_id"]: r["label"] for r in rows}
        if fold == "official":
            assignment = {r["clip_id"]: "test" if int(r["take"]) < OFFICIAL_TEST_TAKES else "train" for r in rows}
            return carve_validation(assignment, labels, s["val_fraction"], s["seed"])
        speakers = sorted({r["speaker"] for r in rows})
        k = int(fold.removeprefix("speakers"))
        test = set(np.array_split(np.array(speakers), 3)[k - 1].tolist())
        assignment = {r["clip_id"]: "test" if r["speaker"] in test else "train" for r in rows}
        groups = {r["clip_id"]: r["speaker"] for r in rows}
        return carve_validation(assignment, labels, s["val_fraction"], s["seed"] + k, groups=groups)
