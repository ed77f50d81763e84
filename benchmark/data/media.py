"""Decoding media with ffmpeg-python straight to numpy arrays (no temporary files, no probing tool needed).

The ffmpeg binary is the one on PATH, else the one the imageio-ffmpeg wheel ships, so no system package is
required. Failures raise ``MediaError`` with a short reason that ends up in a dataset's ``rejected.csv``.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import ffmpeg
import numpy as np


class MediaError(RuntimeError):
    """A clip that cannot be used; ``reason`` is one short phrase (e.g. 'no audio stream')."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $FFMPEG_BINARY, then PATH, then imageio-ffmpeg's bundled build."""
    explicit = os.environ.get("FFMPEG_BINARY")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _classify(stderr: str, stream: str) -> str:
    text = stderr.lower()
    if "no such file" in text:
        return "file not found"
    if "permission denied" in text:
        return "unreadable file"
    if "matches no streams" in text or "does not contain any stream" in text or "output file is empty" in text:
        return f"no {stream} stream"
    if "invalid data found" in text or "moov atom not found" in text or "end of file" in text:
        return "corrupt or truncated file"
    return f"{stream} decoding failed"


def _run(stream_spec: ffmpeg.nodes.OutputStream, path: Path, stream: str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise MediaError("file not found", str(path))
    if not path.is_file():
        raise MediaError("unreadable file", f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)", str(path))
    try:
        out, _ = stream_spec.global_args("-nostdin", "-hide_banner", "-loglevel", "error").run(
            cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True
        )
    except ffmpeg.Error as err:
        stderr = err.stderr.decode(errors="replace") if err.stderr else ""
        raise MediaError(
            _classify(stderr, stream), stderr.strip().splitlines()[-1] if stderr.strip() else str(path)
        ) from None
    return out


def _input(path: str | Path, start: float | None, end: float | None) -> ffmpeg.nodes.FilterableStream:
    """The file as an ffmpeg input, restricted to [start, end) seconds when given."""
    options = {}
    if start is not None:
        options["ss"] = start
    if end is not None:
        options["to"] = end
    return ffmpeg.input(str(path), **options)


def decode_audio(
    path: str | Path, sample_rate: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate`` (of the segment [start, end) seconds when given)."""
    spec = _input(path, start, end).output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0"
    )
    raw = _run(spec, Path(path), "audio")
    wave = np.frombuffer(raw, dtype=np.float32).copy()
    if wave.size == 0:
        raise MediaError("no audio samples (zero-length audio)", str(path))
    return wave


def decode_frames(
    path: str | Path, fps: float, size: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """RGB frames resampled to ``fps``, shorter side scaled to ``size`` then centre-cropped: uint8 [N, size, size, 3]
    (of the segment [start, end) seconds when given)."""
    video = (
        _input(path, start, end)
        .video.filter("fps", fps=fps)
        .filter("scale", f"if(gt(iw,ih),-2,{size})", f"if(gt(iw,ih),{size},-2)")
        .filter("crop", size, size)
    )
    raw = _run(video.output("pipe:", format="rawvideo", pix_fmt="rgb24"), Path(path), "video")
    frame_bytes = size * size * 3
    if len(raw) < frame_bytes:
        raise MediaError("no video frames (zero-length video)", str(path))
    n = len(raw) // frame_bytes
    return np.frombuffer(raw[: n * frame_bytes], dtype=np.uint8).reshape(n, size, size, 3)
