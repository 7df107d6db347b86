"""ΔConvFusion: the ΔConvBlock and linear-attention students, module swap, taps, adapters, distillation step."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel, UNet2DModel

from convdiff.distill import (FeatureTaps, convert_self_attention, load_adapter, load_converted, save_adapter,
                              self_attention_sites, student_modules, student_state_dict)
from convdiff.models.convfusion import LinearSelfAttention, is_self_attention
from convdiff.models.label_conditioned_unet import LabelConditionedUNet
from convdiff.nn.linear_attention import NormalizedLinearAttention
from convdiff.nn.pyramid_conv import DeltaConvBlock

from conftest import randomize_, assert_saved_as_recipe


def tiny_unet(**overrides):
    config = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                  attention_head_dim=4, norm_num_groups=8)
    config.update(overrides)
    return UNet2DConditionModel(**config)


TINY_KERNELS = {"down": [5, 3], "mid": 3, "up": [3, 5]}


def unet_inputs(batch=2, height=16, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, height, width, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 3, 24, generator=g))


# ------------------------------------------------------------------------------------------------ ΔConvBlock

def reference_delta_conv(block: DeltaConvBlock, x):
    """The released design written out on NCHW with 1x1 convs (the released ΔConvFusion code, arXiv 2504.21292)."""
    inner = F.conv2d(x, block.proj_in.weight[:, :, None, None], block.proj_in.bias)
    height, width = x.shape[-2:]
    outs = []
    for stage in block.stages:
        y = inner
        if stage.scale != 1:
            y = F.adaptive_avg_pool2d(y, (round(height * stage.scale), round(width * stage.scale)))
        y = F.conv2d(y, stage.conv.weight, stage.conv.bias, padding=block.kernel_size // 2, groups=y.shape[1])
        a, b = y.chunk(2, dim=1)
        y = a * b * math.sqrt(inner.shape[1] / 2)
        outs.append(F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False))
    out = F.conv2d(torch.cat(outs, 1), block.proj_out.weight[:, :, None, None], block.proj_out.bias)
    return out + (block.global_proj(x.mean(dim=(2, 3))))[:, :, None, None]


def test_delta_conv_block_matches_reference_and_token_entry_point():
    block = DeltaConvBlock(16, kernel_size=5)
    x = torch.randn(2, 16, 7, 9)  # odd sizes: the 1/2 stage pools to 4x4 (rounded) and upsamples back
    out = block(x)
    torch.testing.assert_close(out, reference_delta_conv(block, x), atol=1e-5, rtol=1e-5)
    tokens = x.flatten(2).transpose(1, 2)
    torch.testing.assert_close(block.forward_tokens(tokens, 7, 9), out.flatten(2).transpose(1, 2), atol=1e-6, rtol=0)


def test_delta_conv_block_structure_and_parameter_count():
    c, k = 32, 7
    block = DeltaConvBlock(c, kernel_size=k, scales=(1, 0.5, 1 / 3), gate="sigmoid")
    inner = c // 2
    expected = (c * inner + inner) + 3 * (inner * k * k + inner) + (3 * inner // 2 * c + c) + (c * c + c)
    assert sum(p.numel() for p in block.parameters()) == expected
    assert [s.conv.groups for s in block.stages] == [inner] * 3  # depthwise
    x = torch.randn(1, c, 12, 12)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=4), "positive odd"), (dict(gate="relu"), "gate must be"), (dict(scales=(1, 2)), "scales"),
])
def test_delta_conv_block_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeltaConvBlock(16, **kwargs)


def test_delta_conv_block_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="not height x width"):
        DeltaConvBlock(8).forward_tokens(torch.randn(1, 10, 8), 3, 3)


# ----------------------------------------------------------------------------------------- linear attention

def test_normalized_linear_attention_matches_quadratic_definition():
    attn = randomize_(NormalizedLinearAttention(12, heads=3, head_dim=4), std=0.3)
    x = torch.randn(2, 10, 12)
    q = F.elu(attn.to_q(attn.mlp_q(x))) + 1
    k = F.elu(attn.to_k(attn.mlp_k(x))) + 1
    v = attn.to_v(x)
    q, k, v = (t.view(2, 10, 3, 4).transpose(1, 2) for t in (q, k, v))
    weights = q @ k.transpose(-1, -2)  # similarity phi(q).phi(k), normalised over keys
    expected = (weights / weights.sum(-1, keepdim=True)) @ v
    expected = attn.to_out(expected.transpose(1, 2).reshape(2, 10, 12))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------------------------------------------- convert

def test_convert_unet_replaces_every_self_attention_and_keeps_everything_else():
    teacher = tiny_unet()
    student = convert_self_attention(copy.deepcopy(teacher), kernel_sizes=TINY_KERNELS)
    assert not any(is_self_attention(getattr(m, "attn1", None)) for m in student.modules())
    students = student_modules(student)
    assert len(students) == len(self_attention_sites(teacher)) == 7
    kernel = {n: m.kernel_size for n, m in students.items()}
    assert kernel["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 5
    assert kernel["mid_block.attentions.0.transformer_blocks.0.attn1"] == 3
    assert kernel["up_blocks.2.attentions.1.transformer_blocks.0.attn1"] == 5
    # Same parameter names (and values) outside the replaced attn1 modules; only the students train.
    def outside(model):
        return {k: v for k, v in model.state_dict().items() if ".attn1." not in k}
    assert outside(student).keys() == outside(teacher).keys()
    assert all(torch.equal(v, outside(teacher)[k]) for k, v in outside(student).items())
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == set(student_state_dict(student)) and trainable
    assert all(".attn1." in n for n in trainable)
    # Cross-attention is untouched, and the model runs on a non-square latent (H, W from the pre-hooks).
    assert student.down_blocks[0].attentions[0].transformer_blocks[0].attn2.is_cross_attention
    sample, t, context = unet_inputs(height=16, width=24)
    assert student(sample, t, context).sample.shape == sample.shape


def test_convert_linear_student_starts_from_the_teacher_projections():
    teacher = tiny_unet()
    student = convert_self_attention(copy.deepcopy(teacher), student="linear")
    s = student.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    t = teacher.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert isinstance(s, LinearSelfAttention) and s.heads == t.heads
    assert torch.equal(s.to_q.weight, t.to_q.weight) and torch.equal(s.to_out.weight, t.to_out[0].weight)
    sample, t_, context = unet_inputs()
    assert torch.isfinite(student(sample, t_, context).sample).all()


def test_convert_survives_attention_processor_reset():
    student = convert_self_attention(tiny_unet(), kernel_sizes=TINY_KERNELS)
    student.set_default_attn_processor()  # module swap: resetting processors cannot drop the students
    assert len(student_modules(student)) == 7


def test_convert_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="no self-attention"):
        convert_self_attention(UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4,
                                           down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
    with pytest.raises(ValueError, match="do not fit the stages"):
        convert_self_attention(tiny_unet(), kernel_sizes={"down": [7, 9, 5], "mid": 3, "up": [5, 9, 11]})
    with pytest.raises(ValueError, match="one per layer"):
        convert_self_attention(tiny_unet(), kernel_sizes=[3, 3])
    with pytest.raises(ValueError, match="positive odd"):
        convert_self_attention(tiny_unet(), kernel_sizes=4)
    with pytest.raises(ValueError, match="student must be"):
        convert_self_attention(tiny_unet(), student="mamba")
    with pytest.raises(ValueError, match="already converted"):
        convert_self_attention(convert_self_attention(tiny_unet(), kernel_sizes=3))


SDXL = dict(sample_size=128, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], block_out_channels=[320, 640, 1280],
            transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
PIXART_SIGMA = dict(sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
                    out_channels=8, patch_size=2, cross_attention_dim=1152, norm_type="ada_norm_single",
                    caption_channels=4096, use_additional_conditions=False)
DIT_XL = dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, in_channels=4, out_channels=8,
              sample_size=32, patch_size=2)


@pytest.mark.parametrize("build, layers, first_kernel, gate", [
    (lambda: UNet2DConditionModel(cross_attention_dim=768), 16, 7, "scaled_simple"),  # SD1.5
    (lambda: UNet2DConditionModel(**SDXL), 70, 9, "scaled_simple"),
    (lambda: PixArtTransformer2DModel(**PIXART_SIGMA), 28, 13, "sigmoid"),
    (lambda: DiTTransformer2DModel(**DIT_XL), 28, 13, "sigmoid"),
], ids=["sd15", "sdxl", "pixart-sigma", "dit-xl"])
def test_convert_real_configs_on_meta_device(build, layers, first_kernel, gate):
    with torch.device("meta"):
        model = build()
    convert_self_attention(model)  # the architecture's preset: SD1.5 7/9/5-3-5/9/11, SDXL 9/7-9-9/13, PixArt 13
    students = list(student_modules(model).values())
    assert len(students) == layers
    assert students[0].kernel_size == first_kernel and model.config.convfusion["gate"] == gate
    assert not any(is_self_attention(getattr(m, "attn1", None)) for m in model.modules())


def test_sd15_preset_kernel_sizes_per_stage():
    with torch.device("meta"):
        model = convert_self_attention(UNet2DConditionModel(cross_attention_dim=768), kernel_sizes="sd15")
    sizes = [m.kernel_size for m in student_modules(model).values()]
    assert sizes == [7, 7, 9, 9, 5, 5, 5, 5, 5, 9, 9, 9, 11, 11, 11, 3]  # down, up (3 per block), mid (module order)


# ---------------------------------------------------------------------------------------- taps and losses

@pytest.mark.parametrize("build", ["unet", "pixart", "dit"])
def test_feature_taps_capture_the_post_self_attention_residual(build):
    """tap == x + gate * attn1(norm(x)), checked against the block's own input and attn1's output."""
    if build == "unet":
        model, inputs = tiny_unet(), unet_inputs()
        call = lambda: model(*inputs)  # noqa: E731
    elif build == "pixart":
        model = PixArtTransformer2DModel(sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                         in_channels=4, out_channels=8, cross_attention_dim=16, caption_channels=12,
                                         norm_type="ada_norm_single", use_additional_conditions=False)
        x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 12)
        call = lambda: model(x, encoder_hidden_states=text, timestep=torch.tensor([3, 7]))  # noqa: E731
    else:
        model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4,
                                      out_channels=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
        call = lambda: model(torch.randn(2, 4, 8, 8), timestep=torch.tensor([3, 7]), class_labels=torch.tensor([1, 2]))  # noqa: E731
    randomize_(model, std=0.1)
    name, block = self_attention_sites(model)[0]
    seen = {}
    block.register_forward_pre_hook(lambda m, a, k: seen.update(x=(a[0] if a else k["hidden_states"])), with_kwargs=True)
    block.attn1.register_forward_hook(lambda m, a, out: seen.update(attn=out))
    taps = FeatureTaps(model)
    with taps.collect():
        call()
    tap = taps.features[name]
    if build == "unet":
        torch.testing.assert_close(tap, seen["x"] + seen["attn"])
    else:
        # adaLN gates the attention output per sample and channel: tap = x + g * attn, g fitted by least squares
        delta, attn = tap - seen["x"], seen["attn"]
        gate = (delta * attn).sum(1, keepdim=True) / (attn * attn).sum(1, keepdim=True)
        torch.testing.assert_close(tap, seen["x"] + gate * attn, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(gate, torch.ones_like(gate))  # really gated, so the tap is after the gate
    # Outside collect() nothing is recorded (gradient-checkpointing recomputation cannot overwrite taps).
    taps.features.clear()
    call()
    assert taps.features == {}


def test_adapter_round_trip_and_whole_model_reload(tmp_path):
    student = convert_self_attention(tiny_unet(), kernel_sizes=TINY_KERNELS)
    randomize_(student)
    inputs = unet_inputs()
    with torch.no_grad():
        expected = student(*inputs).sample
    path = save_adapter(student, tmp_path / "adapter")
    assert set(__import__("safetensors.torch").torch.load_file(str(path))) == set(student_state_dict(student))
    base = tiny_unet()
    base.load_state_dict({k: v for k, v in student.state_dict().items() if ".attn1." not in k}, strict=False)
    load_adapter(base, path)  # converts the base model as recorded, then loads the students
    with torch.no_grad():
        torch.testing.assert_close(base(*inputs).sample, expected)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(tiny_unet(block_out_channels=(8, 16, 16), norm_num_groups=4), path)

    student.save_pretrained(tmp_path / "unet")
    reloaded = load_converted(tmp_path / "unet")
    assert isinstance(reloaded, UNet2DConditionModel) and len(student_modules(reloaded)) == 7
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*inputs).sample, expected)


def test_label_conditioned_unet_reloads_converted_with_from_pretrained(tmp_path):
    teacher = LabelConditionedUNet(block_out_channels=(8, 16, 16), num_attention_heads=2, cross_attention_dim=8,
                                   num_tokens=2, norm_num_groups=4)
    student = convert_self_attention(teacher, kernel_sizes=3)
    randomize_(student)
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 900]), torch.tensor([3, 10])
    with torch.no_grad():
        expected = student(x, t, y).sample
    student.save_pretrained(tmp_path)
    reloaded = LabelConditionedUNet.from_pretrained(tmp_path)  # its config's `convfusion` converts it on init
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t, y).sample, expected)


# -------------------------------------------------------------------------------------------- distillation

def tiny_teacher_pipeline(path):
    from diffusers import DDPMScheduler

    from convdiff.pipelines import ClassConditionalPipeline

    teacher = LabelConditionedUNet(block_out_channels=(8, 16, 16), num_attention_heads=2, cross_attention_dim=8,
                                   num_tokens=2, norm_num_groups=4, attention_levels=(False, True, False))
    randomize_(teacher, std=0.1)
    ClassConditionalPipeline(transformer=teacher, scheduler=DDPMScheduler(clip_sample=True)).save_pretrained(path)
    return path


def distill_config(tmp_path, **overrides):
    from convdiff.training.config import load_config

    teacher = tiny_teacher_pipeline(tmp_path / "teacher")
    values = [f"task_options.teacher={teacher}", "task_options.kernel_sizes=3", "train_batch_size=4",
              "report_to=null", f"output_dir={tmp_path / 'run'}", "sample_num_inference_steps=2", "max_train_steps=2",
              "logging_steps=1", "checkpointing_steps=0", "learning_rate=0.003"]
    return load_config(None, ["task=distill", *values, *[f"{k}={v}" for k, v in overrides.items()]])


def test_distill_steps_reduce_the_distillation_loss_and_taps_survive_checkpointing(tmp_path):
    from convdiff.distill.task import DistillTask
    from convdiff.training.task import Draws

    task = DistillTask(distill_config(tmp_path))
    digits_like = SimpleNamespace(sample_shape=(1, 28, 28), num_classes=10)  # skips parsing the MNIST file
    student = task.build_model(digits_like)
    student.enable_gradient_checkpointing()  # recomputation during backward must not disturb the taps
    assert all(not p.requires_grad for p in task.teacher.parameters()) and not task.teacher.training
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert {n for n, p in student.named_parameters() if p.requires_grad} == set(student_state_dict(student))
    batch = (torch.rand(4, 1, 28, 28) * 2 - 1, torch.arange(4) % 10)
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    losses = []
    for _ in range(5):
        draws = Draws(torch.Generator().manual_seed(0), 4, slice(0, 4))  # the same noise and t every step
        loss, parts = task.loss_terms(student, batch, draws)
        assert set(task.student_taps.features) == set(task.teacher_taps.features) and len(task.student_taps.features) == 4
        optimizer.zero_grad()
        loss.backward()
        assert task.student_taps.features.keys() == task.teacher_taps.features.keys()
        optimizer.step()
        losses.append((parts["teacher"] + 1e-3 * parts["feature"]).item())  # what distillation can reduce
    assert losses[1] < losses[0] and losses[-1] < 0.97 * losses[0], losses
    assert parts["feature"] > 0 and parts["teacher"] > 0


def test_distill_task_runs_in_the_training_loop_and_saves_a_converted_pipeline(tmp_path):
    from convdiff.pipelines import ClassConditionalPipeline
    from convdiff.training.loop import train

    config = distill_config(tmp_path, **{"task_options.student": "linear"})
    pipeline_dir = train(config)
    assert_saved_as_recipe(pipeline_dir, config)
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    assert len(student_modules(pipe.transformer)) == 4
    assert all(isinstance(m, LinearSelfAttention) for m in student_modules(pipe.transformer).values())
    images = pipe(class_labels=[1, 2], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 28, 28, 1)


def test_distill_task_bad_options(tmp_path):
    from convdiff.distill.task import DistillTask

    with pytest.raises(ValueError, match="Unknown distill task_options"):
        DistillTask(distill_config(tmp_path, **{"task_options.kernel": 3}))
    with pytest.raises(ValueError, match="not a pipeline folder"):
        DistillTask(distill_config(tmp_path, **{"task_options.teacher": str(tmp_path)}))


@pytest.mark.parametrize("name", ["diffit-tiny", "diffit-unet-tiny"])
@pytest.mark.parametrize("student", ["deltaconv", "linear"])
def test_convert_diffit_models(name, student):
    """DiffiT's TMSA (`attn` of every DiffiTBlock, global or windowed) is swapped like diffusers' attn1."""
    from convdiff.nn.tmsa import TimeDependentSelfAttention
    from convdiff.registry import create_model

    teacher = create_model(name)
    sites = len(self_attention_sites(teacher))
    model = convert_self_attention(copy.deepcopy(teacher), student=student)
    assert len(student_modules(model)) == sites > 0
    assert not any(isinstance(m, TimeDependentSelfAttention) for m in model.modules())
    config = model.config
    x = torch.randn(2, config.in_channels, config.sample_size, config.sample_size)
    labels = {"class_labels": torch.tensor([1, 2])} if config.get("num_classes") else {}
    taps = FeatureTaps(model)
    with taps.collect():
        out = model(x, torch.tensor([3, 700]), **labels).sample
    assert out.shape[-2:] == x.shape[-2:] and torch.isfinite(out).all() and len(taps.features) == sites


# ---------------------------------------------------------------------------- Stable Diffusion, end to end

def tiny_sd_folder(path):
    """A StableDiffusionPipeline of tiny random parts (UNet, VAE, CLIP text encoder, local tokenizer), saved."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    from convdiff.pipelines.text_encoders import tiny_text_encoder

    tokenizer, text_encoder = tiny_text_encoder(hidden_size=24, model_max_length=16)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet(sample_size=8),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


@pytest.mark.slow
def test_distill_a_stable_diffusion_folder_and_sample_with_diffusers_pipeline(tmp_path):
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from convdiff.training.config import load_config
    from convdiff.training.loop import train

    teacher = tiny_sd_folder(tmp_path / "sd")
    data = tmp_path / "captions"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, caption in enumerate(["a red square", "a blue circle", "two green lines", "a cat"]):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption)
    config = load_config(None, ["task=distill", f"task_options.teacher={teacher}", "task_options.kernel_sizes=3",
                                "data=image_folder", f"data_path={data}", "resolution=16", "train_batch_size=2",
                                "max_train_steps=2", "checkpointing_steps=0", "report_to=null", "logging_steps=1",
                                "sample_num_inference_steps=2", f"output_dir={tmp_path / 'run'}"])
    pipeline_dir = train(config)
    unet = load_converted(pipeline_dir / "unet")
    assert len(student_modules(unet)) == 7
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir, unet=unet, safety_checker=None)
    pipe.unet.set_default_attn_processor()  # a processor reset keeps the students (module swap)
    assert len(student_modules(pipe.unet)) == 7
    images = pipe("a red square", num_inference_steps=2, height=16, width=16, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
