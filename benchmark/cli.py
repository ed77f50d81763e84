"""``python -m benchmark <step>``: every DAG step, runnable by hand with the same arguments Snakemake uses.

Every step reads the config the same way as the DAG: ``config.yaml`` (or the packaged default), then each
``--config`` overlay in order, then each ``--set key.path=value``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.components import AXES, registry
from benchmark.config import ConfigError, component_class, dataset_settings
from benchmark.config import load_config as _load_layers


def load_config(args: argparse.Namespace) -> dict:
    return _load_layers(args.config or [], args.set or [])


class IdentityMismatch(ValueError):
    """A job asked for a result folder whose identity is not the one the config gives."""


def _resolve(args: argparse.Namespace, cfg: dict, step):
    from benchmark.settings import Resolver

    resolver = Resolver(cfg)
    resolved = resolver.resolve(step)
    if getattr(args, "id", None) and args.id != resolved.identity:
        raise IdentityMismatch(
            f"the job asks for identity {args.id}, but the config gives {resolved.identity} for this "
            f"{step.kind} (the config changed while the DAG ran?); rerun snakemake"
        )
    return resolver, resolved


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def cmd_list(args: argparse.Namespace) -> None:
    from benchmark.data.kinds import INPUT_KINDS

    for name in (INPUT_KINDS if args.axis == "input_kinds" else registry(args.axis)).names():
        print(name)


def cmd_check(args: argparse.Namespace) -> None:
    from benchmark.grid import grid_runs

    cfg = load_config(args)
    runs, skipped = grid_runs(cfg)
    combos = dict.fromkeys((f"{s.dataset}/{s.backbone}/{s.fusion}/{s.method}", reason) for s, reason in skipped)
    layers = " + ".join(
        ["config.yaml" if Path("config.yaml").exists() else "packaged config.yaml", *(args.config or [])]
    )
    print(
        f"{layers}: valid; experiment '{cfg['experiment']}'; {len(runs)} training runs, {len(combos)} combinations not "
        "applicable"
    )
    if cfg["tuning"]["enabled"]:
        groups = {(s.dataset, s.fold, s.backbone, s.fusion, s.method) for s in runs}
        print(
            f"  tuning: {len(groups)} groups x {cfg['tuning']['trials']} trials = "
            f"{len(groups) * cfg['tuning']['trials']} trial jobs"
        )
    for combo, reason in combos:
        print(f"  n/a: {combo}: {reason}")


def _dirs(cfg: dict, dataset: str):
    from benchmark.settings import dataset_dirs

    component_class(cfg, "datasets", dataset)  # an unknown name: the registry's error
    return dataset_dirs(cfg, dataset)


def cmd_download(args: argparse.Namespace) -> None:
    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    out = Path(args.out or _dirs(cfg, args.dataset).raw)
    cls(dataset_settings(cfg, args.dataset)).download(out, workers=args.workers)
    print(f"wrote {out / 'manifest.csv'}")


def cmd_balance(args: argparse.Namespace) -> None:
    from benchmark.data.balance import balance_manifest

    cfg = load_config(args)
    params = dataset_settings(cfg, args.dataset).get("balance")
    if not params:
        raise SystemExit(f"dataset '{args.dataset}' has no 'balance' section in the config")
    dirs = _dirs(cfg, args.dataset)
    balance_manifest(
        Path(args.raw or dirs.raw),
        params["min_class_volume"],
        params["target_class_volume"],
        params.get("seed", 0),
        manifest=dirs.manifest,
        report_name=dirs.balance_report,
    )


def cmd_preprocess(args: argparse.Namespace) -> None:
    from benchmark.data.preprocess import gather_shards, preprocess, preprocess_shard

    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    settings = dataset_settings(cfg, args.dataset)
    dirs = _dirs(cfg, args.dataset)
    where = dict(
        dataset=cls(settings),
        raw_dir=Path(args.raw or dirs.raw),
        out_dir=Path(args.out or dirs.processed),
        pre=settings["preprocess"],
        shard_clips=cfg["resources"]["preprocess"]["shard_clips"],
        manifest=dirs.manifest,
    )
    if args.shard is not None:
        record = preprocess_shard(shard=args.shard, workers=args.workers, **where)
        print(f"shard {args.shard}: cached {len(record['clip_ids'])} clips ({len(record['rejected'])} rejected)")
        return
    info = gather_shards(**where) if args.gather else preprocess(workers=args.workers, **where)
    print(f"cached {info['clips']} clips in {len(info['shards'])} shards ({info['rejected']} rejected)")


def cmd_split(args: argparse.Namespace) -> None:
    from benchmark.data.splits import write_splits

    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    dirs = _dirs(cfg, args.dataset)
    write_splits(
        cls(dataset_settings(cfg, args.dataset)),
        Path(args.raw or dirs.raw),
        Path(args.processed or dirs.processed),
        folds=[args.fold] if args.fold else None,
        manifest=dirs.manifest,
        splits_dir=None if args.processed else dirs.splits,
    )


def cmd_estimate(args: argparse.Namespace) -> None:
    from benchmark.estimate import estimate_gblend
    from benchmark.grid import RunSpec
    from benchmark.settings import Step

    _threads(args.threads)
    cfg = load_config(args)
    spec = RunSpec(args.dataset, args.backbone, args.fusion, "gblend", args.seed, args.modalities, args.fold)
    resolver, resolved = _resolve(args, cfg, Step("estimate", spec))
    estimate_gblend(
        cfg,
        args.dataset,
        args.backbone,
        args.fusion,
        args.seed,
        Path(args.out or resolved.path),
        fold=args.fold,
        modality=args.modalities,
        resolver=resolver,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from benchmark.grid import RunSpec
    from benchmark.run import train_run
    from benchmark.settings import Step

    _threads(args.threads)
    cfg = load_config(args)
    spec = RunSpec.from_method(args.dataset, args.backbone, args.fusion, args.method, args.seed, args.fold)
    component_class(cfg, "balancers", spec.balancer)
    resolver, resolved = _resolve(args, cfg, Step("run", spec))
    out_dir = Path(args.out_dir or resolved.path)
    try:
        train_run(cfg, spec, out_dir, resolver=resolver)
    except Exception:
        # the scheduler may replace train.log when it retries the job; this file keeps why each attempt died
        import datetime
        import traceback

        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "failed-attempts.log", "a") as f:
            f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}\n{traceback.format_exc()}")
        raise


def _group(args: argparse.Namespace, trial: int | None = None):
    """A tuning group's config, spec, resolver and resolved selection step; ``--id`` names the group's identity (its
    folder), which both its trials and its selection are asked for."""
    from benchmark.grid import RunSpec
    from benchmark.settings import Step

    cfg = load_config(args)
    if not cfg["tuning"]["enabled"]:
        raise SystemExit("tuning.enabled is false in the config: there is nothing to tune")
    spec = RunSpec.from_method(
        args.dataset, args.backbone, args.fusion, args.method, cfg["tuning"]["train_seed"], args.fold
    )
    if trial is not None and not 0 <= trial < cfg["tuning"]["trials"]:
        raise SystemExit(f"--trial must be in 0..{cfg['tuning']['trials'] - 1} (tuning.trials)")
    resolver, group = _resolve(args, cfg, Step("tune_best", spec))
    return cfg, spec, resolver, group


def cmd_tune_trial(args: argparse.Namespace) -> None:
    from benchmark.tuning import run_trial

    _threads(args.threads)
    cfg, spec, resolver, group = _group(args, args.trial)
    run_trial(cfg, spec, args.trial, Path(args.out) if args.out else None, resolver=resolver)


def cmd_tune_select(args: argparse.Namespace) -> None:
    from benchmark.tuning import select_best

    cfg, spec, resolver, group = _group(args)
    select_best(cfg, spec, Path(args.out) if args.out else None, resolver=resolver)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from benchmark.aggregate import aggregate
    from benchmark.paths import experiment_dir

    cfg = load_config(args)
    out_dir = Path(args.out_dir or experiment_dir(cfg["experiment"]))
    summary = aggregate(cfg, out_dir)
    print(f"wrote {out_dir / 'leaderboard.md'} ({len(summary)} rows)")


def cmd_prune(args: argparse.Namespace) -> None:
    from benchmark.prune import prune

    configs = [load_config(args)] if args.config or args.set else []
    prune(Path("."), configs, args.delete)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        if name != "list":
            sp.add_argument(
                "--config",
                action="append",
                metavar="FILE",
                help="a config overlay, layered over config.yaml in the order given (repeatable)",
            )
            sp.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="a typed override, e.g. train.epochs=2 (the value parsed as YAML; repeatable)",
            )
        return sp

    sp = add("list", cmd_list, "print the registered names of one axis, one per line")
    sp.add_argument("axis", choices=(*AXES, "input_kinds"))
    add("check", cmd_check, "validate the config and count the grid's runs")
    for name, fn, help in (
        ("download", cmd_download, "obtain a dataset's raw clips and manifest"),
        ("preprocess", cmd_preprocess, "decode clips into cached tensor shards (missing shards only), then index them"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--workers", type=int, default=1)
        sp.add_argument(
            "--out", help="output folder (default: data/raw/<dataset>/<raw id> or data/processed/<dataset>/<cache id>)"
        )
        if name == "preprocess":
            sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
            only = sp.add_mutually_exclusive_group()
            only.add_argument(
                "--shard", type=int, help="decode only shard K (0-based; resources.preprocess.shard_clips rows each)"
            )
            only.add_argument("--gather", action="store_true", help="only index the shards already made")
    sp = add(
        "balance",
        cmd_balance,
        "Algorithm 1 of the G-Blend supplement on a multi-label manifest (datasets.<name>.balance)",
    )
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
    sp = add("split", cmd_split, "write the train/val/test assignment of every fold (splits/<fold>.csv)")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
    sp.add_argument(
        "--processed",
        help="processed folder (default: data/processed/<dataset>/<cache id>, splits in its splits/<split id>/)",
    )
    sp.add_argument("--fold", help="only this fold (default: every fold of the dataset)")
    for name, fn, help in (
        ("estimate", cmd_estimate, "estimate G-Blend weights for one dataset/fold/backbone/fusion/seed"),
        ("train", cmd_train, "train and evaluate one run of the grid"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main", help="the dataset's fold (default: main)")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True, help="a fusion name, or 'none' for per-modality methods")
        sp.add_argument("--seed", type=int, required=True)
        sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
        if name == "train":
            sp.add_argument(
                "--method",
                required=True,
                help="balancer name, or '<balancer>-<modalities>' (e.g. unimodal-audio, joint-visual+flow)",
            )
            sp.add_argument(
                "--out-dir",
                help="default: the run's folder, "
                "results/runs/<dataset>/<fold>/<backbone>/<fusion>/<method>/seed<seed>-<id>",
            )
        else:
            sp.add_argument(
                "--out",
                help="default: "
                "results/gblend/<dataset>/<fold>/<backbone>/<fusion>/gblend[-<subset>]/seed<seed>-<id>.json",
            )
            sp.add_argument("--modalities", help="a '+'-joined subset of the dataset's modalities (default: all)")
        sp.add_argument("--id", help="the identity the job expects (the DAG passes it); a different one is an error")
    for name, fn, help in (
        (
            "tune-trial",
            cmd_tune_trial,
            "train one tuning trial of a dataset/fold/backbone/fusion/method, scored on validation",
        ),
        ("tune-select", cmd_tune_select, "pick a group's best trial (best.json)"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True)
        sp.add_argument("--method", required=True)
        sp.add_argument(
            "--out",
            help="default: results/tuning/<dataset>/<fold>/<backbone>/<fusion>/<method>/<id>/trial<k>.json (best.json)",
        )
        sp.add_argument("--id", help="the tuning's identity the job expects (the DAG passes it)")
        if name == "tune-trial":
            sp.add_argument("--trial", type=int, required=True)
            sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    sub.add_parser("perf", help="the performance benchmark (python -m benchmark perf --help)", add_help=False)
    sub.add_parser(
        "run",
        help="the whole DAG here (snakemake with the package's Snakefile; --set key=value overrides)",
        add_help=False,
    )
    sp = add(
        "prune",
        cmd_prune,
        "list (or --delete) the results no experiment uses (experiments: results/*/runs-*.json and the configs given)",
    )
    sp.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    sp = add("aggregate", cmd_aggregate, "build the experiment's leaderboard and plots from its runs' metrics files")
    sp.add_argument("--out-dir", help="default: results/<experiment>")
    return p


def run_dag(argv: list[str]) -> int:
    """``python -m benchmark run [--set key=value ...] [snakemake options]``: the whole DAG in the working directory,
    with the package's Snakefile and default profile; ``--set`` overrides reach every step as they reach the DAG."""
    import json
    import os

    from benchmark.resources import resource

    sets, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--set":
            if not args:
                print("error: --set needs key.path=value", file=sys.stderr)
                return 2
            sets.append(args.pop(0))
        elif arg.startswith("--set="):
            sets.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(resource("Snakefile")),
        "--workflow-profile",
        str(resource("workflow/profiles/default")),
        *rest,
    ]
    if sets:
        cmd += ["--config", "set=" + json.dumps(sets)]
    os.execv(sys.executable, cmd)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    from benchmark.data.preprocess import PreprocessError
    from benchmark.data.sources import SourceError
    from benchmark.data.splits import SplitError
    from benchmark.leaderboard import StaleResult

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # the DAG: every other option is Snakemake's
        return run_dag(argv[1:])
    if argv[:1] == ["perf"]:  # the performance benchmark has its own options
        from benchmark.perf import main as perf_main

        return perf_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (
        ConfigError,
        SourceError,
        PreprocessError,
        SplitError,
        IdentityMismatch,
        StaleResult,
    ) as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
