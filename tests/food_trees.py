"""A small UPMC Food-101 tree in the published layout: images/<split>/<class>/<class>_<n>.jpg (real JPEGs) and
texts/<split>_titles.csv (image file name, title, class; no header), with one corrupt image, one image without a
title row and one title row without an image."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg

HEIGHT, WIDTH = 40, 52  # not square and not the cached size: the resize and crop are exercised
FILLER = ["homemade", "easy", "recipe", "best", "quick", "dinner", "classic", "simple"]
#: a word in test titles only (the vocabulary is built from training titles: it must map to unknown)
TEST_ONLY_WORD = "zanzibar"


def class_colour(c: int) -> np.ndarray:
    """Each class's tint (weak: images carry the class faintly, titles strongly)."""
    return np.array([[200, 90, 60], [60, 200, 90], [90, 60, 200], [180, 180, 60]][c % 4], dtype=np.float64)


def write_image(path: Path, c: int, rng: np.random.Generator) -> None:
    grey = np.full(3, 128.0)
    pixels = grey + 0.35 * (class_colour(c) - grey) + rng.normal(0, 40, (HEIGHT, WIDTH, 3))
    image = torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())


def title(cls: str, rng: np.random.Generator, test: bool) -> str:
    extra = [str(w) for w in rng.choice(FILLER, size=2, replace=False)]
    words = [*cls.split("_"), *extra] + ([TEST_ONLY_WORD] if test else [])
    return " ".join(str(w) for w in rng.permutation(words)).capitalize() + " | My Food Blog"


def write_food_tree(
    root: Path, classes: tuple[str, ...] = ("apple_pie", "sushi", "tacos"), per_class=(6, 3), seed: int = 0
) -> dict:
    """Write the tree under ``root``: ``per_class`` = (train, test) images of each class, named from 0 on in each
    class across both splits (as the release numbers them). The first training image of the first class is corrupt
    (cut short), an extra training image of the last class has no title row, and the training titles list one
    image that is not on disk. Returns what was written: the listed ids per split, the three odd cases, the classes."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    listed: dict[str, list[str]] = {"train": [], "test": []}
    labels: dict[str, str] = {}
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    for c, cls in enumerate(classes):
        n = 0
        for part, count in zip(("train", "test"), per_class):
            for _ in range(count):
                name = f"{cls}_{n}.jpg"
                write_image(root / "images" / part / cls / name, c, rng)
                rows[part].append([name, title(cls, rng, part == "test"), cls])
                listed[part].append(Path(name).stem)
                labels[Path(name).stem] = cls
                n += 1
    corrupt = f"{classes[0]}_0"
    whole = (root / "images" / "train" / classes[0] / f"{corrupt}.jpg").read_bytes()
    (root / "images" / "train" / classes[0] / f"{corrupt}.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    no_text = f"{classes[-1]}_{sum(per_class)}"
    write_image(root / "images" / "train" / classes[-1] / f"{no_text}.jpg", len(classes) - 1, rng)
    other = classes[1 % len(classes)]
    no_image = f"{other}_{sum(per_class) + 1}"
    rows["train"].insert(2, [f"{no_image}.jpg", f"{other.replace('_', ' ')} long gone", other])
    (root / "texts").mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        with (root / "texts" / f"{part}_titles.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows[part])
    return {
        "classes": list(classes),
        "train": listed["train"],
        "test": listed["test"],
        "labels": labels,
        "corrupt": corrupt,
        "no_text": no_text,
        "no_image": no_image,
        "test_only_word": TEST_ONLY_WORD,
    }
