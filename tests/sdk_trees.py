"""Small CMU Multimodal SDK trees: the four computational sequences (.csd, HDF5) of CMU-MOSI or CMU-MOSEI in the
released layout (one top-level group named by the root name, ``data/<video>/features`` [n, d] and
``data/<video>/intervals`` [n, 2] in seconds, and a ``metadata`` group of JSON strings, as the SDK's
``write_CSD`` writes them), for videos of the official folds."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from benchmark.data.cmu_mosi import CMUMOSEI, CMUMOSI, official_folds

#: root names as the SDK's recipes name the sequences
ROOTS = {
    "cmu_mosi": {
        "text": "glove_vectors",
        "audio": "COVAREP",
        "visual": "FACET_4.1",
        "labels": "Opinion Segment Labels",
    },
    "cmu_mosei": {"text": "glove_vectors", "audio": "COVAREP", "visual": "FACET 4.2", "labels": "All Labels"},
}
CLASSES = {"cmu_mosi": CMUMOSI, "cmu_mosei": CMUMOSEI}
DIMS = {"text": 8, "audio": 5, "visual": 6}
WORD_SECONDS, AUDIO_HZ, VISUAL_HZ = 0.3, 20.0, 15.0
#: a video that is in no official fold (a YouTube-style id that no fold lists)
EXTRA_VIDEO = "zzNotInFolds0"
#: sentiment scores drawn for the segments: multiples of 0.2 as MOSI's averages of five ratings, and exact zeros
SCORES = np.round(np.arange(-3.0, 3.01, 0.2), 1) + 0.0  # + 0.0: no negative zero


def write_csd(path: Path, root_name: str, data: dict, dataset: str, description: str, dims: list[str]) -> Path:
    """One computational sequence: ``data`` maps video -> (intervals [n, 2], features [n, d])."""
    with h5py.File(path, "w") as f:
        root = f.create_group(root_name)
        group = root.create_group("data")
        for video, (intervals, features) in data.items():
            entry = group.create_group(video)
            entry.create_dataset("features", data=features)
            entry.create_dataset("intervals", data=intervals)
        metadata = root.create_group("metadata")
        for key, value in {
            "root name": root_name,
            "computational sequence description": description,
            "dimension names": dims,
            "computational sequence version": "1.0",
            "alignment compatible": True,
            "dataset name": "CMU-MOSEI" if dataset == "cmu_mosei" else "CMU-MOSI",
            "dataset version": "1.0",
            "creator": "tests/sdk_trees.py",
        }.items():
            item = metadata.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            item[0] = json.dumps(value)
    return path


def write_sdk_tree(
    root: Path,
    dataset: str = "cmu_mosi",
    videos_per_fold: tuple = (4, 2, 2),
    segments: int = 6,
    seed: int = 0,
    dims: dict | None = None,
) -> dict:
    """The four default files of ``dataset`` under ``root`` for the first videos of each official fold (train,
    valid, test), plus ``EXTRA_VIDEO`` (in no fold) and with the last train video missing from the visual file.

    Each video has ``segments`` opinion segments of 2-7 words (0.3 s each) with 0.4 s between segments; audio rows
    at 20 Hz and visual rows at 15 Hz cover the whole video. The sentiment's sign is in the text strongly (feature 0
    of every word is ±1 plus noise 0.3) and in the audio weakly (feature 0: ±0.3 plus noise 1); the visual rows are
    noise. Segment 1 of every video scores exactly 0 (others from -3 .. 3 in steps of 0.2, zeros included).

    Returns the root, the file names, the fold videos, the extra and the no-visual video, the segments
    ({video: [(start, end, score), ...]}), the dims, and the expected manifest counts per split."""
    rng = np.random.default_rng(seed)
    dims = {**DIMS, **(dims or {})}
    roots = ROOTS[dataset]
    files = {k: CLASSES[dataset].source_defaults[k] for k in ("text", "audio", "visual", "labels")}
    folds = official_folds(dataset)
    chosen = {fold: folds[fold][:n] for fold, n in zip(("train", "valid", "test"), videos_per_fold)}
    videos = [v for fold in ("train", "valid", "test") for v in chosen[fold]] + [EXTRA_VIDEO]
    no_visual = chosen["train"][-1]
    data = {k: {} for k in ("text", "audio", "visual", "labels")}
    segment_info = {}
    for video in videos:
        t, word_iv, word_ft, label_iv, label_ft = 0.2, [], [], [], []
        segment_info[video] = []
        for k in range(segments):
            score = 0.0 if k == 1 else float(rng.choice(SCORES))
            sign = float(np.sign(score))
            n_words = int(rng.integers(2, 8))
            start = t
            for _ in range(n_words):
                word_iv.append([t, t + WORD_SECONDS])
                vec = rng.normal(0.0, 0.3, dims["text"])
                vec[0] += sign
                word_ft.append(vec)
                t = round(t + WORD_SECONDS, 3)
            label_iv.append([start, t])
            row = [score]
            if dataset == "cmu_mosei":  # sentiment, then six emotions in [0, 3]
                row += list(np.round(rng.uniform(0.0, 3.0, 6), 3))
            label_ft.append(row)
            segment_info[video].append((start, t, score))
            t = round(t + 0.4, 3)
        duration = t
        data["text"][video] = (np.array(word_iv), np.array(word_ft))
        data["labels"][video] = (np.array(label_iv), np.array(label_ft))
        signs = np.zeros(int(np.ceil(duration * AUDIO_HZ)))
        for start, end, score in segment_info[video]:
            signs[int(start * AUDIO_HZ) : int(np.ceil(end * AUDIO_HZ))] = np.sign(score)
        for modality, hz in (("audio", AUDIO_HZ), ("visual", VISUAL_HZ)):
            n = int(np.ceil(duration * hz))
            starts = np.arange(n) / hz
            intervals = np.stack([starts, starts + 1.0 / hz], axis=1)
            features = rng.normal(0.0, 1.0, (n, dims[modality]))
            if modality == "audio":
                features[:, 0] += 0.3 * signs[:n]
            if modality == "visual" and video == no_visual:
                continue
            data[modality][video] = (intervals, features)
    names = {
        "text": [f"glove{i}" for i in range(dims["text"])],
        "audio": [f"covarep{i}" for i in range(dims["audio"])],
        "visual": [f"facet{i}" for i in range(dims["visual"])],
        "labels": ["sentiment"]
        + (["happy", "sad", "anger", "surprise", "disgust", "fear"] if dataset == "cmu_mosei" else []),
    }
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for key, name in files.items():
        write_csd(root / name, roots[key], data[key], dataset, f"{key} features (test fixture)", names[key])
    counts = {}
    for rule in ("exclude", "positive"):
        counts[rule] = {
            split: sum(
                1 for v in chosen[fold] if v != no_visual for *_, s in segment_info[v] if rule == "positive" or s != 0
            )
            for fold, split in (("train", "train"), ("valid", "val"), ("test", "test"))
        }
    return {
        "root": root,
        "files": files,
        "folds": chosen,
        "extra_video": EXTRA_VIDEO,
        "no_visual_video": no_visual,
        "segments": segment_info,
        "dims": dims,
        "counts": counts,  # {binary_zero rule: {split: manifest rows}}
    }
