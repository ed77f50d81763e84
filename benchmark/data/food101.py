"""UPMC Food-101 (Wang et al. 2015, "Recipe recognition with large multimodal food dataset"): the image-text
benchmark of BalanceBenchmark, read from its published files and handed over as tensors (an ``image`` and a
``tokens`` modality), decoded and tokenised once by the preprocess step.

Where the files come from: the authors' release (http://visiir.lip6.fr, the "explore" page of VISIIR; the project
later moved to https://visiir.isir.upmc.fr) or its Kaggle mirror (https://www.kaggle.com/datasets/gianmarco96/
upmcfood101). Nothing is downloaded here: unpack it and set ``datasets.food101.source.path`` to the folder that holds
``images/`` and ``texts/``.

Layout (101 classes; 67,972 training and 22,716 test title rows)::

    images/train/<class>/<class>_<n>.jpg      (a few are named <class>_<n>-<k>.jpg)
    images/test/<class>/<class>_<n>.jpg
    texts/train_titles.csv                    rows: image file name, title text, class; no header
    texts/test_titles.csv

A row names an image file, not a path: its image is ``images/<split>/<class>/<file>``. The published files have no
header; a copy whose first line is a header (BalanceBenchmark reads ``Image_path,text,label``) is accepted too.
Every row and every image is accounted for: rows whose image is missing, whose class is not a class folder of their
split, whose text is empty (or has no word) or that repeat an image are refused with their reason, and so are images
no title row names ("no text row": the release has a few) — all listed in ``rejected_rows.csv`` and counted against
``source.max_missing_fraction``. Undecodable images are rejected by the preprocess step (``rejected.csv``).

Split: the official train/test split (``images/train`` vs ``images/test``); validation is carved from training
(stratified by class, ``split.val_fraction``, seeded) by the default ``Dataset.split``.

Text: a word-level vocabulary, built once by ``download`` from the titles of the training rows only and written to
``<raw_dir>/vocab.json``. The validation part, carved from training later, is among those rows, so its words count
towards the vocabulary; no test title does (a word seen only in test titles is unknown). A title is HTML-unescaped,
its links removed, lowercased (``text.lowercase``) and cut into words (runs of letters and digits). Ids: 0 padding,
1 unknown, then the words with at least ``text.min_count`` occurrences by descending count, then alphabetically, at
most ``text.max_vocab`` ids in all. A title becomes ``text.max_tokens`` ids, truncated or padded with 0.

Image: decoded once with torchvision (JPEG, PNG, GIF, WebP whatever the extension; grey, CMYK and alpha images become
RGB; a GIF's first frame), the shorter side resized to ``preprocess.visual.size`` = S (antialiased bilinear) and the
centre S x S cropped: uint8 [3, S, S]. Normalisation (``visual.mean``/``std``) and train-time augmentation
(``visual.augment``: flips, random resized crops) are applied to batches on the device, never cached.

Differences from BalanceBenchmark (``balancemm/datasets/food_dataset.py``, ``configs/dataset_config.yaml``):

- text: they use BERT's WordPiece tokenizer (``BertTokenizer``, max_length 40 with [CLS]/[SEP], padded) after
  removing links, '#' and a leading 'RT'; here a word-level vocabulary of the training titles (no pretrained
  tokenizer or weights are downloaded), 40 word ids by default;
- image: they squash every image to 224 x 224 (``Resize((224, 224))``, aspect ratio not kept) and augment training
  images with ``RandomRotation(30)`` and horizontal flips; here shorter side to S and a centre crop (aspect ratio
  kept), S from ``preprocess.visual.size`` (the preset ``balancebenchmark`` sets 224, ImageNet mean/std and flips;
  rotation is not offered);
- split: with their ``validation: false`` the test set is also the validation set; here validation is carved from
  training, so model selection never sees test data.
"""

from __future__ import annotations

import collections
import csv
import difflib
import html
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import ClassVar

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from benchmark.data.datasets import DATASETS, RejectedRow, read_manifest
from benchmark.data.media import MediaError
from benchmark.data.real import RawDataset
from benchmark.data.sources import SourceError

LOG = logging.getLogger(__name__)

SPLIT_PARTS = ("train", "test")
VOCAB_FILE = "vocab.json"
PAD, UNKNOWN = 0, 1
#: a word: a run of letters and digits (any script); links are removed before
WORD = re.compile(r"[^\W_]+")
LINK = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)
#: the source location torchvision's decoders put before their message ('decode_jpeg, /.../decode_jpeg.cpp:171, ')
DECODER_PREFIX = re.compile(r"^\w+, \S+:\d+, ")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


def words(text: str, lowercase: bool = True) -> list[str]:
    """The words of a title: HTML entities unescaped, links removed, optionally lowercased."""
    text = LINK.sub(" ", html.unescape(text))
    return WORD.findall(text.lower() if lowercase else text)


def build_vocabulary(texts: list[str], min_count: int, max_vocab: int, lowercase: bool = True) -> list[str]:
    """The words of the vocabulary in id order (the first gets id 2): those with at least ``min_count``
    occurrences in ``texts``, by descending count then alphabetically, at most ``max_vocab - 2`` of them."""
    counts = collections.Counter(w for t in texts for w in words(t, lowercase))
    kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return kept[: max(0, max_vocab - 2)]


def encode(text: str, index: dict[str, int], max_tokens: int, lowercase: bool = True) -> torch.Tensor:
    """A title as ``max_tokens`` int64 ids: its words' ids (1 for an unknown word), truncated or padded with 0."""
    ids = [index.get(w, UNKNOWN) for w in words(text, lowercase)][:max_tokens]
    return torch.tensor(ids + [PAD] * (max_tokens - len(ids)), dtype=torch.int64)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [C, H, W] with its shorter side resized to ``size`` (antialiased bilinear), centre-cropped to size²."""
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size]).contiguous()


def read_image(path: Path) -> torch.Tensor:
    """An image file as RGB uint8 [3, H, W], whatever its format says its extension (a GIF: its first frame)."""
    if not path.is_file():
        raise MediaError("file not found", str(path))
    data = path.read_bytes()
    if not data:
        raise MediaError("empty file (0 bytes)", str(path))
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        message = DECODER_PREFIX.sub("", str(err).strip().splitlines()[-1])[:200]
        raise MediaError("undecodable image", f"{path}: {message}") from None
    if image.ndim == 4:  # an animated GIF
        image = image[0]
    if image.dtype != torch.uint8:  # e.g. a 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise MediaError("undecodable image", f"{path}: decoded to shape {tuple(image.shape)}")
    return image


@DATASETS.register("food101")
class Food101(RawDataset):
    """UPMC Food-101: an image and its web page title, 101 dish classes; the official train/test split with
    validation carved from training (see the module docstring for the files, tokeniser and image recipe)."""

    display_name: ClassVar[str] = "UPMC Food-101"
    paper: ClassVar[str] = "Wang et al. 2015 (UPMC Food-101)"
    modalities = {"image": "image", "text": "tokens"}
    config_sections = ("source", "text", "split")
    source_defaults = {"path": None, "max_missing_fraction": 0.05}
    text_defaults = {"max_tokens": 40, "min_count": 2, "max_vocab": 30000, "lowercase": True}
    split_defaults = {"val_fraction": 0.1, "seed": 0}
    presets: ClassVar[dict[str, dict]] = {
        "balancebenchmark": {
            "source": "BalanceBenchmark (github.com/GeWu-Lab/BalanceBenchmark), FOOD101: 224 x 224 images, ImageNet "
            "mean/std, horizontal flips in training (their squash resize and RandomRotation(30) are not reproduced: "
            "shorter side to 224 and a centre crop)",
            "visual": {
                "size": 224,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "augment": {"hflip": True},
            },
        },
    }
    obtain = (
        "UPMC Food-101 is distributed by its authors (http://visiir.lip6.fr, now https://visiir.isir.upmc.fr) and "
        "mirrored on Kaggle (https://www.kaggle.com/datasets/gianmarco96/upmcfood101); unpack it so the folder holds "
        "images/train/<class>/*.jpg, images/test/<class>/*.jpg, texts/train_titles.csv and texts/test_titles.csv."
    )

    def __init__(self, settings: dict) -> None:
        super().__init__(settings)
        self._vocab: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    # --- download: the listing -> manifest.csv (+ rejected_rows.csv, vocab.json) -------------------------------

    def download(self, raw_dir: Path, workers: int = 1) -> None:
        raw_dir = Path(raw_dir)
        super().download(raw_dir, workers)
        self.write_vocabulary(raw_dir, read_manifest(raw_dir / "manifest.csv"))

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str], list[RejectedRow]]:
        for part in SPLIT_PARTS:
            for need in (root / "images" / part, root / "texts" / f"{part}_titles.csv"):
                if not need.exists():
                    raise SourceError(
                        f"{root} has no {need.relative_to(root)}: not the UPMC Food-101 layout. {self.obtain}"
                    )
        rows: list[dict] = []
        refused: list[RejectedRow] = []
        seen_ids: dict[str, str] = {}  # clip id -> the image that has it
        for part in SPLIT_PARTS:
            folder = root / "images" / part
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            listing = f"texts/{part}_titles.csv"
            named: set[str] = set()  # the images the listing's rows name (kept or refused)
            for line, cells in self._read_titles(root / listing):
                name, label = (cells[0].strip(), cells[-1].strip()) if len(cells) >= 3 else ("", "")
                text = " ".join(",".join(cells[1:-1]).split())  # unquoted commas in a title: the middle fields
                rel = f"images/{part}/{label}/{name}"
                problem = self._problem(root, part, cells, name, label, text, rel, classes, named, seen_ids)
                if name and label in classes:
                    named.add(rel)
                if problem:
                    reason, detail = problem
                    refused.append(RejectedRow(f"{listing}:{line}", line, rel if name else "", label, reason, detail))
                    continue
                seen_ids[Path(name).stem] = rel
                rows.append({"clip_id": Path(name).stem, "path": rel, "label": label, "split": part, "text": text})
            for image in sorted(folder.glob("*/*")):
                rel = image.relative_to(root).as_posix()
                if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES and rel not in named:
                    refused.append(
                        RejectedRow(rel, 0, rel, image.parent.name, "no text row", f"not listed in {listing}")
                    )
        return rows, [r["clip_id"] for r in rows], refused

    def _problem(
        self,
        root: Path,
        part: str,
        cells: list[str],
        name: str,
        label: str,
        text: str,
        rel: str,
        classes: list[str],
        named: set[str],
        seen_ids: dict[str, str],
    ) -> tuple[str, str] | None:
        """Why a titles row cannot be used (reason, detail), or None."""
        if len(cells) < 3:
            return "malformed row", f"{len(cells)} field(s); a row is image file,text,class"
        if not name:
            return "empty image name", ""
        if label not in classes:
            close = difflib.get_close_matches(label, classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return "label not a class folder", f"{label!r} is not a folder of images/{part}{hint}"
        if rel in named:
            return "duplicate row", f"{name} is listed again"
        if not (root / rel).is_file():
            return "image not found", f"{rel} does not exist"
        if not text:
            return "empty text", ""
        if not words(text, self.settings["text"]["lowercase"]):
            return "no words in text", repr(text[:80])
        if Path(name).stem in seen_ids:
            return "duplicate clip id", f"{Path(name).stem!r} is also {seen_ids[Path(name).stem]}"
        return None

    @staticmethod
    def _read_titles(path: Path) -> list[tuple[int, list[str]]]:
        """(first line, fields) of every non-blank record of a titles CSV, without a header line if there is one
        (a first line whose first field is no image file name, e.g. BalanceBenchmark's ``Image_path,text,label``)."""
        out = []
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f)
            start = 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if line == 1 and "." not in cells[0]:
                    continue  # a header: an image file name has an extension
                out.append((line, cells))
        return out

    # --- the vocabulary --------------------------------------------------------------------------------------

    def _text_key(self) -> dict:
        t = self.settings["text"]
        return {"lowercase": bool(t["lowercase"]), "min_count": int(t["min_count"]), "max_vocab": int(t["max_vocab"])}

    def write_vocabulary(self, raw_dir: Path, rows: list[dict]) -> list[str]:
        """Build the vocabulary from the training rows of the manifest and write it to ``<raw_dir>/vocab.json``."""
        key = self._text_key()
        train = [r["text"] for r in rows if r.get("split") == "train"]
        vocab = build_vocabulary(train, key["min_count"], key["max_vocab"], key["lowercase"])
        out = {"settings": key, "training_texts": len(train), "special": {"0": "<pad>", "1": "<unk>"}, "words": vocab}
        tmp = Path(raw_dir) / f"{VOCAB_FILE}.tmp"
        tmp.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        os.replace(tmp, Path(raw_dir) / VOCAB_FILE)
        LOG.info(
            f"[food101] vocabulary of {len(vocab) + 2} ids from {len(train)} training titles ({raw_dir / VOCAB_FILE})"
        )
        return vocab

    def vocabulary(self, raw_dir: Path) -> dict[str, int]:
        """word -> id, read once from ``<raw_dir>/vocab.json`` (written by ``download``)."""
        where = str(Path(raw_dir).resolve())
        with self._lock:
            if where not in self._vocab:
                path = Path(raw_dir) / VOCAB_FILE
                if not path.exists():
                    raise SourceError(f"{path} does not exist: run the download step of dataset '{self.name}' again")
                saved = json.loads(path.read_text(encoding="utf-8"))
                if saved.get("settings") != self._text_key():
                    raise SourceError(
                        f"{path} was built with text settings {saved.get('settings')}, the config gives "
                        f"{self._text_key()}: run the download step of dataset '{self.name}' again"
                    )
                self._vocab[where] = {w: i + 2 for i, w in enumerate(saved["words"])}
            return self._vocab[where]

    # --- tensors ---------------------------------------------------------------------------------------------

    def _kinds(self) -> dict[str, str]:
        for modality, kind in self.modalities.items():
            if kind not in ("image", "tokens"):
                raise ValueError(
                    f"datasets.{self.name}.modalities.{modality}: '{kind}'; food101 hands over image | tokens"
                )
        return dict(self.modalities)

    def tensor_specs(self, raw_dir: Path, rows: list[dict]) -> dict[str, dict]:
        size = int(self.settings["preprocess"]["visual"]["size"])
        specs = {}
        for modality, kind in self._kinds().items():
            if kind == "image":
                specs[modality] = {"shape": [3, size, size], "dtype": "uint8"}
            else:
                vocab_size = len(self.vocabulary(raw_dir)) + 2
                specs[modality] = {
                    "shape": [int(self.settings["text"]["max_tokens"])],
                    "dtype": "int64",
                    "vocab_size": vocab_size,
                }
        return specs

    def tensors(self, raw_dir: Path, row: dict) -> dict:
        t = self.settings["text"]
        out = {}
        for modality, kind in self._kinds().items():
            if kind == "image":
                size = int(self.settings["preprocess"]["visual"]["size"])
                out[modality] = resize_crop(read_image(Path(raw_dir) / row["path"]), size)
            else:
                out[modality] = encode(row["text"], self.vocabulary(raw_dir), int(t["max_tokens"]), t["lowercase"])
        return out
