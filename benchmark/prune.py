"""``python -m benchmark prune``: remove the results that no experiment uses.

Results are never overwritten: a changed setting makes a new run folder, estimate file or tuning folder (named by
its identity) and the old one stays. An experiment's view records every result it depends on (its runs and,
recursively, their prerequisites) in ``results/<experiment>/runs-<id>.json``; prune keeps whatever any of these
records, or the given configs, use, and lists — or with ``--delete`` removes — the rest.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchmark import paths
from benchmark.settings import experiment_record

#: a result whose name ends in its identity: seed<k>-<id> (run folder), seed<k>-<id>.json (estimate), <id> (tuning)
IDENTIFIED = re.compile(r"^(seed\d+-)?[0-9a-f]{12}(\.json)?$")


def used_results(root: Path, configs: list[dict]) -> set[str]:
    used: set[str] = set()
    for record in sorted(root.glob("results/*/runs-*.json")):
        used.update(json.loads(record.read_text()).get("steps", []))
    for cfg in configs:
        used.update(experiment_record(cfg)["steps"])
    return used


def all_results(root: Path) -> list[Path]:
    """Every identity-named result under results/runs, results/gblend and results/tuning (relative to ``root``)."""
    out = []
    for top in ("runs", "gblend", "tuning"):
        base = root / "results" / top
        out += (
            [p.relative_to(root) for p in sorted(base.rglob("*")) if IDENTIFIED.match(p.name)] if base.exists() else []
        )
    return out


def prune(root: Path, configs: list[dict], delete: bool, log=print) -> list[Path]:
    """The unused results (removed with ``delete``)."""
    used = used_results(root, configs)
    unused = [p for p in all_results(root) if str(p) not in used]
    for p in unused:
        log(("removing " if delete else "unused: ") + str(p))
        if delete:
            target = root / p
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            if p.suffix == ".json":  # an estimate's log lives under results/logs
                (root / paths.LOGS / "estimate" / p.relative_to("results/gblend")).with_suffix(".log").unlink(
                    missing_ok=True
                )
    kept = len(all_results(root)) if delete else len(all_results(root)) - len(unused)
    log(
        f"{len(unused)} unused result(s){' removed' if delete else ' (rerun with --delete to remove them)'}; {kept} in "
        "use"
    )
    return unused
