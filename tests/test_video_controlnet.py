"""ControlNet on inflated video / 4D models: identity at init, shared and per-frame conditions, pipelines."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from convdiff.models.controlnet import ControlNet
from convdiff.models.video import inflate
from convdiff.pipelines import FourDControlNetPipeline, FourDPipeline, VideoControlNetPipeline, VideoPipeline
from convdiff.registry import create_model

from conftest import randomize_

TINY = {"dic-tiny": dict(hidden_size=8, depth=[1, 1, 1, 1, 1]), "diffit-tiny": dict(depth=3, window_size=4)}
DESIGNS = [("video", {}), ("4d", dict(view="attention")), ("4d", dict(view="two-stream")), ("4d", dict(view="fused"))]
DESIGN_IDS = ["video", "4d-attention", "4d-two-stream", "4d-fused"]


def image_model(name="dic-tiny", size=8, **more):
    return randomize_(create_model(name, in_channels=3, sample_size=size, **TINY[name], **more)).eval()


def inflated(to, design, name="dic-tiny", size=8, **more):
    return randomize_(inflate(image_model(name, size), to=to, temporal=("p3d", "attention"), **design, **more),
                      seed=1).eval()


def grid_of(to):
    return (3,) if to == "video" else (2, 3)


def run(model, controlnet, x, t, y, condition, conditioning_scale=1.0, **kwargs):
    down, mid = controlnet(x, t, condition, conditioning_scale, class_labels=y, return_dict=False, **kwargs)
    return model(x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid, **kwargs).sample


@pytest.mark.parametrize("name", ["dic-tiny", "diffit-tiny"])
@pytest.mark.parametrize("to,design", DESIGNS, ids=DESIGN_IDS)
def test_controlled_video_equals_uncontrolled_at_init_for_shared_and_per_frame_conditions(name, to, design):
    size = 16 if name == "diffit-tiny" else 8
    model = inflated(to, design, name, size)
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).eval()
    for key, value in controlnet.backbone.state_dict().items():  # the copy starts from the video model's weights
        assert torch.equal(value, model.state_dict()[key]), key
    grid = grid_of(to)
    x, t, y = torch.randn(2, 3, *grid, size, size), torch.tensor([3, 700]), torch.tensor([1, 5])
    base = model(x, t, y).sample
    shared, per_frame = torch.rand(2, 1, size, size), torch.rand(2, 1, *grid, size, size)
    assert torch.equal(run(model, controlnet, x, t, y, shared), base)
    assert torch.equal(run(model, controlnet, x, t, y, per_frame), base)
    randomize_(controlnet, seed=3)
    controlled = run(model, controlnet, x, t, y, per_frame)
    assert controlled.shape == base.shape and not torch.allclose(controlled, base)
    assert torch.equal(run(model, controlnet, x, t, y, per_frame, conditioning_scale=0.0), base)
    # a per-frame condition equal to the shared one in every frame is the shared condition
    repeated = shared.unsqueeze(2).expand(-1, -1, *grid, -1, -1) if to == "video" else \
        shared[:, :, None, None].expand(-1, -1, *grid, -1, -1)
    torch.testing.assert_close(run(model, controlnet, x, t, y, repeated), run(model, controlnet, x, t, y, shared))


def test_the_copy_keeps_the_temporal_layers_so_one_frame_condition_reaches_the_others():
    model = inflated("video", {})
    controlnet = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=2).eval()
    assert any("temporal" in name for name, _ in controlnet.backbone.named_parameters())
    x, t, y = torch.randn(1, 3, 3, 8, 8), torch.tensor([400]), torch.tensor([2])
    condition = torch.zeros(1, 1, 3, 8, 8)
    changed = condition.clone()
    changed[:, :, 0] = 1.0  # only frame 0's condition changes
    a, b = run(model, controlnet, x, t, y, condition), run(model, controlnet, x, t, y, changed)
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])  # frame 2 sees it through the temporal layers


def test_camera_conditioned_4d_controlnet_sees_the_cameras_and_save_load_round_trips(tmp_path):
    model = inflated("4d", dict(view="attention"), camera_dim=4, max_views=3)
    controlnet = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=4).eval()
    x, t, y = torch.randn(2, 3, 2, 3, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 5])
    cameras, condition = torch.randn(2, 2, 4), torch.rand(2, 1, 2, 3, 8, 8)
    out = run(model, controlnet, x, t, y, condition, cameras=cameras)
    assert out.shape == (2, 6, 2, 3, 8, 8)
    other = controlnet(x, t, condition, class_labels=y, cameras=torch.randn(2, 2, 4), return_dict=False)[1]
    assert not torch.allclose(other, controlnet(x, t, condition, class_labels=y, cameras=cameras, return_dict=False)[1])
    controlnet.save_pretrained(tmp_path)
    loaded = ControlNet.from_pretrained(tmp_path).eval()
    loaded.check_backbone(model)
    assert loaded.config.backbone_class == "convdiff.models.video.InflatedFourDModel"
    assert torch.equal(run(model, loaded, x, t, y, condition, cameras=cameras), out)


def test_video_controlnet_errors_are_clear():
    model = inflated("video", {})
    controlnet = ControlNet.from_backbone(model, conditioning_channels=1).eval()
    x, t, y = torch.randn(2, 3, 3, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 5])
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\) tensor in \[0, 1\] \(one for all frames\) or a "
                                         r"\(2, 1, 3, 8, 8\) tensor \(one per frame\)"):
        controlnet(x, t, torch.rand(2, 1, 4, 8, 8), class_labels=y)
    with pytest.raises(ValueError, match="different config.*max_frames"):
        controlnet.check_backbone(inflate(image_model(), to="video", temporal=("p3d", "attention"), max_frames=8))
    with pytest.raises(ValueError, match="InflatedVideoModel wraps a UNet2DModel, which has no ControlNet interface"):
        unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                           norm_num_groups=4, layers_per_block=1)
        ControlNet.from_backbone(inflate(unet, to="video"))


# ---- pipelines -------------------------------------------------------------------------------------------
def sample(pipe, **kwargs):
    kwargs.setdefault("class_labels", [1, 2])
    return pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames


@pytest.fixture(scope="module")
def video_base():
    torch.manual_seed(0)
    pipe = VideoPipeline(inflated("video", {}, max_frames=4), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_video_pipeline_with_control_equals_the_base_at_init_and_round_trips(video_base, tmp_path):
    pipe = VideoControlNetPipeline.from_base(video_base, ControlNet.from_backbone(video_base.transformer,
                                                                                conditioning_channels=1))
    pipe.set_progress_bar_config(disable=True)
    per_frame = torch.rand(1, 1, 3, 8, 8)  # one for both samples; sets num_frames=3
    expected = sample(video_base, num_frames=3, guidance_scale=3.0)
    assert expected.shape == (2, 3, 8, 8, 3)
    assert np.array_equal(sample(pipe, image=per_frame, guidance_scale=3.0), expected)
    assert np.array_equal(sample(pipe, image=torch.rand(1, 8, 8), num_frames=3, guidance_scale=3.0), expected)
    randomize_(pipe.controlnet, seed=5)
    controlled = sample(pipe, image=per_frame, guidance_scale=3.0)
    assert controlled.shape == expected.shape and not np.allclose(controlled, expected)
    assert np.array_equal(sample(pipe, image=per_frame, guidance_scale=3.0, controlnet_conditioning_scale=0.0), expected)
    assert sample(pipe, image=per_frame, guidance_scale=3.0, guess_mode=True).shape == expected.shape
    pipe.save_pretrained(tmp_path)
    loaded = VideoControlNetPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(loaded, image=per_frame, guidance_scale=3.0), controlled)


def test_video_pipeline_with_control_refuses_bad_conditions(video_base):
    pipe = VideoControlNetPipeline.from_base(video_base, ControlNet.from_backbone(video_base.transformer,
                                                                                conditioning_channels=1))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="per-frame conditions for 3 samples but the batch has 2"):
        sample(pipe, image=torch.rand(3, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="1-channel conditioning images but got 3"):
        sample(pipe, image=torch.rand(2, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="one per frame"):
        sample(pipe, image=torch.rand(2, 1, 3, 8, 8), num_frames=4)
    with pytest.raises(ValueError, match="in_channels"):
        other = inflate(create_model("dic-tiny", in_channels=1, sample_size=8, **TINY["dic-tiny"]), to="video",
                        temporal=("p3d", "attention"), max_frames=4)
        VideoControlNetPipeline.from_base(video_base, ControlNet.from_backbone(other))


def test_video_control_over_overlapping_windows_cuts_the_conditions_and_counts_steps(video_base):
    pipe = VideoControlNetPipeline.from_base(video_base, ControlNet.from_backbone(video_base.transformer,
                                                                                conditioning_channels=1))
    pipe.set_progress_bar_config(disable=True)
    per_frame = torch.rand(1, 1, 6, 8, 8)  # 6 frames, the model takes 4: windows [0, 4) and [2, 6)
    windows = dict(window_frames=4, window_overlap=2, guidance_scale=2.0)
    expected = sample(video_base, num_frames=6, **windows)
    assert np.array_equal(sample(pipe, image=per_frame, **windows), expected)  # identity at init, window by window
    randomize_(pipe.controlnet, seed=7)
    seen = []
    pipe.controlnet.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    assert not np.allclose(sample(pipe, image=per_frame, **windows), expected)
    assert len(seen) == 3 * 2  # 3 steps x 2 windows (the CFG halves run in one call)
    for condition, start in zip(seen[:2], (0, 2)):
        assert torch.equal(condition, per_frame[:, :, start : start + 4].expand(4, -1, -1, -1, -1))
    seen.clear()
    sample(pipe, image=per_frame, control_guidance_start=0.5, **windows)
    assert len(seen) == 2  # the last step only, once per window


@pytest.mark.parametrize("view", ["attention", "two-stream"])
def test_fourd_pipeline_with_per_cell_control(view, tmp_path):
    model = inflated("4d", dict(view=view), camera_dim=4, max_frames=2, max_views=2)
    base = FourDPipeline(model, DDIMScheduler(clip_sample=False))
    base.set_progress_bar_config(disable=True)
    pipe = FourDControlNetPipeline.from_base(base, ControlNet.from_backbone(model, conditioning_channels=1))
    pipe.set_progress_bar_config(disable=True)
    cameras, cells = torch.randn(2, 4), torch.rand(2, 1, 2, 2, 8, 8)  # sets num_views=2, num_frames=2
    expected = sample(base, cameras=cameras, num_views=2, num_frames=2, guidance_scale=2.0)
    assert expected.shape == (2, 2, 2, 8, 8, 3)
    assert np.array_equal(sample(pipe, image=cells, cameras=cameras, guidance_scale=2.0), expected)
    randomize_(pipe.controlnet, seed=6)
    controlled = sample(pipe, image=cells, cameras=cameras, guidance_scale=2.0, guess_mode=True)
    assert controlled.shape == expected.shape and not np.allclose(controlled, expected)
    pipe.save_pretrained(tmp_path)
    loaded = FourDControlNetPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(loaded, image=cells, cameras=cameras, guidance_scale=2.0, guess_mode=True), controlled)


def test_video_controlnet_gradient_checkpointing_gives_the_same_gradients():
    model = inflated("video", {})
    controlnet = randomize_(ControlNet.from_backbone(model, conditioning_channels=1), seed=2).train()
    x, t, y, c = torch.randn(2, 3, 3, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 2]), torch.rand(2, 1, 3, 8, 8)

    def gradients():
        controlnet.zero_grad()
        down, mid = controlnet(x, t, c, class_labels=y, force_drop_ids=torch.zeros(2), return_dict=False)
        (sum(r.square().mean() for r in down) + mid.square().mean()).backward()
        return [p.grad.clone() for p in controlnet.parameters() if p.grad is not None]

    plain = gradients()
    controlnet.enable_gradient_checkpointing()  # blocks recomputed in backward, inside the copy's grid context
    checkpointed = gradients()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


# ---- training: task controlnet on a video base ---------------------------------------------------------------
def test_controlnet_task_on_a_video_base_trains_a_per_frame_edge_controlnet(tmp_path, monkeypatch):
    """`task: controlnet` with a VideoPipeline base: clips as data, one Canny map per frame as the condition,
    the video model frozen, a VideoControlNetPipeline saved."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from convdiff.data import moving_digits
    from convdiff.training.config import load_config
    from convdiff.training.controlnet_task import ControlNetTask
    from convdiff.training.loop import train

    def blob_digits(split="train"):
        images = np.zeros((10, 28, 28), np.uint8)
        images[:, 8:20, 10:18] = 255
        return images, np.arange(10)

    monkeypatch.setattr(moving_digits, "mnist_digits", blob_digits)
    torch.manual_seed(0)
    base = create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, prediction_type="flow",
                        hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=28)
    video = inflate(base, to="video", max_frames=4).eval()
    VideoPipeline(video, FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path / "base")
    overrides = [f"task_options.base={tmp_path / 'base'}", "task_options.num_frames=3", "task_options.length=8",
                 "task_options.preview_count=2", "task_options.conditioning_embedding_channels=[8,8]",
                 "train_batch_size=2", "max_train_steps=2", "sample_num_inference_steps=1", "report_to=null",
                 "checkpointing_steps=0", f"output_dir={tmp_path / 'run'}"]
    config = load_config("configs/controlnet-video-dic-mnist.yaml", overrides)
    task = ControlNetTask(config)
    clips = task.build_dataset()
    assert task.video and clips.sample_shape == (1, 3, 28, 28)
    task.build_model(clips)
    x0 = torch.stack([clips[0][0], clips[1][0]])
    condition = task.condition(x0)
    assert condition.shape == (2, 1, 3, 28, 28)  # one edge map per frame, each the map of its own frame
    torch.testing.assert_close(condition[:, :, 1], task.condition(x0[:, :, 1]))
    pipe = VideoControlNetPipeline.from_pretrained(train(config))
    assert any("temporal" in name for name, _ in pipe.controlnet.named_parameters())  # the copy sees the clip
    trained = load_state(tmp_path / "run" / "pipeline" / "transformer")
    assert all(torch.equal(v, video.state_dict()[k]) for k, v in trained.items())  # the video model stayed frozen
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(condition[:1], class_labels=[3], num_inference_steps=1, output_type="np").frames
    assert frames.shape == (1, 3, 28, 28, 1)
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def load_state(folder):
    from safetensors.torch import load_file

    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_video_edge_evaluation_reads_real_frames_at_the_ceiling_and_an_untrained_controlnet_as_no_control():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from convdiff.apps.controlnet_demo import evaluate_video

    torch.manual_seed(0)
    base = create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, prediction_type="flow",
                        hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=28)
    video = inflate(base, to="video", max_frames=4).eval()
    pipe = VideoControlNetPipeline(video, ControlNet.from_backbone(video, conditioning_channels=1),
                                   FlowMatchEulerDiscreteScheduler(), sampling_defaults={"num_inference_steps": 1})
    metrics, conditions, controlled, uncontrolled = evaluate_video(pipe, num_clips=2, num_frames=3, batch_size=2)
    assert conditions.shape == controlled.shape == (6, 1, 28, 28)
    assert metrics["the clip's own frames (the detector's ceiling)"]["edge IoU"] == 1.0
    assert torch.equal(controlled, uncontrolled)  # zero-initialised ControlNet: no control yet
    assert metrics["controlled"] == metrics["uncontrolled"]
