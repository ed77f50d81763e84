"""The built-in `synthetic-av` dataset: real H.264/AAC clips with a fast, unreliable modality and a slow, reliable one.

A class is 3 bits (8 classes, chance 12.5%), and each modality alone carries all three:
  * the audio track is a tone whose pitch (one of 8, 1.4x apart) names the class, under noise and two unrelated
    distractor tones: learnt in an epoch or two. But in a fraction ``audio_missing`` of the clips (the same
    fraction of every class in every split; the manifest's ``audio_tone`` column says which) the tone is absent,
    so audio alone is capped near ``1 - audio_missing + audio_missing / 8`` (78% at config.yaml's 0.25);
  * the video shows a faint drifting grating, in noise, whose orientation (bit 0), colour (bit 1: a luminance or an
    equally strong chromatic grating) and spatial frequency (bit 2) name the class: slow to learn, but present in
    every clip;
  * so the modalities are redundant and complementary: the two together reach about 95%, well above either alone,
    while a jointly trained model fits the fast audio cue (and memorises the clips without a tone through
    their noise and distractors) and leaves its visual encoder under-trained, the imbalance this benchmark exists
    for.
Everything is drawn from one seeded generator per clip (the audio draws are the same with or without the tone, so
``audio_missing`` changes no frame), so the same seed gives the same clips.
"""

from __future__ import annotations

import logging
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ffmpeg
import numpy as np

from benchmark.data.media import ffmpeg_exe
from benchmark.logs import milestones, progress, progress_enabled

LOG = logging.getLogger(__name__)

NUM_CLASSES = 8
#: one tone per class, 1.4x apart (about 1.5 mel bands of 32 at the low end); its group ``class >> 1`` is a pitch pair
PITCHES_HZ = tuple(300.0 * 1.4**k for k in range(NUM_CLASSES))
#: the grating's colour direction per bit 1: luminance, or chromatic (green against magenta, the same energy)
GRATING_COLOURS = (np.array([1.0, 1.0, 1.0]), np.array([1.0, -1.0, 1.0]))


def class_bits(label: int) -> tuple[int, int, int]:
    return (label >> 2) & 1, (label >> 1) & 1, label & 1


def synth_audio(
    label: int, rng: np.random.Generator, sample_rate: int, duration: float, snr_db: float, tone: bool = True
) -> np.ndarray:
    """The class tone (with its octave) in noise and two distractor tones; ``tone=False``: the same clip without
    the class tone (the noise is then scaled as if it were there)."""
    n = int(round(sample_rate * duration))
    t = np.arange(n) / sample_rate
    pitch = PITCHES_HZ[label] * rng.uniform(0.97, 1.03)
    onset = rng.uniform(0.0, 0.3) * duration
    length = rng.uniform(0.5, 0.7) * duration
    envelope = np.clip(np.minimum(t - onset, onset + length - t) / 0.05, 0.0, 1.0)
    cue = envelope * (np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi)) + 0.3 * np.sin(4 * np.pi * pitch * t))
    # distractor tones carry no class information but make every clip distinct (and memorisable)
    distractors = np.zeros(n)
    for _ in range(2):
        f = rng.uniform(200.0, 4000.0)
        start, span = rng.uniform(0, duration), rng.uniform(0.2, 0.6) * duration
        env = ((t >= start) & (t < start + span)).astype(np.float64)
        distractors += rng.uniform(0.2, 0.5) * env * np.sin(2 * np.pi * f * t)
    signal = cue + distractors
    noise = rng.standard_normal(n)
    noise *= np.sqrt(np.mean(signal**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    out = (cue if tone else 0.0) + distractors + noise
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def synth_frames(
    label: int, rng: np.random.Generator, fps: int, duration: float, size: int, contrast: float, noise: float
) -> np.ndarray:
    n = max(1, int(round(fps * duration)))
    high_freq, chromatic, vertical = class_bits(label)
    period = size / (6.0 if high_freq else 3.0)
    colour = GRATING_COLOURS[chromatic]
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
        img = (1 - a) * bg0 + a * bg1 + grating[..., None] * colour + noise * rng.standard_normal((size, size, 3))
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


def audio_missing_clips(labels: list[int], splits: list[str], fraction: float, seed: int) -> list[bool]:
    """Which clips lose their class tone: round(fraction · n) of the n clips of every class in every split."""
    rng = np.random.default_rng([seed, 1])
    out = [False] * len(labels)
    for group in sorted(set(zip(labels, splits))):
        idx = [i for i, key in enumerate(zip(labels, splits)) if key == group]
        rng.shuffle(idx)
        for i in idx[: int(round(fraction * len(idx)))]:
            out[i] = True
    return out


def synth_clip(
    label: int,
    rng: np.random.Generator,
    *,
    duration: float,
    fps: int,
    size: int,
    sample_rate: int,
    audio_snr_db: float,
    visual_contrast: float,
    visual_noise: float,
    tone: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One clip's waveform (float32 [samples]) and frames (uint8 [N, size, size, 3])."""
    audio = synth_audio(label, rng, sample_rate, duration, audio_snr_db, tone=tone)
    frames = synth_frames(label, rng, fps, duration, size, visual_contrast, visual_noise)
    return audio, frames


def plan(num_clips: int, seed: int, split_fractions, audio_missing: float):
    """Labels, splits, tone flags and per-clip seeds of a generation (shared by ``generate`` and tests)."""
    labels = [i % NUM_CLASSES for i in range(num_clips)]
    splits = stratified_splits(labels, tuple(split_fractions), seed)
    missing = audio_missing_clips(labels, splits, audio_missing, seed)
    seeds = np.random.SeedSequence(seed).spawn(num_clips)
    return labels, splits, missing, seeds


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
    audio_missing: float = 0.0,
    workers: int = 1,
) -> list[dict]:
    """Write ``num_clips`` clips under ``out_dir/clips`` and return the manifest rows (``audio_tone``: 1 where the
    audio carries the class tone, 0 where it is missing)."""
    clips = Path(out_dir) / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    labels, splits, missing, seeds = plan(num_clips, seed, split_fractions, audio_missing)
    media = dict(
        duration=duration,
        fps=fps,
        size=size,
        sample_rate=sample_rate,
        audio_snr_db=audio_snr_db,
        visual_contrast=visual_contrast,
        visual_noise=visual_noise,
    )

    def make(i: int) -> dict:
        rng = np.random.default_rng(seeds[i])
        clip_id = f"clip_{i:05d}"
        audio, frames = synth_clip(labels[i], rng, tone=not missing[i], **media)
        encode_clip(clips / f"{clip_id}.mp4", frames, audio, fps, sample_rate)
        return {
            "clip_id": clip_id,
            "path": f"clips/{clip_id}.mp4",
            "label": f"class{labels[i]}",
            "split": splits[i],
            "audio_tone": int(not missing[i]),
        }

    LOG.info(
        f"[generate] {num_clips} clips of {duration:g} s ({size}x{size} at {fps} fps, audio at {sample_rate} Hz) "
        f"in {clips}"
    )
    rows, shown, marks = [], progress_enabled(), milestones(num_clips)  # a bar on a terminal, else a line every 10%
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, row in enumerate(progress(pool.map(make, range(num_clips)), num_clips, "generate", "clip"), 1):
            rows.append(row)
            if not shown and i in marks:
                LOG.info(f"[generate] {i}/{num_clips} clips ({100 * i // num_clips}%)")
    return rows
