"""The study shared by the tests of what a user takes away: kept weights, load_model, compact exports."""

from pathlib import Path

import pytest

from ._study import search, write_space


@pytest.fixture(scope="session")
def front_study(tmp_path_factory) -> Path:
    """Study 'front' (maximize top1, minimize trainable_fraction; keep_weights: front by default), 8 trials."""
    folder = tmp_path_factory.mktemp("front")
    write_space(folder)
    search(folder, "front", 8)
    return folder
