"""Embedded data and the on-disk readers, tested on small files in the real formats."""

import pickle

import numpy as np
import pytest
import torch

from oialr_search.exceptions import DataError
from oialr_search.training import BatchIterator, load_data


def test_mnist_embedded_split_is_fixed():
    a, b = load_data("mnist", val_fraction=0.1), load_data("mnist", val_fraction=0.1)
    assert len(a.train) == 4500 and len(a.val) == 500
    assert a.num_classes == 10 and a.in_chans == 1 and a.img_size == 28
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert set(a.val.tensors[1].tolist()) == set(range(10))


def test_digits_and_resize():
    d = load_data("digits", val_fraction=0.2, img_size=16)
    assert d.train.tensors[0].shape[1:] == (1, 16, 16) and len(d.val) == round(1797 * 0.2)


def _write_cifar(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_data("cifar10", path=str(tmp_path / "cifar-10-batches-py"))
    assert len(d.train) == 100 and len(d.val) == 20 and d.in_chans == 3 and d.img_size == 32
    x = d.train.tensors[0]
    assert x.shape == (100, 3, 32, 32)
    assert abs(x.mean().item()) < 0.1  # normalized with the training statistics


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_data("cifar10", path=str(tmp_path / "nope"))
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="data_batch_1: missing"):
        load_data("cifar10", path=str(tmp_path / "c"))
    (tmp_path / "c" / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_data("cifar10", path=str(tmp_path / "c"))


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    d = load_data("imagefolder", path=str(tmp_path), img_size=16)
    assert d.num_classes == 3 and len(d.train) == 6 and len(d.val) == 6
    x, y = next(BatchIterator(d.train, 4, shuffle=True).epoch(0))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    with pytest.raises(DataError, match="val"):
        load_data("imagefolder", path=str(tmp_path / "train"))


def test_batch_iterator_is_deterministic_and_skips():
    d = load_data("digits", val_fraction=0.2)
    it = BatchIterator(d.train, 100, shuffle=True, seed=3)
    first = [y for _, y in it.epoch(1)]
    again = [y for _, y in it.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    skipped = [y for _, y in it.epoch(1, skip=2)]
    assert torch.equal(skipped[0], first[2]) and len(skipped) == len(first) - 2
    assert not torch.equal(first[0], next(it.epoch(2))[1])


def test_training_drops_a_last_batch_of_one_item():
    """BatchNorm fails on one item in training mode: a searched batch size may leave one (found in review)."""
    d = load_data("digits", val_fraction=0.2)  # 1438 training images
    assert len(BatchIterator(d.train, 479, shuffle=True)) == 3  # 3 × 479 + 1: the last one is dropped
    assert len(BatchIterator(d.train, 478, shuffle=True)) == 4  # 3 × 478 + 4
    assert len(BatchIterator(d.val, 479, shuffle=False)) == 1  # evaluation keeps every item


def test_sharded_shift_augmentation_is_the_single_process_one():
    """The ranks of a group augment their items as one process augments the whole batch: item i of every
    rank's share used to get the same shift (found in review)."""
    from oialr_search.training._data import random_shift_flip

    d = load_data("digits", val_fraction=0.2)
    whole = BatchIterator(d.train, 100, shuffle=True, seed=2, augment=random_shift_flip(1, 0.5))
    shares = [BatchIterator(d.train, 100, shuffle=True, seed=2, augment=random_shift_flip(1, 0.5), shard=(r, 2))
              for r in range(2)]
    for (x, _), (x0, _), (x1, _) in zip(whole.epoch(1), shares[0].epoch(1), shares[1].epoch(1)):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
