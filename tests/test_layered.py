"""Layered diffusion: consistent multi-scale noise, shifted schedules, the layered U-Net, its sampler,
LayeredTextToImagePipeline (class and text conditioning, save/load with a tiny local CLIP) and the `layered`
training task. Tiny sizes, everything built locally (nothing is downloaded).
"""

import math

import numpy as np
import pytest
import torch
import yaml

from convdiff.models.layered_unet import LayeredUNetModel, LayeredUNetOutput
from convdiff.diffusion.multiscale import (MultiScaleSchedule, consistent_noise, cosine_log_snr, downsample, image_pyramid,
                                    scale_sizes)
from convdiff.pipelines.layered import LayeredTextToImagePipeline
from convdiff.pipelines.layered_scheduler import LayeredScheduler
from convdiff.pipelines.text_encoders import encode_prompts, load_text_encoder, tiny_text_encoder
from convdiff.registry import create_model

from conftest import randomize_, assert_saved_as_recipe

SIZES = [16, 8]


def tiny_unet(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize_(create_model("layered-unet-tiny", **overrides), seed=seed)


def noisy_inputs(batch=2, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s, generator=g) for s in SIZES]


def text_pipe(seed=0, **overrides):
    tokenizer, encoder = tiny_text_encoder(hidden_size=16, num_layers=1, model_max_length=24)
    unet = tiny_unet(seed, cross_attention_dim=16, **overrides)
    pipe = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=unet.scale_sizes), encoder, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- consistent noise and schedules ---------------------------------------------------------------------
def test_consistent_noise_is_unit_variance_pooled_top_noise():
    noise = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scales = consistent_noise(noise, [32, 16, 8])
    assert torch.equal(scales[0], noise)
    for size, eps in zip([16, 8], scales[1:]):
        factor = 32 // size
        expected = torch.nn.functional.avg_pool2d(noise, factor) * factor
        torch.testing.assert_close(eps, expected, rtol=0, atol=0)
        assert eps.shape == (64, 3, size, size)
        assert abs(eps.var().item() - 1.0) < 0.05 and abs(eps.mean().item()) < 0.02
        # every pixel is the sum of its f*f top pixels divided by f (so the variance is f*f / f^2 = 1)
        torch.testing.assert_close(eps[0, 0, 0, 0], noise[0, 0, :factor, :factor].sum() / factor)


def test_image_pyramid_and_size_errors():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    low = image_pyramid(x, [4, 2])[1]
    torch.testing.assert_close(low, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert scale_sizes(32, 3) == [32, 16, 8]
    with pytest.raises(ValueError, match="halved 3 times"):
        scale_sizes(28, 4)
    with pytest.raises(ValueError, match="whole factor"):
        downsample(torch.zeros(1, 1, 12, 12), 5)


def test_shifted_cosine_schedules():
    t = torch.linspace(0, 1, 11)
    schedule = MultiScaleSchedule([32, 16, 8], base_resolution=64)
    top, mid, low = schedule.log_snr(t)
    # resolution shift: + 2 log(64 / res); lower scales are 2 log 2 higher per halving at every t
    torch.testing.assert_close(top, cosine_log_snr(t) + 2 * math.log(2), rtol=0, atol=1e-9)
    torch.testing.assert_close(mid - top, torch.full_like(t, 2 * math.log(2), dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(low - top, torch.full_like(t, 4 * math.log(2), dtype=torch.float64), rtol=0, atol=1e-9)
    # the unshifted cosine is clipped to [-15, 15] and is -2 log tan(pi t / 2) in between
    endpoints = cosine_log_snr(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(endpoints, torch.tensor([15.0, -15.0], dtype=torch.float64))
    assert bool((top[1:] < top[:-1]).all())  # monotone: more noise as t grows
    for alpha, sigma in schedule.alphas_sigmas(t):
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))


def test_noised_scales_are_the_pooled_top_noisy_image():
    """Consistent noise + the resolution shift make every lower noisy scale a scaled copy of the pooled top one."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 32, 32, generator=g)
    schedule = MultiScaleSchedule([32, 16, 8])
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    noisy = schedule.add_noise(image_pyramid(x0, schedule.sizes), consistent_noise(noise, schedule.sizes), t)
    alphas = [a.float().view(-1, 1, 1, 1) for a, _ in schedule.alphas_sigmas(t)]
    for size, x_s, alpha in zip(schedule.sizes[1:], noisy[1:], alphas[1:]):
        pooled = downsample(noisy[0], size)
        torch.testing.assert_close(x_s, pooled * alpha / alphas[0], rtol=1e-4, atol=1e-5)


# ---- the model --------------------------------------------------------------------------------------------
def test_per_scale_shapes_and_zero_at_init():
    torch.manual_seed(0)
    model = create_model("layered-unet-tiny")
    out = model(noisy_inputs(), torch.tensor([10, 900]), class_labels=torch.tensor([1, 10]))
    assert [tuple(o.shape) for o in out.scales] == [(2, 3, 16, 16), (2, 3, 8, 8)]
    assert out.sample is out.scales[0]
    assert all(not o.any() for o in out.scales)  # zero-initialised heads


def test_list_dict_and_per_scale_timesteps_agree():
    model = tiny_unet().eval()
    xs, labels = noisy_inputs(), torch.tensor([3, 4])
    ref = model(xs, torch.tensor([100, 700]), class_labels=labels).scales
    by_dict = model({8: xs[1], 16: xs[0]}, torch.tensor([100, 700]), class_labels=labels).scales
    per_scale = model(xs, [torch.tensor([100, 700])] * 2, class_labels=labels).scales
    for a, b, c in zip(ref, by_dict, per_scale):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.allclose(model(xs, [torch.tensor([100, 700]), torch.tensor([0, 0])], class_labels=labels).sample,
                              ref[0])


def test_isolated_downsampling_keeps_low_scales_independent_of_the_top_input():
    xs, other_top = noisy_inputs(), noisy_inputs(seed=5)[0]
    for isolated in (True, False):
        model = tiny_unet(isolated_downsampling=isolated).eval()
        a = model(xs, 500, class_labels=[1, 2]).scales
        b = model([other_top, xs[1]], 500, class_labels=[1, 2]).scales
        assert not torch.allclose(a[0], b[0])
        assert torch.equal(a[1], b[1]) == isolated


def test_class_and_text_conditioning_change_the_prediction():
    model = tiny_unet(cross_attention_dim=16).eval()
    xs = noisy_inputs()
    ctx = torch.randn(2, 5, 16)
    base = model(xs, 300, encoder_hidden_states=ctx, class_labels=[1, 1]).sample
    other_class = model(xs, 300, encoder_hidden_states=ctx, class_labels=[2, 2]).sample
    null_class = model(xs, 300, encoder_hidden_states=ctx, class_labels=[10, 10]).sample
    other_text = model(xs, 300, encoder_hidden_states=torch.randn(2, 5, 16), class_labels=[1, 1]).sample
    for changed in (other_class, null_class, other_text):
        assert (changed - base).abs().max() > 1e-6  # small random weights: small but real differences
    dropped = model(xs, 300, encoder_hidden_states=ctx, class_labels=[1, 1], force_drop_ids=torch.tensor([1, 1])).sample
    torch.testing.assert_close(dropped, null_class, rtol=0, atol=0)
    # a padding mask that hides tokens changes the cross-attention result
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    masked = model(xs, 300, encoder_hidden_states=ctx, class_labels=[1, 1], encoder_attention_mask=mask).sample
    assert (masked[0] - base[0]).abs().max() > 1e-6
    torch.testing.assert_close(masked[1], base[1], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    model = tiny_unet()
    xs = noisy_inputs()
    with pytest.raises(ValueError, match=r"no head for resolution\(s\) \[32\]"):
        model({32: torch.zeros(2, 3, 32, 32), 16: xs[0], 8: xs[1]}, 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match="no head for resolution 12x12"):
        model([xs[0], torch.zeros(2, 3, 12, 12)], 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match="in_channels=3 but got 1 channels"):
        model([x[:, :1] for x in xs], 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match="expects 2 noisy images"):
        model(xs[:1], 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match="not a single tensor"):
        model(xs[0], 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match=r"resolution\(s\) \[8\] are missing"):
        model({16: xs[0]}, 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match="no text conditioning"):
        model(xs, 1, class_labels=[0, 0], encoder_hidden_states=torch.zeros(2, 4, 16))
    with pytest.raises(ValueError, match="class-conditional"):
        model(xs, 1)
    text_model = tiny_unet(cross_attention_dim=16)
    with pytest.raises(ValueError, match="text-conditional"):
        text_model(xs, 1, class_labels=[0, 0])
    with pytest.raises(ValueError, match=r"\(batch, tokens, 16\)"):
        text_model(xs, 1, class_labels=[0, 0], encoder_hidden_states=torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match=r"num_scales must lie in \[1, 2\]"):
        create_model("layered-unet-tiny", num_scales=3)


def test_single_scale_model_is_a_plain_unet_taking_a_tensor():
    model = tiny_unet(num_scales=1).eval()
    out = model(torch.randn(2, 3, 16, 16), 5, class_labels=[0, 1])
    assert out.sample.shape == (2, 3, 16, 16) and len(out.scales) == 1


def test_gradient_checkpointing_gives_the_same_gradients():
    xs = noisy_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_unet(cross_attention_dim=16)
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(xs, torch.tensor([100, 200]), encoder_hidden_states=torch.ones(2, 3, 16), class_labels=[0, 1],
                    force_drop_ids=torch.tensor([0, 1])).scales
        sum(o.square().mean() for o in out).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_save_load_identity(tmp_path):
    model = tiny_unet(cross_attention_dim=16).eval()
    model.save_pretrained(tmp_path / "unet")
    loaded = LayeredUNetModel.from_pretrained(tmp_path / "unet")
    xs, ctx = noisy_inputs(), torch.randn(2, 3, 16)
    for a, b in zip(model(xs, 40, encoder_hidden_states=ctx, class_labels=[2, 3]).scales,
                    loaded(xs, 40, encoder_hidden_states=ctx, class_labels=[2, 3]).scales):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.scale_sizes == model.scale_sizes


# ---- the sampler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_ddim_step_with_exact_predictions_lands_on_the_forward_process(prediction_type):
    """Fed the true target, one deterministic step from t gives exactly x_s of the same x0 and noise."""
    scheduler = LayeredScheduler(sample_sizes=[16, 8], prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x0 = image_pyramid(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, [16, 8])
    noise = consistent_noise(torch.randn(2, 3, 16, 16, generator=g), [16, 8])
    t = scheduler.timesteps[1]  # 750 -> 500
    x_t = scheduler.add_noise(x0, noise, t)
    targets = scheduler.schedule.target(prediction_type, x0, noise, torch.tensor([t / 1000]))
    out = scheduler.step(targets, t, x_t)
    expected = scheduler.add_noise(x0, noise, scheduler.timesteps[2])
    for a, b, c, d in zip(out.prev_sample, expected, out.pred_original_sample, x0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, d, rtol=1e-4, atol=1e-4)
    final = scheduler.step(scheduler.schedule.target(prediction_type, x0, noise, torch.tensor([0.25])), 250.0,
                           scheduler.add_noise(x0, noise, 250.0))
    for a, b in zip(final.prev_sample, x0):  # the last step returns the clean prediction
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))


# ---- the pipeline --------------------------------------------------------------------------------------------
def test_class_conditional_joint_sampling_scales_outputs_and_round_trip(tmp_path):
    unet = tiny_unet()
    pipe = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=unet.scale_sizes))
    pipe.set_progress_bar_config(disable=True)
    run = dict(class_labels=[1, 2, 3], num_inference_steps=3, guidance_scale=2.0, output_type="np")
    out = pipe(**run, return_all_scales=True, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (3, 16, 16, 3) and [s.shape for s in out.scales] == [(3, 16, 16, 3), (3, 8, 8, 3)]
    assert out.images.min() >= 0 and out.images.max() <= 1
    np.testing.assert_array_equal(out.scales[0], out.images)
    again = pipe(**run, generator=torch.Generator().manual_seed(0))
    assert again.scales is None
    np.testing.assert_array_equal(again.images, out.images)  # same seed, same images
    unguided = pipe(**dict(run, guidance_scale=1.0), generator=torch.Generator().manual_seed(0)).images
    assert np.abs(unguided - out.images).max() > 1e-4
    pt = pipe(**dict(run, output_type="pt"), generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), out.images, atol=1e-6)
    pil = pipe(**dict(run, output_type="pil"), generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 3 and pil[0].size == (16, 16)
    stochastic = pipe(**run, eta=1.0, generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(stochastic).all() and np.abs(stochastic - out.images).max() > 1e-4

    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LayeredTextToImagePipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    np.testing.assert_array_equal(loaded(**run, generator=torch.Generator().manual_seed(0)).images, out.images)


def test_text_pipeline_round_trip_with_local_tiny_clip(tmp_path):
    pipe = text_pipe()
    prompts = ["a handwritten digit seven", "a red circle"]
    run = dict(prompt=prompts, class_labels=[7, 1], num_inference_steps=2, guidance_scale=3.0, output_type="np")
    out = pipe(**run, generator=torch.Generator().manual_seed(0)).images
    other = pipe(**dict(run, prompt=prompts[::-1]), generator=torch.Generator().manual_seed(0)).images
    assert np.abs(other - out).max() > 1e-5  # the prompt matters
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LayeredTextToImagePipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel"
    np.testing.assert_array_equal(loaded(**run, generator=torch.Generator().manual_seed(0)).images, out)
    # the saved folder is also a text-encoder source for training (diffusers layout: tokenizer/ + text_encoder/)
    tokenizer, encoder = load_text_encoder(tmp_path / "pipe")
    torch.testing.assert_close(encode_prompts(tokenizer, encoder, prompts),
                               encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts))


def test_pipeline_input_errors():
    pipe = text_pipe()
    with pytest.raises(ValueError, match="do not describe the same batch"):
        pipe(prompt=["a", "b", "c"], class_labels=[1, 2], num_inference_steps=1)
    with pytest.raises(ValueError, match="do not describe the same batch"):
        pipe(prompt=["a", "b", "c"], class_labels=1, batch_size=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="text-conditional: pass prompt"):
        pipe(class_labels=[1], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        pipe(prompt="a", class_labels=[1], output_type="latent")
    class_pipe = LayeredTextToImagePipeline(tiny_unet(), LayeredScheduler(sample_sizes=[16, 8]))
    with pytest.raises(ValueError, match="no text conditioning"):
        class_pipe(prompt="a digit", class_labels=[1])
    with pytest.raises(ValueError, match="class ids must lie in"):
        class_pipe(class_labels=[11])
    with pytest.raises(ValueError, match="sample_sizes"):
        LayeredTextToImagePipeline(tiny_unet(), LayeredScheduler(sample_sizes=[32, 16]))(class_labels=[1])
    # a single prompt is repeated over the batch
    images = pipe(prompt="a digit", class_labels=[1, 2], num_inference_steps=1, output_type="np").images
    assert images.shape[0] == 2


# ---- training ------------------------------------------------------------------------------------------------
def test_multi_scale_loss_is_the_weighted_sum_of_per_scale_errors():
    from convdiff.training.config import TrainConfig
    from convdiff.training.layered_task import LayeredTask
    from convdiff.training.task import Draws

    config = TrainConfig(task="layered", model="layered-unet-tiny", objective="v_prediction", data="mnist",
                         resolution=32, model_overrides={"in_channels": 1, "sample_size": 32},
                         task_options={"conditioning": "both", "loss_weights": [1.0, 0.5]})
    task = LayeredTask(config)

    class Data:
        sample_shape = (1, 32, 32)

    torch.manual_seed(0)
    model = randomize_(task.build_model(Data()))
    assert model.config.cross_attention_dim == 32 and model.config.prediction_type == "v_prediction"
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1
    labels = torch.tensor([0, 3, 7, 9])
    draws = lambda: Draws(torch.Generator().manual_seed(3), 4, slice(0, 4))  # noqa: E731
    losses = task.scale_losses(model, x0, labels, draws())
    total = task.loss(model, (x0, labels), draws())
    torch.testing.assert_close(total, losses[0] + 0.5 * losses[1])
    # by hand: the same draws, pyramid, consistent noise and v targets
    d = draws()
    noise, t = d.randn(1, 32, 32), d.rand()
    label_drop, text_drop = d.rand() < task.label_dropout, d.rand() < task.text_dropout
    sizes = [32, 16]
    clean, eps = image_pyramid(x0, sizes), consistent_noise(noise, sizes)
    captions = ["" if drop else f"a handwritten digit {name}"
                for drop, name in zip(text_drop.tolist(), ["zero", "three", "seven", "nine"])]
    out = model(task.schedule.add_noise(clean, eps, t), t * 1000, class_labels=labels,
                force_drop_ids=label_drop.long(), encoder_hidden_states=task.encode(captions, "cpu")).scales
    for (alpha, sigma), o, c, e, loss in zip(task.schedule.alphas_sigmas(t, x0), out, clean, eps, losses):
        torch.testing.assert_close(loss, ((o - (alpha * e - sigma * c)) ** 2).mean())


def test_layered_task_trains_and_its_saved_pipeline_samples(tmp_path):
    from convdiff.training.config import load_config
    from convdiff.training.loop import train

    recipe = yaml.safe_load(open("configs/layered-mnist-tiny.yaml"))
    assert recipe["task"] == "layered" and recipe["model"] == "layered-unet-mnist"
    config = load_config("configs/layered-mnist-tiny.yaml", [
        "model=layered-unet-tiny", "model_overrides={in_channels: 1, sample_size: 32}", "train_batch_size=4",
        "max_train_steps=2", "max_train_seconds=null", "checkpointing_steps=0", "logging_steps=1", "report_to=null",
        "task_options.loss_weights=[1.0, 1.0]", "task_options.text_hidden_size=16", "sample_num_inference_steps=1",
        f"output_dir={tmp_path / 'run'}",
    ])
    pipeline_dir = train(config)
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    assert (tmp_path / "run" / "samples" / "final-16px.png").is_file()
    assert_saved_as_recipe(pipeline_dir, config, "LayeredScheduler")
    pipe = LayeredTextToImagePipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=["a handwritten digit one", "a handwritten digit two"], num_inference_steps=2,
               guidance_scale=2.0, output_type="np", return_all_scales=True)
    assert out.images.shape == (2, 32, 32, 1) and out.scales[1].shape == (2, 16, 16, 1)
    assert np.isfinite(out.images).all()
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())


class OracleUNet(LayeredUNetModel):
    """Predicts the exact v target for one known image pyramid: joint sampling must end on that image."""

    def set_image(self, image):
        self.pyramid = image_pyramid(image, self.scale_sizes)
        self.schedule = MultiScaleSchedule(self.scale_sizes)

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, class_labels=None, return_dict=True, **_):
        t = timestep.double().cpu() / 1000
        outs = []
        for (alpha, sigma), x_t, x0 in zip(self.schedule.alphas_sigmas(t, hidden_states[0]), hidden_states, self.pyramid):
            eps = (x_t - alpha * x0) / sigma
            outs.append(alpha * eps - sigma * x0)
        return LayeredUNetOutput(sample=outs[0], scales=outs) if return_dict else (outs[0], outs)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_joint_sampling_with_an_oracle_ends_on_its_image(eta):
    unet = OracleUNet(**{**create_model("layered-unet-tiny").config, "num_classes": 0})
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    unet.set_image(image)
    pipe = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=unet.scale_sizes))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, num_inference_steps=6, eta=eta, output_type="pt", return_all_scales=True,
               generator=torch.Generator().manual_seed(1))
    for images, x0 in zip(out.scales, image_pyramid(image, [16, 8])):
        torch.testing.assert_close(images, x0 / 2 + 0.5, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [(dict(num_inference_steps=-5), "num_inference_steps must be an integer >= 1"),
                                          (dict(guidance_scale=float("nan")), "guidance_scale must be a finite"),
                                          (dict(class_labels=[]), "class_labels is empty")])
def test_pipeline_sampling_arguments_are_checked(kwargs, match):
    pipe = LayeredTextToImagePipeline(tiny_unet(), LayeredScheduler(sample_sizes=SIZES))
    kwargs = {"class_labels": [1], "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_layered_eval_scores_scale_agreement_and_accuracy():
    from convdiff.apps.layered_eval import evaluate_layered, scale_agreement, top_scale_accuracy
    from convdiff.data.mnist import MNISTDigits
    from convdiff.diffusion.multiscale import image_pyramid

    # real digits: every lower scale is exactly the pooled top scale, and the CNN reads them
    data = MNISTDigits("heldout", pad_to=32)
    x = torch.stack([data[i][0] for i in range(20)])
    labels = [data[i][1] for i in range(20)]
    scales = [((s + 1) / 2).permute(0, 2, 3, 1).numpy() for s in image_pyramid(x, [32, 16, 8])]
    assert all(p > 100 for p in scale_agreement(scales))  # identical up to float rounding
    assert top_scale_accuracy(scales[0], labels) >= 0.9
    # the evaluation runs end to end on a tiny text model (32/16/8 px)
    tokenizer, encoder = tiny_text_encoder(hidden_size=16, num_layers=1, model_max_length=32)
    unet = create_model("layered-unet-mnist", cross_attention_dim=16, num_classes=0, block_out_channels=[8, 8, 8],
                        attention_head_dim=8, norm_num_groups=4)
    pipe = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=unet.scale_sizes), encoder, tokenizer)
    results, images = evaluate_layered(pipe, per_digit=1, steps=1, guidance_scale=2.0)
    assert images.shape == (10, 32, 32, 1)
    assert set(results["prompted"]) == {"top_scale_accuracy", "psnr_16px_vs_pooled_top", "psnr_8px_vs_pooled_top"}
