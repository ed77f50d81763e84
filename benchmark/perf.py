"""The project's performance benchmark: ``python -m benchmark perf`` (add ``--tiny`` for a seconds-long check).

On whatever device is present it measures, in a scratch workspace (nothing of the user's is touched):
* training throughput (samples/s) of each balancer on the same backbone, fusion and data, and its ratio to joint
  (the median of 5 timed epochs after a warm-up epoch; epoch-level work a method does, e.g. PMR's prototypes, is
  included; validation passes are not, except for methods that read them, e.g. MSLR);
* the G-Blend estimation step's time, separately;
* the fraction of a training step spent waiting for data: the loop over the DataLoader against the same steps
  on batches already on the device — on the built-in dataset and on a real-size fixture (257×188 spectrogram,
  3 frames of 224×224);
* preprocessing throughput (clips/s) with 1 worker and with all;
* the time of ``snakemake -n`` over a large grid (5 datasets × 15 balancers × 6 fusions × 2 backbones × 3 seeds).
It prints one table (with each target and whether it is met) and writes the same numbers to a JSON file.
``--data`` runs the data-at-scale benchmark instead (``benchmark/perf_data.py``: sharded preprocessing at several
sizes, decoding scaling, a 200,000-clip dry run, training from a large sharded cache).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmark.balancers.gblend import init_fingerprint
from benchmark.config import ConfigError, component_class, dataset_settings, load_config, validate_config
from benchmark.data.cache import BatchPreparer, CachedSplit, make_loader
from benchmark.data.datasets import DATASETS
from benchmark.grid import RunSpec
from benchmark.provenance import device_description
from benchmark.registry import UnknownNameError
from benchmark.resources import resource
from benchmark.train import fit, make_optimizer, resolve_device

BALANCERS = [
    "joint",
    "ogm",
    "ogm_ge",
    "multi_loss",
    "mlb",
    "gblend",
    "gblend_online",
    "aux_loss",
    "dropout",
    "mslr",
    "agm",
    "pmr",
    "mmcosine",
    "modality_dropout",
]
#: the issue's overhead targets: balancer -> the largest allowed throughput ratio joint/method
OVERHEAD_TARGETS = {"ogm": 1.05, "ogm_ge": 1.05, "multi_loss": 1.15, "mlb": 1.15, "gblend": 1.15, "agm": 3.5}
DATA_WAIT_TARGET = 0.05
DRY_RUN_TARGET_S = 60.0
LARGE_GRID = {
    "datasets": ["synthetic-av", "synthetic-avm", "cremad", "ave", "ucf101_av"],
    "balancers": [
        "joint",
        "unimodal",
        "ogm",
        "ogm_ge",
        "multi_loss",
        "mlb",
        "gblend",
        "gblend_online",
        "aux_loss",
        "dropout",
        "pretrain",
        "mslr",
        "agm",
        "pmr",
        "mmcosine",
    ],
    "fusions": ["concat", "sum", "mid_mlp", "film", "gated", "transformer"],
    "backbones": ["small_cnn", "resnet18"],
    "seeds": [0, 1, 2],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_workspace(cfg: dict, workdir: Path, log) -> dict:
    """Generate and preprocess the built-in dataset in ``workdir`` with 1 and with all workers (timed)."""
    from benchmark.data.preprocess import preprocess
    from benchmark.data.splits import write_splits
    from benchmark.settings import dataset_dirs

    settings = dataset_settings(cfg, "synthetic-av")
    dirs = dataset_dirs(cfg, "synthetic-av")
    ds = DATASETS.get("synthetic-av")(settings)
    raw = workdir / dirs.raw
    ds.download(raw, workers=os.cpu_count() or 1)
    out = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        target = workdir / f"{dirs.processed}-w{workers}"
        start = time.perf_counter()
        preprocess(ds, raw, target, settings["preprocess"], workers=workers, log=lambda s: None)
        seconds = time.perf_counter() - start
        out[workers] = settings["generate"]["num_clips"] / seconds
        log(f"preprocess with {workers} worker(s): {out[workers]:.1f} clips/s")
    final = workdir / dirs.processed
    (workdir / f"{dirs.processed}-w{max(out)}").rename(final)
    write_splits(ds, raw, final, log=lambda s: None, splits_dir=workdir / dirs.splits)
    return out


def _artifacts(cfg: dict, spec: RunSpec, model, workdir: Path) -> dict[str, Path]:
    """Stand-ins for DAG inputs a method reads (G-Blend's weights: equal, for the same initial model; unimodal
    checkpoints: the initial encoders, since a teacher's cost does not depend on its weights)."""
    balancer_cls = component_class(cfg, "balancers", spec.balancer)
    if "unimodal_checkpoints" in balancer_cls.needs:
        path = workdir / f"unimodal-{spec.backbone}.pt"
        torch.save({"status": "ok", "state_dict": model.state_dict()}, path)
        return {f"unimodal_checkpoint/{m}": path for m in model.modalities}
    if "gblend_weights" not in balancer_cls.needs:
        return {}
    heads = list(model.modalities) + ["fused"]
    path = workdir / f"gblend-{spec.backbone}-{spec.fusion}.json"
    path.write_text(
        json.dumps({"init_fingerprint": init_fingerprint(model), "weights": {h: 1 / len(heads) for h in heads}})
    )
    return {"gblend_weights": path}


def training_throughput(cfg: dict, spec: RunSpec, workdir: Path, epochs: int) -> float:
    """Samples/s of the training loop (forward, the method's loss and hooks, backward, step) over the timed epochs."""
    from benchmark.run import prepare_run

    run = prepare_run(cfg, spec, artifacts={})
    run.ctx.artifacts = _artifacts(cfg, spec, run.model, workdir)  # read by the method's setup, inside fit
    run.ctx.num_epochs = epochs
    val = run.data.val if run.balancer_cls.reads_validation else None  # e.g. MSLR: its epoch includes a validation pass
    result = fit(
        run.model,
        run.balancer,
        run.ctx,
        run.train,
        run.data.prep,
        {**run.settings["train"], "epochs": epochs},
        val=val,
        log=lambda s: None,
    )
    timed = sorted(result.seconds_per_epoch[1:])  # the first epoch warms up; the median of the rest resists noise
    return len(run.train) / timed[len(timed) // 2]


def data_wait_fraction(
    model, data: CachedSplit, prep: BatchPreparer, batch_size: int, device: torch.device, steps: int
) -> dict:
    """Time of ``steps`` joint training steps fed by the DataLoader vs the same steps on batches already on the
    device."""
    batches = []
    for i, batch in enumerate(make_loader(data, batch_size, shuffle=True, pin_memory=device.type == "cuda")):
        if i >= steps:
            break
        batches.append(prep(batch))
    model.to(device).train()
    opt = make_optimizer(model, {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0})

    def step(inputs, y):
        loss = torch.nn.functional.cross_entropy(model(inputs).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(*batches[0])  # warm-up (allocations, kernels)
    _sync(device)
    start = time.perf_counter()
    for inputs, y in batches:
        step(inputs, y)
    _sync(device)
    pure = time.perf_counter() - start
    start = time.perf_counter()
    for i, batch in enumerate(make_loader(data, batch_size, shuffle=True, pin_memory=device.type == "cuda")):
        if i >= len(batches):
            break
        step(*prep(batch, train=True))
    _sync(device)
    full = time.perf_counter() - start
    # signed: a negative value is the timing noise of the two passes, not a gain from the loader
    return {"steps": len(batches), "pure_s": pure, "with_loader_s": full, "fraction": (full - pure) / full}


def shaped_fixture(workdir: Path, clips: int, info: dict) -> CachedSplit:
    """A tensor cache of random clips with the shapes of ``info`` (float16 spectrograms, uint8 frames)."""
    g = torch.Generator().manual_seed(0)
    tensors: dict = {"clip_id": [f"c{i}" for i in range(clips)], "label": torch.arange(clips) % len(info["classes"])}
    for m, spec in info["modalities"].items():
        shape = (clips, *spec["shape"])
        tensors[m] = (
            torch.randn(shape, generator=g).half()
            if spec["source"] == "audio"
            else torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        )
    path = workdir / f"fixture-{clips}-{'x'.join(map(str, info['modalities']['audio']['shape']))}.pt"
    torch.save(tensors, path)
    return CachedSplit(path)


def real_size_fixture(workdir: Path, clips: int) -> CachedSplit:
    """A tensor cache shaped like CREMA-D under the OGM-GE preset: 257×188 float16 spectrograms, 3 uint8 frames of
    224²."""
    return shaped_fixture(workdir, clips, REAL_SIZE_INFO)


def real_size_data_wait(cfg: dict, workdir: Path, clips: int, steps: int, device: torch.device) -> dict:
    from benchmark.models.model import build_model

    data = real_size_fixture(workdir, clips)
    info = {
        "audio": {"source": "audio", "shape": [1, 257, 188]},
        "visual": {"source": "video", "shape": [3, 3, 224, 224]},
    }
    prep = BatchPreparer(info, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, device)
    model = build_model(
        modality_info=info,
        num_classes=6,
        backbone_cls=component_class(cfg, "backbones", "resnet18"),
        backbone_params={"weights": None},
        fusion_cls=component_class(cfg, "fusions", "concat"),
        fusion_params={},
        unimodal_heads=False,
        seed=0,
    )
    return data_wait_fraction(model, data, prep, cfg["train"]["batch_size"], device, steps)


REAL_SIZE_INFO = {
    "classes": [f"c{k}" for k in range(6)],
    "modalities": {
        "audio": {"source": "audio", "shape": [1, 257, 188]},
        "visual": {"source": "video", "shape": [3, 3, 224, 224]},
    },
}
TINY_SIZE_INFO = {
    "classes": REAL_SIZE_INFO["classes"],
    "modalities": {
        "audio": {"source": "audio", "shape": [1, 32, 24]},
        "visual": {"source": "video", "shape": [3, 3, 32, 32]},
    },
}
STEP_OVERHEAD_TARGET = 1.03  # the harness's joint step against the bare step, default settings, on CPU


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def step_overhead(cfg: dict, workdir: Path, device: torch.device, tiny: bool, log=print) -> dict:
    """Seconds per training step of ResNet-18 (audio + visual, concat) on real-size clips, batch 16, one thread:
    the bare step (forward, cross-entropy, backward, SGD step on batches already on the device, timed one by one)
    against the harness's whole step (``fit``: the cache gather, batch preparation, the method's loss and hooks),
    timed per epoch of ``steps`` steps; with ``deterministic`` on (the default) and off, channels-last, and for
    OGM-GE and OGM. Medians with their min–max over the timed steps or epochs."""
    from benchmark.balancers.base import RunContext
    from benchmark.run import build_run_model
    from benchmark.settings import Resolver
    from benchmark.train import configure_determinism

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    info = TINY_SIZE_INFO if tiny else REAL_SIZE_INFO
    batch, steps, epochs = (4, 2, 2) if tiny else (16, 4, 3)
    data = shaped_fixture(workdir, batch * steps, info)
    visual = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    resolver = Resolver(cfg)

    def setup(balancer: str, train: dict):
        settings = resolver.base_settings(RunSpec("synthetic-av", "resnet18", "concat", balancer, 0))
        settings["backbone"]["params"]["weights"] = None
        settings["train"].update(train, epochs=1 + epochs, batch_size=batch)
        balancer_cls = component_class(cfg, "balancers", balancer)
        configure_determinism(settings["train"]["deterministic"])
        model = build_run_model(cfg, settings, info, balancer_cls)
        method = balancer_cls(**settings["balancer"]["params"])
        return settings, method.configure_model(model), method

    def bare(train: dict) -> dict:
        settings, model, _ = setup("joint", train)
        prep = BatchPreparer(info["modalities"], visual, device)
        batches = [prep(b) for b in make_loader(data, batch, shuffle=True)]
        model.to(device).train()
        opt = make_optimizer(model, settings["train"]["optimizer"])
        times = []
        for i in range(steps * (1 + epochs)):
            inputs, y = batches[i % len(batches)]
            _sync(device)
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(inputs).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - start)
        return _spread(times[steps:])  # the first epoch's worth warms up

    def harness(balancer: str, train: dict) -> dict:
        settings, model, method = setup(balancer, train)
        prep = BatchPreparer(info["modalities"], visual, device, channels_last=bool(train.get("channels_last")))
        ctx = RunContext(modalities=list(info["modalities"]), num_epochs=1 + epochs, device=device, seed=0)
        result = fit(model, method, ctx, data, prep, settings["train"], log=lambda s: None)
        return _spread([t / steps for t in result.seconds_per_epoch[1:]])

    shapes = " + ".join("×".join(map(str, spec["shape"])) for spec in info["modalities"].values())
    out: dict = {"shapes": shapes, "batch_size": batch, "steps_per_epoch": steps, "timed_epochs": epochs, "threads": 1}
    try:
        out["bare"] = bare({"deterministic": True})
        out["bare, deterministic off"] = bare({"deterministic": False})
        for label, balancer, train in (
            ("joint", "joint", {"deterministic": True}),
            ("joint, deterministic off", "joint", {"deterministic": False}),
            ("joint, channels-last", "joint", {"deterministic": True, "channels_last": True}),
            ("ogm_ge", "ogm_ge", {"deterministic": True}),
            ("ogm", "ogm", {"deterministic": True}),
        ):
            out[label] = harness(balancer, train)
            ratio = out[label]["median"] / out["bare"]["median"]
            log(f"step, {label}: {out[label]['median']:.3f} s ({ratio:.3f}× bare)")
    finally:
        torch.set_num_threads(threads)
        configure_determinism(cfg["train"]["deterministic"])
    return out


def timed_dry_run(dag_dir: Path, configfile: Path) -> tuple[float, str]:
    """``snakemake -n`` of the DAG for ``configfile`` in ``dag_dir``: its seconds and its job table."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(resource("Snakefile"))]
    cmd += ["-d", str(dag_dir), "--configfile", str(configfile)]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"dry run failed: {res.stderr[-2000:]}")
    return seconds, res.stdout.split("Job stats:")[1].split("total")[0]  # Snakemake prints the table twice


def large_grid_dry_run(cfg: dict, workdir: Path, grid: dict) -> dict:
    big = copy.deepcopy(cfg)
    big["grid"] = grid
    for name in grid["datasets"]:  # real datasets read a local folder; the dry run never opens it
        big["datasets"].setdefault(name, {})
        if "source" in DATASETS.get(name).config_sections:
            big["datasets"][name]["source"] = {"path": str(workdir / f"raw-{name}")}
    validate_config(copy.deepcopy(big))
    path = workdir / "large-grid.yaml"
    path.write_text(yaml.safe_dump(big))
    seconds, stats = timed_dry_run(workdir / "dry", path)
    jobs = sum(int(line.split()[-1]) for line in stats.splitlines() if line.startswith("train "))
    return {"seconds": seconds, "train_jobs": jobs}


def run_benchmark(cfg: dict, tiny: bool, workdir: Path, log=print) -> dict:
    device = resolve_device(cfg["train"]["device"])
    cfg = benchmark_config(cfg, tiny)
    report: dict = {
        "device": device_description(device),
        "host": platform.node(),
        "tiny": tiny,
        "torch": torch.__version__,
    }
    report["preprocess_clips_per_s"] = prepare_workspace(cfg, workdir, log)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        balancers = ["joint", "ogm_ge", "mlb", "gblend"] if tiny else BALANCERS
        report["training"] = {}
        report["reads_validation"] = [b for b in balancers if component_class(cfg, "balancers", b).reads_validation]
        for name in balancers:
            spec = RunSpec("synthetic-av", "small_cnn", "concat", name, 0)
            report["training"][name] = training_throughput(cfg, spec, workdir, epochs=2 if tiny else 6)
            log(f"train {name}: {report['training'][name]:.1f} samples/s")
        from benchmark.estimate import estimate_gblend

        start = time.perf_counter()
        estimate_gblend(
            cfg, "synthetic-av", "small_cnn", "concat", 0, workdir / "gblend-estimate.json", log=lambda s: None
        )
        report["gblend_estimate_s"] = time.perf_counter() - start
        spec = RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)
        from benchmark.run import RunData, build_run_model
        from benchmark.settings import Resolver

        settings = Resolver(cfg).base_settings(spec)
        data = RunData.load(spec, settings, device, Resolver(cfg).dataset_dirs("synthetic-av"))
        model = build_run_model(cfg, settings, data.info, component_class(cfg, "balancers", "joint"))
        repeats = [
            data_wait_fraction(
                model, data.train, data.prep, settings["train"]["batch_size"], device, steps=4 if tiny else 11
            )
            for _ in range(1 if tiny else 5)
        ]
        report["data_wait_builtin"] = sorted(repeats, key=lambda r: r["fraction"])[
            len(repeats) // 2
        ]  # the median of repeats
        report["data_wait_builtin"]["repeats"] = len(repeats)
        log(f"data wait, built-in: {report['data_wait_builtin']['fraction']:.1%}")
        report["data_wait_real_size"] = real_size_data_wait(
            cfg, workdir, clips=8 if tiny else 96, steps=1 if tiny else 5, device=device
        )
        log(f"data wait, real-size: {report['data_wait_real_size']['fraction']:.1%}")
        report["step_overhead"] = step_overhead(cfg, workdir, device, tiny, log)
    finally:
        os.chdir(cwd)
    grid = (
        {
            "datasets": ["synthetic-av"],
            "balancers": ["joint", "ogm"],
            "fusions": ["concat"],
            "backbones": ["small_cnn"],
            "seeds": [0],
        }
        if tiny
        else LARGE_GRID
    )
    report["dry_run"] = {**large_grid_dry_run(cfg, workdir, grid), "grid": grid}
    log(f"dry run: {report['dry_run']['seconds']:.1f} s for {report['dry_run']['train_jobs']} training jobs")
    return report


def step_rows(steps: dict | None) -> list[tuple[str, str, str, str]]:
    """Table rows of ``step_overhead``: seconds per step (min–max) and the ratio to the bare step."""
    if not steps:
        return []
    rows, bare = [], steps["bare"]["median"]
    for label, t in steps.items():
        if not isinstance(t, dict):
            continue
        ratio = t["median"] / bare
        target = STEP_OVERHEAD_TARGET if label == "joint" else None
        rows.append(
            (
                f"step, ResNet-18 {steps['shapes']}, batch {steps['batch_size']}: {label} (s; ×bare)",
                f"{t['median']:.3f} ({t['min']:.3f}–{t['max']:.3f}, n={t['n']}; {ratio:.3f}×)",
                f"≤ {target}×" if target else "–",
                ("yes" if ratio <= target else "no") if target else "–",
            )
        )
    return rows


def table(report: dict) -> str:
    """The report as one Markdown table: measure, value, target, met."""
    rows = []
    joint = report["training"]["joint"]
    for name, rate in report["training"].items():
        ratio = joint / rate
        target = OVERHEAD_TARGETS.get(name)
        label = f"train {name}" + (" (incl. its validation pass)" if name in report.get("reads_validation", []) else "")
        rows.append(
            (
                f"{label} (samples/s; ×joint time)",
                f"{rate:.1f} ({ratio:.2f}×)",
                f"≤ {target}×" if target else "–",
                ("yes" if ratio <= target else "no") if target else "–",
            )
        )
    rows.append(("G-Blend estimate step (s)", f"{report['gblend_estimate_s']:.1f}", "–", "–"))
    for key, label in (("data_wait_builtin", "built-in"), ("data_wait_real_size", "real-size 257×188 + 3×224²")):
        w = report[key]
        rows.append(
            (
                f"data wait, {label} ({w['steps']} steps)",
                f"{w['fraction']:.1%}",
                f"< {DATA_WAIT_TARGET:.0%}",
                "yes" if w["fraction"] < DATA_WAIT_TARGET else "no",
            )
        )
    rows += step_rows(report.get("step_overhead"))
    for workers, rate in report["preprocess_clips_per_s"].items():
        rows.append((f"preprocess, {workers} worker(s) (clips/s)", f"{rate:.1f}", "–", "–"))
    d = report["dry_run"]
    rows.append(
        (
            f"snakemake -n, {d['train_jobs']} training jobs (s)",
            f"{d['seconds']:.1f}",
            f"< {DRY_RUN_TARGET_S:.0f}",
            "yes" if d["seconds"] < DRY_RUN_TARGET_S else "no",
        )
    )
    lines = [
        f"device: {report['device']}" + (" (tiny mode)" if report["tiny"] else ""),
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark perf", description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", metavar="FILE", help="a config overlay over config.yaml (repeatable)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a typed override, e.g. train.epochs=2 (repeatable)"
    )
    p.add_argument(
        "--tiny", action="store_true", help="a seconds-long run (for tests): small data, few balancers, small grid"
    )
    p.add_argument("--out", default="results/perf.json", help="where to write the numbers (JSON)")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed afterwards)")
    p.add_argument(
        "--step",
        action="store_true",
        help="only the step-overhead measurement (ResNet-18, real-size clips: bare vs harness), added to --out",
    )
    p.add_argument(
        "--data",
        action="store_true",
        help="the data-at-scale benchmark instead (benchmark/perf_data.py): sharded preprocessing at --sizes, "
        "decoding scaling, snakemake -n on a 200,000-clip manifest, data wait from a --cache-gb sharded cache",
    )
    p.add_argument("--sizes", default="1000,4000,16000", help="with --data: dataset sizes in clips")
    p.add_argument("--shard-clips", type=int, default=1000, help="with --data: clips per shard")
    p.add_argument("--cache-gb", type=float, default=10.0, help="with --data: size of the large cache read in training")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="with --data: only one pass over a --cache-gb sharded cache by a process capped at this much memory "
        "(a memory cgroup; needs root), added to the --out file",
    )
    p.add_argument(
        "--kill-resume",
        action="store_true",
        help="with --data: only the kill-and-resume measurement at the largest of --sizes, added to the --out file",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="only the training throughput of these balancers (comma-separated) and joint on the built-in data, "
        "merged into the --out file's training table",
    )
    args = p.parse_args(argv)
    cfg = load_config(args.config or [], args.set or [])
    if args.methods:
        return methods_main(cfg, args)
    if args.data:
        return data_main(cfg, args)
    if args.step:
        return step_main(cfg, args)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        report = run_benchmark(cfg, args.tiny, Path(args.workdir).resolve(), log=lambda s: print(s, file=sys.stderr))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
            report = run_benchmark(cfg, args.tiny, Path(tmp), log=lambda s: print(s, file=sys.stderr))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(report))
    print(f"\nwrote {out}")
    return 0


def benchmark_config(cfg: dict, tiny: bool) -> dict:
    """The config the throughput is measured with: tuning off (it times the training step, not the tuned values,
    which need the tune stage); ``tiny``: seconds, for the test suite (few small clips, a small model)."""
    cfg = copy.deepcopy(cfg)
    cfg["tuning"]["enabled"] = False
    if tiny:
        cfg["datasets"]["synthetic-av"]["generate"].update(num_clips=48, size=32, fps=4)
        cfg["datasets"]["synthetic-av"]["preprocess"]["visual"].update(size=16, fps=2)
        cfg["backbones"]["small_cnn"]["width"] = 4
        cfg["balancers"]["gblend"]["min_holdout"] = 4  # the tiny split holds 24 training clips
    return validate_config(cfg)


def methods_main(cfg: dict, args: argparse.Namespace) -> int:
    """``--methods``: samples/s of joint and the named balancers (the built-in data, small CNN, concat), each with
    its time relative to joint, merged into the ``--out`` report's training table."""
    cfg = benchmark_config(cfg, args.tiny)
    names = ["joint", *[n for n in args.methods.split(",") if n and n != "joint"]]
    for name in names:  # an unknown name fails before any work, listing the known ones
        try:
            component_class(cfg, "balancers", name)
        except (ConfigError, UnknownNameError) as err:
            print(f"error: --methods: {getattr(err, 'message', err)}", file=sys.stderr)
            return 2
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-methods-") as tmp:
        workdir = Path(tmp)
        prepare_workspace(cfg, workdir, lambda s: print(s, file=sys.stderr))
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            for name in names:
                spec = RunSpec("synthetic-av", "small_cnn", "concat", name, 0)
                rates[name] = training_throughput(cfg, spec, workdir, epochs=2 if args.tiny else 6)
                print(f"train {name}: {rates[name]:.1f} samples/s", file=sys.stderr)
        finally:
            os.chdir(cwd)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("training", {}).update(rates)
    report["training_methods_device"] = device_description(resolve_device(cfg["train"]["device"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("| method | samples/s | time × joint |\n|---|---|---|")
    print("\n".join(f"| {n} | {r:.1f} | {rates['joint'] / r:.2f} |" for n, r in rates.items()))
    print(f"\nwrote {out}")
    return 0


def step_main(cfg: dict, args: argparse.Namespace) -> int:
    """``--step``: the step-overhead measurement alone, merged into the ``--out`` report (kept as it is otherwise)."""
    cfg = validate_config(cfg)
    device = resolve_device(cfg["train"]["device"])
    with tempfile.TemporaryDirectory(prefix="bench-perf-step-") as tmp:
        steps = step_overhead(cfg, Path(tmp), device, args.tiny, log=lambda s: print(s, file=sys.stderr))
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["step_overhead"] = {**steps, "device": device_description(device), "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("| measure | value | target | met |\n|---|---|---|---|")
    print("\n".join(f"| {a} | {b} | {c} | {e} |" for a, b, c, e in step_rows(report["step_overhead"])))
    print(f"\nwrote {out}")
    return 0


def data_main(cfg: dict, args: argparse.Namespace) -> int:
    from benchmark.perf_data import data_table, run_data_benchmark, write_report

    sizes = [8, 16] if args.tiny else [int(n) for n in args.sizes.split(",")]
    shard_clips = 4 if args.tiny else args.shard_clips
    out = Path(args.out if args.out != "results/perf.json" else "results/perf-data.json")

    def run(work: Path) -> dict:
        return run_data_benchmark(
            validate_config(cfg),
            sizes,
            shard_clips,
            args.cache_gb,
            args.tiny,
            work,
            log=lambda s: print(s, file=sys.stderr),
            kill_resume=args.kill_resume,
            memory_limit_gb=args.memory_limit_gb,
        )

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        report = run(Path(args.workdir).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-perf-data-") as tmp:
            report = run(Path(tmp))
    only = "kill_resume" if args.kill_resume else "read_under_memory_limit" if args.memory_limit_gb else None
    if only:  # one measurement, added to the full report
        report = {**json.loads(out.read_text()), only: report[only]}
    write_report(report, out)
    print(data_table(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
