"""Small fixture trees in each real dataset's native layout, naming and list formats, written with ffmpeg."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import ffmpeg
import numpy as np

from benchmark.data.media import ffmpeg_exe
from benchmark.data.synthetic import _write_wav, synth_audio, synth_frames

SR, FPS, SIZE = 16000, 4, 32


def write_media(
    path: Path, label: int, seconds: float = 2.0, audio: bool = True, video: bool = True, seed: int = 0
) -> Path:
    """A clip whose container and codecs follow the file extension (.wav audio only; .flv, .mp4, .avi)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sound = synth_audio(label % 8, rng, SR, seconds, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "a.wav"
        _write_wav(wav, sound, SR)
        if path.suffix == ".wav":
            ffmpeg.input(str(wav)).output(str(path), acodec="pcm_s16le").overwrite_output().run(
                cmd=ffmpeg_exe(), quiet=True
            )
            return path
        frames = synth_frames(label % 8, rng, FPS, seconds, SIZE, 0.3, 0.1)
        streams = []
        if video:
            streams.append(ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{SIZE}x{SIZE}", framerate=FPS))
        if audio:
            streams.append(ffmpeg.input(str(wav)))
        codecs = {".flv": ("flv1", "libmp3lame"), ".avi": ("mpeg4", "libmp3lame"), ".mp4": ("libx264", "aac")}[
            path.suffix
        ]
        kwargs = {}
        if video:
            kwargs.update(vcodec=codecs[0], pix_fmt="yuv420p")
        if audio:
            kwargs.update(acodec=codecs[1], ar=22050 if path.suffix == ".flv" else SR)
        ffmpeg.output(*streams, str(path), **kwargs).overwrite_output().run(
            cmd=ffmpeg_exe(), input=frames.tobytes() if video else None, quiet=True
        )
    return path


def cremad_tree(root: Path, actors=range(1001, 1007), extra_listed: int = 1) -> list[str]:
    """AudioWAV/<stem>.wav + VideoFlash/<stem>.flv for 6 emotions per actor, and summaryTable.csv (the official
    list, here naming ``extra_listed`` clips that are not on disk)."""
    stems = []
    for a in actors:
        for e, emotion in enumerate(["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]):
            stem = f"{a}_DFA_{emotion}_XX"
            write_media(root / "AudioWAV" / f"{stem}.wav", e, seed=a * 10 + e)
            write_media(root / "VideoFlash" / f"{stem}.flv", e, seed=a * 10 + e)
            stems.append(stem)
    listed = stems + ["1091_IEO_HAP_HI"][:extra_listed]
    with (root / "summaryTable.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["", "FileName", "VoiceVote", "VoiceLevel", "FaceVote", "FaceLevel", "MultiModalVote", "MultiModalLevel"]
        )
        for i, stem in enumerate(listed):
            w.writerow([i, stem, stem.split("_")[2][0], 50, "", "", "", ""])
    return stems


def ave_tree(root: Path, per_class: int = 4) -> list[str]:
    """AVE/<VideoID>.mp4 with Annotations.txt and train/val/test lists (Category&VideoID&Quality&StartTime&EndTime)."""
    categories = ["Church bell", "Dog", "Violin"]
    header = "Category&VideoID&Quality&StartTime&EndTime"
    lines, parts = [], {"train": [], "val": [], "test": []}
    for c, category in enumerate(categories):
        for i in range(per_class):
            vid = f"vid{c}{i}XYZab"
            write_media(root / "AVE" / f"{vid}.mp4", c, seconds=3.0, seed=c * 100 + i)
            line = f"{category}&{vid}&good&0&2"
            lines.append(line)
            parts[["train", "train", "val", "test"][i % 4]].append(line)
    (root / "Annotations.txt").write_text("\n".join([header] + lines) + "\n")
    for part, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / name).write_text("\n".join(parts[part]) + "\n")
    return [line.split("&")[1] for line in lines]


def kinetics_tree(root: Path, lists: Path) -> list[str]:
    """<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4 and Kinetics-400 annotation CSVs (with one class
    outside Kinetics-Sounds)."""
    lists.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "validate": []}
    labels = ["playing violin", "bowling", "knitting"]  # knitting is not one of the chosen classes
    for c, label in enumerate(labels):
        for i in range(4):
            split = "train" if i < 3 else "validate"
            ytid, start = f"yt{c}{i}abcdefg", 10 * i
            write_media(root / split / label / f"{ytid}_{start:06d}_{start + 10:06d}.mp4", c, seed=c * 10 + i)
            rows[split].append(
                {"label": label, "youtube_id": ytid, "time_start": start, "time_end": start + 10, "split": split}
            )
    rows["train"].append(
        {"label": "bowling", "youtube_id": "ytgoneabcdef", "time_start": 0, "time_end": 10, "split": "train"}
    )
    for split, entries in rows.items():
        with (lists / f"{split}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["label", "youtube_id", "time_start", "time_end", "split"])
            w.writeheader()
            w.writerows(entries)
    (lists / "classes.txt").write_text("playing violin\nbowling\n")
    return labels


def vggsound_tree(root: Path, listing: Path) -> None:
    """<youtube_id>_<start:06d>.mp4 and vggsound.csv (youtube_id,start_seconds,label,split; no header)."""
    lines = []
    for c, label in enumerate(["dog barking", "rain on surface", "playing piano"]):
        for i in range(4):
            ytid, start = f"vg{c}{i}abcdefg", 30 + i
            write_media(root / f"{ytid}_{start:06d}.mp4", c, seed=c * 10 + i)
            lines.append(f"{ytid},{start},{label},{'test' if i == 3 else 'train'}")
    listing.write_text("\n".join(lines) + "\n")


def ucf101_tree(root: Path) -> None:
    """UCF-101/<Class>/v_<Class>_gGG_cCC.avi (one class silent) and ucfTrainTestlist/ with three folds."""
    classes = ["ApplyEyeMakeup", "BandMarching", "Drumming", "PlayingGuitar"]  # ApplyEyeMakeup has no sound
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    entries = []
    for ci, cls in enumerate(classes):
        for g in range(1, 7):
            name = f"v_{cls}_g{g:02d}_c01"
            write_media(root / "UCF-101" / cls / f"{name}.avi", ci, audio=cls != "ApplyEyeMakeup", seed=ci * 10 + g)
            entries.append((cls, name, g))
    for k in (1, 2, 3):  # fold k tests on groups 2k-1, 2k
        test_groups = {2 * k - 1, 2 * k}
        (lists / f"trainlist0{k}.txt").write_text(
            "".join(f"{c}/{n}.avi {classes.index(c) + 1}\n" for c, n, g in entries if g not in test_groups)
        )
        (lists / f"testlist0{k}.txt").write_text("".join(f"{c}/{n}.avi\n" for c, n, g in entries if g in test_groups))


def video_folder_tree(root: Path, with_split: bool) -> None:
    """Any videos plus labels.csv (path,label[,split])."""
    rows = []
    for c, label in enumerate(["a", "b"]):
        for i in range(6):
            rel = f"clips/{label}/{i}.mp4"
            write_media(root / rel, c, seed=c * 10 + i)
            rows.append(
                {
                    "path": rel,
                    "label": label,
                    **({"split": ["train", "train", "train", "val", "test", "test"][i]} if with_split else {}),
                }
            )
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
