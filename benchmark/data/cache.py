"""Reading the preprocessed tensor cache for training.

The cache's shards are memory-mapped (several jobs on one node share their pages; a cache larger than memory
still trains). Batches are gathered by index in one tensor operation per modality and shard (``__getitems__``), so
the DataLoader never collates sample by sample; uint8 frames travel to the device as bytes and are normalised there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from benchmark.data.shards import cache_files


class CachedSplit(torch.utils.data.Dataset):
    """Clips of a tensor cache: a processed folder (its shards, ``benchmark.data.shards``) or one tensor file. Every
    shard is memory-mapped; a batch is gathered into one tensor per modality, a row copy per clip."""

    def __init__(
        self, path: str | Path, indices: Sequence[int] | None = None, modalities: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path)
        parts = [torch.load(f, mmap=True, weights_only=True) for f in cache_files(self.path)]
        self.clip_ids: list[str] = [c for p in parts for c in p.pop("clip_id")]
        self.labels: torch.Tensor = torch.cat([p.pop("label") for p in parts])
        have = set(parts[0])
        if modalities is not None:
            missing = set(modalities) - have
            if missing:
                raise KeyError(f"{self.path} has no modality {sorted(missing)}; it has {sorted(have)}")
        names = list(modalities) if modalities is not None else list(parts[0])
        self.shards: list[dict[str, torch.Tensor]] = [{m: p[m] for m in names} for p in parts]
        sizes = torch.tensor([len(p[names[0]]) if names else 0 for p in parts])
        self.shard_of = torch.repeat_interleave(torch.arange(len(parts)), sizes)
        self.position = torch.cat([torch.arange(int(n)) for n in sizes])
        self.indices = (
            torch.arange(len(self.labels)) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
        )

    @property
    def multi_label(self) -> bool:
        """Multi-hot label rows [N, C] (multi-label data) instead of class indices [N]."""
        return self.labels.dim() == 2

    @property
    def modalities(self) -> list[str]:
        return list(self.shards[0])

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: Sequence[int]) -> "CachedSplit":
        """A view on some of this split's samples (positions index this view, not the file)."""
        view = object.__new__(CachedSplit)
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[torch.as_tensor(list(positions), dtype=torch.long)]
        return view

    def ids(self) -> list[str]:
        return [self.clip_ids[i] for i in self.indices.tolist()]

    def targets(self) -> torch.Tensor:
        return self.labels[self.indices]

    def gather(self, modality: str, idx: torch.Tensor) -> torch.Tensor:
        """The rows ``idx`` (cache order) of one modality, one row copy each: a row is contiguous, so its copy is a
        memcpy, while advanced indexing copies element by element (10x slower for a real-size frame row on a CPU:
        scripts/bench_choices.py)."""
        first = self.shards[0][modality]
        out = torch.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
        if len(self.shards) == 1:
            for j, p in enumerate(idx.tolist()):
                out[j] = first[p]
            return out
        for j, (k, p) in enumerate(zip(self.shard_of[idx].tolist(), self.position[idx].tolist())):
            out[j] = self.shards[k][modality][p]
        return out

    def replace_modality(self, modality: str, fn) -> None:
        """Apply ``fn`` to every shard's tensor of one modality (in memory; tests move data with it)."""
        for part in self.shards:
            part[modality] = fn(part[modality])

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        idx = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        batch = {m: self.gather(m, idx) for m in self.modalities}
        batch["label"] = self.labels[idx]
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


class EpochRows(torch.utils.data.Dataset):
    """Some rows of a split, repeats allowed (a method's re-sampled epoch, ``Balancer.epoch_rows``); each batch also
    carries ``position`` (the rows' positions in ``split``: which samples they are) and ``draw`` (their indices in
    ``rows``: which of the epoch's draws, when a sample is drawn more than once for different purposes)."""

    def __init__(self, split: CachedSplit, rows: torch.Tensor) -> None:
        self.split = split
        self.rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if len(self.rows) and not (0 <= int(self.rows.min()) and int(self.rows.max()) < len(split)):
            raise IndexError(
                f"epoch rows must lie in [0, {len(split)}), got [{int(self.rows.min())}, {int(self.rows.max())}]"
            )

    @property
    def multi_label(self) -> bool:
        return self.split.multi_label

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        draws = torch.as_tensor(positions, dtype=torch.long)
        rows = self.rows[draws]
        batch = self.split.__getitems__(rows.tolist())
        batch["position"], batch["draw"] = rows, draws
        return batch


#: every (fold, part) this process has loaded, in order: tuning trials record it to show they never read 'test'
LOADED_PARTS: list[tuple[str, str]] = []


def load_part(
    processed_dir: str | Path,
    fold: str,
    part: str,
    modalities: Sequence[str] | None = None,
    splits_dir: str | Path | None = None,
) -> CachedSplit:
    """The 'train', 'val' or 'test' clips of one fold, as listed in ``<splits_dir>/<fold>.csv`` (default
    ``<processed_dir>/splits``)."""
    from benchmark.data.splits import read_split

    LOADED_PARTS.append((fold, part))
    data = CachedSplit(processed_dir, modalities=modalities)
    index = {clip: i for i, clip in enumerate(data.clip_ids)}
    ids = read_split(processed_dir, fold, part, splits_dir)
    missing = [c for c in ids if c not in index]
    if missing:
        raise KeyError(
            f"splits/{fold}.csv lists clips that are not in the cache (e.g. {missing[:3]}); re-run the split step"
        )
    return data.subset([index[c] for c in ids])


def cache_settings_hash(dataset_settings: dict) -> str:
    """What a dataset's cached tensors depend on (all its settings but the split, a stage of its own), hashed."""
    text = json.dumps(
        {k: v for k, v in dataset_settings.items() if k != "split"}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StaleCache(ValueError):
    """A cache made with other dataset settings than the config gives (a user error: preprocess again)."""


def load_info(processed_dir: str | Path, dataset_settings: dict | None = None) -> dict:
    """The cache's info.json; with ``dataset_settings``, checked to have been made with them (a cache copied from
    elsewhere, or made before a settings change, is refused instead of trained on)."""
    path = Path(processed_dir) / "info.json"
    info = json.loads(path.read_text())
    if (
        dataset_settings is not None
        and "settings_hash" in info
        and info["settings_hash"] != cache_settings_hash(dataset_settings)
    ):
        raise StaleCache(
            f"{path.parent} was made with other settings of dataset '{dataset_settings['name']}' than the config "
            "gives: run its preprocess step again (the DAG does when the settings change; delete the folder to force "
            "it)"
        )
    return info


def _identity(batch: dict) -> dict:
    return batch


def make_loader(
    data: CachedSplit,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pin_memory: bool = False,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``data`` (one batched gather per modality). ``workers`` > 0 gathers them in that many processes,
    ahead of the loop (2 batches each); the order and content are the same: the sampler runs here, and a batch holds
    no random draw."""
    # a loader's own generator even without shuffling: starting an iterator then draws from it, not from the global
    # RNG, so evaluating during training never changes the training run's random stream
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=_identity,
        num_workers=workers,
        pin_memory=pin_memory,
        # not persistent: a persistent iterator skips the per-epoch seed draw from ``generator``, so the shuffles
        # from the second epoch on would differ from those without workers
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def resize_boxes(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, ch: torch.Tensor, cw: torch.Tensor):
    """Box i (rows top..top+ch-1, columns left..left+cw-1) of clip i of frames [B, T, C, H, W], resized to H×W as
    bilinear ``interpolate`` of the cropped box does (align_corners=False, edges clamped to the box), for the whole
    batch at once: one affine sampling grid per clip, one ``grid_sample``."""
    b, t, c, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * left + cw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
    grid = torch.nn.functional.affine_grid(theta, [b, t * c, h, w], align_corners=False)
    # sample only inside the box: between the normalised centres of its first and last pixels
    for axis, start, size, extent in ((0, left, cw, w), (1, top, ch, h)):
        lo = ((2 * start + 1) / extent - 1).view(b, 1, 1)
        hi = ((2 * (start + size - 1) + 1) / extent - 1).view(b, 1, 1)
        grid[..., axis] = torch.maximum(torch.minimum(grid[..., axis], hi), lo)
    out = torch.nn.functional.grid_sample(
        x.reshape(b, t * c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.view(b, t, c, h, w)


def random_resized_crop(x: torch.Tensor, scale: Sequence[float]) -> torch.Tensor:
    """Per clip of frames [B, T, C, H, W], a random box of area fraction in ``scale`` and aspect ratio in [3/4, 4/3]
    resized back to H×W (``resize_boxes``). Draws are made on the batch's device (no host synchronisation)."""
    b, _, _, h, w = x.shape
    lo, hi = scale
    area = h * w * torch.empty(b, device=x.device).uniform_(lo, hi)
    ratio = torch.exp(torch.empty(b, device=x.device).uniform_(-0.2877, 0.2877))  # log(3/4) .. log(4/3)
    ch = (area / ratio).sqrt().round().clamp(1, h)
    cw = (area * ratio).sqrt().round().clamp(1, w)
    top = (torch.rand(b, device=x.device) * (h - ch + 1)).floor()
    left = (torch.rand(b, device=x.device) * (w - cw + 1)).floor()
    return resize_boxes(x, top, left, ch, cw)


def augment_frames(x: torch.Tensor, hflip: bool, crop_scale: Sequence[float] | None) -> torch.Tensor:
    """Train-time augmentation of frames [B, T, C, H, W], the same for all frames of a clip: a random resized crop
    (``random_resized_crop``) and a horizontal flip with probability 1/2. Draws come from torch's generator on the
    batch's device, so they follow the run's seed and never wait on the host."""
    if crop_scale:
        x = random_resized_crop(x, crop_scale)
    if hflip:
        flip = (torch.rand(x.shape[0], device=x.device) < 0.5).view(-1, 1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return x


def channels_last_frames(x: torch.Tensor) -> torch.Tensor:
    """Frames [B, T, C, H, W] laid out so that every [B·T, C, H, W] view of them is channels-last."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class BatchPreparer:
    """Moves a batch to the device, each modality as its input kind prepares it (``benchmark.data.kinds``):
    spectrograms and feature tensors to float32, token ids to int64, frames (and frame differences) and images to
    float32 normalised with the dataset's visual mean and std, optical flow from its uint8 code to [-1, 1] (±bound
    pixels); training batches of frames and images are augmented as configured (flow is not: a flip would have to
    negate its x component). ``channels_last``: 4-D inputs and frames are handed over in channels-last layout, as
    the model's weights are."""

    def __init__(
        self, modality_info: dict[str, dict], visual: dict, device: torch.device, channels_last: bool = False
    ) -> None:
        from benchmark.data.kinds import modality_kind

        self.device = device
        self.channels_last = channels_last
        self.kinds = {m: modality_kind(info) for m, info in modality_info.items()}
        self.mean = torch.tensor(visual["mean"], device=device).view(1, 1, 3, 1, 1) * 255.0
        self.std = torch.tensor(visual["std"], device=device).view(1, 1, 3, 1, 1) * 255.0
        augment = visual.get("augment") or {}
        self.hflip, self.crop_scale = bool(augment.get("hflip")), augment.get("crop_scale")

    def normalise_frames(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 frames [B, T, C, H, W] -> float32 normalised with the visual mean and std (augmented in training)."""
        x = (x.float() - self.mean) / self.std
        if train and (self.hflip or self.crop_scale):
            x = augment_frames(x, self.hflip, self.crop_scale)
        return x

    def __call__(
        self, batch: dict[str, torch.Tensor], train: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        nb = self.device.type == "cuda"
        inputs = {}
        for m, x in batch.items():
            if m in ("label", "position", "draw"):
                continue
            x = self.kinds[m].prepare(x.to(self.device, non_blocking=nb), train, self)
            if self.channels_last and x.dim() == 5:
                x = channels_last_frames(x)
            elif self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs[m] = x
        y = batch["label"].to(self.device, non_blocking=nb)
        return inputs, (y.float() if y.dim() == 2 else y)  # multi-hot uint8 rows become BCE targets
