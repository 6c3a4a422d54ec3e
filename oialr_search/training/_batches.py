"""The mini-batches a run trains on (:class:`BatchIterator`) and how they reach the device
(:func:`loading_for`)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..exceptions import DataError
from ._datasets import EMBEDDED

if TYPE_CHECKING:
    from ._config import DataConfig
    from ._data import DataBundle

# Data sets held as tensors up to this size are kept on a CUDA device (indexed there, no copy per batch).
ON_DEVICE_MAX_BYTES = 1 << 30
# Auto num_workers never exceeds this: past it the main process, not decoding, limits a GPU.
MAX_AUTO_WORKERS = 16


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
