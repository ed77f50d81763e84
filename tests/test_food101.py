"""UPMC Food-101 from a fixture tree in the published layout: manifest, refused rows, the training-only vocabulary,
token ids, the image recipe and the errors that say what to do."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from benchmark.config import _fill_preprocess
from benchmark.data.cache import load_part
from benchmark.data.datasets import DATASETS, read_manifest, read_rejected_rows
from benchmark.data.food101 import Food101, build_vocabulary, encode, resize_crop, words
from benchmark.data.kinds import get_kind
from benchmark.data.media import MediaError
from benchmark.data.preprocess import preprocess
from benchmark.data.sources import SourceError
from benchmark.data.splits import write_splits
from tests.food_trees import write_food_tree

SIZE = 32


def settings(path: Path | None, **source) -> dict:
    """A dataset's settings as the harness passes them."""
    return {
        "name": "food101",
        "class": "benchmark.data.food101:Food101",
        "source": {"path": str(path) if path else None, "max_missing_fraction": 0.25, **source},
        "text": dict(Food101.text_defaults),
        "split": dict(Food101.split_defaults),
        "preprocess": {
            "visual": {"size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "augment": {}},
            "max_rejected_fraction": 0.05,
        },
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("UPMC_Food101")
    return root, write_food_tree(root)


@pytest.fixture(scope="module")
def downloaded(tree, tmp_path_factory) -> tuple[Food101, Path, list[dict]]:
    root, _ = tree
    raw = tmp_path_factory.mktemp("raw")
    ds = Food101(settings(root))
    ds.download(raw)
    return ds, raw, read_manifest(raw / "manifest.csv")


def test_registered():
    assert DATASETS.get("food101") is Food101
    assert Food101.modalities == {"image": "image", "text": "tokens"}
    assert Food101.config_sections == ("source", "text", "split")


def test_manifest_lists_every_usable_row(tree, downloaded):
    _, info = tree
    _, raw, rows = downloaded
    by_id = {r["clip_id"]: r for r in rows}
    assert len(rows) == 3 * (6 + 3)  # the corrupt image is listed: it is rejected when decoded
    assert set(by_id) == set(info["train"]) | set(info["test"])
    assert {r["clip_id"] for r in rows if r["split"] == "train"} == set(info["train"])
    assert {r["clip_id"] for r in rows if r["split"] == "test"} == set(info["test"])
    assert {r["split"] for r in rows} == {"train", "test"}
    assert info["no_text"] not in by_id and info["no_image"] not in by_id
    for r in rows:
        assert r["label"] == info["labels"][r["clip_id"]]
        assert (raw / r["path"]).is_file()  # relative to raw_dir, through the link to source.path
        assert r["path"] == f"files/images/{r['split']}/{r['label']}/{r['clip_id']}.jpg"
        assert r["label"].split("_")[0] in r["text"].lower() and r["text"] == " ".join(r["text"].split())
    assert (raw / "files").is_symlink()


def test_refused_rows_have_reasons(tree, downloaded):
    _, info = tree
    _, raw, _ = downloaded
    refused = {r["reason"]: r for r in read_rejected_rows(raw)}
    assert set(refused) == {"image not found", "no text row"}
    gone = refused["image not found"]
    assert gone["line"] == "3" and gone["path"].endswith(f"{info['no_image']}.jpg") and gone["label"] == "sushi"
    orphan = refused["no text row"]
    assert orphan["path"] == f"images/train/tacos/{info['no_text']}.jpg" and "train_titles.csv" in orphan["detail"]


def test_other_refusals_and_a_header(tmp_path):
    root = tmp_path / "food"
    write_food_tree(root)
    listing = root / "texts" / "train_titles.csv"
    lines = listing.read_text().splitlines()
    extra = [
        "sushi_1.jpg,Sushi again,sushi",  # the same image twice
        "tacos_99.jpg,Tacos al pastor,taco",  # not a class folder
        'apple_pie_1.jpg," ",apple_pie',  # repeated too: a duplicate before its empty text
        "apple_pie_2.jpg",  # one field
    ]
    listing.write_text("\n".join(["Image_path,text,label", *lines, *extra]) + "\n")
    (root / "images" / "train" / "sushi" / "sushi_50.jpg").write_bytes(b"")
    a_jpeg = (root / "images" / "test" / "sushi" / "sushi_6.jpg").read_bytes()
    for rel in ("sushi/sushi_60.jpg", "tacos/tacos_60.jpg", "apple_pie/apple_pie_1.jpg"):
        (root / "images" / "test" / rel).write_bytes(a_jpeg)
    with (root / "texts" / "test_titles.csv").open("a", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sushi_50.jpg", "Sushi", "sushi"])  # listed under test, on disk under train
        w.writerow(["sushi_60.jpg", "!!! ...", "sushi"])
        w.writerow(["tacos_60.jpg", "   ", "tacos"])
        w.writerow(["apple_pie_1.jpg", "Apple pie", "apple_pie"])  # a training image's name
    raw = tmp_path / "raw"
    Food101(settings(root, max_missing_fraction=0.5)).download(raw)
    reasons = sorted(r["reason"] for r in read_rejected_rows(raw))
    assert reasons == sorted(
        [
            "image not found",
            "no text row",
            "duplicate row",
            "label not a class folder",
            "duplicate row",
            "malformed row",
            "no text row",  # sushi_50.jpg: no train row names it ...
            "image not found",  # ... and it is not in images/test/sushi
            "no words in text",
            "empty text",
            "duplicate clip id",
        ]
    )
    by_reason = {r["reason"]: r for r in read_rejected_rows(raw)}
    assert "did you mean 'tacos'?" in by_reason["label not a class folder"]["detail"]
    assert len(read_manifest(raw / "manifest.csv")) == 27  # the header line is not a row


def test_too_many_refusals_stop_with_the_first(tree, tmp_path):
    root, _ = tree
    with pytest.raises(SourceError, match=r"2 of 29 listed rows rejected.*max_missing_fraction=0.05"):
        Food101(settings(root, max_missing_fraction=0.05)).download(tmp_path / "raw")


def test_null_path_says_where_to_get_the_files(tmp_path):
    with pytest.raises(SourceError) as err:
        Food101(settings(None)).download(tmp_path / "raw")
    message = str(err.value)
    assert "kaggle.com/datasets/gianmarco96/upmcfood101" in message
    assert "datasets.food101.source.path" in message and "texts/train_titles.csv" in message


def test_not_the_layout(tmp_path):
    (tmp_path / "elsewhere" / "images").mkdir(parents=True)
    with pytest.raises(SourceError, match="has no images/train: not the UPMC Food-101 layout"):
        Food101(settings(tmp_path / "elsewhere")).download(tmp_path / "raw")


# --- text ----------------------------------------------------------------------------------------------------


def test_vocabulary_order_min_count_and_size():
    texts = ["b a a", "c b a", "d", "B"]
    assert build_vocabulary(texts, min_count=2, max_vocab=100) == ["a", "b"]  # a: 3, b: 3 -> alphabetical
    assert build_vocabulary(texts, min_count=1, max_vocab=100) == ["a", "b", "c", "d"]
    assert build_vocabulary(texts, min_count=1, max_vocab=3) == ["a"]  # 0 and 1 are padding and unknown
    assert build_vocabulary(texts, min_count=2, max_vocab=100, lowercase=False) == ["a", "b"]  # a: 3, b: 2
    assert build_vocabulary(["x y y", "z z z"], min_count=1, max_vocab=100) == ["z", "y", "x"]


def test_words_and_ids_by_hand():
    assert words("Tarte &amp; Tatin: http://x.fr/a?b=1 (www.y.com) 3-eggs_recipe") == [
        "tarte",
        "tatin",
        "3",
        "eggs",
        "recipe",
    ]
    index = {"apple": 2, "pie": 3}
    ids = encode("Apple PIE, with cream!", index, 6)
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 3, 1, 1, 0, 0]
    assert encode("apple pie pie apple pie", index, 3).tolist() == [2, 3, 3]
    assert encode("Apple", index, 2, lowercase=False).tolist() == [1, 0]
    assert encode("", index, 3).tolist() == [0, 0, 0]


def test_vocabulary_comes_from_training_titles_only(tree, downloaded):
    _, info = tree
    ds, raw, rows = downloaded
    saved = json.loads((raw / "vocab.json").read_text())
    assert saved["training_texts"] == 18 and saved["settings"]["min_count"] == 2
    vocab = saved["words"]
    assert info["test_only_word"] not in vocab
    assert {"apple", "pie", "sushi", "tacos", "my", "food", "blog"} <= set(vocab)
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    assert vocab == build_vocabulary(train_texts, 2, 30000)
    index = ds.vocabulary(raw)
    test_row = next(r for r in rows if r["split"] == "test")
    ids = ds.tensors(raw, test_row)["text"]
    title = words(test_row["text"])
    assert ids.tolist()[: len(title)] == [index.get(w, 1) for w in title]
    assert ids[title.index(info["test_only_word"])] == 1  # unknown
    assert (ids[len(title) :] == 0).all() and len(ids) == 40


def test_specs_match_the_tensors(downloaded):
    ds, raw, rows = downloaded
    specs = ds.tensor_specs(raw, rows)
    vocab_size = len(json.loads((raw / "vocab.json").read_text())["words"]) + 2
    assert specs == {
        "image": {"shape": [3, SIZE, SIZE], "dtype": "uint8"},
        "text": {"shape": [40], "dtype": "int64", "vocab_size": vocab_size},
    }
    row = next(r for r in rows if r["split"] == "train" and r["clip_id"] != "apple_pie_0")
    out = ds.tensors(raw, row)
    for modality, kind in ds.modalities.items():
        checked, _ = get_kind(kind).check(out[modality], specs[modality])
        assert checked.dtype == getattr(torch, specs[modality]["dtype"])


def test_vocabulary_of_other_text_settings_is_refused(downloaded):
    _, raw, rows = downloaded
    other = settings(None)
    other["text"]["min_count"] = 1
    with pytest.raises(SourceError, match="run the download step"):
        Food101(other).tensor_specs(raw, rows)
    with pytest.raises(SourceError, match="vocab.json does not exist"):
        Food101(other).tensor_specs(raw / "nowhere", rows)


# --- images --------------------------------------------------------------------------------------------------


def stripes() -> torch.Tensor:
    """40 x 80: green | red (the middle half) | blue; the centre crop of its resize is red only."""
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[1, :, :20] = 255
    image[0, :, 20:60] = 255
    image[2, :, 60:] = 255
    return image


def test_resize_then_centre_crop_by_hand():
    out = resize_crop(stripes(), 20)  # 40 x 80 -> 20 x 40 -> centre 20 x 20 = source columns 20..59
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8
    assert (out[0, :, 2:-2] == 255).all() and (out[1:, :, 2:-2] == 0).all()  # red away from the crop's edges
    assert out[0].float().mean() > 240 and out[1:].float().mean() < 10
    tall = resize_crop(stripes().transpose(1, 2).contiguous(), 20)  # 80 x 40: the same along the other axis
    assert (tall[0, 2:-2, :] == 255).all()


def write_as_jpg(raw: Path, name: str, data: bytes) -> dict:
    (raw / name).write_bytes(data)
    return {"clip_id": name, "path": name, "label": "sushi", "split": "train", "text": "sushi"}


def test_any_format_under_jpg_becomes_rgb(downloaded, tmp_path):
    ds, raw, _ = downloaded
    PIL = pytest.importorskip("PIL.Image")
    png = encode_png(stripes()).numpy().tobytes()
    grey = encode_jpeg(stripes()[:1]).numpy().tobytes()
    cmyk = io.BytesIO()
    PIL.fromarray(stripes().permute(1, 2, 0).numpy()).convert("CMYK").save(cmyk, "JPEG", quality=95)
    (tmp_path / "vocab.json").write_text((raw / "vocab.json").read_text())  # for the text modality
    for name, data in (("png.jpg", png), ("grey.jpg", grey), ("cmyk.jpg", cmyk.getvalue())):
        image = ds.tensors(tmp_path, write_as_jpg(tmp_path, name, data))["image"]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8, name
    red = ds.tensors(tmp_path, write_as_jpg(tmp_path, "p.jpg", png))["image"]
    assert (red[0, :, 4:-4] >= 250).all() and (red[1:, :, 4:-4] <= 5).all()  # the PNG's centre crop: red only


def test_corrupt_missing_and_empty_images_raise_media_error(tree, downloaded, tmp_path):
    _, info = tree
    ds, raw, rows = downloaded
    corrupt = next(r for r in rows if r["clip_id"] == info["corrupt"])
    with pytest.raises(MediaError) as err:
        ds.tensors(raw, corrupt)
    assert err.value.reason == "undecodable image" and corrupt["clip_id"] in err.value.detail
    assert ".cpp" not in err.value.detail
    with pytest.raises(MediaError, match="file not found"):
        ds.tensors(raw, dict(corrupt, path="files/images/train/sushi/none.jpg"))
    (tmp_path / "vocab.json").write_text((raw / "vocab.json").read_text())
    with pytest.raises(MediaError, match="empty file"):
        ds.tensors(tmp_path, write_as_jpg(tmp_path, "empty.jpg", b""))


def test_fixture_images_carry_the_class_weakly(downloaded):
    ds, raw, rows = downloaded
    means = {}
    for r in rows:
        if r["clip_id"] != "apple_pie_0":
            means.setdefault(r["label"], []).append(ds.tensors(raw, r)["image"].float().mean(dim=(1, 2)))
    centroids = {label: torch.stack(m).mean(0) for label, m in means.items()}
    hits = [
        min(centroids, key=lambda c: float((m - centroids[c]).norm())) == label
        for label, ms in means.items()
        for m in ms
    ]
    assert np.mean(hits) > 0.8


# --- split and modalities ------------------------------------------------------------------------------------


def test_official_split_with_validation_from_training(downloaded):
    ds, _, rows = downloaded
    parts = ds.split(rows, ds.folds()[0])
    test_ids = {r["clip_id"] for r in rows if r["split"] == "test"}
    assert {c for c, p in parts.items() if p == "test"} == test_ids
    val = {c for c, p in parts.items() if p == "val"}
    assert val and not val & test_ids
    labels = {r["clip_id"]: r["label"] for r in rows}
    assert {labels[c] for c in val} == {"apple_pie", "sushi", "tacos"}  # one of each class's six (stratified)


def test_a_config_may_keep_one_modality(downloaded):
    _, raw, rows = downloaded
    only = copy.deepcopy(settings(None))
    only["modalities"] = {"picture": "image"}
    ds = Food101(only)
    assert ds.tensor_specs(raw, rows) == {"picture": {"shape": [3, SIZE, SIZE], "dtype": "uint8"}}
    assert set(ds.tensors(raw, rows[-1])) == {"picture"}
    wrong = dict(only, modalities={"text": "sequence"})
    with pytest.raises(ValueError, match="image | tokens"):
        Food101(wrong).tensor_specs(raw, rows)


def test_through_preprocess_and_split(tree, tmp_path):
    """The whole path: download, the shard jobs (tensor_specs once per job, tensors per row in threads), the split."""
    root, info = tree
    entry = settings(root)
    entry["preprocess"] = _fill_preprocess({"visual": {"size": SIZE}})
    ds = Food101(entry)
    raw, processed = tmp_path / "raw", tmp_path / "processed"
    ds.download(raw)
    preprocess(ds, raw, processed, entry["preprocess"], workers=3, log=lambda s: None, shard_clips=10)
    saved = json.loads((processed / "info.json").read_text())
    assert saved["modalities"]["image"] == {"kind": "image", "shape": [3, SIZE, SIZE], "dtype": "uint8"}
    assert saved["modalities"]["text"]["kind"] == "tokens" and saved["modalities"]["text"]["shape"] == [40]
    with (processed / "rejected.csv").open(newline="") as f:
        rejected = {r["reason"]: r for r in csv.DictReader(f)}
    assert set(rejected) == {"image not found", "no text row", "undecodable image"}
    assert rejected["undecodable image"]["clip_id"] == info["corrupt"]
    write_splits(ds, raw, processed, log=lambda s: None)
    parts = {p: set(load_part(processed, "main", p).ids()) for p in ("train", "val", "test")}
    assert parts["test"] == set(info["test"])
    assert parts["train"] | parts["val"] == set(info["train"]) - {info["corrupt"]} and not parts["train"] & parts["val"]


@pytest.mark.slow
def test_food101_image_and_text_through_the_dag_with_every_diagnostic(tmp_path):
    """Images (small CNN) and titles (the tokens kind's text encoder, chosen because the CNN takes no token ids) to
    the leaderboard: G-Blend and MLB run; OGM-GE's released rule is n/a, naming the text encoder it cannot modulate."""
    import pandas as pd
    import yaml

    from tests.conftest import tiny_config
    from tests.test_workflow import snakemake

    root = tmp_path / "UPMC_Food101"
    write_food_tree(root, per_class=(14, 5))
    cfg = tiny_config(datasets=["food101"], backbones=["small_cnn"], balancers=["joint", "ogm_ge", "mlb", "gblend"])
    cfg["datasets"] = {
        "food101": {
            "source": {"path": str(root), "max_missing_fraction": 0.2},
            "text": {"max_tokens": 12, "min_count": 1},
            "preprocess": {"visual": {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}, "max_rejected_fraction": 0.1},
        }
    }
    cfg["backbones"]["text"] = {"dim": 16, "layers": 1, "heads": 2, "ffn_dim": 32}
    cfg["train"]["epochs"] = 3
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "f.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv", keep_default_na=False)
    assert dict(zip(board["method"], board["status"])) == {"joint": "ok", "mlb": "ok", "gblend": "ok", "ogm_ge": "n/a"}
    assert "(the encoder of modality 'text')" in (tmp_path / "results/default/leaderboard.md").read_text()
    runs = tmp_path / "results/runs/food101/main/small_cnn/concat/joint"
    metrics = json.loads(next(runs.glob("*/metrics.json")).read_text())
    assert metrics["settings"]["backbone"]["encoders"]["text"]["name"] == "text"
    d = metrics["diagnostics"]
    assert set(d["linear_probe"]["test"]) == {"image", "text"}
    assert set(d["shapley"]["test"]["masked_accuracy"]) == {"none", "image", "text", "image+text"}
    rejected = pd.read_csv(next((tmp_path / "data/processed/food101").glob("*/rejected.csv")), keep_default_na=False)
    assert "undecodable image" in set(rejected["reason"])
