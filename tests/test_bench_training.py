"""The training benchmark's plumbing: matched models and recipe, UNet2DModel in the loop and pipeline, tables."""

import math

import pytest
import torch

from convdiff.apps.benchmarks import training as bt
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.pipelines.class_conditional import class_info
from convdiff.registry import create_model
from convdiff.training.config import load_config
from convdiff.training.labels import conditioning_kwargs, null_class_and_dropout


def _args(tmp_path, *extra):
    return bt.parse_args(["--output-dir", str(tmp_path), "--no-write", *extra])


def test_default_models_match_in_params_and_recipe(tmp_path):
    args = _args(tmp_path)
    runs = [bt.describe_model(bt.build_config(name, args, tmp_path)) for name in bt.DEFAULT_MODELS]
    assert [r.family for r in runs] == ["DiC", "DiCo", "diffusers UNet2DModel", "diffusers DiT"]
    params = [r.params for r in runs]
    assert max(params) / min(params) <= 1.15, params
    assert all(1.5e6 <= p <= 1.9e6 for p in params), params
    # the same recipe for all: no learned sigma, the same label dropout (none)
    assert {r.learn_sigma for r in runs} == {False}
    assert {r.label_dropout for r in runs} == {0.0}
    config = bt.build_config("dic-mnist", args, tmp_path)
    recipe = load_config(bt.DEFAULT_RECIPE)
    assert config.max_train_seconds == 300 and config.train_batch_size == 64 and config.max_train_steps > 10**6
    assert (config.learning_rate, config.max_grad_norm, config.ema_decay) == (recipe.learning_rate, recipe.max_grad_norm,
                                                                          recipe.ema_decay)
    assert "AdamW lr" in bt.recipe_text(config)
    assert config.model_overrides == {"learn_sigma": False, "class_dropout_prob": 0.0}
    assert bt.build_config("unet-mnist", args, tmp_path).model_overrides == {}


def test_unet2d_is_class_conditional_without_null_class():
    unet = create_model("unet-mnist").eval()
    assert null_class_and_dropout(unet) == (10, None, 0.0)
    assert class_info(unet.config) == (10, None)
    labels = torch.tensor([3, 7])
    assert conditioning_kwargs(unet, labels, torch.ones(2, dtype=torch.bool))["class_labels"] is labels
    from diffusers import DDIMScheduler

    pipe = ClassConditionalPipeline(transformer=unet, scheduler=DDIMScheduler(clip_sample=True))
    images = pipe(class_labels=[0, 9], num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="null class"):
        pipe(class_labels=[0], num_inference_steps=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        pipe(class_labels=[10], num_inference_steps=1)


def test_budget_run_of_unet_through_the_training_loop(tmp_path):
    """UNet2DModel trains in the loop, stops on the clock, saves a pipeline; the log and held-out loss read back."""
    from convdiff.training.loop import train

    args = _args(tmp_path, "--budget", "0.01", "--batch-size", "8")
    config = bt.build_config("unet-mnist", args, tmp_path, seed=1)
    assert config.objective == load_config(bt.DEFAULT_RECIPE).objective  # the main job's recipe, not a fixed one
    pipeline_dir = train(config)
    summary = bt.summarize_log(bt.read_training_log(tmp_path / "unet-mnist-seed1"), config.train_batch_size)
    assert summary["steps"] == 1 and summary["train_seconds"] > 0 and math.isfinite(summary["final_loss"])
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    assert class_info(pipe.transformer.config) == (10, None)
    assert math.isfinite(bt.heldout_loss(pipe.transformer, n=16, batch=8, objective_name=config.objective))


def _run(name, family, fid, params=1_700_000, seed=0, accuracy=0.95):
    run = bt.Run(name, family, params, 0.0, False, steps=100, batch_size=64, train_seconds=200.0,
                 final_loss=0.05, heldout_loss=0.04, fid=fid, protocol="p (cached x.npz)", fid_seconds=150.0,
                 accuracy=accuracy, seed=seed)
    return run


def test_table_verdict_and_section_format(tmp_path):
    runs = [_run("dic-mnist", "DiC", 30.0), _run("dico-mnist", "DiCo", 35.0),
            _run("unet-mnist", "diffusers UNet2DModel", 33.0), _run("dit-mnist", "diffusers DiT", 60.0)]
    table = bt.format_table(runs).splitlines()
    assert len(table) == 2 + len(runs) and all(line.count("|") == table[0].count("|") for line in table)
    assert table[2] == "| DiC | dic-mnist | 0 | 1.700M | 100 | 6,400 | 32.0 | 0.0500 | 0.0400 | 30.00 | 95.0% |"
    met, text = bt.verdict(runs)
    assert met is False and "**Target not met**" in text
    assert "DiC beats the best baseline (diffusers UNet2DModel, FID 33.00) by 3.00 FID" in text
    assert "DiCo misses: FID 35.00 is 2.00 (6%) above" in text
    runs[1].fid = 31.0
    assert bt.verdict(runs)[0] is True
    assert bt.verdict(runs[:2])[0] is None

    args = _args(tmp_path)
    section = bt.format_section(runs, args, "cmd", "machine", "2026-01-01", "batch 64, AdamW lr 0.001")
    assert section.startswith("## Training: quality per CPU-second on MNIST (2026-01-01)")
    assert "(dic-mnist-tiny.yaml: batch 64, AdamW lr 0.001)" in section
    assert "`p`" in section and "cached" not in section and "Warning" not in section
    runs[3].label_dropout = 0.1
    assert "**Warning: the recipe differs between models**" in bt.format_section(runs, args, "c", "m", "d")

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nother section\n")
    bt.append_section(section, doc)
    assert doc.read_text().startswith("# Benchmarks\n\nother section\n\n## Training")


def test_seeds_give_mean_and_spread_and_the_verdict_uses_the_means():
    runs = [_run("dic-mnist", "DiC", 30.0, seed=0, accuracy=0.9), _run("dic-mnist", "DiC", 34.0, seed=1, accuracy=1.0),
            _run("unet-mnist", "diffusers UNet2DModel", 33.0)]
    summary = bt.format_seed_summary(runs).splitlines()
    assert summary[2] == "| DiC (dic-mnist) | 2 | 100.00 ± 0.00 | 32.00 ± 0.00 | 32.00 ± 2.83 | 95.00 ± 7.07 |"
    assert summary[3].startswith("| diffusers UNet2DModel (unet-mnist) | 1 |")
    met, text = bt.verdict(runs)  # DiC's mean 32.0 beats 33.0, though seed 1 alone (34.0) would not
    assert met is True and "by 1.00 FID" in text


def test_summarize_log():
    log = {"steps": [1, 2, 3], "loss": [1.0, 0.5, 0.3], "img_per_s": [32.0, 64.0, 64.0]}
    summary = bt.summarize_log(log, 64, last=2)
    assert summary == {"steps": 3, "final_loss": 0.4, "train_seconds": 4.0}
