"""A converted official checkpoint samples as the official sample scripts do, without arguments.

The expected values are ADM's formulas (Nichol & Dhariwal 2021, arXiv 2102.09672; the sampler of DiT, DiC, DiCo
and DiffiT), written out here independently of diffusers: the respaced timesteps, the posterior mean from the
predicted ε, the learned-range log-variance, and classifier-free guidance on the first 3 latent channels.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from test_convert import random_official
from test_diffit import official_layout

from convdiff.cli import main
from convdiff.convert import convert_official_to_folder
from convdiff.pipelines import ClassConditionalPipeline

NUM_CLASSES = 10  # the tiny official state dicts have 10 classes + the null row


def adm_timesteps(num_timesteps=1000, steps=250):
    """ADM's space_timesteps(T, "N") with one section: N indices evenly strided over 0..T-1, rounded; reversed."""
    stride = (num_timesteps - 1) / (steps - 1)
    taken, index = [], 0.0
    for _ in range(steps):
        taken.append(round(index))
        index += stride
    return sorted(set(taken), reverse=True)


def convert(tmp_path, family, **kwargs):
    path = tmp_path / "official.pt"
    if family == "diffit-tiny":
        torch.save(official_layout(classes=NUM_CLASSES), path)
    else:
        torch.save({"ema": random_official(family)}, path)
    return convert_official_to_folder(path, tmp_path / "converted", model=family, sample_size=8, **kwargs)


def power_cosine(t, s_max):
    # DiffiT's 256px guidance (MDT's schedule): 1 + (s_max - 1) * (1 - cos(pi * (1 - t / 1000) ** 4)) / 2
    return 1 + (s_max - 1) * 0.5 * (1 - math.cos(math.pi * (1 - t / 1000) ** 4))


def adm_reverse_step(model, x, t, t_prev, labels, scale, noise):
    """One guided ADM step x_t -> x_{t_prev} in float64, from the model's raw output; t_prev None: the last step."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_t = abar[t]
    abar_prev = torch.tensor(1.0, dtype=torch.float64) if t_prev is None else abar[t_prev]
    beta = 1 - abar_t / abar_prev  # the respaced beta
    batch = x.shape[0]
    with torch.no_grad():
        out = model(torch.cat([x, x]), torch.full((2 * batch,), t),
                    torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])).sample.double()
    cond, uncond = out[:batch], out[batch:]
    eps = cond[:, :4].clone()
    eps[:, :3] = uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3])  # channel 3 stays conditional
    v = cond[:, 4:]  # the variance channels come from the conditional half
    x = x.double()
    x0 = torch.sqrt(1 / abar_t) * x - torch.sqrt(1 / abar_t - 1) * eps
    mean = beta * torch.sqrt(abar_prev) / (1 - abar_t) * x0 + (1 - abar_prev) * torch.sqrt(1 - beta) / (1 - abar_t) * x
    if t_prev is None:
        return mean  # ADM adds no noise on the last step
    posterior_variance = beta * (1 - abar_prev) / (1 - abar_t)
    frac = (v + 1) / 2
    log_variance = frac * torch.log(beta) + (1 - frac) * torch.log(posterior_variance)
    return mean + torch.exp(0.5 * log_variance) * noise.double()


@pytest.mark.parametrize("family,defaults", [
    ("dico-tiny", dict(guidance_scale=1.5, guidance_schedule="constant")),
    ("dic-tiny", dict(guidance_scale=1.5, guidance_schedule="constant")),
    ("diffit-tiny", dict(guidance_scale=4.4, guidance_schedule="power-cosine")),
])
def test_converted_folder_takes_one_official_reverse_step_without_arguments(tmp_path, family, defaults):
    pipe = ClassConditionalPipeline.from_pretrained(convert(tmp_path, family))
    assert pipe.config.sampling_defaults == dict(num_inference_steps=250, guidance_channels=3, **defaults)
    scheduler = pipe.scheduler
    assert isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type == "learned_range"
    assert scheduler.config.clip_sample is False and scheduler.config.prediction_type == "epsilon"
    scheduler.set_timesteps(250)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == adm_timesteps() and timesteps[:4] == [999, 995, 991, 987] and timesteps[-1] == 0
    leading = DDPMScheduler()  # diffusers' default spacing differs on most steps: why the folder sets linspace
    leading.set_timesteps(250)
    assert leading.timesteps[0] == 996 and sum(a != b for a, b in zip(leading.timesteps.tolist(), timesteps)) > 200

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 7])
    steps = trajectory(pipe, x, labels, 0)  # the first step, with nothing but the labels given
    scale = defaults["guidance_scale"] if defaults["guidance_schedule"] == "constant" else power_cosine(999, 4.4)
    expected = adm_reverse_step(pipe.transformer, x, 999, 995, labels, scale, step_noise(0))
    torch.testing.assert_close(steps[0].double(), expected, rtol=1e-5, atol=1e-5)
    # late in a run beta_t and the posterior variance differ, so the learned-range mix shows: 10 steps, 111 -> 0
    scheduler.set_timesteps(10)
    short = scheduler.timesteps.tolist()
    assert short == adm_timesteps(steps=10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    late = 8
    steps = trajectory(pipe, x, labels, late + 1, num_inference_steps=10)
    scale = defaults["guidance_scale"] if defaults["guidance_schedule"] == "constant" else power_cosine(111, 4.4)
    expected = adm_reverse_step(pipe.transformer, steps[late - 1], 111, 0, labels, scale, step_noise(late))
    torch.testing.assert_close(steps[late].double(), expected, rtol=1e-4, atol=1e-4)  # a random model: |latents| grow to ~1e3
    scale = defaults["guidance_scale"] if defaults["guidance_schedule"] == "constant" else power_cosine(0, 4.4)
    expected = adm_reverse_step(pipe.transformer, steps[late], 0, None, labels, scale, None)
    torch.testing.assert_close(steps[late + 1].double(), expected, rtol=1e-4, atol=1e-4)  # the last step, 0 -> x0
    # a fixed variance (diffusers' DDPM default) misses it: the check above sees the learned range
    fixed = trajectory(pipe, x, labels, late, num_inference_steps=10,
                       scheduler=DDPMScheduler.from_config(scheduler.config, variance_type="fixed_small"))
    assert (fixed[late] - steps[late]).abs().max() > 0.1
    # guiding all 4 channels (diffusers' rule) changes channel 3: the check above sees the 3-channel rule
    everything = trajectory(pipe, x, labels, 0, guidance_channels=4, guidance_scale=4.0, guidance_schedule="constant")[0]
    three = adm_reverse_step(pipe.transformer, x, 999, 995, labels, 4.0, step_noise(0))
    torch.testing.assert_close(everything[:, :3].double(), three[:, :3], rtol=1e-5, atol=1e-5)
    assert (everything[:, 3].double() - three[:, 3]).abs().max() > 1e-4


SEEDS = (5, 6)


def step_noise(k):
    """The noise of step k: each sample's generator (seeded SEEDS) draws once per step when latents are given."""
    draws = []
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        draws.append([torch.randn(1, 4, 8, 8, generator=generator) for _ in range(k + 1)][k])
    return torch.cat(draws)


def trajectory(pipe, x, labels, last, scheduler=None, **kwargs):
    """The latents after steps 0..last of a call with only these arguments (the rest: the folder's defaults)."""
    seen = []

    def record(pipe, i, t, tensors):
        seen.append(tensors["latents"].clone())
        pipe._interrupt = i >= last
        return tensors

    original = pipe.scheduler
    pipe.scheduler = scheduler or original
    try:
        pipe(class_labels=labels.tolist(), latents=x, generator=[torch.Generator().manual_seed(s) for s in SEEDS],
             output_type="latent", callback_on_step_end=record, **kwargs)
    finally:
        pipe.scheduler = original
    assert len(seen) == last + 1
    return seen


def test_diffit_512_folder_guides_with_a_constant_scale(tmp_path):
    path = tmp_path / "official.pt"
    torch.save(official_layout(classes=NUM_CLASSES, grid=32), path)  # latent 64 = 512 px
    out = convert_official_to_folder(path, tmp_path / "converted", model="diffit-tiny", sample_size=64)
    pipe = ClassConditionalPipeline.from_pretrained(out)
    assert pipe.config.sampling_defaults == dict(num_inference_steps=250, guidance_channels=3, guidance_scale=1.49,
                                                 guidance_schedule="constant")


def tiny_vae(folder):
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(folder)
    return folder


def test_convdiff_sample_uses_the_folder_defaults(tmp_path, capsys):
    out = convert(tmp_path, "dico-tiny", vae=tiny_vae(tmp_path / "vae"))
    assert (out / "vae/config.json").is_file()
    npz = tmp_path / "samples.npz"
    assert main(["sample", "--pipeline", str(out), "--output", str(npz), "--num-samples", "2"]) == 0
    assert "DDPMScheduler 250 steps, guidance 1.5 (constant, 3 channels)" in capsys.readouterr().out
    pipe = ClassConditionalPipeline.from_pretrained(out)
    images = pipe(class_labels=[0, 1], generator=[torch.Generator().manual_seed(i) for i in (0, 1)],
                  output_type="np").images
    with np.load(npz) as data:
        np.testing.assert_array_equal(data["arr_0"], (images * 255).round().clip(0, 255).astype(np.uint8))
    # the options override the folder's defaults
    other = tmp_path / "other.npz"
    assert main(["sample", "--pipeline", str(out), "--output", str(other), "--num-samples", "1", "--steps", "3",
                 "--guidance-scale", "2", "--guidance-channels", "all", "--guidance-schedule", "power-cosine"]) == 0
    assert "DDPMScheduler 3 steps, guidance 2.0 (power-cosine, 4 channels)" in capsys.readouterr().out


def test_a_latent_pipeline_without_vae_is_refused_clearly(tmp_path, capsys):
    out = convert(tmp_path, "dico-tiny")
    assert main(["sample", "--pipeline", str(out), "--output", str(tmp_path / "x.npz"), "--num-samples", "1"]) == 2
    error = capsys.readouterr().err
    assert "no VAE" in error and "--vae" in error and not (tmp_path / "x.npz").exists()


def test_sample_model_gets_the_official_scheduler_without_clipping():
    from convdiff.apps.sample import load_pipeline

    config = load_pipeline(model="dico-tiny").scheduler.config
    assert config.clip_sample is False and config.timestep_spacing == "linspace"
    assert config.variance_type == "learned_range"


def test_sampling_defaults_reject_unknown_keys():
    from convdiff.pipelines.schedulers import adm_scheduler
    from convdiff.registry import create_model

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['steps'\]"):
        ClassConditionalPipeline(create_model("dico-tiny"), adm_scheduler(), sampling_defaults={"steps": 250})
