"""Dataset generation and preprocessing on real H.264/AAC clips: shapes, dtypes, determinism, bad clips."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from benchmark.config import dataset_settings, validate_config
from benchmark.data.cache import CachedSplit, load_part
from benchmark.data.datasets import DATASETS, read_manifest, write_manifest
from benchmark.data.media import MediaError, decode_audio, decode_frames, ffmpeg_exe
from benchmark.data.preprocess import PreprocessError, frame_indices, preprocess
from benchmark.data.synthetic import class_bits
from tests.conftest import tiny_config


def settings(**generate):
    cfg = tiny_config()
    cfg["datasets"]["synthetic-av"]["generate"].update(generate)
    return dataset_settings(validate_config(cfg), "synthetic-av")


def test_generated_layout_and_preprocessed_tensors(tiny_workspace, tiny_dirs):
    raw = tiny_workspace / tiny_dirs.raw
    rows = read_manifest(raw / "manifest.csv")
    assert len(rows) == 48 and all((raw / r["path"]).stat().st_size > 0 for r in rows)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for split in ("train", "val", "test"):  # stratified: every class in every split
        assert len({r["label"] for r in rows if r["split"] == split}) == 8
    processed = tiny_workspace / tiny_dirs.processed
    info = json.loads((processed / "info.json").read_text())
    assert info["clips"] == 48 and info["rejected"] == 0
    cache = CachedSplit(processed)
    data = {**cache.__getitems__(list(range(len(cache)))), "clip_id": cache.clip_ids}
    n = 48
    s = settings()["preprocess"]
    frames_expected = (n, s["visual"]["num_frames"], 3, s["visual"]["size"], s["visual"]["size"])
    assert data["visual"].dtype == torch.uint8 and tuple(data["visual"].shape) == frames_expected
    assert data["audio"].dtype == torch.float16 and data["audio"].shape[:2] == (n, 1)
    assert data["audio"].shape[2] == s["audio"]["n_mels"]
    assert (
        data["audio"].shape[3]
        == int(s["audio"]["sample_rate"] * s["audio"]["duration"]) // s["audio"]["hop_length"] + 1
    )
    assert torch.isfinite(data["audio"].float()).all()
    assert data["label"].dtype == torch.long and len(data["clip_id"]) == n
    # the split step follows the manifest's split column: every part exactly as listed
    for part in ("train", "val", "test"):
        assert set(load_part(processed, "main", part, splits_dir=tiny_workspace / tiny_dirs.splits).ids()) == {
            r["clip_id"] for r in rows if r["split"] == part
        }


def test_generation_is_deterministic_for_a_seed(tmp_path, tiny_workspace, tiny_dirs):
    s = settings()
    ds = DATASETS.get("synthetic-av")(s)
    ds.download(tmp_path / "raw", workers=2)
    preprocess(ds, tmp_path / "raw", tmp_path / "proc", s["preprocess"], workers=2, log=lambda m: None)
    a, b = (CachedSplit(p) for p in (tmp_path / "proc", tiny_workspace / tiny_dirs.processed))
    assert a.clip_ids == b.clip_ids
    a, b = (c.__getitems__(list(range(len(c)))) for c in (a, b))
    for key in ("audio", "visual", "label"):
        assert torch.equal(a[key], b[key]), key
    other = settings(seed=1)
    ds1 = DATASETS.get("synthetic-av")(other)
    ds1.download(tmp_path / "raw1", workers=2)
    clip = "clips/clip_00000.mp4"
    assert not np.array_equal(
        decode_frames(tmp_path / "raw1" / clip, 2, 16), decode_frames(tmp_path / "raw" / clip, 2, 16)
    )


def test_classes_are_three_bits_split_between_the_modalities():
    assert [class_bits(y) for y in (0, 5, 7)] == [(0, 0, 0), (1, 0, 1), (1, 1, 1)]


def test_frame_indices_uniform_and_seeded_random():
    assert frame_indices(8, 2, "uniform", 0, "x").tolist() == [1, 5]  # centres of [0,4) and [4,8)
    assert frame_indices(1, 3, "uniform", 0, "x").tolist() == [0, 0, 0]
    a = frame_indices(100, 4, "random", 0, "clip_a")
    assert a.tolist() == frame_indices(100, 4, "random", 0, "clip_a").tolist()
    assert all(25 * i <= v < 25 * (i + 1) for i, v in enumerate(a))
    others = {tuple(frame_indices(100, 4, "random", s, c).tolist()) for s in range(3) for c in ("clip_a", "clip_b")}
    assert len(others) > 1, "the seed and clip id must actually change the choice"


def _clip_without(stream: str, src, dst) -> None:
    _ffmpeg("-i", str(src), "-an" if stream == "audio" else "-vn", "-c", "copy", str(dst))


def _ffmpeg(*args: str) -> None:
    import subprocess

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True)


def _half_cut(src, dst) -> None:
    """The clip with its header first (faststart), cut after 45% of its bytes: the header still declares the whole
    length, the file holds less than half of it."""
    whole = dst.with_suffix(".whole.mp4")
    _ffmpeg("-i", str(src), "-c", "copy", "-movflags", "+faststart", str(whole))
    data = whole.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.45)])
    whole.unlink()


def test_bad_clips_are_listed_with_reasons_not_dropped(tmp_path, tiny_workspace, tiny_dirs):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_workspace / tiny_dirs.raw, raw)
    rows = read_manifest(raw / "manifest.csv")
    good = raw / rows[0]["path"]
    (raw / "clips/truncated.mp4").write_bytes(good.read_bytes()[:2000])
    _half_cut(good, raw / "clips/halfcut.mp4")
    _ffmpeg("-i", str(good), "-t", "0.1", str(raw / "clips/short.mp4"))  # a 0.1 s clip, complete
    (raw / "clips/empty.mp4").write_bytes(b"")
    _clip_without("audio", good, raw / "clips/silent.mp4")
    _clip_without("video", good, raw / "clips/blind.mp4")
    (raw / "clips/folder.mp4").mkdir()  # a path that cannot be read as a file
    planted = {
        "truncated": "corrupt or truncated file",
        "empty": "empty file (0 bytes)",
        "silent": "no audio stream",
        "blind": "no video stream",
        "missing": "file not found",
        "folder": "unreadable file",
        "halfcut": "truncated audio",
        "short": "clip too short",
    }
    extra = [{"clip_id": k, "path": f"clips/{k}.mp4", "label": "class0", "split": "train"} for k in planted]
    extra.append({"clip_id": "badlabel", "path": rows[0]["path"], "label": "class99", "split": "train"})
    planted["badlabel"] = "label not in class list"
    write_manifest(raw / "manifest.csv", rows + extra)
    s = settings()["preprocess"]
    ds = DATASETS.get("synthetic-av")(settings())
    with pytest.raises(PreprocessError, match=r"9 of 57 clips rejected .* first: .*truncated.mp4"):
        preprocess(ds, raw, tmp_path / "proc", s, workers=2, log=lambda m: None)
    with (tmp_path / "proc/rejected.csv").open() as f:
        rejected = {r["clip_id"]: r for r in csv.DictReader(f)}
    assert {k: r["reason"] for k, r in rejected.items()} == planted
    assert "decoded 0." in rejected["halfcut"]["detail"] and "partial file" in rejected["halfcut"]["detail"]
    assert "0.10 s of audio" in rejected["short"]["detail"]
    s["max_rejected_fraction"] = 0.2  # tolerated: the good clips are cached, the bad ones stay listed
    info = preprocess(ds, raw, tmp_path / "proc", s, workers=2, log=lambda m: None)
    assert info["rejected"] == 9 and info["clips"] == 48
    assert set(CachedSplit(tmp_path / "proc").clip_ids).isdisjoint(planted)
    s.update(min_decoded_fraction=0.0, min_duration_fraction=0.0)  # both checks off: the two clips are kept
    info = preprocess(ds, raw, tmp_path / "proc2", s, workers=2, log=lambda m: None)
    assert info["rejected"] == 7 and info["clips"] == 50


def test_decoders_raise_media_errors(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        decode_audio(tmp_path / "nope.mp4", 16000)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError) as info:
        decode_frames(tmp_path / "junk.mp4", 1, 16)
    assert info.value.reason in ("corrupt or truncated file", "video decoding failed")


def test_a_short_stream_of_an_intact_file_is_not_truncation(tmp_path):
    # a container declares its longest stream: 1 s of audio under 4 s of video is genuine, not a cut file
    clip = tmp_path / "short-audio.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x64:rate=8:duration=4", "-f", "lavfi", "-i", "sine=duration=1"),
        *("-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)),
    )
    assert 0.95 < len(decode_audio(clip, 16000, min_fraction=0.75)) / 16000 < 1.1
    assert len(decode_frames(clip, 4, 16, min_fraction=0.75)) == 16
    _half_cut(clip, tmp_path / "cut.mp4")
    with pytest.raises(MediaError, match=r"truncated video: decoded \d+ of the 16 frames at 4 fps"):
        decode_frames(tmp_path / "cut.mp4", 4, 16, min_fraction=0.75)


def test_random_resized_crop_is_one_batched_resize_of_a_box_inside_the_frame():
    from benchmark.data.cache import channels_last_frames, random_resized_crop, resize_boxes

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 3, 12, 16, generator=g)
    # the batched resize equals interpolating each cropped box, box by box (the previous per-clip loop)
    top, left, ch, cw = (torch.tensor(v, dtype=torch.float32) for v in ([0, 3, 5], [0, 4, 9], [12, 5, 7], [16, 8, 7]))
    out = resize_boxes(x, top, left, ch, cw)
    for i in range(3):
        t, lf, hh, ww = int(top[i]), int(left[i]), int(ch[i]), int(cw[i])
        box = x[i, :, :, t : t + hh, lf : lf + ww]
        ref = torch.nn.functional.interpolate(box, size=(12, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(out[i], ref, atol=1e-5), i
    assert torch.allclose(out[0], x[0], atol=1e-6)  # the whole frame as the box: unchanged
    x[:, 1] = x[:, 0]  # two identical frames per clip: they get the same crop
    torch.manual_seed(0)
    crop = random_resized_crop(x, (0.25, 0.5))
    assert crop.shape == x.shape and torch.equal(crop[:, 0], crop[:, 1]) and not torch.allclose(crop, x)
    torch.manual_seed(0)
    assert torch.equal(random_resized_crop(x, (0.25, 0.5)), crop)  # seeded
    v = channels_last_frames(x)
    assert torch.equal(v, x) and v.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_inputs_hold_the_same_values():
    from benchmark.data.cache import BatchPreparer

    info = {"audio": {"source": "audio"}, "visual": {"source": "video"}}
    visual = {"mean": [0.4] * 3, "std": [0.2] * 3}
    batch = {
        "audio": torch.randn(4, 2, 20, 30).half(),
        "visual": torch.randint(0, 255, (4, 2, 3, 8, 8), dtype=torch.uint8),
        "label": torch.zeros(4, dtype=torch.long),
    }
    plain, _ = BatchPreparer(info, visual, torch.device("cpu"))(batch)
    last, _ = BatchPreparer(info, visual, torch.device("cpu"), channels_last=True)(batch)
    assert last["audio"].is_contiguous(memory_format=torch.channels_last)
    assert last["visual"].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(plain[m], last[m]) for m in plain)


def test_train_time_augmentation_is_per_clip_seeded_and_training_only():
    from benchmark.data.cache import BatchPreparer, augment_frames

    x = torch.arange(2 * 3 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 3, 4, 4)
    torch.manual_seed(0)
    flipped = augment_frames(x.clone(), hflip=True, crop_scale=None)
    for b in range(2):  # each clip is either flipped (all its frames) or left as it is
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1))
    torch.manual_seed(0)
    assert torch.equal(augment_frames(x.clone(), hflip=True, crop_scale=None), flipped)
    torch.manual_seed(1)
    cropped = augment_frames(x.clone(), hflip=False, crop_scale=(0.25, 0.5))
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    prep = BatchPreparer(
        {"visual": {"source": "video"}},
        {"mean": [0.0] * 3, "std": [1 / 255] * 3, "augment": {"hflip": True}},
        torch.device("cpu"),
    )
    batch = {
        "visual": torch.randint(0, 255, (8, 2, 3, 4, 4), dtype=torch.uint8),
        "label": torch.zeros(8, dtype=torch.long),
    }
    assert torch.equal(prep(batch)[0]["visual"], batch["visual"].float())  # evaluation: never augmented
    torch.manual_seed(2)
    assert not torch.equal(prep(batch, train=True)[0]["visual"], batch["visual"].float())
