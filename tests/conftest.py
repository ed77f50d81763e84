from __future__ import annotations

import copy
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.models.backbones import SmallCNN
from benchmark.models.fusions import FUSIONS
from benchmark.models.model import MultimodalModel

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def run_dir(cfg: dict, spec) -> Path:
    """The folder of a run: named by its identity, as the DAG names it."""
    from benchmark.config import validate_config
    from benchmark.settings import Resolver

    return Resolver(validate_config(cfg)).run(spec).path


def estimate_file(cfg: dict, spec) -> Path:
    from benchmark.config import validate_config
    from benchmark.settings import Resolver, Step

    return Resolver(validate_config(cfg)).resolve(Step("estimate", spec)).path


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def untuned_config() -> dict:
    """The default config with tuning off and a random search space, for tests of what tuning changes."""
    cfg = default_config()
    cfg["tuning"] = {
        "enabled": False,
        "strategy": "random",
        "trials": 8,
        "seed": 0,
        "train_seed": 0,
        "space": {
            "train": {"optimizer.lr": {"low": 1.0e-3, "high": 1.0e-1, "scale": "log"}},
            "balancers": {"ogm": {"alpha": {"low": 0.1, "high": 1.0}}, "mlb": {"alpha": {"low": 0.1, "high": 2.0}}},
        },
    }
    return cfg


def tiny_config(**grid) -> dict:
    """The default config shrunk to seconds: few small clips, one epoch, small CNN."""
    cfg = default_config()
    cfg["grid"] = {
        "datasets": ["synthetic-av"],
        "backbones": ["small_cnn"],
        "fusions": ["concat"],
        "balancers": ["joint", "ogm"],
        "seeds": [0],
        **grid,
    }
    cfg["train"]["epochs"] = 1
    cfg["train"]["per_backbone"] = {}
    cfg["datasets"]["synthetic-av"]["generate"].update(num_clips=48, size=32, fps=4)
    cfg["datasets"]["synthetic-av"]["preprocess"]["visual"].update(size=16, fps=2)
    cfg["backbones"]["small_cnn"]["width"] = 4
    cfg["resources"]["preprocess"]["threads"] = 2
    for name in ("gblend", "gblend_online"):  # 24 training clips: the 64-clip held-out floor cannot apply
        cfg["balancers"][name]["min_holdout"] = 4
    cfg["tuning"].update(enabled=False, strategy="random")  # tests that tune switch it on with their own space
    return cfg


@pytest.fixture
def cfg() -> dict:
    return copy.deepcopy(default_config())


def small_model(
    fusion: str = "concat", unimodal_heads: bool = False, num_classes: int = 3, seed: int = 0
) -> MultimodalModel:
    torch.manual_seed(seed)
    encoders = {
        "audio": SmallCNN("spectrogram", (1, 16, 16), width=2),
        "visual": SmallCNN("frames", (2, 3, 8, 8), width=2),
    }
    fusion_module = FUSIONS.get(fusion)({m: e.out_dim for m, e in encoders.items()}, num_classes)
    shapes = {"audio": (1, 16, 16), "visual": (2, 3, 8, 8)}
    return MultimodalModel(encoders, fusion_module, num_classes, unimodal_heads=unimodal_heads, input_shapes=shapes)


def small_batch(n: int = 6, num_classes: int = 3, seed: int = 0) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(n, 1, 16, 16, generator=g), "visual": torch.randn(n, 2, 3, 8, 8, generator=g)}
    return inputs, torch.arange(n) % num_classes


def data_dirs(cfg: dict, dataset: str = "synthetic-av"):
    """Where the DAG keeps a dataset's data for ``cfg`` (folders named by their settings; relative paths)."""
    from benchmark.config import validate_config
    from benchmark.settings import dataset_dirs

    return dataset_dirs(validate_config(cfg), dataset)


def build_data(root: Path, cfg: dict, dataset: str = "synthetic-av"):
    """Download (generate), preprocess and split a dataset under ``root`` where the DAG would put it."""
    from benchmark.config import dataset_settings, validate_config
    from benchmark.data.datasets import DATASETS
    from benchmark.data.preprocess import preprocess
    from benchmark.data.splits import write_splits

    cfg = validate_config(cfg)
    settings = dataset_settings(cfg, dataset)
    dirs = data_dirs(cfg, dataset)
    ds = DATASETS.get(dataset)(settings)
    ds.download(root / dirs.raw, workers=2)
    preprocess(ds, root / dirs.raw, root / dirs.processed, settings["preprocess"], workers=2, log=lambda s: None)
    write_splits(ds, root / dirs.raw, root / dirs.processed, log=lambda s: None, splits_dir=root / dirs.splits)
    return dirs


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A working directory with the tiny synthetic dataset generated and preprocessed (shared by tests)."""
    from benchmark.config import validate_config

    root = tmp_path_factory.mktemp("tiny")
    cfg = validate_config(tiny_config())
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    build_data(root, cfg)
    return root


def tiny_data_dirs():
    """The data folders of the tiny config (relative: tests that use them run inside the tiny workspace)."""
    return data_dirs(tiny_config())


@pytest.fixture(scope="session")
def tiny_dirs(tiny_workspace):
    """The tiny workspace's data folders (relative to it)."""
    return data_dirs(yaml.safe_load((tiny_workspace / "config.yaml").read_text()))


@pytest.fixture
def in_tiny_workspace(tiny_workspace, monkeypatch) -> Path:
    monkeypatch.chdir(tiny_workspace)
    return tiny_workspace


# --- a local HTTP server for the download tests (nothing in the tests reaches the network) ------------------


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static server that honours 'Range: bytes=N-' (what fetch() sends to resume)."""

    ranges: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not header or not path.is_file():
            return super().send_head()
        RangeHandler.ranges.append(header)
        start = int(header.split("=")[1].split("-")[0])
        data = path.read_bytes()[start:]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{path.stat().st_size}")
        self.end_headers()
        self.wfile.write(data)
        return None


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# --- real recordings beside the repository -------------------------------------------------------------------

#: the Free Spoken Digit Dataset's recordings, as laid out beside the repository (../shared/data/fsdd)
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def fsdd_or_skip() -> Path:
    """The shared FSDD copy; absent (a user's clone): the test skips saying so, or fails under CI."""
    import os

    if not (FSDD / "recordings").is_dir():
        message = f"the FSDD recordings are not at {FSDD} (../shared/data/fsdd beside the repository)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return FSDD
