"""CMU-MOSI and CMU-MOSEI sentiment from the CMU Multimodal SDK's released features (computational sequences).

Files. The SDK (https://github.com/A2Zadeh/CMU-MultimodalSDK, ``mmsdk/mmdatasdk/dataset/standard_datasets/``)
publishes pre-extracted features as HDF5 ``.csd`` files under http://immortal.multicomp.cs.cmu.edu/: for MOSI
``CMU-MOSI/language/CMU_MOSI_TimestampedWordVectors.csd`` (GloVe word vectors), ``CMU-MOSI/acoustic/
CMU_MOSI_COVAREP.csd``, ``CMU-MOSI/visual/CMU_MOSI_Visual_Facet_41.csd`` and ``CMU-MOSI/labels/
CMU_MOSI_Opinion_Labels.csd``; for MOSEI ``CMU-MOSEI/language/CMU_MOSEI_TimestampedWordVectors.csd``,
``CMU-MOSEI/acoustic/CMU_MOSEI_COVAREP.csd``, ``CMU-MOSEI/visual/CMU_MOSEI_VisualFacet42.csd`` and
``CMU-MOSEI/labels/CMU_MOSEI_Labels.csd`` (``CMUMOSI.urls``, ``CMUMOSEI.urls``). Nothing is downloaded here:
``source.path`` names a local folder holding the four files (other feature files of the SDK, e.g. OpenFace_2, are
chosen by naming them in ``source.text|audio|visual``).

Layout (the SDK's ``computational_sequence/file_ops.py``: ``write_CSD`` / ``read_CSD``). One top-level group, named
by the sequence's root name (e.g. ``All Labels``), holds ``data/<video_id>/features`` [n, d] and
``data/<video_id>/intervals`` [n, 2] (start and end, seconds) and a ``metadata`` group of JSON strings. A labels
file's rows are a video's opinion segments: the interval and the scores (MOSI: [k, 1] sentiment; MOSEI: [k, 7]:
sentiment, happy, sad, anger, surprise, disgust, fear). Segment ``k`` of a video is the clip ``<video>[k]``: the
row index, as the SDK names the segments it aligns to the labels. The files are read with h5py and NumPy only:
loading never unpickles and never executes anything from a file.

Segments. ``task.align: none`` gives each modality its own rows inside the segment; ``words`` first averages audio
and visual over every word interval of the text sequence, then takes the words inside the segment: the SDK's
word-level alignment with an average collapse (``examples/.../process_mosi.py``: ``align('glove_vectors',
collapse_functions=[myavg])``, ``impute('glove_vectors')``, ``align('Opinion Segment Labels')``; its MOSEI example
aligns to the words without a collapse, keeping every row, which ``words`` does not). Both follow the
SDK's ``mmdataset.align`` exactly: a row belongs to an interval when their intersection is longer than the SDK's
epsilon (1e-5 s), rows are in order of their start, zero-length words and segments are dropped, an averaged row's
interval is the span of its rows' intersections with the word, and a word that no row of a modality overlaps gets
an all-zero row (the SDK's ``impute`` with ``numpy.zeros``), so such a word looks like padding to an encoder that
masks all-zero rows. Sequences are truncated to their first ``task.max_len`` rows and padded with all-zero rows at
the end, as MultiBench's ``Affectdataset`` does with ``max_pad`` (``datasets/affect/get_data.py``: ``[:max_pad_num]``
then ``F.pad`` at the end; the SDK's own ``get_tensors`` instead left-pads and keeps the last rows). ``max_len`` is
50 (MultiBench's examples' ``max_seq_len=50``, the SDK's MOSEI example's ``seq_len=50``), or a mapping per modality
(BalanceBenchmark reads MulT's unaligned pickles, whose audio and visual sequences are longer than the text's).
Non-finite values are passed through (the audio of MultiBench's and BalanceBenchmark's pickles holds -inf, which
both set to 0); ``preprocess.nonfinite`` decides what happens to them.

Labels (the sentiment score in [-3, 3]). ``task.classes: binary`` with ``binary_zero``: ``exclude`` (negative < 0,
positive > 0, neutral segments refused: the "non-zero" Acc-2 of MultiBench's ``eval_mosei_senti`` with
``exclude_zero=True``; the SDK README's "newer approaches (after 2019)"), ``positive`` (negative < 0, positive >= 0:
BalanceBenchmark's ``acc2`` in ``balancemm/datasets/Mosei_dataset.py``, the SDK README's negative / non-negative) or
``negative`` (positive > 0, else negative: MultiBench's ``Affectdataset`` classification labels, ``flag > 0``).
``seven`` gives the classes "-3" .. "3" (index = class + 3) by ``seven_rule``: ``round`` is
``np.round(np.clip(score, -3, 3))`` (MultiBench's ``utils/evaluation_metric.py``; the MOSI README's "round
function"; NumPy rounds halves to even), ``sdk`` the bins of the MOSEI README's ``cmumosei_round`` (also
BalanceBenchmark's ``acc7``): < -2, [-2, -1), [-1, 0), 0, (0, 1], (1, 2], > 2.

Splits: the SDK's standard folds (``cmu_mosi_std_folds.py`` / ``cmu_mosei_std_folds.py``, kept as data in
``cmu_folds.json`` with the commit they come from): train, valid (-> val) and test, by video.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from benchmark.data.datasets import DATASETS, REJECTED_ROWS, Dataset, RejectedRow, write_manifest, write_rejected_rows
from benchmark.data.media import MediaError
from benchmark.data.sources import SourceError, check_complete

LOG = logging.getLogger(__name__)

#: the standard folds as data (video ids per fold, with the SDK commit they were taken from)
FOLDS_FILE = Path(__file__).with_name("cmu_folds.json")
#: data/raw/<dataset>/files: a link to source.path
FILES = "files"
#: the SDK's tolerance for interval comparisons (mmdatasdk/dataset/dataset.py: epsilon=10e-6)
EPSILON = 10e-6
MODALITIES = ("text", "audio", "visual")
#: the SDK's fold names -> the harness's splits
FOLD_SPLITS = {"train": "train", "valid": "val", "test": "test"}
SDK_SERVER = "http://immortal.multicomp.cs.cmu.edu"
#: videos kept in memory per modality while segments are read (manifest rows come grouped by video)
VIDEO_CACHE = 16


@functools.lru_cache(maxsize=None)
def official_folds(key: str) -> dict[str, list[str]]:
    """{"train" | "valid" | "test": video ids} of the SDK's standard folds of ``key`` (cmu_mosi, cmu_mosei)."""
    return json.loads(FOLDS_FILE.read_text())[key]["folds"]


def sequence_data(handle: h5py.File, where: str) -> h5py.Group:
    """The ``data`` group of a computational sequence: under its one top-level group (the root name)."""
    roots = [k for k in handle if isinstance(handle[k], h5py.Group) and "data" in handle[k]]
    if len(roots) != 1:
        raise SourceError(
            f"{where}: not a computational sequence of the CMU Multimodal SDK (expected one top-level group holding "
            f"data/<video>/features and intervals; found {len(roots)}: {', '.join(roots) or 'none'})"
        )
    return handle[roots[0]]["data"]


def overlapping(intervals: np.ndarray, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows whose interval intersects [start, end] by more than the SDK's epsilon, and the
    intersections (the SDK's ``mmdataset.__intersect_and_copy``); ``intervals`` sorted by start."""
    s, e = intervals[:, 0], intervals[:, 1]
    hit = np.flatnonzero((s < end + EPSILON) & (e > start - EPSILON))
    clipped = np.stack([np.maximum(s[hit], start), np.minimum(e[hit], end)], axis=1)
    keep = np.abs(clipped[:, 0] - clipped[:, 1]) > EPSILON
    return hit[keep], clipped[keep]


def fit_rows(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``x``, padded at the end with all-zero rows to ``n`` (float32)."""
    out = np.zeros((n, x.shape[1]), dtype=np.float32)
    m = min(n, len(x))
    out[:m] = x[:m]
    return out


def sdk_seven(score: float) -> int:
    """The MOSEI README's ``cmumosei_round``: < -2 -> -3, [-2, -1) -> -2, [-1, 0) -> -1, 0, (0, 1] -> 1,
    (1, 2] -> 2, > 2 -> 3."""
    if score == 0:
        return 0
    if score < 0:
        return -3 if score < -2 else (-2 if score < -1 else -1)
    return 3 if score > 2 else (2 if score > 1 else 1)


@DATASETS.register("cmu_mosi")
class CMUMOSI(Dataset):
    """CMU-MOSI (Zadeh et al. 2016): opinion segments of 93 YouTube movie-review videos (2,199 in the paper),
    sentiment in [-3, 3], from the CMU Multimodal SDK's released features (GloVe words, COVAREP audio, FACET 4.1
    visual); the SDK's standard folds. See the module docstring for the files, alignment and label conventions."""

    display_name: ClassVar[str] = "CMU-MOSI"
    paper: ClassVar[str] = "Zadeh et al. 2016 (CMU-MOSI)"
    modalities = {"text": "sequence", "audio": "sequence", "visual": "sequence"}
    config_sections = ("source", "task", "split")
    source_defaults: ClassVar[dict] = {
        "path": None,
        "text": "CMU_MOSI_TimestampedWordVectors.csd",
        "audio": "CMU_MOSI_COVAREP.csd",
        "visual": "CMU_MOSI_Visual_Facet_41.csd",
        "labels": "CMU_MOSI_Opinion_Labels.csd",
        "max_missing_fraction": 0.05,
    }
    task_defaults: ClassVar[dict] = {
        "classes": "binary",
        "binary_zero": "exclude",
        "seven_rule": "round",
        "align": "none",
        "max_len": 50,
    }
    split_defaults: ClassVar[dict] = {"val_fraction": 0.1, "seed": 0}  # unused: the official folds have val
    #: key of the folds in cmu_folds.json
    fold_key: ClassVar[str] = "cmu_mosi"
    #: columns of the labels file's features, and the sentiment's
    label_columns: ClassVar[int] = 1
    label_column: ClassVar[int] = 0
    #: where the SDK serves the default files (mmsdk/mmdatasdk/dataset/standard_datasets/CMU_MOSI/cmu_mosi.py)
    urls: ClassVar[dict[str, str]] = {
        "text": f"{SDK_SERVER}/CMU-MOSI/language/CMU_MOSI_TimestampedWordVectors.csd",
        "audio": f"{SDK_SERVER}/CMU-MOSI/acoustic/CMU_MOSI_COVAREP.csd",
        "visual": f"{SDK_SERVER}/CMU-MOSI/visual/CMU_MOSI_Visual_Facet_41.csd",
        "labels": f"{SDK_SERVER}/CMU-MOSI/labels/CMU_MOSI_Opinion_Labels.csd",
    }

    def __init__(self, settings: dict) -> None:
        super().__init__(settings)
        self.settings = dict(settings)
        for section in self.config_sections:
            defaults = getattr(self, f"{section}_defaults")
            given = dict(settings.get(section) or {})
            unknown = sorted(set(given) - set(defaults))
            if unknown:
                raise ValueError(
                    f"datasets.{self.name}.{section}.{unknown[0]}: unknown key; accepted: {', '.join(sorted(defaults))}"
                )
            self.settings[section] = {**defaults, **given}
        self.check_settings()
        self._lock = threading.Lock()
        self._files: dict[str, h5py.File] = {}
        self._videos: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    # --- settings -------------------------------------------------------------------------------------------------

    def check_settings(self) -> None:
        where = f"datasets.{self.name}"
        task, src = self.settings["task"], self.settings["source"]
        for key, allowed in (
            ("classes", ("binary", "seven")),
            ("binary_zero", ("exclude", "positive", "negative")),
            ("seven_rule", ("round", "sdk")),
            ("align", ("none", "words")),
        ):
            if task[key] not in allowed:
                listed = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
                raise ValueError(f"{where}.task.{key} must be {listed} (got {task[key]!r})")
        self.max_lens()  # checks task.max_len
        for key in ("text", "audio", "visual", "labels"):
            if not isinstance(src[key], str) or not src[key]:
                raise ValueError(f"{where}.source.{key} must be the name of a .csd file in source.path")
        fraction = src["max_missing_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"{where}.source.max_missing_fraction must be a number in [0, 1] (got {fraction!r})")
        if src["path"] is not None and not isinstance(src["path"], (str, os.PathLike)):
            raise ValueError(f"{where}.source.path must be a folder (a string) or null")

    def max_lens(self) -> dict[str, int]:
        """task.max_len per modality (one number for all, or a mapping text/audio/visual -> rows)."""
        given = self.settings["task"]["max_len"]
        where = f"datasets.{self.name}.task.max_len"
        lens = dict(given) if isinstance(given, dict) else {m: given for m in MODALITIES}
        if set(lens) != set(MODALITIES):
            raise ValueError(f"{where} must be a positive integer or a mapping of text, audio and visual to one")
        for m, n in lens.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where} must be a positive integer (got {n!r} for {m})")
        return lens

    def obtain(self) -> str:
        listed = ", ".join(self.urls[k] for k in ("text", "audio", "visual", "labels"))
        return (
            f"Download the CMU Multimodal SDK's files ({listed}; the SDK's standard_datasets/ lists them) into one "
            f"folder and set datasets.{self.name}.source.path to it"
        )

    # --- labels and splits ----------------------------------------------------------------------------------------

    def classes(self, rows: list[dict]) -> list[str]:
        if self.settings["task"]["classes"] == "seven":
            return [str(v) for v in range(-3, 4)]
        return ["negative", "positive"]

    def label_of(self, score: float) -> str | None:
        """The class name of a sentiment score (None: a neutral segment the binary task excludes)."""
        task = self.settings["task"]
        if task["classes"] == "seven":
            if task["seven_rule"] == "sdk":
                return str(sdk_seven(score))
            return str(int(np.round(np.clip(score, -3.0, 3.0))))
        if score < 0:
            return "negative"
        if score > 0:
            return "positive"
        return None if task["binary_zero"] == "exclude" else task["binary_zero"]

    def folds(self) -> list[str]:
        return ["main"]

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        """The official folds, as the manifest's split column holds them."""
        return {r["clip_id"]: r["split"] for r in rows if r.get("split")}

    # --- download: the manifest ---------------------------------------------------------------------------------

    def local_tree(self, raw_dir: Path) -> Path:
        """raw_dir/files, a link to source.path after checking that it holds the four files."""
        src = self.settings["source"]
        if not src["path"]:
            raise SourceError(f"datasets.{self.name}.source.path is not set. {self.obtain()}.")
        folder = Path(src["path"]).expanduser().resolve()
        if not folder.is_dir():
            raise SourceError(f"datasets.{self.name}.source.path: {folder} is not a folder. {self.obtain()}.")
        lacking = [
            f"{src[k]} (source.{k})" for k in ("text", "audio", "visual", "labels") if not (folder / src[k]).is_file()
        ]
        if lacking:
            raise SourceError(
                f"datasets.{self.name}.source.path: {folder} lacks {', '.join(lacking)}. {self.obtain()}."
            )
        raw_dir.mkdir(parents=True, exist_ok=True)
        link = raw_dir / FILES
        if link.is_symlink():
            if link.resolve() == folder:
                return link
            link.unlink()
        elif link.exists():
            raise SourceError(f"{link} exists and is not a link to {folder}; remove it")
        link.symlink_to(folder, target_is_directory=True)
        return link

    def read_labels(self, path: Path) -> list[tuple[str, int, float, float, float]]:
        """(video, segment index, start, end, sentiment) of every row of the labels file, videos in file order."""
        out = []
        with h5py.File(path, "r") as f:
            data = sequence_data(f, str(path))
            for video in data:
                intervals = np.asarray(data[video]["intervals"][()], dtype=np.float64)
                scores = np.asarray(data[video]["features"][()], dtype=np.float64)
                if intervals.ndim != 2 or intervals.shape[1] != 2 or scores.ndim != 2 or len(scores) != len(intervals):
                    raise SourceError(
                        f"{path}: video {video} has intervals {intervals.shape} and features {scores.shape}; a "
                        "labels sequence has [k, 2] and [k, columns]"
                    )
                if scores.shape[1] != self.label_columns:
                    raise SourceError(
                        f"{path}: video {video} has {scores.shape[1]} label columns; the {self.name} labels file has "
                        f"{self.label_columns} (is datasets.{self.name}.source.labels the right file?)"
                    )
                for k, ((start, end), row) in enumerate(zip(intervals, scores)):
                    out.append((video, k, float(start), float(end), float(row[self.label_column])))
        return out

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raw_dir = Path(raw_dir)
        src = self.settings["source"]
        root = self.local_tree(raw_dir)
        present = {}
        for m in MODALITIES:
            with h5py.File(root / src[m], "r") as f:
                present[m] = set(sequence_data(f, str(root / src[m])))
        segments = self.read_labels(root / src["labels"])
        split_of = {v: FOLD_SPLITS[fold] for fold, ids in official_folds(self.fold_key).items() for v in ids}
        labels_path = f"{FILES}/{src['labels']}"
        rows, refused = [], []
        for line, (video, k, start, end, score) in enumerate(segments, 1):
            clip_id = f"{video}[{k}]"

            def refuse(reason: str, detail: str) -> None:
                where = f"{src['labels']}:{clip_id}"
                refused.append(RejectedRow(where, line, labels_path, f"{score:g}", reason, f"{clip_id}: {detail}"))

            lacking = [m for m in MODALITIES if video not in present[m]]
            label = self.label_of(score) if np.isfinite(score) else None
            if video not in split_of:
                refuse("not in the official folds", f"video {video} is in no standard fold of the SDK")
            elif lacking:
                refuse(f"no {lacking[0]} features for this video", f"{src[lacking[0]]} has no entry {video}")
            elif abs(end - start) < EPSILON:
                refuse("zero-length segment", f"[{start:g}, {end:g}] (the SDK's alignment drops it)")
            elif not np.isfinite(score):
                refuse("no sentiment score", f"score {score}")
            elif label is None:
                refuse("neutral sentiment (binary task excludes 0)", "score 0 (task.binary_zero: exclude)")
            else:
                rows.append(
                    {
                        "clip_id": clip_id,
                        "path": labels_path,
                        "label": label,
                        "split": split_of[video],
                        "video": video,
                        "start": repr(start),
                        "end": repr(end),
                        "score": repr(score),
                    }
                )
        write_rejected_rows(raw_dir / REJECTED_ROWS, refused)
        labelled = {video for video, *_ in segments}
        usable = labelled & present["text"] & present["audio"] & present["visual"]
        official = [v for fold in ("train", "valid", "test") for v in official_folds(self.fold_key)[fold]]
        check_complete(usable, official, src["max_missing_fraction"], raw_dir / "missing.txt", str(root))
        write_manifest(raw_dir / "manifest.csv", rows)
        LOG.info(
            f"[{self.name}] {len(rows)} segments of {len({r['video'] for r in rows})} videos from {root}; "
            f"{len(refused)} refused (listed in {raw_dir / REJECTED_ROWS})"
        )

    # --- tensors --------------------------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_lock", "_files", "_videos"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._files, self._videos, self._pid = threading.Lock(), {}, OrderedDict(), os.getpid()

    def _data(self, path: Path) -> h5py.Group:
        """The data group of a .csd file, opened read-only once per process and kept open (call under the lock)."""
        if self._pid != os.getpid():  # a forked child: the parent's handles are not ours to use or close
            self._files, self._videos, self._pid = {}, OrderedDict(), os.getpid()
        key = str(path)
        if key not in self._files:
            if not Path(path).is_file():
                raise MediaError("file not found", key)
            self._files[key] = h5py.File(path, "r")
        return sequence_data(self._files[key], key)

    def _video(self, folder: Path, modality: str, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(intervals [n, 2] float64, features [n, d]) of one video in one modality's file, sorted by start."""
        path = folder / self.settings["source"][modality]
        key = (str(path), video)
        with self._lock:
            if key in self._videos:
                self._videos.move_to_end(key)
                return self._videos[key]
            data = self._data(path)
            if video not in data:
                raise MediaError(f"no {modality} features", f"{path.name} has no entry {video}")
            intervals = np.asarray(data[video]["intervals"][()], dtype=np.float64)
            features = np.asarray(data[video]["features"][()])
            if intervals.ndim != 2 or intervals.shape[1] != 2 or len(features) != len(intervals):
                raise MediaError(
                    "corrupt features",
                    f"{modality}: {video} has intervals {intervals.shape}, features {features.shape}",
                )
            order = np.argsort(intervals[:, 0], kind="stable")
            entry = (intervals[order], features.reshape(len(features), -1)[order])
            self._videos[key] = entry
            while len(self._videos) > VIDEO_CACHE * len(MODALITIES):
                self._videos.popitem(last=False)
            return entry

    def tensor_specs(self, raw_dir: Path, rows: list[dict]) -> dict[str, dict]:
        """[max_len, d] float32 per modality, d read from the file (its first video: the same for every shard)."""
        folder = Path(raw_dir) / FILES
        if rows:
            folder = (Path(raw_dir) / rows[0]["path"]).parent
        lens, specs = self.max_lens(), {}
        with self._lock:
            for m in MODALITIES:
                data = self._data(folder / self.settings["source"][m])
                first = next(iter(data), None)
                if first is None:
                    raise SourceError(f"{folder / self.settings['source'][m]} holds no video")
                shape = data[first]["features"].shape
                specs[m] = {"shape": [lens[m], int(np.prod(shape[1:]))], "dtype": "float32"}
        return specs

    def tensors(self, raw_dir: Path, row: dict) -> dict:
        folder = (Path(raw_dir) / row["path"]).parent
        video, start, end = row["video"], float(row["start"]), float(row["end"])
        seqs = {m: self._video(folder, m, video) for m in MODALITIES}
        picked = self.aligned(seqs, start, end) if self.settings["task"]["align"] == "words" else {}
        lens, out = self.max_lens(), {}
        for m in MODALITIES:
            if self.settings["task"]["align"] == "words":
                x = picked[m]
            else:
                intervals, features = seqs[m]
                x = features[overlapping(intervals, start, end)[0]]
            if not len(x):
                raise MediaError("empty segment", f"{m}: no rows in [{start:g}, {end:g}]")
            out[m] = fit_rows(x, lens[m])
        return out

    def aligned(self, seqs: dict, start: float, end: float) -> dict[str, np.ndarray]:
        """The segment's rows after the SDK's word-level alignment (average collapse, zero imputation) followed by
        its alignment to the labels (no collapse)."""
        words_iv, words_ft = seqs["text"]
        candidates, _ = overlapping(words_iv, start, end)
        candidates = [i for i in candidates if abs(words_iv[i, 0] - words_iv[i, 1]) >= EPSILON]
        out = {}
        for m in MODALITIES:
            intervals, features = seqs[m]
            entries, rows = [], []
            for i in candidates:
                word = words_iv[i]
                if m == "text":
                    entries.append(word)
                    rows.append(words_ft[i])
                    continue
                idx, clipped = overlapping(intervals, word[0], word[1])
                if len(idx):
                    entries.append(np.array([clipped.min(), clipped.max()]))
                    rows.append(np.average(features[idx], axis=0))
                else:  # impute: zeros over the word's interval
                    entries.append(word)
                    rows.append(np.zeros(features.shape[1], dtype=features.dtype))
            if not rows:
                out[m] = np.zeros((0, features.shape[1]), dtype=np.float32)
                continue
            entries_np, rows_np = np.stack(entries), np.stack(rows)
            order = np.argsort(entries_np[:, 0], kind="stable")
            keep, _ = overlapping(entries_np[order], start, end)
            out[m] = rows_np[order][keep]
        return out


@DATASETS.register("cmu_mosei")
class CMUMOSEI(CMUMOSI):
    """CMU-MOSEI (Zadeh et al. 2018): opinion segments of YouTube monologue videos with sentiment in [-3, 3] and six
    emotions (CMU_MOSEI_Labels.csd: [k, 7], sentiment first), from the SDK's released features (GloVe words,
    COVAREP audio, FACET 4.2 visual); the SDK's standard folds."""

    display_name: ClassVar[str] = "CMU-MOSEI"
    paper: ClassVar[str] = "Zadeh et al. 2018 (CMU-MOSEI)"
    source_defaults = {
        "path": None,
        "text": "CMU_MOSEI_TimestampedWordVectors.csd",
        "audio": "CMU_MOSEI_COVAREP.csd",
        "visual": "CMU_MOSEI_VisualFacet42.csd",
        "labels": "CMU_MOSEI_Labels.csd",
        "max_missing_fraction": 0.05,
    }
    fold_key = "cmu_mosei"
    label_columns = 7  # sentiment, happy, sad, anger, surprise, disgust, fear (the SDK's CMU_MOSEI/README.md)
    label_column = 0
    urls = {
        "text": f"{SDK_SERVER}/CMU-MOSEI/language/CMU_MOSEI_TimestampedWordVectors.csd",
        "audio": f"{SDK_SERVER}/CMU-MOSEI/acoustic/CMU_MOSEI_COVAREP.csd",
        "visual": f"{SDK_SERVER}/CMU-MOSEI/visual/CMU_MOSEI_VisualFacet42.csd",
        "labels": f"{SDK_SERVER}/CMU-MOSEI/labels/CMU_MOSEI_Labels.csd",
    }
