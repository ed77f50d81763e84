"""``features``: any dataset of pre-extracted features, the way most feature benchmarks ship them.

A folder (``source.path``) holds one array per modality, as NumPy files ``<modality>.npy`` or as datasets
``<modality>`` of one HDF5 file (``source.file``), each [N, ...] with row i the i-th data row of a labels CSV
(``source.labels``: columns id, label and optionally split). The config's ``modalities`` names each modality's input
kind (``vector`` [D], ``sequence`` [T, D], ``image`` [C, H, W] uint8, ``tokens`` [L] ids, or a kind of
``input_kinds``). Nothing in a file is executed: NumPy files are read with ``allow_pickle=False``, HDF5 with h5py.

Without a split column, test and validation parts are carved from all samples (stratified, seeded); rows that
cannot be used (empty id or label, repeated id, unknown split) are refused by line in ``rejected_rows.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import numpy as np

from benchmark.data.carving import carve_validation
from benchmark.data.datasets import DATASETS, SPLITS, RejectedRow
from benchmark.data.kinds import INT_DTYPES, get_kind, kind_name
from benchmark.data.media import MediaError
from benchmark.data.real import FILES, RawDataset
from benchmark.data.sources import SourceError

FORMATS = ("auto", "npy", "hdf5")


@DATASETS.register("features")
class Features(RawDataset):
    """Pre-extracted feature arrays per modality plus a labels CSV (see the module docstring)."""

    display_name: ClassVar[str] = "Features"
    paper: ClassVar[str] = ""
    modalities: dict[str, str] = {}
    source_defaults = {
        "path": None,
        "labels": "labels.csv",
        "format": "auto",
        "file": "features.h5",
        "vocab_size": None,
        "max_missing_fraction": 0.0,
    }
    split_defaults = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    obtain = "features reads a folder you provide (one array per modality and a labels CSV)."

    def __init__(self, settings: dict) -> None:
        super().__init__(settings)
        if not self.modalities:
            raise ValueError(
                f"datasets.{settings['name']}.modalities: name each feature array's input kind, e.g. "
                "{audio: sequence, visual: vector}"
            )
        if settings["source"]["format"] not in FORMATS:
            raise ValueError(f"datasets.{settings['name']}.source.format must be one of {', '.join(FORMATS)}")
        self._arrays: dict[str, object] = {}
        self._h5 = None

    # --- the folder ------------------------------------------------------------------------------------
    def format(self, root: Path) -> str:
        fmt = self.settings["source"]["format"]
        if fmt != "auto":
            return fmt
        return "hdf5" if (root / self.settings["source"]["file"]).is_file() else "npy"

    def array(self, root: Path, modality: str):
        """The [N, ...] array of one modality, opened once per process (NumPy memory-mapped, or an h5py dataset)."""
        if modality not in self._arrays:
            if self.format(root) == "hdf5":
                import h5py

                path = root / self.settings["source"]["file"]
                if not path.is_file():
                    raise SourceError(f"datasets.{self.name}.source.file: {path} does not exist")
                self._h5 = self._h5 or h5py.File(path, "r")
                if modality not in self._h5:
                    raise SourceError(f"{path} has no dataset '{modality}' (it has {', '.join(self._h5)})")
                self._arrays[modality] = self._h5[modality]
            else:
                path = root / f"{modality}.npy"
                if not path.is_file():
                    raise SourceError(f"datasets.{self.name}: no {path} for modality '{modality}'")
                self._arrays[modality] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._arrays[modality]

    def index(self, root: Path, workers: int) -> tuple[list[dict], list[str], list[RejectedRow]]:
        listing = Path(self.settings["source"]["labels"])
        listing = listing if listing.is_absolute() else root / listing
        if not listing.is_file():
            raise SourceError(
                f"datasets.{self.name}.source.labels: {listing} does not exist (columns: id,label[,split])"
            )
        with listing.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"id", "label"} - set(reader.fieldnames or ())
            if missing:
                raise SourceError(f"{listing} lacks column(s) {', '.join(sorted(missing))} (columns: id,label[,split])")
            entries = [(reader.line_num, r) for r in reader]
        for m in self.modalities:
            n = len(self.array(root, m))
            if n != len(entries):
                raise SourceError(
                    f"modality '{m}' has {n} rows and {listing.name} {len(entries)}: row i of every array is the "
                    "i-th data row of the labels CSV"
                )
        has_split = any((r.get("split") or "").strip() for _, r in entries)
        rows, refused, seen = [], [], {}
        for i, (line, r) in enumerate(entries):
            clip, label, split = ((r.get(k) or "").strip() for k in ("id", "label", "split"))

            def refuse(reason: str, detail: str = "") -> None:
                refused.append(RejectedRow(f"{listing.name}:{line}", line, clip, label, reason, detail))

            if not clip:
                refuse("empty id")
            elif not label:
                refuse("no label")
            elif split and split not in SPLITS:
                refuse("unknown split", f"{split!r} (train | val | test)")
            elif has_split and not split:
                refuse("no split", "other rows give one: give every row a split, or none")
            elif clip in seen:
                refuse("duplicate id", f"as line {seen[clip]}")
            else:
                seen[clip] = line
                rows.append({"clip_id": clip, "path": listing.name, "label": label, "split": split, "row": i})
        return rows, [r["clip_id"] for r in rows], refused

    def split(self, rows: list[dict], fold: str) -> dict[str, str]:
        s = self.settings["split"]
        if any(r.get("split") for r in rows):
            return super().split(rows, fold)
        labels = {r["clip_id"]: r["label"] for r in rows}
        assignment = carve_validation({c: "train" for c in labels}, labels, s["test_fraction"], s["seed"], into="test")
        return carve_validation(assignment, labels, s["val_fraction"] / (1 - s["test_fraction"]), s["seed"] + 1)

    # --- tensors ---------------------------------------------------------------------------------------
    def tensor_specs(self, raw_dir: Path, rows: list[dict]) -> dict[str, dict]:
        root = Path(raw_dir) / FILES
        specs = {}
        for m, declared in self.modalities.items():
            arr = self.array(root, m)
            kind = get_kind(kind_name(declared), self.kind_class(declared))
            spec = {"shape": list(arr.shape[1:]), "dtype": kind.store_dtype}
            if str(arr.dtype) in INT_DTYPES and "vocab_size" in kind.encoder_arguments({"vocab_size": 1}):
                sizes = self.settings["source"]["vocab_size"] or {}
                spec["vocab_size"] = int(sizes.get(m) or int(np.max(arr[()])) + 1)
            specs[m] = spec
        return specs

    def tensors(self, raw_dir: Path, row: dict) -> dict:
        root = Path(raw_dir) / FILES
        try:
            i = int(row["row"])
        except (KeyError, ValueError):
            raise MediaError("no row index", "the manifest row lacks its array row") from None
        return {m: np.asarray(self.array(root, m)[i]) for m in self.modalities}
