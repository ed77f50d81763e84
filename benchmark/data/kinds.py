"""Input kinds: what a modality's cached tensor is, how one sample is checked, how a batch reaches the device, what
"absent" means for it and which encoder takes it when the run's backbone does not.

A dataset declares each modality as a media source (``audio``, ``video``, ``video_diff``, ``video_flow``: decoded
from clip files, see ``benchmark.data.preprocess``) or as an input kind whose tensors it hands over itself
(``vector``, ``sequence``, ``image``, ``tokens`` or a user's kind). Kinds are a registry like the grid's axes: a
config entry ``input_kinds: {mine: {class: 'pkg.module:MyKind'}}`` adds one, and ``encoder`` names the backbone that
takes it when a run's backbone does not accept its layout.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.data.media import MediaError
from benchmark.registry import Registry

#: media sources (decoded from clip files) and the input kind each becomes
SOURCE_KIND = {"audio": "spectrogram", "video": "frames", "video_diff": "frames", "video_flow": "flow"}
FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int64", "int32", "int16", "uint8")


class InputKind:
    """Base class. ``layout`` is what an encoder receives (backbones list the layouts they accept); ``ndim`` the
    dimensions of one sample; ``store_dtype`` the dtype the cache keeps; ``default_encoder`` the backbone that takes
    this kind when a run's backbone does not; ``fit_absent``: an absent input is the training mean (False: zeros,
    e.g. padding tokens). ``check`` validates one handed-over sample, ``prepare`` a batch on its way to the model."""

    name: ClassVar[str]
    layout: ClassVar[str]
    ndim: ClassVar[int]
    accepts: ClassVar[tuple[str, ...]] = FLOAT_DTYPES
    store_dtype: ClassVar[str] = "float32"
    default_encoder: ClassVar[str] = "mlp"
    fit_absent: ClassVar[bool] = True

    def check(self, x: Any, spec: dict, nonfinite: str = "reject") -> tuple[torch.Tensor, int]:
        """One sample as the cache stores it, and how many non-finite values were set to zero (``nonfinite:
        zero``); a sample that does not match ``spec`` (shape, dtype) raises MediaError with the reason."""
        if isinstance(x, np.ndarray):  # a copy when read-only (a memory-mapped file's row)
            x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)
            t = torch.from_numpy(x)
        else:
            t = torch.as_tensor(x)
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in self.accepts:
            raise MediaError("wrong dtype", f"{dtype}; a {self.name} modality takes {' | '.join(self.accepts)}")
        if list(t.shape) != list(spec["shape"]):
            raise MediaError("wrong shape", f"{tuple(t.shape)}, the dataset declares {tuple(spec['shape'])}")
        repaired = 0
        if t.is_floating_point():
            bad = ~torch.isfinite(t)
            repaired = int(bad.sum())
            if repaired and nonfinite != "zero":
                raise MediaError(
                    "non-finite values", f"{repaired} NaN/inf values (preprocess.nonfinite: zero sets them to 0)"
                )
            if repaired:
                t = torch.where(bad, torch.zeros((), dtype=t.dtype), t)
        return t.to(getattr(torch, spec.get("dtype", self.store_dtype))), repaired

    def prepare(self, x: torch.Tensor, train: bool, prep: Any) -> torch.Tensor:
        """A batch of this kind on the device, as the encoder takes it (``prep``: the BatchPreparer, whose visual
        mean, std and augmentation image kinds use)."""
        return x.float()

    def encoder_arguments(self, spec: dict) -> dict:
        """Keyword arguments an encoder of this kind needs from the data (e.g. a vocabulary's size)."""
        return {}


INPUT_KINDS: Registry[InputKind] = Registry("input kind", base=InputKind)


@INPUT_KINDS.register("spectrogram")
class Spectrogram(InputKind):
    """A log spectrogram [1, F, T] (float16 in the cache), from a clip's audio track."""

    display_name: ClassVar[str] = "Spectrogram"
    paper: ClassVar[str] = ""
    layout, ndim, store_dtype, default_encoder = "spectrogram", 3, "float16", "small_cnn"


@INPUT_KINDS.register("frames")
class Frames(InputKind):
    """Frames [T, C, H, W] (uint8), normalised on the device with the dataset's visual mean and std; training batches
    are augmented as ``preprocess.visual.augment`` says."""

    display_name: ClassVar[str] = "Frames"
    paper: ClassVar[str] = ""
    layout, ndim, accepts, store_dtype, default_encoder = "frames", 4, ("uint8",), "uint8", "small_cnn"

    def prepare(self, x: torch.Tensor, train: bool, prep: Any) -> torch.Tensor:
        return prep.normalise_frames(x, train)


@INPUT_KINDS.register("flow")
class Flow(InputKind):
    """Optical flow [T, 2, H, W] stored as uint8 with 0 at 127.5, handed over in [-1, 1] (±bound pixels); never
    augmented (a flip would have to negate its x component)."""

    display_name: ClassVar[str] = "Optical flow"
    paper: ClassVar[str] = ""
    layout, ndim, accepts, store_dtype, default_encoder = "frames", 4, ("uint8",), "uint8", "small_cnn"

    def prepare(self, x: torch.Tensor, train: bool, prep: Any) -> torch.Tensor:
        return x.float() / 127.5 - 1.0


@INPUT_KINDS.register("image")
class Image(InputKind):
    """An image [C, H, W] (uint8), normalised and augmented as frames are (one frame)."""

    display_name: ClassVar[str] = "Image"
    paper: ClassVar[str] = ""
    layout, ndim, accepts, store_dtype, default_encoder = "image", 3, ("uint8",), "uint8", "resnet18"

    def prepare(self, x: torch.Tensor, train: bool, prep: Any) -> torch.Tensor:
        return prep.normalise_frames(x.unsqueeze(1), train).squeeze(1)


@INPUT_KINDS.register("vector")
class Vector(InputKind):
    """A feature vector [D] (float32), e.g. a pre-extracted embedding."""

    display_name: ClassVar[str] = "Vector"
    paper: ClassVar[str] = ""
    layout, ndim, default_encoder = "vector", 1, "mlp"


@INPUT_KINDS.register("sequence")
class Sequence(InputKind):
    """A sequence of feature vectors [T, D] (float32), padded by the dataset with all-zero rows (which encoders of
    sequences may mask)."""

    display_name: ClassVar[str] = "Sequence"
    paper: ClassVar[str] = ""
    layout, ndim, default_encoder = "sequence", 2, "sequence"


@INPUT_KINDS.register("tokens")
class Tokens(InputKind):
    """Token ids [L] (int64) below the spec's ``vocab_size``, 0 the padding id. Absent means all padding, never a
    mean of ids."""

    display_name: ClassVar[str] = "Tokens"
    paper: ClassVar[str] = ""
    layout, ndim, accepts, store_dtype, default_encoder, fit_absent = "tokens", 1, INT_DTYPES, "int64", "text", False

    def check(self, x: Any, spec: dict, nonfinite: str = "reject") -> tuple[torch.Tensor, int]:
        t, _ = super().check(x, spec, nonfinite)
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= spec["vocab_size"]):
            raise MediaError(
                "token id out of range", f"ids {int(t.min())}..{int(t.max())}, vocab_size {spec['vocab_size']}"
            )
        return t, 0

    def prepare(self, x: torch.Tensor, train: bool, prep: Any) -> torch.Tensor:
        return x.long()

    def encoder_arguments(self, spec: dict) -> dict:
        return {"vocab_size": int(spec["vocab_size"])}


def kind_name(declared: str) -> str:
    """The input kind of a dataset's modality declaration (a media source or a kind name)."""
    return SOURCE_KIND.get(declared, declared)


def is_media(declared: str) -> bool:
    return declared in SOURCE_KIND


def get_kind(name: str, class_path: str | None = None) -> InputKind:
    """An instance of the input kind ``name`` (``class_path``: a user's ``module:Class``)."""
    return INPUT_KINDS.get(name, class_path=class_path)()


def modality_kind(info: dict) -> InputKind:
    """The input kind of a cached modality described in a cache's info.json (older caches record only a source)."""
    if "kind" in info:
        return get_kind(info["kind"], info.get("kind_class"))
    return get_kind(kind_name(info["source"]))
