"""Raw clips -> cached tensors, once per dataset (training never decodes media).

Per clip: ffmpeg-python decodes the audio (mono, fixed rate) and the frames (fixed fps and size) straight to
arrays; torchaudio turns the waveform into a log spectrogram. Each split is saved as one file of compact
tensors (uint8 frames, float16 spectrograms) that training memory-maps. A clip that cannot be used is
listed with its reason in ``rejected.csv``; too many rejections stop the step with the first offender named.
"""
from __future__ import annotations

import csv
import json
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.data.datasets import SPLITS, Dataset, read_manifest
from benchmark.data.media import MediaError, decode_audio, decode_frames


class PreprocessError(RuntimeError):
    pass


def fixed_length(wave: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Cut to n samples; shorter clips are tiled (as the OGM-GE CREMA-D loader does) or zero-padded."""
    if wave.size >= n:
        return wave[:n]
    if mode == "tile":
        return np.tile(wave, math.ceil(n / wave.size))[:n]
    return np.pad(wave, (0, n - wave.size))


def spectrogram_fn(audio: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """log(|STFT| + offset) (the reference code's recipe), log(mel power + offset), or a Kaldi filter bank padded
    or cut to ``target_frames`` and normalised (x − norm_mean) / (2·norm_std) (the Kinetics-Sounds recipe): [1, F, T]."""
    import torchaudio

    if audio["transform"] == "fbank":
        from torchaudio.compliance import kaldi

        def fbank(wave: np.ndarray) -> torch.Tensor:
            w = torch.from_numpy(np.ascontiguousarray(wave)).unsqueeze(0)
            feats = kaldi.fbank(w - w.mean(), htk_compat=True, sample_frequency=audio["sample_rate"], use_energy=False,
                                window_type="hanning", num_mel_bins=audio["n_mels"], dither=0.0, frame_shift=audio["frame_shift_ms"])
            if audio["target_frames"]:
                n = audio["target_frames"]
                feats = torch.nn.functional.pad(feats, (0, 0, 0, max(0, n - len(feats))))[:n]
            return ((feats - audio["norm_mean"]) / (2 * audio["norm_std"])).T.unsqueeze(0)

        return fbank
    if audio["transform"] == "stft":
        transform = torchaudio.transforms.Spectrogram(n_fft=audio["n_fft"], hop_length=audio["hop_length"], power=1.0)
    else:
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=audio["sample_rate"], n_fft=audio["n_fft"], hop_length=audio["hop_length"], n_mels=audio["n_mels"], power=2.0
        )
    offset = audio["log_offset"]

    def compute(wave: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            spec = transform(torch.from_numpy(np.ascontiguousarray(wave)))
        return torch.log(spec + offset).unsqueeze(0)

    return compute


def frame_indices(n_available: int, k: int, sampling: str, seed: int, clip_id: str) -> np.ndarray:
    """k indices spread evenly over the clip: the centre of each of k equal segments, or a seeded random
    frame inside each segment (the seed is actually used: it depends on the setting and the clip id)."""
    edges = np.linspace(0, n_available, k + 1)
    lo = np.floor(edges[:-1]).astype(int)
    hi = np.maximum(lo + 1, np.floor(edges[1:]).astype(int))
    if sampling == "random":
        rng = np.random.default_rng([seed, zlib.crc32(clip_id.encode())])
        idx = rng.integers(lo, hi)
    else:
        idx = (lo + hi - 1) // 2
    return np.clip(idx, 0, n_available - 1)


#: where a modality comes from: the audio track, the frames, or the difference of consecutive frames
SOURCES = ("audio", "video", "video_diff")


def motion(frames: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Frame differences at the sampled positions, frame[i+1] − frame[i] (the last frame differs with itself:
    zero), stored as uint8 with 0 at 127.5: (diff + 255) / 2."""
    nxt = np.minimum(idx + 1, len(frames) - 1)
    diff = frames[nxt].astype(np.int16) - frames[idx].astype(np.int16)
    return ((diff + 255) // 2).astype(np.uint8)


class ClipDecoder:
    def __init__(self, dataset: Dataset, raw_dir: Path, pre: dict, classes: list[str]) -> None:
        self.raw_dir = Path(raw_dir)
        self.modalities = dataset.modalities
        self.pre = pre
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.spectrogram = spectrogram_fn(pre["audio"])

    def __call__(self, row: dict) -> dict:
        if row["label"] not in self.class_index:
            raise MediaError("label not in class list", repr(row["label"]))
        if row.get("split") and row["split"] not in SPLITS:
            raise MediaError("unknown split", repr(row["split"]))
        path = self.raw_dir / row["path"]
        segment = {k: float(row[k]) for k in ("start", "end") if row.get(k) not in (None, "")}
        out = {"label": self.class_index[row["label"]]}
        frames = idx = None  # decoded once per clip, shared by the frame-based modalities
        for modality, source in self.modalities.items():
            if source == "audio":
                a = self.pre["audio"]
                audio_path = self.raw_dir / row["audio_path"] if row.get("audio_path") else path
                wave = fixed_length(decode_audio(audio_path, a["sample_rate"], **segment),
                                    int(round(a["sample_rate"] * a["duration"])), a["pad_mode"])
                out[modality] = self.spectrogram(wave).to(torch.float16)
                continue
            if source not in ("video", "video_diff"):
                raise ValueError(f"modality '{modality}': unknown source '{source}' ({' | '.join(SOURCES)})")
            if frames is None:
                v = self.pre["visual"]
                frames = decode_frames(path, v["fps"], v["size"], **segment)
                idx = frame_indices(len(frames), v["num_frames"], v["sampling"], v["seed"], row["clip_id"])
            picked = frames[idx] if source == "video" else motion(frames, idx)
            out[modality] = torch.from_numpy(np.ascontiguousarray(picked)).permute(0, 3, 1, 2).contiguous()
        return out


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def preprocess(dataset: Dataset, raw_dir: Path, out_dir: Path, pre: dict, workers: int = 1, log: Callable[[str], None] = print) -> dict:
    """Decode every clip of the manifest and write ``<out_dir>/{train,val,test}.pt``, ``rejected.csv``, ``info.json``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(raw_dir / "manifest.csv")
    if not rows:
        raise PreprocessError(f"{raw_dir / 'manifest.csv'} lists no clips")
    classes = dataset.classes(rows)
    decode = ClipDecoder(dataset, raw_dir, pre, classes)
    torch.set_num_threads(1)  # parallelism comes from the clip workers

    def safe(row: dict) -> dict | MediaError:
        try:
            return decode(row)
        except MediaError as err:
            return err

    results: list[dict | MediaError] = []
    step = max(1, len(rows) // 10)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, res in enumerate(pool.map(safe, rows), 1):
            results.append(res)
            if i % step == 0 or i == len(rows):
                log(f"[preprocess] {i}/{len(rows)} clips ({100 * i // len(rows)}%)")

    rejected = [(row, res) for row, res in zip(rows, results) if isinstance(res, MediaError)]
    with (out_dir / "rejected.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "path", "reason", "detail"])
        for row, err in rejected:
            writer.writerow([row["clip_id"], row["path"], err.reason, err.detail])
    log(f"[preprocess] accepted {len(rows) - len(rejected)}, rejected {len(rejected)} (see {out_dir / 'rejected.csv'})")
    limit = pre["max_rejected_fraction"]
    if len(rejected) > limit * len(rows):
        row, err = rejected[0]
        raise PreprocessError(
            f"{len(rejected)} of {len(rows)} clips rejected ({100 * len(rejected) / len(rows):.1f}%), more than "
            f"max_rejected_fraction={limit}; first: {raw_dir / row['path']} ({err.reason}); all listed in {out_dir / 'rejected.csv'}"
        )
    keep = [(row, res) for row, res in zip(rows, results) if not isinstance(res, MediaError)]
    if not keep:
        raise PreprocessError(f"no usable clips in {raw_dir / 'manifest.csv'}")
    tensors = {"clip_id": [row["clip_id"] for row, _ in keep],
               "label": torch.tensor([res["label"] for _, res in keep], dtype=torch.long)}
    shapes = {}
    for modality in dataset.modalities:
        tensors[modality] = torch.stack([res[modality] for _, res in keep])
        shapes[modality] = {"shape": list(tensors[modality].shape[1:]), "dtype": str(tensors[modality].dtype).replace("torch.", "")}
    _atomic_save(tensors, out_dir / "clips.pt")
    info = {"dataset": dataset.name, "classes": classes, "clips": len(keep), "rejected": len(rejected),
            "modalities": {m: {"source": s, **shapes[m]} for m, s in dataset.modalities.items()}}
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
