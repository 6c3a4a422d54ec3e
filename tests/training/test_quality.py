"""OIALR vs the full-rank baseline on the embedded MNIST data (a weak, fast version of the
acceptance check; the full-size figures are in the trainer issue's note)."""

from oialr_search.training import config_from_dict, train


def test_oialr_close_to_full_rank_with_fewer_trainable_parameters():
    base = {
        "model": {"name": "mini_vit", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 4}},
        "data": {"name": "mnist"},
        "optim": {"lr": 0.002},
        "train": {"epochs": 4, "batch_size": 64, "seed": 0},
        "oialr": {"delay": 0.33, "update_frequency": 30},
    }
    full = train(config_from_dict({**base, "oialr": {**base["oialr"], "enabled": False}}), log=None)
    ours = train(config_from_dict(base), log=None)
    assert full.top1 > 60.0  # the baseline learned something, so the comparison means something
    assert ours.trainable_fraction <= 0.40
    assert ours.top1 >= full.top1 - 8.0
