"""Raw clips -> cached tensors, once per dataset (training never decodes media).

Per clip: ffmpeg-python decodes the audio (mono, fixed rate) and the frames (fixed fps and size) straight to
arrays; torchaudio turns the waveform into a log spectrogram. The manifest is cut into shards
(``benchmark.data.shards``), each decoded by one job into a file of compact tensors (uint8 frames, float16
spectrograms) that training memory-maps; a gather step indexes them. A clip that cannot be used is listed with its
reason in ``rejected.csv``; too many rejections stop the gather step with the first offender named.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.data.cache import cache_settings_hash
from benchmark.data.datasets import SPLITS, Dataset, read_manifest, read_rejected_rows, split_labels
from benchmark.data.kinds import INPUT_KINDS, SOURCE_KIND, InputKind, get_kind, is_media, kind_name
from benchmark.data.media import MediaError, decode_audio, decode_frames
from benchmark.data.shards import (
    SHARDS,
    save_atomic,
    shard_bounds,
    shard_count,
    shard_name,
    shard_record,
    shard_tensors,
    write_index,
)
from benchmark.logs import milestones, progress, progress_enabled
from benchmark.metrics import CLIP_SEPARATOR


class PreprocessError(RuntimeError):
    pass


LOG = logging.getLogger(__name__)
#: manifest rows per shard when the config does not say (resources.preprocess.shard_clips)
DEFAULT_SHARD_CLIPS = 1000


def fixed_length(wave: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Cut to n samples; shorter clips are tiled (as the OGM-GE CREMA-D loader does) or zero-padded."""
    if wave.size >= n:
        return wave[:n]
    if mode == "tile":
        return np.tile(wave, math.ceil(n / wave.size))[:n]
    return np.pad(wave, (0, n - wave.size))


def spectrogram_fn(audio: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """log(|STFT| + offset) (the reference code's recipe), log(mel power + offset), or a Kaldi filter bank padded
    or cut to ``target_frames`` and normalised (x − norm_mean) / (2·norm_std) (the Kinetics-Sounds recipe): [1, F,
    T]."""
    import torchaudio

    if audio["transform"] == "fbank":
        from torchaudio.compliance import kaldi

        def fbank(wave: np.ndarray) -> torch.Tensor:
            w = torch.from_numpy(np.ascontiguousarray(wave)).unsqueeze(0)
            feats = kaldi.fbank(
                w - w.mean(),
                htk_compat=True,
                sample_frequency=audio["sample_rate"],
                use_energy=False,
                window_type="hanning",
                num_mel_bins=audio["n_mels"],
                dither=0.0,
                frame_shift=audio["frame_shift_ms"],
            )
            if audio["target_frames"]:
                n = audio["target_frames"]
                feats = torch.nn.functional.pad(feats, (0, 0, 0, max(0, n - len(feats))))[:n]
            return ((feats - audio["norm_mean"]) / (2 * audio["norm_std"])).T.unsqueeze(0)

        return fbank
    if audio["transform"] == "stft":
        transform = torchaudio.transforms.Spectrogram(n_fft=audio["n_fft"], hop_length=audio["hop_length"], power=1.0)
    else:
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=audio["sample_rate"],
            n_fft=audio["n_fft"],
            hop_length=audio["hop_length"],
            n_mels=audio["n_mels"],
            power=2.0,
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


#: where a media modality comes from: the audio track, the frames, the difference of consecutive frames, or dense
#: optical flow between consecutive frames (a dataset's other modalities are tensors it hands over itself)
SOURCES = tuple(SOURCE_KIND)
#: optical flow is clipped to ±bound pixels (at the decoded frame size) before it is stored as uint8
DEFAULT_FLOW_BOUND = 20.0


def motion(frames: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Frame differences at the sampled positions, frame[i+1] − frame[i] (the last frame differs with itself:
    zero), stored as uint8 with 0 at 127.5: (diff + 255) / 2."""
    nxt = np.minimum(idx + 1, len(frames) - 1)
    diff = frames[nxt].astype(np.int16) - frames[idx].astype(np.int16)
    return ((diff + 255) // 2).astype(np.uint8)


def optical_flow(frames: np.ndarray, idx: np.ndarray, bound: float) -> np.ndarray:
    """Dense optical flow from frame[i] to frame[i+1] at the sampled positions (OpenCV's Farnebäck method on
    grey-scale frames; the last frame has none: zero), as [T, H, W, 2] (x, y displacement in pixels) clipped to
    ±bound and stored as uint8 with 0 at 127.5: (flow + bound) · 255 / (2·bound), as two-stream networks store flow."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the clip workers; one thread also keeps the result reproducible
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    out = np.empty((len(idx), *frames.shape[1:3], 2), dtype=np.uint8)
    for k, i in enumerate(idx.tolist()):
        if i + 1 < len(frames):
            flow = cv2.calcOpticalFlowFarneback(grey[i], grey[i + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        else:
            flow = np.zeros((*frames.shape[1:3], 2), dtype=np.float32)
        out[k] = np.round((np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))).astype(np.uint8)
    return out


def window_starts(duration: float, window: float, k: int) -> list[float]:
    """Start times (s) of k windows of ``window`` seconds spread uniformly over a ``duration``-second video
    (the first at 0, the last ending at the video's end; all at 0 when the video is shorter than a window)."""
    span = max(0.0, duration - window)
    return [span * i / (k - 1) if k > 1 else 0.0 for i in range(k)]


class ClipDecoder:
    """Decodes one manifest row into the cached tensors of its clip(s): one clip per video (the whole video, or
    its start/end segment), or ``clips_per_video`` = K uniformly spaced windows of the audio duration, stored as
    clips ``<video>#<k>`` (the G-Blend paper's K-clip video-level evaluation). Modalities declared as input kinds
    come from the dataset's ``tensors`` and are checked by their kind against the dataset's ``tensor_specs``."""

    def __init__(
        self, dataset: Dataset, raw_dir: Path, pre: dict, classes: list[str], rows: list[dict] | None = None
    ) -> None:
        self.raw_dir = Path(raw_dir)
        self.dataset = dataset
        self.modalities = {m: s for m, s in dataset.modalities.items() if is_media(s)}
        self.multi_label = dataset.multi_label
        self.pre = pre
        self.classes = classes
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.clips_per_video = int(pre.get("clips_per_video", 1))
        self.kinds: dict[str, InputKind] = {}
        for modality, declared in dataset.modalities.items():
            if is_media(declared):
                continue
            try:
                self.kinds[modality] = get_kind(declared, dataset.kind_class(declared))
            except KeyError:
                raise ValueError(
                    f"modality '{modality}': '{declared}' is neither a media source ({' | '.join(SOURCES)}) nor an "
                    f"input kind ({' | '.join(INPUT_KINDS.names())}, or one of the config's input_kinds)"
                ) from None
        self.specs = dataset.tensor_specs(self.raw_dir, rows or []) if self.kinds else {}
        for modality in self.kinds:
            if modality not in self.specs:
                raise ValueError(f"dataset '{dataset.name}': tensor_specs gives no spec for modality '{modality}'")
        if self.kinds and self.clips_per_video != 1:
            raise ValueError("preprocess.clips_per_video cuts media into windows; tensor modalities have none")
        self.nonfinite = pre.get("nonfinite", "reject")
        self.spectrogram = spectrogram_fn(pre["audio"]) if "audio" in self.modalities.values() else None

    def label(self, row: dict) -> int | torch.Tensor:
        """The class index, or for multi-label data the multi-hot row (uint8 [C])."""
        if not self.multi_label:
            if row["label"] not in self.class_index:
                raise MediaError("label not in class list", repr(row["label"]))
            return self.class_index[row["label"]]
        names = split_labels(row["label"])
        if not names:
            raise MediaError("no label", repr(row["label"]))
        unknown = [n for n in names if n not in self.class_index]
        if unknown:
            raise MediaError("label not in class list", repr(unknown[0]))
        target = torch.zeros(len(self.classes), dtype=torch.uint8)
        target[[self.class_index[n] for n in names]] = 1
        return target

    def __call__(self, row: dict) -> list[tuple[str, dict]]:
        """[(clip id, {label, modality: tensor})] for the clip(s) of one manifest row."""
        label = self.label(row)
        if row.get("split") and row["split"] not in SPLITS:
            raise MediaError("unknown split", repr(row["split"]))
        if not self.modalities:
            return [(row["clip_id"], {"label": label, **self.handed(row)})]
        clips = self.media(row, label)
        if self.kinds:
            clips[0][1].update(self.handed(row))
        return clips

    def handed(self, row: dict) -> dict:
        """The tensor modalities of one row, each checked by its kind (shape, dtype, finite values); values set to
        zero under ``preprocess.nonfinite: zero`` are counted in ``_repaired``."""
        given = self.dataset.tensors(self.raw_dir, row)
        out, repaired = {}, {}
        for m, kind in self.kinds.items():
            if given.get(m) is None:
                raise MediaError("missing modality", f"the dataset handed over no '{m}' tensor")
            try:
                out[m], repaired[m] = kind.check(given[m], self.specs[m], self.nonfinite)
            except MediaError as err:
                raise MediaError(err.reason, f"{m}: {err.detail}") from None
        out["_repaired"] = {m: n for m, n in repaired.items() if n}
        return out

    def media(self, row: dict, label) -> list[tuple[str, dict]]:
        """The decoded media modalities of one row's clip(s)."""
        path = self.raw_dir / row["path"]
        segment = {k: float(row[k]) for k in ("start", "end") if row.get(k) not in (None, "")}
        a, v = self.pre["audio"], self.pre["visual"]
        n_samples = int(round(a["sample_rate"] * a["duration"]))
        wave = frames = None  # decoded once per video, shared by its clips and modalities
        decoded = float(self.pre.get("min_decoded_fraction", 0.0))
        if "audio" in self.modalities.values():
            audio_path = self.raw_dir / row["audio_path"] if row.get("audio_path") else path
            wave = decode_audio(audio_path, a["sample_rate"], **segment, min_fraction=decoded)
            self.check_length("audio", wave.size / a["sample_rate"])
        if set(self.modalities.values()) - {"audio"}:
            frames = decode_frames(path, v["fps"], v["size"], **segment, min_fraction=decoded)
            self.check_length("video", len(frames) / v["fps"])
        if self.clips_per_video == 1:
            return [(row["clip_id"], self.clip(row["clip_id"], label, wave, frames, n_samples))]
        # K windows of the audio duration over the video (its length from the decoded stream)
        length = len(wave) / a["sample_rate"] if wave is not None else len(frames) / v["fps"]
        out = []
        for k, start in enumerate(window_starts(length, a["duration"], self.clips_per_video)):
            clip_id = f"{row['clip_id']}{CLIP_SEPARATOR}{k}"
            w = None if wave is None else wave[int(round(start * a["sample_rate"])) :][:n_samples]
            f = None
            if frames is not None:
                lo = min(int(start * v["fps"]), len(frames) - 1)
                f = frames[lo : max(lo + 1, int(round((start + a["duration"]) * v["fps"])))]
            out.append((clip_id, self.clip(clip_id, label, w, f, n_samples)))
        return out

    def check_length(self, stream: str, seconds: float) -> None:
        """Refuse a stream shorter than ``min_duration_fraction`` of the clip length asked (``audio.duration``);
        video is measured in whole frames at ``visual.fps``."""
        fraction, asked = float(self.pre.get("min_duration_fraction", 0.0)), float(self.pre["audio"]["duration"])
        if seconds < fraction * asked:
            raise MediaError(
                "clip too short",
                f"{seconds:.2f} s of {stream}, under preprocess.min_duration_fraction {fraction:g} of the "
                f"{asked:g} s asked (audio.duration)",
            )

    def clip(self, clip_id: str, label, wave: np.ndarray | None, frames: np.ndarray | None, n_samples: int) -> dict:
        a, v = self.pre["audio"], self.pre["visual"]
        out = {"label": label}
        idx = None if frames is None else frame_indices(len(frames), v["num_frames"], v["sampling"], v["seed"], clip_id)
        for modality, source in self.modalities.items():
            if source == "audio":
                out[modality] = self.spectrogram(fixed_length(wave, n_samples, a["pad_mode"])).to(torch.float16)
                continue
            if source == "video":
                picked = frames[idx]
            elif source == "video_diff":
                picked = motion(frames, idx)
            else:
                picked = optical_flow(frames, idx, float((v.get("flow") or {}).get("bound", DEFAULT_FLOW_BOUND)))
            out[modality] = torch.from_numpy(np.ascontiguousarray(picked)).permute(0, 3, 1, 2).contiguous()
        return out


def stack_clips(clips: list[tuple[str, dict]], multi_label: bool, modalities: list[str]) -> dict:
    """Decoded clips as one tensor per modality (and their ids and labels), as a shard file stores them."""
    labels = [out["label"] for _, out in clips]
    tensors = {
        "clip_id": [clip_id for clip_id, _ in clips],
        "label": torch.stack(labels) if multi_label else torch.tensor(labels, dtype=torch.long),
    }
    for modality in modalities:
        tensors[modality] = torch.stack([out[modality] for _, out in clips])
    return tensors


def modality_record(dataset: Dataset, modality: str, declared: str, shape: dict, specs: dict) -> dict:
    """What info.json says of one modality: its media source or input kind (a user kind with its class), the cached
    shape and dtype, and what the dataset's spec adds for its encoder (e.g. ``vocab_size``)."""
    if is_media(declared):
        return {"source": declared, "kind": kind_name(declared), **shape}
    extra = {k: v for k, v in specs.get(modality, {}).items() if k not in ("shape", "dtype")}
    user = dataset.kind_class(declared)
    return {"kind": declared, **({"kind_class": user} if user else {}), **extra, **shape}


def manifest_rows(raw_dir: Path, manifest: str) -> list[dict]:
    """The manifest's rows; an empty manifest stops the step."""
    rows = read_manifest(Path(raw_dir) / manifest)
    if not rows:
        raise PreprocessError(f"{Path(raw_dir) / manifest} lists no clips")
    return rows


def preprocess_shard(
    dataset: Dataset,
    raw_dir: Path,
    out_dir: Path,
    pre: dict,
    shard: int,
    shard_clips: int,
    workers: int = 1,
    log: Callable[[str], None] = LOG.info,
    manifest: str = "manifest.csv",
    rows: list[dict] | None = None,
) -> dict:
    """Decode the manifest rows of one shard into ``shards/<k>.pt`` and its record ``shards/<k>.json`` (rows
    covered, clip ids, rejected rows with reasons, settings hash, shapes). Memory is bounded by the shard."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rows = rows if rows is not None else manifest_rows(raw_dir, manifest)
    lo, hi = shard_bounds(shard, len(rows), shard_clips)
    classes = dataset.classes(rows)
    decode = ClipDecoder(dataset, raw_dir, pre, classes, rows)
    torch.set_num_threads(1)  # parallelism comes from the clip workers

    def safe(row: dict) -> list[tuple[str, dict]] | MediaError:
        try:
            return decode(row)
        except MediaError as err:
            return err

    part = rows[lo:hi]
    results: list[list[tuple[str, dict]] | MediaError] = []
    n_shards = shard_count(len(rows), shard_clips)
    # a bar on a terminal, else a line every 10% (a job's log)
    shown, marks = progress_enabled(), milestones(len(part))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = pool.map(safe, part)
        for i, res in enumerate(progress(decoded, len(part), f"shard {shard + 1}/{n_shards}", "clip"), 1):
            results.append(res)
            if not shown and i in marks:
                log(f"[preprocess] shard {shard + 1}/{n_shards}: {i}/{len(part)} clips ({100 * i // len(part)}%)")
    rejected = [
        {"clip_id": row["clip_id"], "path": row["path"], "reason": err.reason, "detail": err.detail}
        for row, err in zip(part, results)
        if isinstance(err, MediaError)
    ]
    kept = [res for res in results if not isinstance(res, MediaError)]
    clips = [clip for res in kept for clip in res]
    del results
    repaired = [
        {"clip_id": clip_id, "modality": m, "values": n}
        for clip_id, out in clips
        for m, n in out.get("_repaired", {}).items()
    ]
    tensors = stack_clips(clips, dataset.multi_label, list(dataset.modalities)) if clips else {"clip_id": []}
    shapes = {
        m: {"shape": list(tensors[m].shape[1:]), "dtype": str(tensors[m].dtype).replace("torch.", "")}
        for m in dataset.modalities
        if clips
    }
    record = {
        "shard": shard,
        "rows": [lo, hi],
        "shard_clips": shard_clips,
        "clip_ids": tensors["clip_id"],
        "videos": len(kept),
        "rejected": rejected,
        "repaired": repaired,
        "modalities": shapes,
        "specs": decode.specs,
        "classes": classes,
        "clips_per_video": decode.clips_per_video,
        "settings_hash": cache_settings_hash(dataset.settings),
    }
    save_atomic(tensors, shard_tensors(out_dir, shard))
    save_atomic(record, shard_record(out_dir, shard))  # last: a record means its tensors are complete
    log(f"[preprocess] shard {shard + 1}/{n_shards}: rows {lo}-{hi - 1}, {len(clips)} clips, {len(rejected)} rejected")
    return record


def missing_shards(out_dir: Path, n_rows: int, shard_clips: int, settings_hash: str) -> list[int]:
    """The shards without a complete record made with these settings and this shard size."""
    out = []
    for k in range(shard_count(n_rows, shard_clips)):
        path = shard_record(out_dir, k)
        if not path.exists():
            out.append(k)
            continue
        record = json.loads(path.read_text())
        if record["settings_hash"] != settings_hash or record["rows"] != list(shard_bounds(k, n_rows, shard_clips)):
            out.append(k)
    return out


def gather_shards(
    dataset: Dataset,
    raw_dir: Path,
    out_dir: Path,
    pre: dict,
    shard_clips: int,
    log: Callable[[str], None] = LOG.info,
    manifest: str = "manifest.csv",
) -> dict:
    """Check the shards and write ``index.csv`` (clip id -> shard, position), ``info.json`` and the one rejected-clips
    report ``rejected.csv`` (the listing's refused rows and every shard's rejected clips)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rows = manifest_rows(raw_dir, manifest)
    settings_hash = cache_settings_hash(dataset.settings)
    missing = missing_shards(out_dir, len(rows), shard_clips, settings_hash)
    if missing:
        raise PreprocessError(
            f"{len(missing)} of {shard_count(len(rows), shard_clips)} shards of {out_dir} are missing or were made "
            f"with other settings (first: {shard_name(missing[0])}); run their preprocess step "
            f"(python -m benchmark preprocess --dataset {dataset.name} --shard {missing[0]})"
        )
    records = [json.loads(shard_record(out_dir, k).read_text()) for k in range(shard_count(len(rows), shard_clips))]
    shapes = {}
    for record in records:
        for m, shape in record["modalities"].items():
            if shapes.setdefault(m, shape) != shape:
                raise PreprocessError(
                    f"shard {shard_name(record['shard'])} stores {m} as {shape}, another shard as {shapes[m]}"
                )
    rejected = [r for record in records for r in record["rejected"]]
    listing = read_rejected_rows(raw_dir)  # refused by the download step (the dataset's own listing), by line
    with (out_dir / "rejected.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "path", "reason", "detail", "stage", "line"])
        for r in listing:
            writer.writerow(["", r["path"], r["reason"], r["detail"], "listing", r["line"]])
        for r in rejected:
            writer.writerow([r["clip_id"], r["path"], r["reason"], r["detail"], "decode", ""])
    log(
        f"[preprocess] {len(records)} shards: accepted {len(rows) - len(rejected)}, rejected {len(rejected)}"
        + (f" (and {len(listing)} rows of the listing before decoding)" if listing else "")
        + f" (see {out_dir / 'rejected.csv'})"
    )
    repaired = [r for record in records for r in record.get("repaired", [])]
    if repaired:
        with (out_dir / "repaired.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["clip_id", "modality", "values_set_to_zero"])
            writer.writerows([r["clip_id"], r["modality"], r["values"]] for r in repaired)
        log(
            f"[preprocess] {len({r['clip_id'] for r in repaired})} clips had NaN/inf values set to 0 "
            f"(preprocess.nonfinite: zero; see {out_dir / 'repaired.csv'})"
        )
    limit = pre["max_rejected_fraction"]
    if len(rejected) > limit * len(rows):
        first = rejected[0]
        raise PreprocessError(
            f"{len(rejected)} of {len(rows)} clips rejected ({100 * len(rejected) / len(rows):.1f}%), more than "
            f"max_rejected_fraction={limit}; first: {raw_dir / first['path']} ({first['reason']}); all listed in "
            f"{out_dir / 'rejected.csv'}"
        )
    clips = sum(len(r["clip_ids"]) for r in records)
    if not clips:
        raise PreprocessError(f"no usable clips in {raw_dir / manifest}")
    write_index(out_dir, [r["clip_ids"] for r in records])
    info = {
        "dataset": dataset.name,
        "classes": records[0]["classes"],
        "multi_label": dataset.multi_label,
        "clips": clips,
        "videos": sum(r["videos"] for r in records),
        "clips_per_video": records[0]["clips_per_video"],
        "rejected": len(rejected),
        "rejected_listing_rows": len(listing),
        "repaired": len(repaired),
        "modalities": {
            m: modality_record(dataset, m, s, shapes[m], records[0].get("specs", {}))
            for m, s in dataset.modalities.items()
        },
        "settings_hash": settings_hash,
        "shard_clips": shard_clips,
        "shards": [
            {"file": f"{SHARDS}/{shard_name(r['shard'])}.pt", "clips": len(r["clip_ids"])}
            for r in records
            if r["clip_ids"]
        ],
    }
    save_atomic(info, out_dir / "info.json")
    return info


def preprocess(
    dataset: Dataset,
    raw_dir: Path,
    out_dir: Path,
    pre: dict,
    workers: int = 1,
    log: Callable[[str], None] = LOG.info,
    manifest: str = "manifest.csv",
    shard_clips: int = DEFAULT_SHARD_CLIPS,
) -> dict:
    """Decode every shard not yet made (resumable: a complete shard is kept), then gather them (see
    ``gather_shards``) into ``<out_dir>/index.csv``, ``info.json`` and ``rejected.csv``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rows = manifest_rows(raw_dir, manifest)
    todo = missing_shards(out_dir, len(rows), shard_clips, cache_settings_hash(dataset.settings))
    for k in progress(todo, desc="shards", unit="shard") if len(todo) > 1 else todo:
        preprocess_shard(dataset, raw_dir, out_dir, pre, k, shard_clips, workers, log, manifest, rows=rows)
    return gather_shards(dataset, raw_dir, out_dir, pre, shard_clips, log, manifest)
