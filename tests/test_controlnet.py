import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from convdiff.data.edges import canny_edges, edge_iou, edge_map, sobel_edges
from convdiff.models.controlnet import ControlNet, MultiControlNet
from convdiff.pipelines import ClassConditionalPipeline, ControlNetPipeline
from convdiff.pipelines.controlnet import prepare_condition_image
from convdiff.registry import create_model

from conftest import randomize_, assert_saved_as_recipe

# Every backbone with the residual-injection interface, at a tiny size (name, overrides).
BACKBONES = [
    ("dic-tiny", dict(hidden_size=16, depth=[1, 1, 1, 1, 1])),
    ("dic-tiny", dict(hidden_size=16, depth=[4, 1, 1, 1, 4])),  # several skips per level
    ("dico-tiny", dict(hidden_size=16)),
    ("diffit-unet-tiny", dict(in_channels=4, layers_per_block=[1, 2])),
    ("diffit-tiny", dict(depth=5, window_size=4)),  # latent ViT: residuals after its first 2 blocks
]
IDS = ["dic", "dic-deep", "dico", "diffit-unet", "diffit"]


def backbone(name, overrides, **more):
    return randomize_(create_model(name, **overrides, **more)).eval()


def inputs(batch=2, channels=4, size=16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, channels, size, size, generator=g), torch.tensor([3, 700])[:batch],
            torch.tensor([1, 5])[:batch], torch.rand(batch, 1, size, size, generator=g))


def controlled(model, controlnet, x, t, y, c, **kwargs):
    down, mid = controlnet(x, t, c, class_labels=y, return_dict=False, **kwargs)
    return model(x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


@pytest.mark.parametrize("name,overrides", BACKBONES, ids=IDS)
def test_controlled_model_equals_base_at_init(name, overrides):
    model = backbone(name, overrides)
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).eval()
    x, t, y, c = inputs()
    down, mid = controlnet(x, t, c, class_labels=y, return_dict=False)
    points = model.control_points()
    assert [d.shape[1] for d in down] == [ch for ch, _ in points.down] and mid.shape[1] == points.mid[0]
    assert [d.shape[-1] for d in down] == [16 // f for _, f in points.down] and mid.shape[-1] == 16 // points.mid[1]
    assert torch.equal(controlled(model, controlnet, x, t, y, c), model(x, t, y).sample)
    # the encoder copy starts from the base weights
    for key, value in controlnet.backbone.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])


@pytest.mark.parametrize("name,overrides", BACKBONES, ids=IDS)
def test_scale_zero_gives_base_and_guess_mode_scales_by_depth(name, overrides):
    model = backbone(name, overrides)
    controlnet = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=3).eval()
    x, t, y, c = inputs()
    base = model(x, t, y).sample
    assert not torch.allclose(controlled(model, controlnet, x, t, y, c), base)
    assert torch.equal(controlled(model, controlnet, x, t, y, c, conditioning_scale=0.0), base)
    plain = controlnet(x, t, c, 0.5, class_labels=y)
    guess = controlnet(x, t, c, 0.5, class_labels=y, guess_mode=True)
    count = len(plain.down_block_res_samples) + 1
    expected = torch.logspace(-1, 0, count) * 2  # guess scale * 0.5 / (plain scale 0.5): logspace(-1, 0)
    for i, (p, g) in enumerate(zip(plain.down_block_res_samples, guess.down_block_res_samples)):
        torch.testing.assert_close(g, p * expected[i] / 2)
    torch.testing.assert_close(guess.mid_block_res_sample, plain.mid_block_res_sample)  # the middle keeps 1



def test_layered_unet_with_text_conditioning_is_controllable():
    """Multi-scale input (a list, top first) and encoder_hidden_states pass through the ControlNet copy."""
    model = backbone("layered-unet-tiny", dict(cross_attention_dim=12))
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).eval()
    x = [torch.randn(2, 3, s, s) for s in model.scale_sizes]
    t, text, c = torch.tensor([3, 600]), torch.randn(2, 4, 12), torch.rand(2, 1, 16, 16)
    kwargs = dict(encoder_hidden_states=text, class_labels=torch.tensor([1, 2]))

    def run(net, **extra):
        down, mid = net(x, t, c, return_dict=False, **extra, **kwargs)
        return model(x, t, down_block_additional_residuals=down, mid_block_additional_residual=mid, **kwargs).scales

    base = model(x, t, **kwargs).scales
    assert all(torch.equal(a, b) for a, b in zip(run(controlnet), base))
    randomize_(controlnet, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(run(controlnet, conditioning_scale=0.0), base))
    controlled = run(controlnet)
    assert not torch.allclose(controlled[0], base[0])
    other_text = controlnet(x, t, c, return_dict=False, encoder_hidden_states=torch.randn(2, 4, 12),
                            class_labels=torch.tensor([1, 2]))[1]
    assert not torch.allclose(other_text, controlnet(x, t, c, return_dict=False, **kwargs)[1])

def test_gradients_reach_only_the_controlnet():
    model = backbone("dic-tiny", BACKBONES[0][1]).requires_grad_(False)
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).train()
    x, t, y, c = inputs()
    controlled(model, controlnet, x, t, y, c).square().mean().backward()
    assert all(p.grad is None for p in model.parameters())
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    assert all(conv.weight.grad.abs().sum() > 0 for conv in zero_convs)
    # behind the zero convs nothing moves at step 0 (the ControlNet's identity start)
    assert controlnet.controlnet_cond_embedding.conv_in.weight.grad.abs().sum() == 0


def test_multi_controlnet_sums_residuals_with_own_images_and_scales(tmp_path):
    model = backbone("dico-tiny", BACKBONES[2][1])
    a = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=1).eval()
    b = randomize_(ControlNet.from_backbone(model, conditioning_channels=3), seed=2).eval()
    x, t, y, c1 = inputs()
    c3 = torch.rand(2, 3, 16, 16)
    multi = MultiControlNet([a, b])
    down, mid = multi(x, t, [c1, c3], [0.5, 2.0], class_labels=y, return_dict=False)
    da, ma = a(x, t, c1, 0.5, class_labels=y, return_dict=False)
    db, mb = b(x, t, c3, 2.0, class_labels=y, return_dict=False)
    for d, p, q in zip(down, da, db):
        torch.testing.assert_close(d, p + q)
    torch.testing.assert_close(mid, ma + mb)
    multi.save_pretrained(tmp_path / "controlnet")
    assert (tmp_path / "controlnet").is_dir() and (tmp_path / "controlnet_1").is_dir()
    loaded = MultiControlNet.from_pretrained(tmp_path / "controlnet")
    assert len(loaded) == 2 and loaded.nets[1].config.conditioning_channels == 3
    torch.testing.assert_close(loaded(x, t, [c1, c3], [0.5, 2.0], class_labels=y).mid_block_res_sample, mid)
    with pytest.raises(ValueError, match="one conditioning image and one scale"):
        multi(x, t, [c1], [1.0], class_labels=y)


@pytest.mark.parametrize("name,overrides", [BACKBONES[1], BACKBONES[4]], ids=["dic", "diffit"])
def test_controlnet_save_load_round_trip(tmp_path, name, overrides):
    model = backbone(name, overrides)
    controlnet = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=4).eval()
    controlnet.save_pretrained(tmp_path)
    loaded = ControlNet.from_pretrained(tmp_path)
    assert loaded.config.backbone_class == f"{type(model).__module__}.{type(model).__name__}"
    loaded.check_backbone(model)
    x, t, y, c = inputs()
    assert torch.equal(controlled(model, loaded, x, t, y, c), controlled(model, controlnet, x, t, y, c))


def test_bad_inputs_give_clear_errors():
    model = backbone("dic-tiny", BACKBONES[0][1])
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).eval()
    x, t, y, c = inputs()
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16\)"):
        controlnet(x, t, torch.rand(2, 3, 16, 16), class_labels=y)
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16\)"):
        controlnet(x, t, torch.rand(2, 1, 8, 8), class_labels=y)
    other = create_model("dic-tiny", hidden_size=16, depth=[4, 1, 1, 1, 4])  # two skips on the first level
    with pytest.raises(ValueError, match="different config.*depth"):
        controlnet.check_backbone(other)
    with pytest.raises(ValueError, match="built from a convdiff.models.dic.DiCModel"):
        controlnet.check_backbone(create_model("dico-tiny", hidden_size=16))
    down, mid = controlnet(x, t, c, class_labels=y, return_dict=False)
    with pytest.raises(ValueError, match="different backbone config"):
        other(x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    with pytest.raises(ValueError, match="both"):
        model(x, t, y, down_block_additional_residuals=down)
    with pytest.raises(ValueError, match="shape"):
        model(x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid[:, :8])
    with pytest.raises(ValueError, match="power of two"):
        ControlNet.from_backbone(model, conditioning_downscale=3)
    with pytest.raises(ValueError, match="no ControlNet interface"):
        ControlNet.from_backbone(torch.nn.Conv2d(1, 1, 1))


def test_conditioning_downscale_maps_large_images_onto_the_latent_grid():
    model = backbone("dico-tiny", BACKBONES[2][1])
    controlnet = ControlNet.from_backbone(model, conditioning_channels=3, conditioning_embedding_channels=(8, 8, 8, 16),
                                          conditioning_downscale=8)
    x, t, y, _ = inputs()
    down, mid = controlnet(x, t, torch.rand(2, 3, 128, 128), class_labels=y, return_dict=False)
    assert down[0].shape == (2, 16, 16, 16)


# ---- pipeline -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_pipeline():
    torch.manual_seed(0)
    model = randomize_(create_model("dic-tiny", hidden_size=16, depth=[1, 1, 1, 1, 1], in_channels=1, sample_size=16)).eval()
    scheduler = DDIMScheduler(clip_sample=False)
    pipe = ClassConditionalPipeline(transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs):
    kwargs.setdefault("class_labels", [1, 2])
    return pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


def test_pipeline_at_init_and_at_scale_zero_equals_the_base(base_pipeline):
    fresh = ControlNet.from_backbone(base_pipeline.transformer, conditioning_channels=1)
    pipe = ControlNetPipeline.from_base(base_pipeline, fresh)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 16, 16)
    expected = sample(base_pipeline, guidance_scale=3.0)
    assert np.array_equal(sample(pipe, image=image, guidance_scale=3.0), expected)
    trained = randomize_(ControlNet.from_backbone(base_pipeline.transformer, conditioning_channels=1), seed=5)
    pipe = ControlNetPipeline.from_base(base_pipeline, trained)
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(pipe, image=image, guidance_scale=3.0, controlnet_conditioning_scale=0.0), expected)
    assert not np.allclose(sample(pipe, image=image, guidance_scale=3.0), expected)


def test_pipeline_guidance_window_guess_mode_and_multi_control(base_pipeline, tmp_path):
    nets = [randomize_(ControlNet.from_backbone(base_pipeline.transformer, conditioning_channels=ch), seed=s)
            for ch, s in ((1, 6), (3, 7))]
    pipe = ControlNetPipeline.from_base(base_pipeline, nets[0])
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 1, 16, 16)
    calls = []
    nets[0].register_forward_hook(lambda *args: calls.append(1))
    full = sample(pipe, image=image)
    assert len(calls) == 4
    calls.clear()
    late = sample(pipe, image=image, control_guidance_start=0.5)
    assert len(calls) == 2 and not np.allclose(late, full)
    calls.clear()
    guess = sample(pipe, image=image, guess_mode=True, guidance_scale=4.0)
    assert len(calls) == 4 and guess.shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="start < end"):
        sample(pipe, image=image, control_guidance_start=0.8, control_guidance_end=0.2)

    multi = ControlNetPipeline.from_base(base_pipeline, nets)
    multi.set_progress_bar_config(disable=True)
    both = sample(multi, image=[image, torch.rand(3, 16, 16)], controlnet_conditioning_scale=[1.0, 0.5],
                  guidance_scale=2.0)
    assert both.shape == (2, 16, 16, 1)
    only_first = sample(multi, image=[image, torch.rand(3, 16, 16)], controlnet_conditioning_scale=[1.0, 0.0])
    assert np.array_equal(only_first, full)
    with pytest.raises(ValueError, match="list of 2 conditioning images"):
        sample(multi, image=image)
    with pytest.raises(ValueError, match="one per ControlNet"):
        sample(multi, image=[image, image], controlnet_conditioning_scale=[1.0, 1.0, 1.0])

    multi.save_pretrained(tmp_path)
    assert (tmp_path / "controlnet_1" / "config.json").exists()
    reloaded = ControlNetPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded.controlnet, MultiControlNet)
    again = sample(reloaded, image=[image, torch.ones(3, 16, 16) * 0.5], controlnet_conditioning_scale=[1.0, 0.5])
    assert np.array_equal(again, sample(multi, image=[image, torch.ones(3, 16, 16) * 0.5],
                                        controlnet_conditioning_scale=[1.0, 0.5]))


def test_pipeline_rejects_a_controlnet_of_another_backbone(base_pipeline):
    other = create_model("dic-tiny", hidden_size=16, depth=[1, 1, 1, 1, 1], in_channels=3, sample_size=16)
    with pytest.raises(ValueError, match="in_channels: 3 vs 1"):
        ControlNetPipeline.from_base(base_pipeline, ControlNet.from_backbone(other))



def test_text_conditional_layered_pipeline_with_control(tmp_path):
    from convdiff.pipelines import LayeredControlNetPipeline, LayeredScheduler, LayeredTextToImagePipeline
    from convdiff.pipelines.text_encoders import tiny_text_encoder

    tokenizer, encoder = tiny_text_encoder(hidden_size=16, num_layers=1, model_max_length=24)
    unet = backbone("layered-unet-tiny", dict(cross_attention_dim=16))
    base = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=unet.scale_sizes), encoder, tokenizer)
    base.set_progress_bar_config(disable=True)
    run = dict(prompt=["a seven", "a circle"], class_labels=[7, 1], num_inference_steps=2, guidance_scale=3.0,
               output_type="np")

    def images(pipe, **extra):
        return pipe(**run, **extra, generator=torch.Generator().manual_seed(0)).images

    pipe = LayeredControlNetPipeline.from_base(base, ControlNet.from_backbone(unet, conditioning_channels=1))
    edge = torch.rand(1, 16, 16)
    assert np.array_equal(images(pipe, image=edge), images(base))  # identity at init, through text CFG
    randomize_(pipe.controlnet, seed=3)
    controlled = images(pipe, image=edge)
    assert not np.allclose(controlled, images(base))
    assert images(pipe, image=edge, guess_mode=True).shape == controlled.shape
    other_prompt = pipe(**dict(run, prompt=["a circle", "a seven"]), image=edge,
                        generator=torch.Generator().manual_seed(0)).images
    assert not np.allclose(other_prompt, controlled)
    pipe.save_pretrained(tmp_path)
    loaded = LayeredControlNetPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(images(loaded, image=edge), controlled)
    with pytest.raises(ValueError, match="1-channel conditioning images but got 3"):
        images(pipe, image=torch.rand(3, 16, 16))

def test_condition_images_from_pil_numpy_and_tensors_agree():
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[2:6, 3:5] = 255
    expected = torch.from_numpy(digit).float().div(255)[None, None].expand(2, -1, -1, -1)
    for image in (Image.fromarray(digit), digit, digit[:, :, None].astype(np.float32) / 255,
                  torch.from_numpy(digit)[None], torch.from_numpy(digit).float()[None, None] / 255,
                  [Image.fromarray(digit), Image.fromarray(digit)]):
        torch.testing.assert_close(prepare_condition_image(image, 2, 1, 8, 8), expected)
    rgb = prepare_condition_image(Image.fromarray(digit).convert("RGB"), 1, 3, 4, 4)
    assert rgb.shape == (1, 3, 4, 4)  # resized, same aspect ratio
    with pytest.raises(ValueError, match="1-channel conditioning images but got 3"):
        prepare_condition_image(torch.rand(3, 8, 8), 2, 1, 8, 8)
    with pytest.raises(ValueError, match="aspect ratio"):
        prepare_condition_image(torch.rand(1, 8, 4), 2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_condition_image(torch.rand(1, 8, 8) * 2 - 1, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="3 conditioning images for 2 samples"):
        prepare_condition_image(torch.rand(3, 1, 8, 8), 2, 1, 8, 8)
    with pytest.raises(ValueError, match="PIL images, numpy arrays or tensors"):
        prepare_condition_image("edges.png", 2, 1, 8, 8)


# ---- edges ----------------------------------------------------------------------------------------------
def test_sobel_and_canny_on_a_square():
    image = torch.zeros(1, 1, 16, 16)
    image[..., 4:12, 4:12] = 1.0
    sobel = sobel_edges(image)
    assert sobel.max() <= 1 and sobel[0, 0, 8, 8] == 0 and sobel[0, 0, 8, 4] > 0.5
    canny = canny_edges(image, sigma=0)
    assert set(canny.unique().tolist()) == {0.0, 1.0}
    ring = canny[0, 0].nonzero()
    assert ring[:, 0].min() >= 3 and ring[:, 0].max() <= 12 and canny[0, 0, 8, 8] == 0
    assert canny[0, 0, 4:12, 3:5].any(dim=1).all()  # every row of the left side has an edge pixel
    torch.testing.assert_close(edge_map(image.expand(1, 3, -1, -1), "canny", sigma=0), canny)
    assert edge_iou(canny, canny).item() == 1.0
    shifted = canny.roll(1, dims=-1)
    assert edge_iou(canny, shifted).item() < 0.6 and edge_iou(canny, shifted, tolerance=1).item() == 1.0
    with pytest.raises(ValueError, match="sobel, canny"):
        edge_map(image, "laplace")


# ---- training -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A saved MNIST-shaped base pipeline (tiny DiC, learned sigma) and its model."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    model = randomize_(create_model("dic-tiny", hidden_size=8, depth=[1, 1, 1, 1, 1], in_channels=1, sample_size=28,
                                    learn_sigma=True))
    folder = tmp_path_factory.mktemp("base")
    ClassConditionalPipeline(transformer=model, scheduler=DDPMScheduler(variance_type="learned_range")).save_pretrained(folder)
    return folder, model


def test_controlnet_task_keeps_the_base_in_the_weight_dtype_and_the_controlnet_in_fp32(tiny_base):
    from types import SimpleNamespace

    from convdiff.training.config import load_config
    from convdiff.training.task import Draws
    from convdiff.training.tasks import make_task

    folder, _ = tiny_base
    task = make_task(load_config(None, ["task=controlnet", f"task_options.base={folder}"]))
    dataset = torch.utils.data.TensorDataset(torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([1, 2, 3, 4]))
    dataset.sample_shape, dataset.num_classes = (1, 28, 28), 10
    controlnet = task.build_model(dataset)
    task.to_device(SimpleNamespace(device=torch.device("cpu"), mixed_precision="bf16"))
    assert task.base.dtype == torch.bfloat16 and not any(p.requires_grad for p in task.base.parameters())
    assert controlnet.dtype == torch.float32
    loss = task.loss(controlnet, dataset.tensors, Draws(torch.Generator().manual_seed(0), 4, slice(0, 4)))
    loss.backward()
    assert torch.isfinite(loss) and controlnet.controlnet_mid_block.weight.grad.dtype == torch.float32
    assert controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0


def test_controlnet_task_trains_only_the_controlnet_through_the_loop(tmp_path, tiny_base):
    from safetensors.torch import load_file

    from convdiff.apps.train import train_main
    from convdiff.training.config import load_config

    base_folder, base_model = tiny_base
    out = tmp_path / "run"
    train_main(["task=controlnet", f"task_options.base={base_folder}", "task_options.empty_condition_prob=0.5",
                "task_options.condition=sobel", "task_options.preview_count=4", "train_batch_size=4",
                "max_train_steps=3", "learning_rate=0.01", "report_to=null", "logging_steps=1", "use_ema=false",
                "checkpointing_steps=0", "sample_num_inference_steps=2", f"output_dir={out}"])
    pipe = ControlNetPipeline.from_pretrained(out / "pipeline")
    assert_saved_as_recipe(out / "pipeline", load_config(None, ["sample_num_inference_steps=2"]))
    saved_base = load_file(out / "pipeline/transformer/diffusion_pytorch_model.safetensors")
    for key, value in base_model.state_dict().items():
        assert torch.equal(saved_base[key], value), key  # frozen
    assert pipe.controlnet.dtype == torch.float32
    assert pipe.controlnet.controlnet_mid_block.weight.abs().sum() > 0  # the zero convs learned
    assert Image.open(out / "samples/final.png").size == (4 * 28, 2 * 28)  # 4 (condition | sample) pairs
    images = sample(pipe, image=torch.rand(1, 28, 28))
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    with pytest.raises(ValueError, match="task_options.base"):
        train_main(["task=controlnet", "report_to=null", f"output_dir={tmp_path / 'bad'}"])


def test_demo_adherence_measure_and_grid(tiny_base):
    from convdiff.apps.controlnet_demo import adherence, comparison_grid, evaluate, markdown_table

    digits = torch.zeros(2, 1, 28, 28)
    digits[:, :, 8:20, 10:18] = 1.0
    conditions = canny_edges(digits)
    perfect = adherence(digits, conditions)
    assert perfect["edge IoU"] == 1.0 and perfect["edge pixel error"] == 0.0
    assert adherence(torch.zeros_like(digits), conditions)["edge IoU"] == 0.0

    folder, model = tiny_base
    base = ClassConditionalPipeline.from_pretrained(folder)
    pipe = ControlNetPipeline.from_base(base, ControlNet.from_backbone(base.transformer, conditioning_channels=1))
    metrics, cond, controlled, uncontrolled = evaluate(pipe, num_digits=3, steps=1, batch_size=2)
    assert torch.equal(controlled, uncontrolled)  # a fresh ControlNet is the identity
    assert metrics["controlled"] == metrics["uncontrolled"] and set(metrics) == {
        "controlled", "uncontrolled", "another held-out digit of the class"}
    assert "| controlled |" in markdown_table(metrics)
    assert comparison_grid(cond, controlled, uncontrolled, count=2, per_row=2, zoom=2).size == (2 * 6 * 28, 2 * 28)


def test_shipped_controlnet_fits_the_shipped_mnist_model():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    base = ClassConditionalPipeline.from_pretrained(root / "dic-mnist")
    controlnet = ControlNet.from_pretrained(root / "controlnet-dic-mnist")
    controlnet.check_backbone(base.transformer)
    assert controlnet.config.conditioning_channels == 1
    x, t, y = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1), torch.tensor([500, 500]), torch.tensor([3, 3])
    edges = torch.zeros(2, 1, 28, 28)
    edges[1, :, 6:22, 12] = 1.0  # a vertical stroke for the second sample only
    down, mid = controlnet(x, t, edges, class_labels=y, return_dict=False)
    out = base.transformer(x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the condition moves the prediction


@pytest.mark.parametrize("kwargs,match", [(dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
                                          (dict(guidance_scale=float("nan")), "guidance_scale must be a finite"),
                                          (dict(class_labels=[]), "class_labels is empty")])
def test_pipeline_sampling_arguments_are_checked(base_pipeline, kwargs, match):
    pipe = ControlNetPipeline.from_base(base_pipeline, ControlNet.from_backbone(base_pipeline.transformer,
                                                                                conditioning_channels=1))
    kwargs = {"class_labels": [1], "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(image=torch.zeros(1, 1, 16, 16), **kwargs)
