"""The layout of the sharded tensor cache: which manifest rows make a shard, where a shard and its record live, and
the index a gather step writes.

The manifest is cut, in its order, into shards of ``resources.preprocess.shard_clips`` rows; each shard is decoded by
one job into ``shards/<k>.pt`` (the accepted clips' tensors) and ``shards/<k>.json`` (its record: the rows it covers,
its rejected rows with their reasons, the settings it was made with). A job's memory is bounded by its shard, and a
killed job loses only its shard: both files are written atomically, so a shard either exists whole or is redone.

Shards are saved by ``torch.save`` and read back with ``torch.load(mmap=True, weights_only=True)``: memory-mapped,
so a batch gathers only its rows, a cache larger than free memory still trains, and jobs on one node share the pages;
``weights_only`` loads only tensors and plain containers, never code.

``index.csv`` (clip_id, shard, position) names every accepted clip's place; ``info.json`` lists the shards.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

SHARDS = "shards"
INDEX = "index.csv"


def shard_count(n_rows: int, shard_clips: int) -> int:
    return max(1, math.ceil(n_rows / shard_clips))


def shard_bounds(k: int, n_rows: int, shard_clips: int) -> tuple[int, int]:
    """The manifest rows [lo, hi) of shard k."""
    if not 0 <= k < shard_count(n_rows, shard_clips):
        raise ValueError(
            f"shard {k} does not exist: {n_rows} rows in shards of {shard_clips} make "
            f"{shard_count(n_rows, shard_clips)}"
        )
    return k * shard_clips, min(n_rows, (k + 1) * shard_clips)


def shard_name(k: int) -> str:
    return f"{k:05d}"


def shard_tensors(out_dir: Path, k: int) -> Path:
    return Path(out_dir) / SHARDS / f"{shard_name(k)}.pt"


def shard_record(out_dir: Path, k: int) -> Path:
    return Path(out_dir) / SHARDS / f"{shard_name(k)}.json"


def count_rows(manifest: Path) -> int:
    """Data rows of a CSV manifest (quoted fields may span lines, so the csv module counts)."""
    with Path(manifest).open(newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def save_atomic(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
    else:
        torch.save(obj, tmp)
    tmp.replace(path)


def write_index(out_dir: Path, clip_ids_per_shard: list[list[str]]) -> None:
    tmp = Path(out_dir) / (INDEX + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "shard", "position"])
        for k, ids in enumerate(clip_ids_per_shard):
            writer.writerows((clip, shard_name(k), i) for i, clip in enumerate(ids))
    tmp.replace(Path(out_dir) / INDEX)


def cache_files(path: Path) -> list[Path]:
    """The tensor files of a cache: a processed folder's shards in order (from its info.json), or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    info = path / "info.json"
    if not info.exists():
        raise FileNotFoundError(f"{path} has no info.json: run the preprocess step (python -m benchmark preprocess)")
    shards = json.loads(info.read_text()).get("shards")
    if shards is None:
        raise ValueError(f"{info} names no shards: a cache of an older layout; delete {path} and preprocess again")
    return [path / s["file"] for s in shards]
