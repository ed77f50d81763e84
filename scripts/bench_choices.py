"""The measurements behind three design choices of the data path (README, "Performance"), on this machine's CPU:

* the shard format and its gather: ``torch.save`` read with ``torch.load(mmap=True)`` (gathered as the cache does,
  a row copy per clip, and with advanced indexing, as it did) against safetensors (``safe_open``, a slice per
  row), for a shard of 1,000 real-size clips: opening it, and gathering 20 random batches of 32 clips;
* the random resized crop: the previous per-clip loop (one ``interpolate`` per clip, host-side draws) against the
  batched ``grid_sample`` (``benchmark.data.cache.random_resized_crop``), batch 16 of 3 frames of 224×224;
* ``resources.train.loader_workers``: batches per second gathered from a sharded cache with 0 and 2 workers.

safetensors is not a dependency of the project; to compare with it:
    pip install --target /tmp/st safetensors==0.8.0 && PYTHONPATH=/tmp/st:. python scripts/bench_choices.py
(without it, that comparison is skipped). Medians of repeated timings; one torch thread.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark.data.cache import CachedSplit, make_loader, random_resized_crop
from benchmark.perf_data import _large_cache_shapes, large_cache


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shard(n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "audio": torch.randn(n, 1, 257, 188, generator=g).half(),
        "visual": torch.randint(0, 256, (n, 3, 3, 224, 224), dtype=torch.uint8, generator=g),
    }


def shard_format(work: Path, n: int = 1000, batch: int = 32) -> dict:
    tensors = shard(n)
    pt, ptc = work / "shard.pt", work / "cache.pt"
    torch.save(tensors, pt)
    torch.save({**tensors, "clip_id": [f"c{i}" for i in range(n)], "label": torch.zeros(n, dtype=torch.long)}, ptc)
    idx = [torch.randperm(n, generator=torch.Generator().manual_seed(k))[:batch].sort().values for k in range(20)]

    def torch_gather():  # the cache's own gather (a row copy per clip)
        data = CachedSplit(ptc)
        for i in idx:
            for m in tensors:
                data.gather(m, i)

    def torch_fancy():  # the previous gather: advanced indexing
        data = torch.load(pt, mmap=True, weights_only=True)
        for i in idx:
            for m in tensors:
                data[m][i]

    out = {
        "clips": n,
        "file_mb": pt.stat().st_size / 2**20,
        "torch_open_s": timed(lambda: torch.load(pt, mmap=True, weights_only=True), 5),
        "torch_20_batches_s": timed(torch_gather, 5),
        "torch_20_batches_advanced_indexing_s": timed(torch_fancy, 5),
    }
    try:
        from safetensors import safe_open
        from safetensors.torch import save_file
    except ImportError:
        out["safetensors"] = "not installed (see the docstring)"
        return out
    st = work / "shard.safetensors"
    save_file(tensors, str(st))

    def st_gather():
        with safe_open(str(st), framework="pt") as f:
            views = {k: f.get_slice(k) for k in f.keys()}
            for i in idx:
                for v in views.values():
                    torch.stack([v[int(j) : int(j) + 1] for j in i])  # a slice per row: no fancy indexing

    def st_open():
        with safe_open(str(st), framework="pt") as f:
            list(f.keys())

    out.update(
        safetensors_file_mb=st.stat().st_size / 2**20,
        safetensors_open_s=timed(st_open, 5),
        safetensors_20_batches_s=timed(st_gather, 5),
    )
    return out


def crop_loop(x: torch.Tensor, scale) -> torch.Tensor:
    """The previous implementation: one host-side draw and one ``interpolate`` per clip."""
    b, _, _, h, w = x.shape
    out = torch.empty_like(x)
    lo, hi = scale
    for i in range(b):
        area = h * w * float(torch.empty(()).uniform_(lo, hi))
        ratio = float(torch.exp(torch.empty(()).uniform_(-0.2877, 0.2877)))
        ch = max(1, min(h, round((area / ratio) ** 0.5)))
        cw = max(1, min(w, round((area * ratio) ** 0.5)))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        crop = x[i, :, :, top : top + ch, left : left + cw]
        out[i] = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return out


def crop(batch: int = 16) -> dict:
    x = torch.rand(batch, 3, 3, 224, 224)
    return {
        "batch": batch,
        "loop_s": timed(lambda: crop_loop(x, (0.6, 1.0)), 10),
        "batched_s": timed(lambda: random_resized_crop(x, (0.6, 1.0)), 10),
    }


def loader_workers(work: Path, gigabytes: float = 1.0, batch: int = 32) -> dict:
    folder = work / "cache"
    large_cache(folder, gigabytes, 1000, _large_cache_shapes(False))
    data = CachedSplit(folder)
    out = {"clips": len(data), "batch": batch}
    for workers in (0, 2):
        loader = make_loader(data, batch, shuffle=True, workers=workers)
        seconds = timed(lambda: sum(1 for _ in loader), 3)
        out[f"batches_per_s_{workers}_workers"] = len(loader) / seconds
    return out


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-choices-") as tmp:
        report = {
            "shard_format": shard_format(Path(tmp)),
            "random_resized_crop": crop(),
            "loader_workers": loader_workers(Path(tmp)),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
