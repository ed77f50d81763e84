"""Data at scale: ``python -m benchmark perf --data`` (``--tiny`` for a seconds-long check).

In a scratch workspace it measures, with the project's own CLI steps as the DAG runs them (each a separate process):
* preprocessing real-size clips (CREMA-D's OGM-GE recipe: 3 s at 22,050 Hz -> a 257×188 log-STFT, 3 frames of
  224×224) at several dataset sizes, as shard jobs run one after another: the peak memory (RSS) of the largest shard
  job and of the gather job, the total time, clips/s, the cache's size; and, for the second size, the same data
  as one shard (the old one-job behaviour, for contrast);
* decoding throughput: one shard job with 1 worker thread, with one thread per core, and one single-threaded shard
  job per core running at once (processes);
* ``snakemake -n`` on a manifest of 200,000 clips cut into shards;
* the data-wait fraction of training (ResNet-18, concat, the real-size shapes) read from a sharded cache of a given
  size on disk (default 10 GB), against the same steps on batches already on the device.
The source clips are a few distinct real-size mp4 files (H.264/AAC, written by ffmpeg), hard-linked under as many
names as the size asks: decoding cost is per file, whatever its content.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmark.config import component_class, validate_config
from benchmark.data.shards import INDEX, SHARDS, save_atomic, shard_name, write_index
from benchmark.settings import dataset_dirs

#: CREMA-D under the OGM-GE preset's audio, and MLB's 3 frames (the issue's real-size clip)
REAL_SIZE = {
    "audio": {
        "sample_rate": 22050,
        "duration": 3.0,
        "pad_mode": "tile",
        "transform": "stft",
        "n_fft": 512,
        "hop_length": 353,
        "log_offset": 1.0e-7,
    },
    "visual": {"fps": 1, "num_frames": 3, "size": 224},
    "max_rejected_fraction": 0.0,
}
TINY_SIZE = {
    "audio": {"sample_rate": 8000, "duration": 1.0, "transform": "mel", "n_fft": 256, "hop_length": 256, "n_mels": 16},
    "visual": {"fps": 1, "num_frames": 1, "size": 16},
    "max_rejected_fraction": 0.0,
}
DISTINCT_CLIPS = 16
SPLIT_CYCLE = ("train",) * 8 + ("val", "test")
DRY_RUN_CLIPS = 200_000
MEMORY_FLAT_TARGET = 0.10  # the largest shard job at the largest size within 10% of the smallest size's


def source_clips(folder: Path, n: int, seconds: float, size: int, sample_rate: int) -> list[Path]:
    """``n`` distinct clips (H.264 frames at 8 fps, AAC audio) of the built-in dataset's kind, at the given size."""
    from benchmark.data.synthetic import encode_clip, synth_audio, synth_frames

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        frames = synth_frames(i % 6, rng, 8, seconds, size, 0.3, 0.2)
        audio = synth_audio(i % 6, rng, sample_rate, seconds, 0.0)
        path = folder / f"distinct{i:02d}.mp4"
        encode_clip(path, frames, audio, 8, sample_rate)
        out.append(path)
    return out


def dataset_tree(root: Path, n: int, distinct: list[Path]) -> None:
    """A video_folder tree of ``n`` clips (hard links to the distinct files) and its labels.csv."""
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i in range(n):
            link = clips / f"{i:06d}.mp4"
            if not link.exists():
                os.link(distinct[i % len(distinct)], link)
            writer.writerow([f"clips/{i:06d}.mp4", f"c{i % 6}", SPLIT_CYCLE[i % len(SPLIT_CYCLE)]])


def _config(base: dict, root: Path, pre: dict, shard_clips: int) -> dict:
    cfg = copy.deepcopy(base)
    cfg["grid"] = [
        {
            "datasets": ["video_folder"],
            "backbones": ["small_cnn"],
            "fusions": ["concat"],
            "balancers": ["joint"],
            "seeds": [0],
        }
    ]
    cfg["tuning"]["enabled"] = False
    cfg["datasets"]["video_folder"] = {
        "source": {"path": str(root), "classes": [f"c{k}" for k in range(6)]},
        "preprocess": copy.deepcopy(pre),
    }
    cfg["resources"]["preprocess"]["shard_clips"] = shard_clips
    return cfg


def _step(cmd: list[str], cwd: Path) -> dict:
    """Run one CLI step as its own process: wall seconds and its peak RSS (MB, from wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed: {err[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", *args, "--config", str(config), "--dataset", "video_folder"]


def _downloaded(base: dict, work: Path, name: str, n: int, distinct: list[Path], pre: dict, shard_clips: int):
    """A ``video_folder`` tree of ``n`` clips with its config, after the download step: (tree, config file, the
    dataset's folders, number of shards)."""
    root = work / f"tree-{name}"
    dataset_tree(root, n, distinct)
    cfg = validate_config(_config(base, root, pre, shard_clips))
    config = work / f"config-{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _step(_cli(config, "download"), work)
    return root, config, dataset_dirs(cfg, "video_folder"), -(-n // shard_clips)


def preprocess_at(
    base: dict, work: Path, n: int, distinct: list[Path], pre: dict, shard_clips: int, workers: int, log
) -> dict:
    """Download, every shard job one after another, and the gather job, for ``n`` clips; then remove the cache."""
    root, config, dirs, shards = _downloaded(base, work, f"{n}-{shard_clips}", n, distinct, pre, shard_clips)
    jobs = [
        _step(_cli(config, "preprocess", "--shard", str(k), "--workers", str(workers)), work) for k in range(shards)
    ]
    gather = _step(_cli(config, "preprocess", "--gather"), work)
    processed = work / dirs.processed
    size = sum(p.stat().st_size for p in (processed / SHARDS).glob("*.pt"))
    out = {
        "clips": n,
        "shard_clips": shard_clips,
        "shards": shards,
        "workers": workers,
        "seconds": sum(j["seconds"] for j in jobs) + gather["seconds"],
        "clips_per_s": n / sum(j["seconds"] for j in jobs),
        "peak_rss_mb_shard_job": max(j["peak_rss_mb"] for j in jobs),
        "peak_rss_mb_gather_job": gather["peak_rss_mb"],
        "cache_mb": size / 2**20,
    }
    log(
        f"preprocess {n} clips in {shards} shard(s) of {shard_clips}: {out['seconds']:.0f} s, "
        f"{out['clips_per_s']:.1f} clips/s, shard job peak {out['peak_rss_mb_shard_job']:.0f} MB, "
        f"cache {out['cache_mb']:.0f} MB"
    )
    subprocess.run(["rm", "-rf", str(work / "data"), str(root)], check=True)
    return out


def decoding_scaling(base: dict, work: Path, n: int, distinct: list[Path], pre: dict, log) -> dict:
    """clips/s of one shard job with 1 thread and with one per core, and of one 1-thread job per core at once."""
    cores = os.cpu_count() or 1
    root = work / "tree-scaling"
    dataset_tree(root, n * cores, distinct)
    cfg = validate_config(_config(base, root, pre, n))
    config = work / "config-scaling.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _step(_cli(config, "download"), work)
    out = {}
    for label, workers in (("1 job, 1 thread", 1), (f"1 job, {cores} threads", cores)):
        job = _step(_cli(config, "preprocess", "--shard", "0", "--workers", str(workers)), work)
        out[label] = n / job["seconds"]
        subprocess.run(["rm", "-rf", str(work / "data/processed")], check=True)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            _cli(config, "preprocess", "--shard", str(k), "--workers", "1"),
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(cores)
    ]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a concurrent shard job failed")
    out[f"{cores} jobs, 1 thread each"] = n * cores / (time.perf_counter() - start)
    for label, rate in out.items():
        log(f"decoding, {label}: {rate:.1f} clips/s")
    subprocess.run(["rm", "-rf", str(work / "data"), str(root)], check=True)
    return out


def dry_run_large_manifest(base: dict, work: Path, clips: int, shard_clips: int) -> dict:
    """``snakemake -n`` on a video_folder whose downloaded manifest lists ``clips`` clips (no media needed)."""
    root = work / "tree-dry"
    root.mkdir(parents=True, exist_ok=True)
    cfg = validate_config(_config(base, root, REAL_SIZE, shard_clips))
    config = work / "config-dry.yaml"
    config.write_text(yaml.safe_dump(cfg))
    dirs = dataset_dirs(cfg, "video_folder")
    manifest = work / "dry" / dirs.raw / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "path", "label", "split"])
        writer.writerows(
            (f"c{i:06d}", f"clips/{i:06d}.mp4", f"c{i % 6}", SPLIT_CYCLE[i % len(SPLIT_CYCLE)]) for i in range(clips)
        )
    from benchmark.perf import timed_dry_run

    try:
        seconds, stats = timed_dry_run(work / "dry", config)
    finally:
        subprocess.run(["rm", "-rf", str(work / "dry"), str(root)], check=True)
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}
    return {
        "clips": clips,
        "shard_clips": shard_clips,
        "seconds": seconds,
        "shard_jobs": jobs.get("preprocess_shard", 0),
    }


def large_cache(folder: Path, gigabytes: float, shard_clips: int, shapes: dict, seed: int = 0) -> int:
    """A sharded cache of random real-size tensors of about ``gigabytes`` on disk; returns its clip count."""
    per_clip = sum(int(np.prod(s["shape"])) * torch.empty((), dtype=s["dtype"]).element_size() for s in shapes.values())
    n = max(1, int(gigabytes * 2**30 // per_clip))
    g = torch.Generator().manual_seed(seed)
    ids, shards = [], []
    for k in range(-(-n // shard_clips)):
        m = min(shard_clips, n - k * shard_clips)
        part = {"clip_id": [f"c{k * shard_clips + i}" for i in range(m)], "label": torch.arange(m) % 6}
        for name, s in shapes.items():
            if s["dtype"] == torch.uint8:
                part[name] = torch.randint(0, 256, (m, *s["shape"]), dtype=torch.uint8, generator=g)
            else:
                part[name] = torch.randn((m, *s["shape"]), generator=g).to(s["dtype"])
        save_atomic(part, folder / SHARDS / f"{shard_name(k)}.pt")
        ids.append(part["clip_id"])
        shards.append({"file": f"{SHARDS}/{shard_name(k)}.pt", "clips": m})
        del part
    write_index(folder, ids)
    save_atomic({"shards": shards, "clips": n}, folder / "info.json")
    return n


def _large_cache_shapes(tiny: bool) -> dict:
    if tiny:
        return {
            "audio": {"shape": (1, 16, 32), "dtype": torch.float16},
            "visual": {"shape": (1, 3, 16, 16), "dtype": torch.uint8},
        }
    return {
        "audio": {"shape": (1, 257, 188), "dtype": torch.float16},
        "visual": {"shape": (3, 3, 224, 224), "dtype": torch.uint8},
    }


def data_wait_large(base: dict, work: Path, gigabytes: float, steps: int, device: torch.device, tiny: bool) -> dict:
    from benchmark.data.cache import BatchPreparer, CachedSplit
    from benchmark.models.model import build_model
    from benchmark.perf import data_wait_fraction

    shapes = _large_cache_shapes(tiny)
    folder = work / "large-cache"
    n = large_cache(folder, gigabytes, 1000, shapes)
    size = sum(p.stat().st_size for p in (folder / SHARDS).glob("*.pt"))
    data = CachedSplit(folder)
    info = {m: {"source": "audio" if m == "audio" else "video", "shape": list(s["shape"])} for m, s in shapes.items()}
    prep = BatchPreparer(info, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, device)
    model = build_model(
        modality_info=info,
        num_classes=6,
        backbone_cls=component_class(base, "backbones", "small_cnn" if tiny else "resnet18"),
        backbone_params={"weights": None} if not tiny else {"width": 4, "weights": None},
        fusion_cls=component_class(base, "fusions", "concat"),
        fusion_params={},
        unimodal_heads=False,
        seed=0,
    )
    wait = data_wait_fraction(model, data, prep, base["train"]["batch_size"], device, steps)
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    return {**wait, "cache_gb": size / 2**30, "clips": n, "shards": len(data.shards), "index": INDEX}


MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller (writable as root)
_READ_ALL = """
import sys
from benchmark.data.cache import CachedSplit, make_loader
data, n = CachedSplit(sys.argv[1]), 0
for batch in make_loader(data, 32, shuffle=True):
    n += len(batch["label"])
print(n)
"""


def read_under_memory_limit(work: Path, gigabytes: float, limit_gb: float, tiny: bool) -> dict:
    """One shuffled pass over every batch of a sharded cache of ``gigabytes`` by a process whose memory (resident
    set and the page cache it faults in) is capped at ``limit_gb`` in a memory cgroup, after the page cache is
    dropped (not in tiny mode): the cache is read whole while only part of it fits. Needs a writable cgroup v1 memory
    controller and /proc/sys/vm/drop_caches (root); otherwise the reason is recorded."""
    group = MEMORY_CGROUP / f"bench-read-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as err:
        return {"skipped": f"no writable memory cgroup at {MEMORY_CGROUP} ({err.strerror})"}
    folder = work / "limited-cache"
    try:
        shapes = _large_cache_shapes(tiny)
        n = large_cache(folder, gigabytes, 1000, shapes)
        size = sum(p.stat().st_size for p in (folder / SHARDS).glob("*.pt"))
        (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
        if not tiny:  # tiny (the test suite): the mechanism only, without emptying the whole machine's page cache
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1")
        start = time.perf_counter()
        enter = f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1" "$2"'  # the reader starts inside the group
        res = subprocess.run(["sh", "-c", enter, sys.executable, _READ_ALL, folder], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        return {
            "cache_gb": size / 2**30,
            "limit_gb": limit_gb,
            "clips": n,
            "clips_read": int(res.stdout.strip() or 0),
            "returncode": res.returncode,
            "seconds": seconds,
            "peak_cgroup_gb": peak / 2**30,
            "error": res.stderr[-1000:] if res.returncode else "",
        }
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        group.rmdir()


def kill_and_resume(base: dict, work: Path, n: int, distinct: list[Path], pre: dict, shard_clips: int, log) -> dict:
    """The whole preprocess step (every missing shard, then the gather) for ``n`` clips, SIGKILLed once half its shard
    records are on disk, then run again: which shards the rerun wrote, its time, and that the index lists every
    clip. Then one training batch is read from the finished cache."""
    root, config, dirs, shards = _downloaded(base, work, f"kill-{n}", n, distinct, pre, shard_clips)
    records = work / dirs.processed / SHARDS
    cmd = _cli(config, "preprocess", "--workers", str(os.cpu_count() or 1))
    start = time.perf_counter()
    job = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(list(records.glob("*.json"))) < shards // 2 and job.poll() is None:
        time.sleep(0.5)
    job.kill()
    job.wait()
    killed_after = time.perf_counter() - start
    before = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    resume = _step(cmd, work)
    after = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    rewritten = sorted(name for name, t in after.items() if before.get(name) != t)
    with open(work / dirs.processed / INDEX) as f:
        indexed = sum(1 for _ in csv.DictReader(f))
    from benchmark.data.cache import CachedSplit

    data = CachedSplit(work / dirs.processed)
    batch = data.__getitems__(list(range(0, len(data), max(1, len(data) // 16)))[:16])
    out = {
        "clips": n,
        "shard_clips": shard_clips,
        "shards": shards,
        "killed_after_s": killed_after,
        "complete_at_kill": len(before),
        "rewritten_by_rerun": len(rewritten),
        "rerun_s": resume["seconds"],
        "rerun_peak_rss_mb": resume["peak_rss_mb"],
        "indexed_clips": indexed,
        "batch_shapes": {m: list(x.shape) for m, x in batch.items() if m != "label"},
    }
    log(
        f"preprocess {n} clips killed after {killed_after:.0f} s with {len(before)}/{shards} shards done; the rerun "
        f"wrote {len(rewritten)} shard(s) in {resume['seconds']:.0f} s; index lists {indexed} clips"
    )
    subprocess.run(["rm", "-rf", str(work / "data"), str(root)], check=True)
    return out


def run_data_benchmark(
    cfg: dict,
    sizes: list[int],
    shard_clips: int,
    cache_gb: float,
    tiny: bool,
    workdir: Path,
    log=print,
    kill_resume: bool = False,
    memory_limit_gb: float | None = None,
) -> dict:
    """Every measurement of the module docstring (and, tiny, the kill-and-resume one); ``kill_resume``: only that one,
    at the largest size."""
    from benchmark.train import resolve_device

    pre = TINY_SIZE if tiny else REAL_SIZE
    seconds, side = (1.0, 32) if tiny else (3.0, 224)
    distinct = source_clips(
        workdir / "distinct", 4 if tiny else DISTINCT_CLIPS, seconds, side, pre["audio"]["sample_rate"]
    )
    report: dict = {"tiny": tiny, "preprocess": [], "recipe": pre}
    if tiny or memory_limit_gb is not None:
        report["read_under_memory_limit"] = read_under_memory_limit(
            workdir, 0.01 if tiny else cache_gb, 1.5 if tiny else memory_limit_gb, tiny
        )
        log(f"reading a sharded cache under a memory limit: {report['read_under_memory_limit']}")
        if memory_limit_gb is not None:  # only this measurement
            return report
    if tiny or kill_resume:
        report["kill_resume"] = kill_and_resume(cfg, workdir, max(sizes), distinct, pre, shard_clips, log)
        if kill_resume:
            return report
    for n in sizes:
        report["preprocess"].append(
            preprocess_at(cfg, workdir, n, distinct, pre, shard_clips, os.cpu_count() or 1, log)
        )
    # the old behaviour for contrast: the second size (the smallest with more than one shard) as one job
    contrast = sorted(sizes)[1] if len(sizes) > 1 else sizes[0]
    report["one_shard"] = preprocess_at(cfg, workdir, contrast, distinct, pre, contrast, os.cpu_count() or 1, log)
    report["decoding"] = decoding_scaling(cfg, workdir, 8 if tiny else 200, distinct, pre, log)
    report["dry_run"] = dry_run_large_manifest(cfg, workdir, 2_000 if tiny else DRY_RUN_CLIPS, 10 if tiny else 1000)
    log(
        f"snakemake -n on {report['dry_run']['clips']} clips: {report['dry_run']['seconds']:.1f} s, "
        f"{report['dry_run']['shard_jobs']} shard jobs"
    )
    device = resolve_device(cfg["train"]["device"])
    report["data_wait_large_cache"] = data_wait_large(
        cfg, workdir, 0.01 if tiny else cache_gb, 2 if tiny else 20, device, tiny
    )
    w = report["data_wait_large_cache"]
    log(f"data wait from a {w['cache_gb']:.1f} GB sharded cache: {w['fraction']:.1%} ({w['steps']} steps)")
    return report


def data_table(report: dict) -> str:
    rows = []
    for r in report["preprocess"]:
        rows.append(
            (
                f"preprocess {r['clips']:,} clips, {r['shards']} shard job(s) of {r['shard_clips']:,}",
                f"{r['seconds']:.0f} s, {r['clips_per_s']:.1f} clips/s",
                f"{r['peak_rss_mb_shard_job']:.0f} MB",
                f"{r['peak_rss_mb_gather_job']:.0f} MB",
                f"{r['cache_mb']:.0f} MB",
            )
        )
    o = report["one_shard"]
    rows.append(
        (
            f"the same {o['clips']:,} clips as one job (one shard)",
            f"{o['seconds']:.0f} s",
            f"{o['peak_rss_mb_shard_job']:.0f} MB",
            f"{o['peak_rss_mb_gather_job']:.0f} MB",
            f"{o['cache_mb']:.0f} MB",
        )
    )
    first, last = report["preprocess"][0], report["preprocess"][-1]
    growth = last["peak_rss_mb_shard_job"] / first["peak_rss_mb_shard_job"] - 1
    lines = ["| step | time | peak RSS, shard job | peak RSS, gather job | cache |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += [
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| shard-job memory, {last['clips']:,} vs {first['clips']:,} clips | {growth:+.1%} | "
        f"within ±{MEMORY_FLAT_TARGET:.0%} | {'yes' if abs(growth) <= MEMORY_FLAT_TARGET else 'no'} |",
    ]
    for label, rate in report["decoding"].items():
        lines.append(f"| decoding, {label} | {rate:.1f} clips/s | – | – |")
    d = report["dry_run"]
    lines.append(
        f"| snakemake -n, {d['clips']:,}-clip manifest, {d['shard_jobs']} shard jobs | {d['seconds']:.1f} s | "
        f"< 60 s | {'yes' if d['seconds'] < 60 else 'no'} |"
    )
    k = report.get("kill_resume")
    if k:
        met = k["rewritten_by_rerun"] == k["shards"] - k["complete_at_kill"] and k["indexed_clips"] == k["clips"]
        lines.append(
            f"| preprocess {k['clips']:,} clips killed with {k['complete_at_kill']}/{k['shards']} shards done; "
            f"shards the rerun wrote | {k['rewritten_by_rerun']} in {k['rerun_s']:.0f} s | "
            f"{k['shards'] - k['complete_at_kill']} | "
            f"{'yes' if met else 'no'} |"
        )
    r = report.get("read_under_memory_limit")
    if r and "skipped" not in r:
        lines.append(
            f"| one shuffled pass over a {r['cache_gb']:.1f} GB sharded cache, capped at {r['limit_gb']:g} GB | "
            f"{r['clips_read']:,} of {r['clips']:,} clips in {r['seconds']:.0f} s, peak {r['peak_cgroup_gb']:.2f} GB | "
            f"every clip | {'yes' if r['returncode'] == 0 and r['clips_read'] == r['clips'] else 'no'} |"
        )
    w = report["data_wait_large_cache"]
    lines.append(
        f"| data wait, {w['cache_gb']:.1f} GB sharded cache, {w['steps']} steps | {w['fraction']:+.1%} | "
        f"< 5% | {'yes' if w['fraction'] < 0.05 else 'no'} |"
    )
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
