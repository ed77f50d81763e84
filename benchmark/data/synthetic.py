"""The built-in `synthetic-av` dataset: real H.264/AAC clips whose classes need both modalities.

A class is 3 bits (8 classes, chance 12.5%):
  * the audio track is a tone whose pitch encodes bits 2 and 1 (4 pitches) under noise and unrelated
    distractor tones — easy and fast to learn, but alone it cannot tell bit 0, so audio-only accuracy is
    capped at 50%;
  * the video shows a faint drifting grating, in noise, whose orientation encodes bit 0 and whose spatial
    frequency encodes bit 2 — slow to learn, also capped at 50% alone, but it carries the bit audio lacks;
  * so only a model that uses both reaches 100%: the multimodal optimum is far above both unimodal ones,
    while a jointly trained model is tempted to settle on the fast audio cue (the imbalance this
    benchmark exists for).
Everything is drawn from one seeded generator per clip, so the same seed gives the same clips.
"""

from __future__ import annotations

import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ffmpeg
import numpy as np

from benchmark.data.media import ffmpeg_exe

NUM_CLASSES = 8
PITCHES_HZ = (350.0, 700.0, 1400.0, 2800.0)  # audio group = class >> 1


def class_bits(label: int) -> tuple[int, int, int]:
    return (label >> 2) & 1, (label >> 1) & 1, label & 1


def synth_audio(label: int, rng: np.random.Generator, sample_rate: int, duration: float, snr_db: float) -> np.ndarray:
    n = int(round(sample_rate * duration))
    t = np.arange(n) / sample_rate
    pitch = PITCHES_HZ[label >> 1] * rng.uniform(0.97, 1.03)
    onset = rng.uniform(0.0, 0.3) * duration
    length = rng.uniform(0.5, 0.7) * duration
    envelope = np.clip(np.minimum(t - onset, onset + length - t) / 0.05, 0.0, 1.0)
    signal = envelope * (
        np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi)) + 0.3 * np.sin(4 * np.pi * pitch * t)
    )
    # distractor tones carry no class information but make every clip distinct (and memorisable)
    for _ in range(2):
        f = rng.uniform(200.0, 4000.0)
        start, span = rng.uniform(0, duration), rng.uniform(0.2, 0.6) * duration
        env = ((t >= start) & (t < start + span)).astype(np.float64)
        signal = signal + rng.uniform(0.2, 0.5) * env * np.sin(2 * np.pi * f * t)
    noise = rng.standard_normal(n)
    noise *= np.sqrt(np.mean(signal**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    out = signal + noise
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def synth_frames(
    label: int, rng: np.random.Generator, fps: int, duration: float, size: int, contrast: float, noise: float
) -> np.ndarray:
    n = max(1, int(round(fps * duration)))
    high_freq, _, vertical = class_bits(label)
    period = size / (6.0 if high_freq else 3.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    # smooth colour background that drifts between two random fields
    def field() -> np.ndarray:
        coarse = rng.uniform(0.3, 0.7, size=(4, 4, 3))
        return np.kron(coarse, np.ones((size // 4, size // 4, 1)))[:size, :size]

    bg0, bg1 = field(), field()
    cx, cy = rng.uniform(0.3, 0.7, size=2) * size
    window = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 5.0) ** 2))
    coord = xx if vertical else yy
    phase0, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5) * rng.choice([-1, 1])
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a = i / max(1, n - 1)
        grating = contrast * window * np.sin(2 * np.pi * coord / period + phase0 + speed * i)
        img = (1 - a) * bg0 + a * bg1 + grating[..., None] + noise * rng.standard_normal((size, size, 3))
        frames[i] = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return frames


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def encode_clip(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """Mux frames (H.264, yuv420p) and audio (AAC) into an mp4, bit-exactly for reproducibility."""
    size = frames.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "a.wav"
        _write_wav(wav, audio, sample_rate)
        video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{size}x{size}", framerate=fps)
        audio_in = ffmpeg.input(str(wav))
        out = ffmpeg.output(
            video_in,
            audio_in,
            str(path),
            vcodec="libx264",
            pix_fmt="yuv420p",
            crf=18,
            preset="veryfast",
            acodec="aac",
            audio_bitrate="96k",
            threads=1,
            fflags="+bitexact",
            **{"flags:v": "+bitexact", "flags:a": "+bitexact"},
        )
        out.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output().run(
            cmd=ffmpeg_exe(), input=frames.tobytes(), capture_stdout=True, capture_stderr=True
        )


def stratified_splits(labels: list[int], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """train/val/test per clip, the same fraction of every class in each split."""
    rng = np.random.default_rng(seed)
    total = sum(fractions)
    out = [""] * len(labels)
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        n_train = int(round(len(idx) * fractions[0] / total))
        n_val = int(round(len(idx) * fractions[1] / total))
        for k, i in enumerate(idx):
            out[i] = "train" if k < n_train else ("val" if k < n_train + n_val else "test")
    return out


def generate(
    out_dir: Path,
    *,
    num_clips: int,
    seed: int,
    duration: float,
    fps: int,
    size: int,
    sample_rate: int,
    split_fractions: tuple[float, float, float],
    audio_snr_db: float,
    visual_contrast: float,
    visual_noise: float,
    workers: int = 1,
) -> list[dict]:
    """Write ``num_clips`` clips under ``out_dir/clips`` and return the manifest rows."""
    clips = Path(out_dir) / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    labels = [i % NUM_CLASSES for i in range(num_clips)]
    splits = stratified_splits(labels, tuple(split_fractions), seed)
    seeds = np.random.SeedSequence(seed).spawn(num_clips)

    def make(i: int) -> dict:
        rng = np.random.default_rng(seeds[i])
        clip_id = f"clip_{i:05d}"
        audio = synth_audio(labels[i], rng, sample_rate, duration, audio_snr_db)
        frames = synth_frames(labels[i], rng, fps, duration, size, visual_contrast, visual_noise)
        encode_clip(clips / f"{clip_id}.mp4", frames, audio, fps, sample_rate)
        return {"clip_id": clip_id, "path": f"clips/{clip_id}.mp4", "label": f"class{labels[i]}", "split": splits[i]}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(make, range(num_clips)))
