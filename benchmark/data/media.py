"""Decoding media with ffmpeg-python straight to numpy arrays (no temporary files, no probing tool needed).

The ffmpeg binary is the one on PATH, else the one the imageio-ffmpeg wheel ships, so no system package is
required. Failures raise ``MediaError`` with a short reason that ends up in a dataset's ``rejected.csv``.
"""

from __future__ import annotations

import functools
import math
import os
import re
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


#: ffmpeg's log lines at error level or worse (``-loglevel level+info`` tags each line with its level)
_PROBLEM = re.compile(r"\[(?:panic|fatal|error)\] ")
#: the component prefixes of a log line ('[in#0/mov,mp4 @ 0x55..] '): noise in a reason
_CONTEXT = re.compile(r"\[[^\]]* @ 0x[0-9a-f]+\]\s*")
#: the input's declared length, from ffmpeg's description of it (no separate probing tool needed)
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def declared_seconds(stderr: str) -> float | None:
    """The duration the input file declares (its container header), or None where it declares none."""
    match = _DURATION.search(stderr)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _run(stream_spec: ffmpeg.nodes.OutputStream, path: Path, stream: str) -> tuple[bytes, str]:
    """The decoded bytes and ffmpeg's log (level-tagged lines)."""
    path = Path(path)
    if not path.exists():
        raise MediaError("file not found", str(path))
    if not path.is_file():
        raise MediaError("unreadable file", f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)", str(path))
    try:
        out, err = stream_spec.global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info").run(
            cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True
        )
    except ffmpeg.Error as error:
        problems = _problems(error.stderr.decode(errors="replace") if error.stderr else "")
        raise MediaError(_classify("\n".join(problems), stream), problems[-1] if problems else str(path)) from None
    return out, err.decode(errors="replace")


def _problems(log: str) -> list[str]:
    """ffmpeg's messages at error level or worse, without their level tags."""
    return [_CONTEXT.sub("", _PROBLEM.sub("", line)).strip() for line in log.splitlines() if _PROBLEM.search(line)]


def _check_truncation(
    stream: str, got: float, expected: float | None, unit: str, log: str, min_fraction: float
) -> None:
    """A stream that decoded to under ``min_fraction`` of what the file declares while ffmpeg reported damaged input
    (e.g. 'partial file': the file was cut short and its header survived) is refused. Without a damage report a
    short stream is genuine: a container declares the longest of its streams."""
    problems = _problems(log)
    if min_fraction > 0 and expected and problems and got < min_fraction * expected:
        raise MediaError(
            f"truncated {stream}",
            f"decoded {got:g} of the {expected:g} {unit} the file declares (under preprocess.min_decoded_fraction "
            f"{min_fraction:g}); ffmpeg: {problems[0]}",
        )


def _expected_seconds(log: str, start: float | None, end: float | None) -> float | None:
    """How long the decoded segment should be by the file's own declaration (None: it declares no duration)."""
    declared = declared_seconds(log)
    if declared is None:
        return None
    return max(0.0, min(declared, end if end is not None else declared) - (start or 0.0))


def _input(path: str | Path, start: float | None, end: float | None) -> ffmpeg.nodes.FilterableStream:
    """The file as an ffmpeg input, restricted to [start, end) seconds when given."""
    options = {}
    if start is not None:
        options["ss"] = start
    if end is not None:
        options["to"] = end
    return ffmpeg.input(str(path), **options)


def decode_audio(
    path: str | Path,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate`` (of the segment [start, end) seconds when given). With
    ``min_fraction``, audio that decodes to less than that fraction of what the file declares (a truncated file
    whose header survived) is refused."""
    spec = _input(path, start, end).output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0"
    )
    raw, log = _run(spec, Path(path), "audio")
    wave = np.frombuffer(raw, dtype=np.float32).copy()
    if wave.size == 0:
        raise MediaError("no audio samples (zero-length audio)", str(path))
    expected = _expected_seconds(log, start, end)
    _check_truncation("audio", round(wave.size / sample_rate, 3), expected, "s", log, min_fraction)
    return wave


def decode_frames(
    path: str | Path,
    fps: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """RGB frames resampled to ``fps``, shorter side scaled to ``size`` then centre-cropped: uint8 [N, size, size, 3]
    (of the segment [start, end) seconds when given). With ``min_fraction``, video that decodes to fewer frames than
    that fraction of the whole frames its declared duration holds at ``fps`` is refused."""
    video = (
        _input(path, start, end)
        .video.filter("fps", fps=fps)
        .filter("scale", f"if(gt(iw,ih),-2,{size})", f"if(gt(iw,ih),{size},-2)")
        .filter("crop", size, size)
    )
    raw, log = _run(video.output("pipe:", format="rawvideo", pix_fmt="rgb24"), Path(path), "video")
    frame_bytes = size * size * 3
    if len(raw) < frame_bytes:
        raise MediaError("no video frames (zero-length video)", str(path))
    n = len(raw) // frame_bytes
    expected = _expected_seconds(log, start, end)
    whole = max(1, math.floor(expected * fps + 1e-6)) if expected else None  # frames sure to fit its length
    _check_truncation("video", n, whole, f"frames at {fps:g} fps", log, min_fraction)
    return np.frombuffer(raw[: n * frame_bytes], dtype=np.uint8).reshape(n, size, size, 3)
