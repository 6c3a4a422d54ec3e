"""data.augment: timm's per-image transforms on the in-memory and on-disk sets, the loading options,
Mixup/CutMix with its soft-target loss, and the config section (with the old bool) and its errors."""

import dataclasses
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from oialr_search.exceptions import ConfigError
from oialr_search.training import (
    AugmentConfig,
    BatchIterator,
    Trainer,
    build_batch_ops,
    config_from_dict,
    config_to_dict,
    load_data,
    loading_for,
)
from oialr_search.training._augment import ImageDataset, MixBatch, _posterize, train_transform
from oialr_search.training._batches import MAX_AUTO_WORKERS

RECIPE = AugmentConfig(auto_augment="rand-m9-mstd0.5-inc1", scale_min=0.8, hflip=0.5, interpolation="random",
                       re_prob=0.25, re_mode="pixel")


def write_cifar(root, n=20, seed=0):
    """CIFAR-10 "python version" batches: data_batch_1..5 and test_batch, n images each."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)
    return root


def write_imagefolder(root, per_class=3, seed=0):
    """train/ and val/ with two classes of small PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def batches(iterator, epoch=0):
    return [(x.clone(), y.clone()) for x, y in iterator.epoch(epoch)]


def same(a, b):
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)) and len(a) == len(b)


# -- per-image transforms -------------------------------------------------------------------------
def test_cifar_timm_transforms_per_item(tmp_path):
    d = load_data("cifar10", path=str(write_cifar(tmp_path / "c")), img_size=24, augment=RECIPE)
    assert isinstance(d.train, ImageDataset) and d.img_size == 24 and d.in_chans == 3
    assert d.val.tensors[0].shape == (20, 3, 24, 24)  # evaluation stays on the normalized tensors
    it = BatchIterator(d.train, 16, shuffle=False, seed=3)
    first = batches(it)
    x, y = first[0]
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [len(b[1]) for b in first] == [16] * 6 + [4]
    assert torch.equal(torch.cat([b[1] for b in first]), torch.as_tensor(d.train.labels))
    assert same(first, batches(it))  # same seed and epoch: the same augmented images
    assert not torch.equal(first[0][0], batches(it, epoch=1)[0][0])  # the next epoch draws new augmentations
    other = BatchIterator(d.train, 16, shuffle=False, seed=4)
    assert not torch.equal(first[0][0], batches(other)[0][0])


def test_item_seeds_do_not_depend_on_workers_and_leave_the_main_rng(tmp_path):
    d = load_data("cifar10", path=str(write_cifar(tmp_path / "c", n=8)), augment=RECIPE)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    inline = batches(BatchIterator(d.train, 8, shuffle=True, seed=1), epoch=2)
    after = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (after[0].tolist(), *after[1:])
    workers = BatchIterator(d.train, 8, shuffle=True, seed=1, num_workers=2)
    assert same(inline, batches(workers, epoch=2))
    assert same(batches(workers, epoch=1), batches(BatchIterator(d.train, 8, shuffle=True, seed=1), epoch=1))
    resumed = [(x, y) for x, y in BatchIterator(d.train, 8, shuffle=True, seed=1).epoch(2, skip=2)]
    assert same(inline[2:], resumed)


def test_embedded_sets_through_timm():
    d = load_data("digits", val_fraction=0.2, img_size=16, augment=RECIPE)
    assert isinstance(d.train, ImageDataset) and d.train.images.shape[1:] == (8, 8, 1)
    x, y = next(BatchIterator(d.train, 32, shuffle=True).epoch(0))
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,)
    assert len(d.val) == round(1797 * 0.2) and d.val.tensors[0].shape[1:] == (1, 16, 16)
    assert abs(float(x.mean())) < 1.0  # normalized with the training split's statistics
    assert AugmentConfig().hflip_for(1) == 0.0 and AugmentConfig().hflip_for(3) == 0.5  # digits are not mirrored
    off = load_data("digits", val_fraction=0.2, augment=False)
    assert isinstance(off.train, torch.utils.data.TensorDataset)


def test_imagefolder_through_timm(tmp_path):
    root = write_imagefolder(tmp_path / "f")
    d = load_data("imagefolder", path=str(root), img_size=16, augment=dataclasses.replace(RECIPE, crop_pct=0.9))
    assert d.num_classes == 2 and len(d.train) == 6 and len(d.val) == 6
    train = batches(BatchIterator(d.train, 4, shuffle=True, seed=0))
    assert train[0][0].shape == (4, 3, 16, 16) and [len(b[1]) for b in train] == [4, 2]
    assert same(train, batches(BatchIterator(d.train, 4, shuffle=True, seed=0)))
    val = BatchIterator(d.val, 6, shuffle=False)
    assert same(batches(val, 0), batches(val, 5))  # evaluation is not random
    plain = load_data("imagefolder", path=str(root), img_size=16)
    assert plain.train.transform is plain.val.transform  # augmentation off: training images get the eval transform


def test_posterize_at_zero_bits_is_the_black_image():
    """RandAugment's increasing posterize keeps 0 bits at magnitude 10; Pillow >= 13 rejects that."""
    from PIL import Image

    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.asarray(_posterize(img, 0)).max() == 0 and np.asarray(_posterize(img, 8)).min() == 200
    transform = train_transform(AugmentConfig(auto_augment="rand-m10-mstd0-inc1"), 8, 3, (0.5,) * 3, (0.2,) * 3)
    random.seed(0)
    for _ in range(200):  # picks the posterize op dozens of times
        transform(img)


# -- loading --------------------------------------------------------------------------------------
def test_loading_options(tmp_path):
    cifar = {"name": "cifar10", "path": str(write_cifar(tmp_path / "c", n=4))}
    cfg = config_from_dict({"data": cifar})
    data = load_data("cifar10", path=cifar["path"])
    cpu = loading_for(cfg.data, data, torch.device("cpu"))
    assert cpu.pin_memory is False and cpu.device is None
    assert cpu.num_workers == max(0, min(MAX_AUTO_WORKERS, torch.get_num_threads() - 1))
    gpu = loading_for(cfg.data, data, torch.device("cuda"))
    assert gpu.pin_memory and gpu.device == torch.device("cuda")  # small tensor sets live on the device
    kept = config_from_dict({"data": {**cifar, "on_device": False, "num_workers": 3}})
    assert loading_for(kept.data, data, torch.device("cuda")).device is None
    assert loading_for(kept.data, data, torch.device("cpu")).num_workers == 3
    digits = config_from_dict({"data": {"name": "digits", "num_workers": -1}})
    assert loading_for(digits.data, load_data("digits"), torch.device("cpu")).num_workers == 0


def test_shift_on_a_device_tensor_set_draws_as_on_the_host():
    from oialr_search.training._batches import random_shift_flip

    d = load_data("digits", val_fraction=0.2)
    host = BatchIterator(d.train, 50, shuffle=True, seed=2, augment=random_shift_flip(1, 0.5))
    device = BatchIterator(d.train, 50, shuffle=True, seed=2, augment=random_shift_flip(1, 0.5),
                           device=torch.device("cpu"))  # the same code path a CUDA device takes
    assert same(batches(host, 1), batches(device, 1))


# -- Mixup / CutMix -------------------------------------------------------------------------------
def mix_config(**augment):
    return config_from_dict({"data": {"name": "digits", "augment": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                                                                     **augment}},
                             "train": {"label_smoothing": 0.1}})


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_soft_targets_reach_the_loss(mode):
    from timm.loss import SoftTargetCrossEntropy

    transform, criterion = build_batch_ops(mix_config(mixup_mode=mode), num_classes=10)
    assert isinstance(transform, MixBatch) and isinstance(criterion, SoftTargetCrossEntropy)
    np.random.seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    before = x.clone()
    x, target = transform(x, y)
    assert target.shape == (8, 10) and target.dtype == torch.float32
    assert torch.allclose(target.sum(1), torch.ones(8))
    assert not torch.equal(x, before)  # mixed (prob 1)
    logits = torch.randn(8, 10)
    expected = (-target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    assert torch.allclose(criterion(logits, target), expected)


@pytest.mark.parametrize("n", [1, 7])
def test_odd_batch_leaves_the_last_sample_unmixed(n):
    transform, _ = build_batch_ops(mix_config(), num_classes=10)
    np.random.seed(1)
    x, y = torch.randn(n, 1, 8, 8), torch.arange(n)
    last = x[-1].clone()
    x, target = transform(x, y)
    assert target.shape == (n, 10) and torch.allclose(target.sum(1), torch.ones(n))
    assert torch.equal(x[-1], last)
    smooth = torch.full((10,), 0.01)
    smooth[n - 1] = 0.91
    assert torch.allclose(target[-1], smooth)


def test_without_mixup_labels_stay_integers():
    cfg = config_from_dict({"data": {"name": "digits", "augment": {"re_prob": 0.1}}, "train": {"label_smoothing": 0.2}})
    transform, criterion = build_batch_ops(cfg, num_classes=10)
    assert transform is None
    logits, y = torch.randn(5, 10), torch.arange(5)
    assert torch.allclose(criterion(logits, y), F.cross_entropy(logits, y, label_smoothing=0.2))


def test_trainer_trains_with_mixup_and_an_odd_last_batch():
    cfg = config_from_dict({
        "model": {"name": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
        "data": {"name": "digits", "val_fraction": 0.2, "augment": {"scale_min": 0.8, "mixup_alpha": 0.4}},
        "oialr": {"delay": 0.5, "update_frequency": 5},
        "train": {"epochs": 1, "batch_size": 95, "seed": 0}})
    trainer = Trainer(cfg, log=None)
    assert isinstance(trainer.batch_transform, MixBatch)
    assert len(trainer.data.train) % 95 % 2 == 1  # every batch is odd, the last one too
    res = trainer.fit()
    assert res.steps == 16 and np.isfinite(res.val_loss)


def test_resume_with_timm_and_mixup_equals_uninterrupted(tmp_path):
    from oialr_search.training import train

    cfg = config_from_dict({
        "model": {"name": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
        "data": {"name": "digits", "val_fraction": 0.2, "augment": {"auto_augment": "rand-m9-mstd0.5",
                                                                    "re_prob": 0.25, "cutmix_alpha": 1.0}},
        "oialr": {"delay": 0.3, "update_frequency": 5}, "train": {"epochs": 3, "batch_size": 128, "seed": 2}})
    full = train(cfg, log=None)
    ckpt = tmp_path / "run.ckpt"
    Trainer(cfg, checkpoint=ckpt, log=None).fit(stop_after=1)
    resumed = Trainer(cfg, checkpoint=ckpt, resume=True, log=None).fit()
    assert resumed.val_loss == pytest.approx(full.val_loss, abs=1e-6) and resumed.final_ranks == full.final_ranks


# -- the config section -----------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "enabled", "pipeline"), [(True, True, "shift"), (False, False, "timm"),
                                                             (None, False, "timm"), ({}, True, "timm")])
def test_bool_and_empty_sections_still_load(value, enabled, pipeline):
    cfg = config_from_dict({"data": {"name": "digits", "augment": value}})
    assert (cfg.data.augment.enabled, cfg.data.augment.pipeline) == (enabled, pipeline)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)


def test_augment_true_is_the_previous_shift_and_flip():
    from oialr_search.training import DataConfig

    assert DataConfig(augment=True).augment == AugmentConfig(enabled=True, pipeline="shift")
    assert config_from_dict({"data": {"name": "digits"}}).data.augment == AugmentConfig.off()
    cfg = config_from_dict({"model": {"name": "mlp"}, "data": {"name": "digits", "augment": True}})
    assert hash(cfg.data.augment) == hash(AugmentConfig(enabled=True, pipeline="shift"))  # the search's data cache key
    trainer = Trainer(cfg, log=None)
    assert trainer.train_batches.augment is not None and trainer.batch_transform is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"augment": "yes"}, "data.augment: expected true, false or a mapping of augmentation keys, got 'yes'"),
        ({"augment": {"re_prob": 2}}, "data.augment.re_prob: must be in [0, 1], got 2"),
        ({"augment": {"re_porb": 0.2}}, "data.augment.re_porb: unknown key (did you mean 're_prob'?)"),
        ({"augment": {"pipeline": "gpu"}}, "data.augment.pipeline: must be one of timm, shift, got 'gpu'"),
        ({"augment": {"auto_augment": "rand-zz9"}}, "data.augment.auto_augment: 'rand-zz9' is not a timm policy"),
        ({"augment": {"scale_min": 0}}, "data.augment.scale_min: need 0 < scale_min <= scale_max <= 1"),
        ({"augment": {"scale_min": 0.9, "scale_max": 0.5}}, "data.augment.scale_max: need 0 < scale_min"),
        ({"augment": {"ratio_min": -1}}, "data.augment.ratio_min: need 0 < ratio_min <= ratio_max"),
        ({"augment": {"mixup_alpha": -0.1}}, "data.augment.mixup_alpha: must be >= 0, got -0.1"),
        ({"augment": {"mixup_mode": "pixel"}}, "data.augment.mixup_mode: must be one of batch, pair, elem"),
        ({"augment": {"interpolation": "cubic"}}, "data.augment.interpolation: must be one of"),
        ({"augment": {"crop_pct": 1.5}}, "data.augment.crop_pct: must be in (0, 1]"),
        ({"augment": {"hflip": "yes"}}, "data.augment.hflip: expected float or NoneType, got 'yes'"),
        ({"augment": {"pipeline": "shift", "auto_augment": "rand-m9"}},
         "data.augment.auto_augment: not applied by the shift pipeline"),
        ({"num_workers": -2}, "data.num_workers: must be >= 0, or -1 or null for auto, got -2"),
        ({"name": "imagefolder", "path": "x", "on_device": True}, "data.on_device: imagefolder is read from files"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"name": "digits", **data}})
    assert message in str(info.value) and "\n" not in str(info.value)
