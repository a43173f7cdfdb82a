"""The learning-rate recipe follows the model's starting point (issue 12 item 1): random backbone ->
"scratch" (lr 1e-3, backbone factor 1), pretrained backbone -> the paper's (lr 3e-4, factor 1e-3);
explicit values always win, and the choice is printed and saved in the run folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from sgmn.train.config import RECIPES, TrainConfig, starts_pretrained


def _model(pretrained):
    return SimpleNamespace(config=SimpleNamespace(vision=SimpleNamespace(pretrained=pretrained)))


def test_auto_recipe_follows_the_backbone_start():
    assert not starts_pretrained(_model(None)) and starts_pretrained(_model("/some/clip"))
    scratch, line = TrainConfig().resolve_recipe(starts_pretrained(_model(None)))
    assert (scratch.recipe, scratch.lr, scratch.backbone_lr_factor) == ("scratch", 1e-3, 1.0)
    assert "random weights" in line and "scratch" in line
    paper, line = TrainConfig().resolve_recipe(starts_pretrained(_model("/some/clip")))
    assert (paper.recipe, paper.lr, paper.backbone_lr_factor) == ("paper", 3e-4, 1e-3)
    assert "pretrained" in line
    assert RECIPES["paper"] == {"lr": 3e-4, "backbone_lr_factor": 1e-3}
    assert not TrainConfig().is_resolved and scratch.is_resolved


def test_explicit_values_win_over_the_recipe():
    cfg, line = TrainConfig(lr=5e-4).resolve_recipe(False)
    assert (cfg.lr, cfg.backbone_lr_factor) == (5e-4, 1.0) and "explicit lr" in line
    cfg, _ = TrainConfig(backbone_lr_factor=0.1).resolve_recipe(True)
    assert (cfg.lr, cfg.backbone_lr_factor) == (3e-4, 0.1)
    # a recipe named explicitly is used whatever the backbone
    cfg, line = TrainConfig(recipe="paper").resolve_recipe(False)
    assert (cfg.lr, cfg.backbone_lr_factor) == (3e-4, 1e-3) and "set explicitly" in line
    # `--set train.lr=...` and config JSON go through with_overrides / from_dict
    cfg = TrainConfig().with_overrides({"lr": "2e-4", "recipe": "scratch"})
    assert cfg.resolve_recipe(True)[0].lr == 2e-4
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="fast")


def test_trainer_resolves_the_recipe_of_its_model(tmp_path):
    from sgmn.train.loop import Trainer

    from test_train import ToyModel, ToyPairs

    trainer = Trainer(ToyModel(), ToyPairs(), TrainConfig(num_workers=0, batch_size=4), tmp_path / "run")
    assert trainer.config.recipe == "scratch"
    assert {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}["backbone/decay"] == 0.0  # warm-up step 0
    assert trainer.scheduler.base_lrs == [1e-3, 1e-3, 1e-3, 1e-3]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_tour_on_easy_learns_and_logs_its_recipe(tmp_path):
    """`sgmn train --data DATA --format lpr4m --model sgmn-tiny --out RUN --epochs 3`, as the README
    writes it, on `easy`: well above chance (R@1 >= 2x chance; it gave 12.5 = chance under the
    paper's recipe before the recipe followed the starting point). About 2 min on 2 busy cores."""
    import sgmn
    from sgmn.cli import app
    from sgmn.data.readers import read_dataset
    from sgmn.data.synthetic import generate, preset
    from sgmn.eval.protocol import evaluate

    torch.set_num_threads(2)
    data_dir, run = tmp_path / "data", tmp_path / "run"
    generate(data_dir, preset("easy", seed=0), progress=False)
    res = CliRunner().invoke(app, ["train", "--data", str(data_dir), "--format", "lpr4m", "--model", "sgmn-tiny",
                                   "--out", str(run), "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert "recipe 'scratch' (the vision backbone starts from random weights)" in res.output
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["recipe"], saved["lr"], saved["backbone_lr_factor"]) == ("scratch", 1e-3, 1.0)

    metrics = evaluate(sgmn.load_model(run), read_dataset(data_dir, "lpr4m"), split="test", progress=False).metrics
    print(f"\ntour on easy: R@1 {metrics['R@1']:.1f} (chance {metrics['chance_R@1']:.1f})")
    assert metrics["R@1"] >= 2 * metrics["chance_R@1"]


def test_explicit_cli_flags_win_in_the_run_folder(tmp_path):
    """--lr and --set train.backbone_lr_factor reach train_config.json unchanged (one step of training)."""
    from sgmn.cli import app
    from sgmn.data.synthetic import generate, preset

    torch.set_num_threads(2)
    data_dir, run = tmp_path / "data", tmp_path / "run"
    generate(data_dir, preset("easy", seed=0, rooms=2, products_per_room=4, clips_per_product=2,
                              frames_per_clip=2, image_size=48), progress=False)
    res = CliRunner().invoke(app, ["train", "--data", str(data_dir), "--format", "lpr4m", "--model", "clip-meanpool",
                                   "--out", str(run), "--epochs", "1", "--max-steps", "1", "--batch-size", "4",
                                   "--lr", "2e-4", "--set", "train.backbone_lr_factor=0.5",
                                   "--set", "train.num_workers=0", "--set", "train.val_fraction=0"])
    assert res.exit_code == 0, res.output
    assert "kept the explicit lr, backbone_lr_factor" in res.output
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["recipe"], saved["lr"], saved["backbone_lr_factor"]) == ("scratch", 2e-4, 0.5)
