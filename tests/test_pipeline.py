"""ClassConditionalPipeline: every scheduler, CFG variants, learned sigma, outputs, save/load, diffusers interop.

Tiny models on 8x8 latents (16x16 images through a one-downsample tiny VAE), 2-4 steps, everything built
locally (nothing is downloaded).
"""

import functools

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       HeunDiscreteScheduler, UniPCMultistepScheduler)

from convdiff import create_model
from convdiff.pipelines import ClassConditionalPipeline, guidance_scale_at, power_cosine_scale
from convdiff.pipelines import class_conditional

LATENT = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny ops are faster single-threaded, and the 2-core test machine is shared: avoid thread contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model, seed=0):
    """Fresh DiC/DiCo heads and adaLN are zero-initialised (output 0); give zeroed tensors small random values
    so predictions depend on input, time and class."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def ddim():
    return DDIMScheduler(clip_sample=False)


def make_pipe(name="dic-tiny", scheduler=None, vae="tiny", id2label=None, **overrides):
    torch.manual_seed(0)
    model = randomize(create_model(name, **{"sample_size": LATENT, **overrides}))
    pipe = ClassConditionalPipeline(transformer=model, scheduler=scheduler or ddim(),
                                    vae=tiny_vae() if vae == "tiny" else vae, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def components():
    pipe = make_pipe(id2label={0: "zero, nought", 1: "one", 2: "two"})
    return dict(pipe.components, id2label=pipe.config.id2label)


@pytest.fixture
def pipe(components):
    """A fresh pipeline (DDIM) around shared tiny components, so tests may swap schedulers freely."""
    pipe = ClassConditionalPipeline(**dict(components, scheduler=ddim()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, labels=(3, 7), seed=0, steps=2, **kwargs):
    kwargs.setdefault("output_type", "np")
    return pipe(list(labels), num_inference_steps=steps, generator=torch.manual_seed(seed), **kwargs).images


def record_steps(pipe):
    """Wrap scheduler.step to record the model output it receives (signature kept for generator detection)."""
    calls = []
    step = pipe.scheduler.step

    @functools.wraps(step)
    def recording_step(model_output, timestep, sample, *args, **kwargs):
        calls.append(model_output.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = recording_step
    return calls


# ---- schedulers ------------------------------------------------------------------------------------------

SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs(pipe, name):
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(ddim().config, **extra)
    images = run(pipe, steps=3, guidance_scale=2.0)
    assert images.shape == (2, 2 * LATENT, 2 * LATENT, 3)
    assert np.isfinite(images).all()


@pytest.mark.parametrize("name", ["ddpm", "euler-ancestral", "ddim"])
def test_seeding(pipe, name):
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(ddim().config, **extra)
    a, b, c = run(pipe, seed=1), run(pipe, seed=1), run(pipe, seed=2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_generator_list_seeds_each_sample(pipe):
    one = pipe([3], num_inference_steps=2, generator=[torch.Generator().manual_seed(5)], output_type="latent").images
    two = pipe([3, 7], num_inference_steps=2, output_type="latent",
               generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]).images
    torch.testing.assert_close(one[0], two[0], atol=1e-5, rtol=1e-5)


def test_heun_counts_two_model_calls_per_step_but_one_progress_step(pipe):
    pipe.scheduler = HeunDiscreteScheduler.from_config(ddim().config)
    calls, updates = [], []
    hook = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))

    class Bar:
        def __init__(self, total):
            updates.append(total)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append("tick")

    pipe.progress_bar = lambda iterable=None, total=None: Bar(total)
    try:
        run(pipe, steps=3)
    finally:
        hook.remove()
    assert len(calls) == 2 * 3 - 1  # Heun: the last step is first order
    assert updates == [3, "tick", "tick", "tick"]


def test_init_noise_sigma_is_honoured(pipe):
    """Euler starts at sigma_max ~ 157; scale_model_input brings the model input back to unit variance."""
    pipe.scheduler = EulerDiscreteScheduler.from_config(ddim().config)
    assert pipe.scheduler.init_noise_sigma > 100
    inputs = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    try:
        run(pipe, steps=2)
        start = torch.randn(2, 4, LATENT, LATENT)
        pipe([3, 7], num_inference_steps=2, latents=start, output_type="latent")
        pipe_sigmas, init_sigma = pipe.scheduler.sigmas.clone(), float(pipe.scheduler.init_noise_sigma)
    finally:
        hook.remove()
    assert 0.7 < inputs[0].std() < 1.3  # without init_noise_sigma it would be ~1/157
    # user latents are scaled like fresh noise: model input = latents * init_noise_sigma / sqrt(sigma_0^2 + 1)
    sigma0 = float(pipe_sigmas[0])
    torch.testing.assert_close(inputs[2], start * init_sigma / (sigma0**2 + 1) ** 0.5)


# ---- learned sigma and guidance -------------------------------------------------------------------------

def test_learned_sigma_split(pipe):
    assert pipe.transformer.config.out_channels == 8
    calls = record_steps(pipe)
    run(pipe)
    assert {c.shape[1] for c in calls} == {4}  # DDIM gets ε only
    pipe.scheduler = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    calls = record_steps(pipe)
    images = run(pipe, guidance_scale=3.0)
    assert {c.shape[1] for c in calls} == {8}  # the DDPM learned_range sampler gets (ε, v)
    assert np.isfinite(images).all()


def test_dpmsolver_learned_variance_quirk_is_explained(pipe):
    learned = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(learned.config)
    with pytest.raises(ValueError, match="variance_type=None"):
        run(pipe)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(learned.config, variance_type=None)
    assert run(pipe).shape == (2, 16, 16, 3)


@pytest.mark.parametrize("channels", [3, None])
def test_guidance_channels(pipe, channels):
    outputs = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: outputs.append(out[0].clone()))
    calls = record_steps(pipe)
    try:
        run(pipe, guidance_scale=4.0, guidance_channels=channels)
    finally:
        hook.remove()
    assert len(outputs) == len(calls) == 2
    for out, stepped in zip(outputs, calls):
        assert out.shape[0] == 4  # [cond; uncond] in one forward
        cond, uncond = out[:2, :4], out[2:, :4]
        guided = uncond + 4.0 * (cond - uncond)
        g = 3 if channels == 3 else 4
        torch.testing.assert_close(stepped[:, :g], guided[:, :g])
        if channels == 3:
            torch.testing.assert_close(stepped[:, 3], cond[:, 3])  # official DiT: channel 3 unguided
            assert not torch.allclose(stepped[:, 3], guided[:, 3])


def test_power_cosine_values():
    assert power_cosine_scale(999, 4.4) == pytest.approx(1.0, abs=1e-9)
    assert power_cosine_scale(0, 4.4) == pytest.approx(4.4)
    values = [power_cosine_scale(t, 4.4) for t in range(999, -1, -100)]
    assert values == sorted(values)
    assert power_cosine_scale(1999, 3.0, num_train_timesteps=2000) == pytest.approx(1.0, abs=1e-9)
    assert power_cosine_scale(500, 3.0, num_train_timesteps=2000) == pytest.approx(power_cosine_scale(250, 3.0))
    assert guidance_scale_at(torch.tensor(123), 2.5, "constant") == 2.5
    assert guidance_scale_at(10, 2.5, lambda t, s, n: s * t / n, 100) == pytest.approx(0.25)


def test_power_cosine_uses_scheduler_timesteps_and_training_scale(pipe, monkeypatch):
    scales = []
    apply = class_conditional.apply_guidance
    monkeypatch.setattr(class_conditional, "apply_guidance",
                        lambda cond, uncond, scale, channels: scales.append(scale) or apply(cond, uncond, scale, channels))
    pipe.scheduler = DDIMScheduler(clip_sample=False, num_train_timesteps=500)
    run(pipe, steps=4, guidance_scale=4.6, guidance_schedule="power-cosine")
    timesteps = pipe.scheduler.timesteps.tolist()
    assert timesteps[-1] == 0
    assert scales == pytest.approx([power_cosine_scale(t, 4.6, 500) for t in timesteps])
    assert scales[-1] == pytest.approx(4.6) and scales[0] < 2.0


# ---- outputs ----------------------------------------------------------------------------------------------

def test_output_types(pipe):
    pil = run(pipe, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    arr = run(pipe, output_type="np")
    assert arr.shape == (2, 16, 16, 3) and arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    pt = run(pipe, output_type="pt")
    assert pt.shape == (2, 3, 16, 16) and torch.is_tensor(pt)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    lat = run(pipe, output_type="latent")
    assert lat.shape == (2, 4, LATENT, LATENT)
    (images,) = pipe([1], num_inference_steps=1, output_type="np", return_dict=False)
    assert images.shape == (1, 16, 16, 3)


def test_pixel_space_single_channel_gives_L_images():
    pipe = make_pipe(vae=None, in_channels=1, sample_size=28, learn_sigma=False)
    images = pipe([0, 9], num_inference_steps=2, guidance_scale=2.0, generator=torch.manual_seed(0)).images
    assert [im.mode for im in images] == ["L", "L"] and images[0].size == (28, 28)
    arr = pipe([0], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert arr.shape == (1, 28, 28, 1)


def test_unconditional_model_uses_batch_size():
    pipe = make_pipe(num_classes=0)
    images = pipe(batch_size=3, num_inference_steps=2, output_type="latent", generator=torch.manual_seed(0)).images
    assert images.shape == (3, 4, LATENT, LATENT)


def test_label_names(pipe):
    assert pipe.get_label_ids(["nought", "two"]) == [0, 2]
    assert pipe.get_label_ids("one") == [1]
    with pytest.raises(ValueError, match="Unknown label"):
        pipe.get_label_ids(["three"])


# ---- callbacks --------------------------------------------------------------------------------------------

def test_callback_receives_and_replaces_latents(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else {}

    out = run(pipe, steps=3, guidance_scale=2.0, callback_on_step_end=callback, output_type="latent")
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[2] == (2, 4, LATENT, LATENT) for s in seen)
    assert not out.any()


def test_callback_interrupt_and_guidance_cutoff(pipe):
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))

    def cutoff(p, i, t, tensors):
        p._guidance_scale = 1.0  # like diffusers' CFG cutoff callbacks
        return {}

    def stop(p, i, t, tensors):
        p._interrupt = True
        return {}

    try:
        run(pipe, steps=3, guidance_scale=3.0, callback_on_step_end=cutoff)
        assert calls == [4, 2, 2]
        calls.clear()
        run(pipe, steps=3, callback_on_step_end=stop)
        assert calls == [2]
    finally:
        hook.remove()


# ---- save / load and diffusers interop ------------------------------------------------------------------

@pytest.mark.parametrize("name,vae", [("dic-tiny", "tiny"), ("dico-tiny", None)])
def test_save_load_round_trip(tmp_path, name, vae):
    pipe = make_pipe(name, vae=vae, id2label={0: "cat", 1: "dog"})
    before = run(pipe, labels=(0, 1), guidance_scale=2.0)
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer) is type(pipe.transformer)
    assert (loaded.vae is None) == (vae is None)
    assert loaded.get_label_ids(["dog"]) == [1]
    np.testing.assert_array_equal(run(loaded, labels=(0, 1), guidance_scale=2.0), before)


def test_drives_diffusers_dit():
    pipe = make_pipe("dit-tiny")
    assert pipe.transformer.config.out_channels == 8
    images = run(pipe, labels=(0, 9), guidance_scale=4.0, guidance_channels=3)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        run(pipe, labels=(11,))


def test_diffusers_ditpipeline_drives_dic_and_folder_loads_here(tmp_path):
    torch.manual_seed(0)
    model = randomize(create_model("dic-tiny", sample_size=LATENT, num_classes=1000))  # DiTPipeline's null id is 1000
    dit_pipe = DiTPipeline(transformer=model, vae=tiny_vae(), scheduler=ddim())
    dit_pipe.set_progress_bar_config(disable=True)
    images = dit_pipe([1, 2], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    dit_pipe.save_pretrained(tmp_path)  # a DiTPipeline folder loads into ClassConditionalPipeline unchanged
    pipe = ClassConditionalPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert run(pipe, guidance_scale=4.0).shape == (2, 16, 16, 3)


def test_flow_scheduler_needs_a_flow_model():
    pipe = make_pipe(scheduler=FlowMatchEulerDiscreteScheduler(), learn_sigma=False)
    with pytest.raises(ValueError, match="flow-matching"):
        run(pipe)
    pipe.transformer.register_to_config(prediction_type="flow")
    images = run(pipe, guidance_scale=2.0)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    pipe.scheduler = ddim()
    with pytest.raises(ValueError, match="flow velocity"):
        run(pipe)


# ---- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(class_labels=[11]), r"\[0, 10\].*null class"),
    (dict(class_labels=[-1]), r"\[0, 10\]"),
    (dict(class_labels=None), "class-conditional"),
    (dict(class_labels=["cat"]), "get_label_ids"),
    (dict(class_labels=[0.5]), "integers"),
    (dict(class_labels=[0, 1], batch_size=3), "one label per sample"),
    (dict(class_labels=[0], output_type="jpeg"), "output_type"),
    (dict(class_labels=[0], guidance_channels=5), "guidance_channels"),
    (dict(class_labels=[0], guidance_schedule="linear"), "guidance_schedule"),
    (dict(class_labels=[0], latents=torch.randn(1, 3, 8, 8)), "latents"),
    (dict(class_labels=[0, 1], generator=[torch.Generator()]), "generators"),
    (dict(class_labels=[0], callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]), "callback"),
])
def test_bad_inputs(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=1, **kwargs)


def test_bad_inputs_for_model_kinds():
    uncond = make_pipe(num_classes=0, vae=None)
    with pytest.raises(ValueError, match="unconditional"):
        uncond([0], num_inference_steps=1)
    no_null = make_pipe(vae=None, class_dropout_prob=0.0, learn_sigma=False)
    with pytest.raises(ValueError, match="null class"):
        no_null([0], num_inference_steps=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        no_null([10], num_inference_steps=1)
    with pytest.raises(ValueError, match="id2label"):
        no_null.get_label_ids(["cat"])
    no_null.scheduler = DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="predicts its variance"):
        no_null([0], num_inference_steps=1)
    no_null.scheduler = ddim()
    no_null.transformer.register_to_config(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type='v_prediction'"):
        no_null([0], num_inference_steps=1)


BAD_SAMPLING = [
    (dict(num_inference_steps=-5), "num_inference_steps must be an integer >= 1, got -5"),
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1, got 0"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be an integer >= 1"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
    (dict(class_labels=[]), "class_labels is empty"),
    (dict(class_labels=torch.tensor([], dtype=torch.long)), "class_labels is empty"),
]


@pytest.mark.parametrize("kwargs,match", BAD_SAMPLING)
def test_sampling_arguments_are_checked(pipe, kwargs, match):
    kwargs = {"class_labels": [0], "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)
