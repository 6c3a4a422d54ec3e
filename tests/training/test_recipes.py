"""The bundled run configs (the paper's recipes) and the search spaces built on them."""

import json
from pathlib import Path

import pytest
import torch

from oialr_search.cli import main
from oialr_search.search import load_space
from oialr_search.training import bundled_configs, create_model, load_config, resolve_config_path

from .test_augment import write_cifar, write_imagefolder

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
RECIPES = ("cifar10_mini_vit", "imagenet_vit_b16", "imagenet_resnetrs101")


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_configs_load_and_validate(name):
    load_config(resolve_config_path(name))


def test_recipes_are_the_papers():
    c10, vit, rs = (load_config(resolve_config_path(name)) for name in RECIPES)
    assert c10.model.name == "mini_vit" and c10.model.kwargs == {
        "embed_dim": 768, "depth": 6, "num_heads": 6, "patch_size": 8, "mlp_ratio": 4.0, "qkv_bias": False,
        "drop_rate": 0.1}
    a = c10.data.augment
    assert (a.auto_augment, a.scale_min, a.scale_max, a.re_prob) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.25)
    assert (c10.optim.lr, c10.optim.weight_decay, c10.train.label_smoothing, c10.data.img_size) == (2e-4, 0.01, 0.1, 32)
    assert vit.train.epochs == rs.train.epochs == 125 and vit.data.img_size == rs.data.img_size == 160
    assert rs.model.name == "resnetrs101" and rs.data.augment.mixes and not vit.data.augment.mixes
    for cfg in (c10, vit, rs):
        assert cfg.train.precision == "auto" and cfg.data.num_workers is None


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_models_build(name):
    cfg = load_config(resolve_config_path(name))
    classes = 10 if cfg.data.name == "cifar10" else 1000
    with torch.device("meta"):  # the shapes, without spending time or memory on the weights
        model = create_model(cfg.model.name, num_classes=classes, in_chans=3, img_size=cfg.data.img_size,
                             **cfg.model.kwargs)
    assert model(torch.empty(2, 3, cfg.data.img_size, cfg.data.img_size, device="meta")).shape == (2, classes)


@pytest.mark.parametrize("name", ["cifar10_mini_vit", "imagenet_vit_b16", "imagenet_resnetrs101"])
def test_search_spaces_use_the_recipes(name):
    space = load_space(SPACES / f"{name}.yaml")
    assert space.raw["base"] == name
    assert space.start_params()  # the first trial is the recipe itself: its values lie inside the space
    with_path = space.with_overrides(["data.path=/elsewhere"])
    assert with_path.base["data"]["path"] == "/elsewhere"


def tiny_mini_vit(path):
    return ["--set", f"data.path={path}", "--set", "model.kwargs.embed_dim=24", "--set", "model.kwargs.depth=1",
            "--set", "model.kwargs.num_heads=2", "--set", "train.epochs=1", "--set", "train.batch_size=32",
            "--set", "train.eval_batch_size=20", "--set", "train.device=cpu", "--set", "oialr.delay=0.5",
            "--set", "oialr.update_frequency=1"]


def test_train_cifar10_mini_vit_recipe_on_a_tiny_folder(tmp_path, capsys):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "m.json"
    assert main(["train", "cifar10_mini_vit", *tiny_mini_vit(folder), "--out", str(out)]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["steps"] == 4 and metrics["trainable_fraction"] < 1.0  # 100 images at 32: past the switch
    assert metrics["config"]["data"]["augment"]["auto_augment"] == "rand-m9-mstd0.5-inc1"


def test_train_imagenet_resnetrs101_recipe_with_mixup_on_a_tiny_folder(tmp_path, capsys):
    """The ImageNet recipes' data path (ImageFolder, timm transforms, Mixup) with a small timm model."""
    folder = write_imagefolder(tmp_path / "imagenet", per_class=5)
    args = ["--set", f"data.path={folder}", "--set", "model.name=resnet10t", "--set", "model.kwargs={}",
            "--set", "data.img_size=32", "--set", "train.epochs=1", "--set", "train.batch_size=5",
            "--set", "train.device=cpu", "--set", "oialr.update_frequency=1"]
    assert main(["train", "imagenet_resnetrs101", *args, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["top1"] >= 0.0


@pytest.mark.parametrize(("item", "message"), [
    ("data.augment.re_prob=2", "data.augment.re_prob: must be in [0, 1], got 2"),
    ("data.augment=sometimes", "data.augment: expected true, false or a mapping of augmentation keys"),
])
def test_bad_augment_value_exits_2_naming_the_key(item, message, capsys):
    assert main(["train", "cifar10_mini_vit", "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
