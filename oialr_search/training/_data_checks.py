"""Checks of a data set on disk that read no image (and need no torch): what ``run`` judges before it
creates a study, and what the loaders say first when a set is not where, or not what, it should be."""

from __future__ import annotations

import os
from pathlib import Path

from ..exceptions import DataError

CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def image_classes(folder: Path) -> list[str]:
    """The class folders of an ImageFolder split, sorted: its subfolders but hidden ones (a stray
    ``.ipynb_checkpoints`` is no class)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"data.path: cannot list {folder} ({exc.strerror or exc})") from None


def check_data_source(name: str, path: str | None) -> None:
    """Raise DataError when the on-disk data set ``name`` is not at ``path`` in its layout; the embedded
    sets pass. Files are looked at, not read: a damaged file is found when the set is loaded."""
    root = Path(path or "")
    if name == "cifar10":
        if not root.is_dir():
            raise DataError(f"data.path: {root} is not a folder with the CIFAR-10 python batches")
        missing = [f for f in CIFAR_FILES if not (root / f).is_file()]
        if missing:
            raise DataError(f"data.path: {root} lacks {', '.join(missing)}; expected the CIFAR-10 python batches "
                            "(data_batch_1..5, test_batch)")
    elif name == "imagefolder":
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DataError(f"data.path: {root / split} missing; expected {root}/train/<class>/… "
                                f"and {root}/val/<class>/…")
        train, val = image_classes(root / "train"), image_classes(root / "val")
        if train != val:
            only = [f"only in {split}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                    for split, names in (("train", sorted(set(train) - set(val))),
                                         ("val", sorted(set(val) - set(train)))) if names]
            raise DataError(f"data.path: train and val of {root} have different class folders ({'; '.join(only)})")
        if len(train) < 2:
            raise DataError(f"data.path: {root}/train has {len(train)} class folder(s); a classifier needs 2 or more")
