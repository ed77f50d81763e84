"""``python -m benchmark <step>``: every DAG step, runnable by hand with the same arguments Snakemake uses."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.config import AXES, ConfigError, component_class, dataset_settings, load_config, registry


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def cmd_list(args: argparse.Namespace) -> None:
    for name in registry(args.axis).names():
        print(name)


def cmd_check(args: argparse.Namespace) -> None:
    from benchmark.grid import grid_runs

    cfg = load_config(args.config)
    runs, skipped = grid_runs(cfg)
    combos = dict.fromkeys((f"{s.dataset}/{s.backbone}/{s.fusion}/{s.method}", reason) for s, reason in skipped)
    print(f"{args.config}: valid; {len(runs)} training runs, {len(combos)} combinations not applicable")
    if cfg["tuning"]["enabled"]:
        from benchmark.tuning import group_dir

        groups = {group_dir(s) for s in runs}
        print(f"  tuning: {len(groups)} groups x {cfg['tuning']['trials']} trials = {len(groups) * cfg['tuning']['trials']} trial jobs")
    for combo, reason in combos:
        print(f"  n/a: {combo}: {reason}")


def cmd_download(args: argparse.Namespace) -> None:
    from benchmark.grid import raw_dir

    cfg = load_config(args.config)
    cls = component_class(cfg, "datasets", args.dataset)
    out = Path(args.out or raw_dir(args.dataset))
    cls(dataset_settings(cfg, args.dataset)).download(out, workers=args.workers)
    print(f"wrote {out / 'manifest.csv'}")


def cmd_balance(args: argparse.Namespace) -> None:
    from benchmark.data.balance import balance_manifest
    from benchmark.grid import raw_dir

    cfg = load_config(args.config)
    params = dataset_settings(cfg, args.dataset).get("balance")
    if not params:
        raise SystemExit(f"dataset '{args.dataset}' has no 'balance' section in the config")
    balance_manifest(Path(args.raw or raw_dir(args.dataset)), params["min_class_volume"], params["target_class_volume"],
                     params.get("seed", 0))


def cmd_preprocess(args: argparse.Namespace) -> None:
    from benchmark.data.preprocess import preprocess
    from benchmark.grid import manifest_name, processed_dir, raw_dir

    cfg = load_config(args.config)
    cls = component_class(cfg, "datasets", args.dataset)
    settings = dataset_settings(cfg, args.dataset)
    info = preprocess(cls(settings), Path(args.raw or raw_dir(args.dataset)), Path(args.out or processed_dir(args.dataset)),
                      settings["preprocess"], workers=args.workers, manifest=manifest_name(cfg, args.dataset))
    print(f"cached {info['clips']} clips ({info['rejected']} rejected)")


def cmd_split(args: argparse.Namespace) -> None:
    from benchmark.data.splits import write_splits
    from benchmark.grid import manifest_name, processed_dir, raw_dir

    cfg = load_config(args.config)
    cls = component_class(cfg, "datasets", args.dataset)
    write_splits(cls(dataset_settings(cfg, args.dataset)), Path(args.raw or raw_dir(args.dataset)),
                 Path(args.processed or processed_dir(args.dataset)), folds=[args.fold] if args.fold else None,
                 manifest=manifest_name(cfg, args.dataset))


def cmd_estimate(args: argparse.Namespace) -> None:
    from benchmark.estimate import estimate_gblend
    from benchmark.grid import gblend_weights_path

    _threads(args.threads)
    cfg = load_config(args.config)
    out = Path(args.out or gblend_weights_path(args.dataset, args.backbone, args.fusion, args.seed, args.fold, args.modalities))
    estimate_gblend(cfg, args.dataset, args.backbone, args.fusion, args.seed, out, fold=args.fold, modality=args.modalities)


def cmd_train(args: argparse.Namespace) -> None:
    from benchmark.grid import RunSpec
    from benchmark.run import train_run

    _threads(args.threads)
    cfg = load_config(args.config)
    spec = RunSpec.from_method(args.dataset, args.backbone, args.fusion, args.method, args.seed, args.fold)
    component_class(cfg, "balancers", spec.balancer)
    out_dir = Path(args.out_dir or spec.run_dir)
    try:
        train_run(cfg, spec, out_dir)
    except Exception:
        # the scheduler may replace train.log when it retries the job; this file keeps why each attempt died
        import datetime
        import traceback

        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "failed-attempts.log", "a") as f:
            f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}\n{traceback.format_exc()}")
        raise


def _group_spec(args: argparse.Namespace):
    from benchmark.grid import RunSpec

    cfg = load_config(args.config)
    if not cfg["tuning"]["enabled"]:
        raise SystemExit("tuning.enabled is false in the config: there is nothing to tune")
    return cfg, RunSpec.from_method(args.dataset, args.backbone, args.fusion, args.method, cfg["tuning"]["train_seed"], args.fold)


def cmd_tune_trial(args: argparse.Namespace) -> None:
    from benchmark.tuning import run_trial, trial_path

    _threads(args.threads)
    cfg, spec = _group_spec(args)
    if not 0 <= args.trial < cfg["tuning"]["trials"]:
        raise SystemExit(f"--trial must be in 0..{cfg['tuning']['trials'] - 1} (tuning.trials)")
    run_trial(cfg, spec, args.trial, Path(args.out or trial_path(spec, args.trial)))


def cmd_tune_select(args: argparse.Namespace) -> None:
    from benchmark.tuning import best_path, select_best

    cfg, spec = _group_spec(args)
    select_best(cfg, spec, Path(args.out or best_path(spec)))


def cmd_aggregate(args: argparse.Namespace) -> None:
    from benchmark.leaderboard import aggregate

    cfg = load_config(args.config)
    summary = aggregate(cfg, Path(args.out_dir))
    print(f"wrote {Path(args.out_dir) / 'leaderboard.md'} ({len(summary)} rows)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        if name != "list":
            sp.add_argument("--config", default="config.yaml", help="experiment config (default: config.yaml)")
        return sp

    sp = add("list", cmd_list, "print the registered names of one axis, one per line")
    sp.add_argument("axis", choices=AXES)
    add("check", cmd_check, "validate the config and count the grid's runs")
    for name, fn, help in (("download", cmd_download, "obtain a dataset's raw clips and manifest"),
                           ("preprocess", cmd_preprocess, "decode clips into cached tensors")):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--workers", type=int, default=1)
        sp.add_argument("--out", help="output folder (default: data/raw/<dataset> or data/processed/<dataset>)")
        if name == "preprocess":
            sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>)")
    sp = add("balance", cmd_balance, "Algorithm 1 of the G-Blend supplement on a multi-label manifest (datasets.<name>.balance)")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>)")
    sp = add("split", cmd_split, "write the train/val/test assignment of every fold (splits/<fold>.csv)")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>)")
    sp.add_argument("--processed", help="processed folder (default: data/processed/<dataset>)")
    sp.add_argument("--fold", help="only this fold (default: every fold of the dataset)")
    for name, fn, help in (("estimate", cmd_estimate, "estimate G-Blend weights for one dataset/fold/backbone/fusion/seed"),
                           ("train", cmd_train, "train and evaluate one run of the grid")):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main", help="the dataset's fold (default: main)")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True, help="a fusion name, or 'none' for per-modality methods")
        sp.add_argument("--seed", type=int, required=True)
        sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
        if name == "train":
            sp.add_argument("--method", required=True, help="balancer name, or '<balancer>-<modalities>' (e.g. unimodal-audio, joint-visual+flow)")
            sp.add_argument("--out-dir", help="default: results/runs/<dataset>/<fold>/<backbone>/<fusion>/<method>/seed<seed>")
        else:
            sp.add_argument("--out", help="default: results/gblend/<dataset>/<fold>/<backbone>/<fusion>/seed<seed>.json")
            sp.add_argument("--modalities", help="a '+'-joined subset of the dataset's modalities (default: all)")
    for name, fn, help in (("tune-trial", cmd_tune_trial, "train one tuning trial of a dataset/fold/backbone/fusion/method, scored on validation"),
                           ("tune-select", cmd_tune_select, "pick a group's best trial (best.json)")):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True)
        sp.add_argument("--method", required=True)
        sp.add_argument("--out", help="default: results/tuning/<dataset>/<fold>/<backbone>/<fusion>/<method>/trial<k>.json (best.json)")
        if name == "tune-trial":
            sp.add_argument("--trial", type=int, required=True)
            sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    sub.add_parser("perf", help="the performance benchmark (python -m benchmark perf --help)", add_help=False)
    sp = add("aggregate", cmd_aggregate, "build the leaderboard and plots from the metrics files")
    sp.add_argument("--out-dir", default="results")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmark.data.preprocess import PreprocessError
    from benchmark.data.sources import SourceError
    from benchmark.data.splits import SplitError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["perf"]:  # the performance benchmark has its own options
        from benchmark.perf import main as perf_main

        return perf_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, SourceError, PreprocessError, SplitError) as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
