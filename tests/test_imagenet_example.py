"""docs/imagenet-example.md: its four command blocks, run in order on a tiny synthetic ImageNet-shaped folder (slow),
and the recipes' `official_sampling` (fast)."""

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "imagenet-example.md"
STEPS = ("extract", "train", "sample", "evaluate")

# The only changes the toy run makes to the doc's commands; each `old` must occur exactly once in its block.
TOY = {
    "extract": [("--num_processes 8", "--num_processes 2"),
                ("--resolution 256", "--resolution 64 --shard-size 16")],
    "train": [("--num_processes 8", "--num_processes 2")],
    "sample": [("--num_processes 8", "--num_processes 2"),
               ("--num-samples 50000 --batch-size 125", "--num-samples 20 --batch-size 5")],
    "evaluate": [],
}
# a tiny DiCo for 3 classes of 8x8 latents (sample_size: the size the saved pipeline samples at), 4 steps of batch 4
TOY_TRAINING = ("model=dico-tiny model_overrides.num_classes=3 model_overrides.sample_size=8 train_batch_size=4 "
                "max_train_steps=4 dataloader_num_workers=0 sample_num_inference_steps=4 report_to=null")
CLASSES, PER_CLASS, SIZE, N_SAMPLES = 3, 8, 64, 20


def doc_commands() -> dict:
    """step -> the bash block that follows `<!-- imagenet-example: step -->` in the doc."""
    blocks = dict(re.findall(r"<!-- imagenet-example: (\w+) -->\s*```bash\n(.*?)```", DOC.read_text(), re.S))
    assert list(blocks) == list(STEPS), f"{DOC.name} must hold the blocks {STEPS} in order, found {list(blocks)}"
    return blocks


def toy_command(step: str, block: str) -> str:
    for old, new in TOY[step]:
        assert block.count(old) == 1, f"the {step} block of {DOC.name} no longer holds {old!r} once"
        block = block.replace(old, new)
    return block.rstrip() + (f" {TOY_TRAINING}" if step == "train" else "") + "\n"


def test_the_doc_gives_the_official_protocol():
    blocks = doc_commands()
    assert "extract-latents --data data/imagenet/train" in blocks["extract"]
    assert "--no-flip" not in blocks["extract"]
    assert "--config configs/dico-xl-imagenet256.yaml" in blocks["train"]
    for flag in ("--num-samples 50000", "--guidance-scale 1.4", "--resume", "--pipeline outputs/dico-xl-imagenet256/"):
        assert flag in blocks["sample"]
    assert "--steps" not in blocks["sample"] and "--scheduler" not in blocks["sample"]  # the pipeline's own sampler
    for flag in ("VIRTUAL_imagenet256_labeled.npz", "--sfid", "--inception-score", "--precision-recall",
                 "--inception-classifier"):
        assert flag in blocks["evaluate"]


def test_every_imagenet_recipe_saves_the_official_sampler():
    from convdiff.pipelines.schedulers import adm_scheduler
    from convdiff.registry import create_model
    from convdiff.training.config import load_config
    from convdiff.training.objectives import make_objective
    from convdiff.training.samples import build_pipeline

    recipes = sorted((ROOT / "configs").glob("*-imagenet256.yaml"))
    assert len(recipes) == 9
    for recipe in recipes:
        config = load_config(recipe)
        assert config.official_sampling and config.objective == "epsilon", recipe.name
    # the pipeline training saves: ADM's sampler and DiCo's sampling defaults, as a converted checkpoint
    config = load_config(ROOT / "configs/dico-xl-imagenet256.yaml", ["model=dico-tiny", "vae=null"])
    model = create_model("dico-tiny")
    pipeline = build_pipeline(model, make_objective("epsilon", True, pixel_space=False), config)
    assert dict(pipeline.scheduler.config) == dict(adm_scheduler(learned_sigma=True).config)
    pipeline.scheduler.set_timesteps(250)
    steps = pipeline.scheduler.timesteps.tolist()
    assert steps[:3] == [999, 995, 991] and steps[-1] == 0 and len(steps) == 250
    assert pipeline.config.sampling_defaults == dict(num_inference_steps=250, guidance_channels=3,
                                                     guidance_scale=1.5, guidance_schedule="constant")
    # without it, training keeps diffusers' "leading" spacing (996, 992, ...)
    plain = build_pipeline(model, make_objective("epsilon", True, pixel_space=False),
                           load_config(None, ["model=dico-tiny"]))
    plain.scheduler.set_timesteps(250)
    assert plain.scheduler.timesteps[:2].tolist() == [996, 992] and not plain.config.get("sampling_defaults")


@pytest.mark.parametrize("overrides, expected", [
    (["objective=flow"], "needs task 'denoise' and objective 'epsilon'"),
    (["model=dit-tiny"], "No official checkpoint format is known"),
])
def test_official_sampling_refuses_what_it_cannot_sample(overrides, expected):
    from convdiff.training.config import load_config

    with pytest.raises(ValueError, match=expected):
        load_config(None, ["model=dico-tiny", "official_sampling=true", *overrides])


def tiny_vae(folder: Path):
    """A random AutoencoderKL that downsamples 8x like SD's (64 px -> 4x8x8)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,) * 4, layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(folder)


def synthetic_imagenet(root: Path):
    """The layout of docs/imagenet-example.md step 0, at toy size, in `root`."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "data/imagenet/train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)
    tiny_vae(root / "models/sd-vae-ft-ema")
    np.savez(root / "data/VIRTUAL_imagenet256_labeled.npz",
             arr_0=rng.integers(0, 256, (N_SAMPLES, SIZE, SIZE, 3), dtype=np.uint8))
    torch.save({"fc.weight": torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05},
               root / "models/pt_inception-2015-12-05-6726825d.pth")
    (root / "configs").symlink_to(ROOT / "configs")


def run(command: str, cwd: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    start = time.monotonic()
    result = subprocess.run(["bash", "-ec", command], cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{command}\nfailed:\n{result.stderr[-4000:]}"
    print(f"{command.split(' -m ')[-1].split()[:2]}: {time.monotonic() - start:.0f} s")
    return result


@pytest.mark.slow
def test_the_worked_example_runs_end_to_end_on_a_tiny_imagenet(tmp_path):
    from convdiff.data.latent_shards import LatentShardDataset, read_index
    from convdiff.pipelines import ClassConditionalPipeline

    synthetic_imagenet(tmp_path)
    commands = {step: toy_command(step, block) for step, block in doc_commands().items()}

    extracted = run(commands["extract"], tmp_path)
    latents = tmp_path / "data/imagenet256-sd-vae-ft-ema-latents"
    index = read_index(latents)
    assert [s["count"] for s in index["shards"]] == [16, 8] and index["flip"] is True
    assert index["vae"] == "models/sd-vae-ft-ema" and index["resolution"] == SIZE
    data = LatentShardDataset(latents)
    assert len(data) == CLASSES * PER_CLASS and data.has_flip_pairs and data.num_classes == CLASSES
    assert data.sample_shape == (4, 8, 8)
    assert "process 1 of 2: 1 shard(s) to encode" in extracted.stderr, extracted.stderr[-2000:]

    trained = run(commands["train"], tmp_path)
    assert "2 process(es)" in trained.stderr, trained.stderr[-2000:]
    folder = tmp_path / "outputs/dico-xl-imagenet256/pipeline"
    pipeline = ClassConditionalPipeline.from_pretrained(folder)
    scheduler = pipeline.scheduler.config
    assert scheduler.timestep_spacing == "linspace" and scheduler.clip_sample is False
    assert scheduler.variance_type == "learned_range"
    pipeline.scheduler.set_timesteps(250)
    assert pipeline.scheduler.timesteps[:3].tolist() == [999, 995, 991] and pipeline.scheduler.timesteps[-1] == 0
    assert pipeline.config.sampling_defaults["guidance_channels"] == 3
    assert pipeline.config.sampling_defaults["guidance_scale"] == 1.5
    assert pipeline.transformer.config.num_classes == CLASSES and pipeline.vae is not None

    sampled = run(commands["sample"], tmp_path)
    assert "written (2 process(es))" in sampled.stdout, sampled.stdout[-2000:]
    assert "250 steps, guidance 1.4 (constant, 3 channels)" in sampled.stdout
    assert "process 0: sampled 10 of 20" in sampled.stderr and "process 1: sampled 10 of 20" in sampled.stderr
    with np.load(tmp_path / "samples/dico-xl-cfg1.4.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (N_SAMPLES, SIZE, SIZE, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.arange(N_SAMPLES) % CLASSES)
    again = run(commands["sample"], tmp_path)  # the same command after the run: nothing is sampled twice
    assert "20 samples was already complete" in again.stdout, again.stdout[-2000:]

    evaluated = run(commands["evaluate"], tmp_path)
    figures = dict(re.findall(r"^(Inception Score|FID|sFID|Precision|Recall): (\S+)$", evaluated.stdout, re.M))
    assert set(figures) == {"Inception Score", "FID", "sFID", "Precision", "Recall"}, evaluated.stdout
    values = {name: float(value) for name, value in figures.items()}
    assert all(math.isfinite(v) for v in values.values())
    assert values["FID"] > 0 and values["sFID"] > 0 and values["Inception Score"] >= 1
    assert 0 <= values["Precision"] <= 1 and 0 <= values["Recall"] <= 1
    assert f"N_samples={N_SAMPLES} N_reference={N_SAMPLES}" in evaluated.stdout
