"""4D view synthesis with the known view given clean: the model's `known_cells` flag, the video task's
`first_view_prob` (condition clean, loss on the other views, exact resume) and FourDPipeline's
`first_view_mode="clean"` (known cells exact in the output, the mode saved with the pipeline)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from conftest import randomize_, assert_saved_as_recipe

from convdiff.models.video import inflate
from convdiff.pipelines.video import FourDPipeline
from convdiff.registry import create_model
from convdiff.training.config import load_config
from convdiff.training.task import Draws

TINY = dict(hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=8)
# the 4D recipe shrunk to a 2-view x 2-frame grid of 8x8 images
RECIPE = ["task_options.num_views=2", "task_options.num_frames=2", "task_options.image_size=8",
          "task_options.length=4", "model_overrides.hidden_size=8", "model_overrides.depth=[1,1,1,1,1]",
          "model_overrides.sample_size=8", "train_batch_size=2", "max_train_seconds=null",
          "sample_num_inference_steps=1", "report_to=null"]


def fourd_model(prediction_type="epsilon"):
    torch.manual_seed(0)
    base = create_model("dic-tiny", in_channels=3, num_classes=0, learn_sigma=False, prediction_type=prediction_type,
                        **TINY)
    return inflate(randomize_(base), to="4d", camera_dim=12, max_frames=4, max_views=3)  # no zero output head


def test_known_cells_are_embedded_at_timestep_zero():
    model = fourd_model().eval()
    x, cameras = torch.randn(2, 3, 3, 2, 8, 8), torch.randn(2, 3, 12)
    known = torch.zeros(2, 3, 2, dtype=torch.bool)
    known[:, 0] = True  # view 0's video
    with torch.no_grad():
        flagged = model(x, torch.tensor([700, 300]), cameras=cameras, known_cells=known).sample
        at_zero = model(x, torch.zeros(2, dtype=torch.long), cameras=cameras).sample
        plain = model(x, torch.tensor([700, 300]), cameras=cameras).sample
    # at initialisation the frames are independent, so each cell sees only its own noise level
    torch.testing.assert_close(flagged[:, :, 0], at_zero[:, :, 0])
    torch.testing.assert_close(flagged[:, :, 1:], plain[:, :, 1:])
    assert not torch.allclose(flagged[:, :, 0], plain[:, :, 0])
    with pytest.raises(ValueError, match=r"known_cells must be a bool tensor of shape \(batch, views, frames\)"):
        model(x, 5, cameras=cameras, known_cells=known[:, :2])


def make_task(tmp_path, *overrides):
    from convdiff.training.video_task import VideoTask

    config = load_config("configs/4d-synthetic.yaml", [*RECIPE, *overrides, f"output_dir={tmp_path / 'run'}"])
    task = VideoTask(config)
    dataset = task.build_dataset()
    return task, task.build_model(dataset), dataset


class Spy(torch.nn.Module):
    """Records the model's inputs and returns a fixed output that requires grad."""

    def __init__(self, out):
        super().__init__()
        self.out = torch.nn.Parameter(out)

    def forward(self, x, t, **kwargs):
        self.seen = (x.detach().clone(), t, kwargs)
        return type("Out", (), {"sample": self.out})()


@pytest.mark.parametrize("objective", ["flow", "epsilon"])
def test_first_view_is_given_clean_and_left_out_of_the_loss(tmp_path, objective):
    task, model, dataset = make_task(tmp_path, f"objective={objective}", "task_options.first_view_prob=1.0",
                                     "task_options.given_cells=first_view")
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    x0 = batch["video"]
    spy = Spy(torch.randn_like(x0))
    loss = task.loss(spy, batch, Draws(torch.Generator().manual_seed(0), 2, slice(0, 2)))
    x_in, t, kwargs = spy.seen
    assert torch.equal(x_in[:, :, 0], x0[:, :, 0])  # the given view is clean
    assert not torch.allclose(x_in[:, :, 1], x0[:, :, 1])  # the other is noised
    assert kwargs["known_cells"].tolist() == [[[True, True], [False, False]]] * 2
    loss.backward()
    grad = spy.out.grad
    assert torch.count_nonzero(grad[:, :, 0]) == 0 and torch.count_nonzero(grad[:, :, 1]) == grad[:, :, 1].numel()
    # the same noise and timesteps without conditioning: the loss also covers view 0, which it did not above
    plain, _, _ = make_task(tmp_path, f"objective={objective}", "task_options.first_view_prob=0",
                            "task_options.given_cells=first_view")
    full = plain.loss(spy, batch, Draws(torch.Generator().manual_seed(0), 2, slice(0, 2)))
    assert "known_cells" not in spy.seen[2] and not torch.isclose(full, loss)


def test_grid_completion_gives_the_first_row_and_column_clean_and_scores_the_rest(tmp_path):
    """4Real-Video's layout: view 0's video and every view at time 0 are given clean, flagged and out of the loss."""
    task, model, dataset = make_task(tmp_path, "objective=flow", "task_options.first_view_prob=1.0",
                                     "task_options.given_cells=grid", "task_options.num_views=3",
                                     "task_options.num_frames=3")
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    x0 = batch["video"]
    spy = Spy(torch.randn_like(x0))
    task.loss(spy, batch, Draws(torch.Generator().manual_seed(0), 2, slice(0, 2))).backward()
    x_in, _, kwargs = spy.seen
    given = torch.tensor([[True, True, True], [True, False, False], [True, False, False]])
    assert torch.equal(kwargs["known_cells"], given.expand(2, 3, 3))
    cells = given[None, None, :, :, None, None].expand_as(x0)
    assert torch.equal(x_in[cells], x0[cells]) and not torch.isclose(x_in[~cells], x0[~cells]).all()
    grad = spy.out.grad
    assert torch.count_nonzero(grad[cells]) == 0 and torch.count_nonzero(grad[~cells]) == grad[~cells].numel()
    with pytest.raises(ValueError, match="given_cells must be one of"):
        make_task(tmp_path, "task_options.given_cells=diagonal")


def test_grid_completion_metric_against_its_two_copy_baselines():
    from convdiff.data.multiview import MultiViewObjects
    from convdiff.eval.video_metrics import fourd_grid_completion

    data = MultiViewObjects(num_views=3, num_frames=3, image_size=8, length=2)

    class Oracle:  # returns the true grid: the generated cells score the PSNR floor's 120 dB
        def __call__(self, first_view, first_frame, **kwargs):
            self.given = (first_view, first_frame)
            video = torch.stack([data[i]["video"] for i in range(2)])
            return type("Out", (), {"frames": ((video.permute(0, 2, 3, 4, 5, 1).numpy() + 1) / 2)})()

    oracle = Oracle()
    metrics = fourd_grid_completion(oracle, data, num_clips=2, num_inference_steps=1)
    video = torch.stack([data[i]["video"] for i in range(2)])
    assert torch.equal(oracle.given[0], video[:, :, 0]) and torch.equal(oracle.given[1], video[:, :, :, 0])
    assert metrics["psnr_generated"] == pytest.approx(120.0)
    assert metrics["psnr_generated_by_view"] == pytest.approx([120.0, 120.0])  # views 1 and 2
    truth = (video.permute(0, 2, 3, 4, 5, 1).numpy() + 1) / 2
    from convdiff.eval.video_metrics import psnr

    real = truth[:, 1:, 1:]
    assert metrics["psnr_view_at_time_0"] == pytest.approx(psnr(np.repeat(truth[:, 1:, :1], 2, axis=2), real))
    assert metrics["psnr_view_0_at_time"] == pytest.approx(psnr(np.repeat(truth[:, :1, 1:], 2, axis=1), real))


def test_first_view_prob_is_checked(tmp_path):
    from convdiff.training.video_task import VideoTask

    with pytest.raises(ValueError, match="first_view_prob must be in"):
        make_task(tmp_path, "task_options.first_view_prob=1.5")
    with pytest.raises(ValueError, match="needs mode=4d"):
        VideoTask(load_config("configs/video-moving-digits.yaml", ["task_options.first_view_prob=0.5"]))


def test_conditioned_training_resumes_exactly_and_saves_the_clean_mode(tmp_path):
    import shutil

    from convdiff.training.loop import train

    overrides = [*RECIPE, "objective=flow", "task_options.first_view_prob=0.5", "max_train_steps=4",
                 "checkpointing_steps=2", "checkpoints_total_limit=2", "sample_steps=0", f"output_dir={tmp_path}"]
    rel = "transformer/diffusion_pytorch_model.safetensors"
    straight = load_file(train(load_config("configs/4d-synthetic.yaml", overrides)) / rel)
    shutil.rmtree(tmp_path / "checkpoint-4")  # as if the run had been killed after step 2
    shutil.rmtree(tmp_path / "pipeline")
    resumed_dir = train(load_config("configs/4d-synthetic.yaml", [*overrides, "resume_from_checkpoint=latest"]))
    resumed = load_file(resumed_dir / rel)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    pipe = FourDPipeline.from_pretrained(resumed_dir)
    assert pipe.config.first_view_mode == "clean" and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert_saved_as_recipe(resumed_dir, load_config("configs/4d-synthetic.yaml", overrides),
                           "FlowMatchEulerDiscreteScheduler")


class InputRecorder:
    """A forward pre-hook that keeps what the model is called with at every step."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((args[0].clone(), kwargs.get("known_cells")))


@pytest.mark.parametrize("scheduler", [DDIMScheduler(clip_sample=False), EulerDiscreteScheduler(),
                                       FlowMatchEulerDiscreteScheduler()], ids=["ddim", "euler", "flow"])
def test_clean_mode_feeds_the_first_view_clean_and_keeps_it_exact(scheduler):
    pipe = FourDPipeline(fourd_model("flow" if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) else "epsilon"),
                         scheduler, first_view_mode="clean")
    pipe.set_progress_bar_config(disable=True)
    view = torch.rand(2, 3, 2, 8, 8) * 2 - 1
    recorder = InputRecorder(pipe.transformer)
    kwargs = dict(batch_size=2, cameras=torch.randn(3, 12), num_frames=2, num_inference_steps=3, first_view=view,
                  output_type="pt", generator=torch.Generator().manual_seed(0))
    out = pipe(**kwargs).frames  # (B, V, T, C, H, W) in [0, 1]
    recorder.handle.remove()
    torch.testing.assert_close(out[:, 0], ((view + 1) / 2).permute(0, 2, 1, 3, 4), atol=1e-6, rtol=0)
    assert len(recorder.calls) == 3
    for x, known in recorder.calls:  # every step the model gets view 0 clean (Euler: its input scaling undone)
        torch.testing.assert_close(x[:, :, 0], view, atol=1e-5, rtol=1e-5)
        assert known.bool().tolist() == [[[True, True], [False, False], [False, False]]] * 2
    replaced = pipe(**kwargs, first_view_mode="replace").frames
    torch.testing.assert_close(replaced[:, 0], out[:, 0], atol=1e-6, rtol=0)  # both end on the given view
    assert not torch.allclose(replaced[:, 1:], out[:, 1:])


def test_first_view_mode_survives_save_and_load(tmp_path):
    pipe = FourDPipeline(fourd_model(), DDIMScheduler(clip_sample=False), first_view_mode="clean")
    pipe.save_pretrained(tmp_path / "4d")
    loaded = FourDPipeline.from_pretrained(tmp_path / "4d")
    assert loaded.config.first_view_mode == "clean"
    for p in (pipe, loaded):
        p.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=1, cameras=torch.randn(3, 12), num_frames=2, num_inference_steps=2,
                  first_view=torch.rand(3, 2, 8, 8) * 2 - 1, output_type="np")
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).frames
    b = loaded(**kwargs, generator=torch.Generator().manual_seed(1)).frames
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert FourDPipeline(fourd_model(), DDIMScheduler()).config.first_view_mode == "replace"  # the default
    with pytest.raises(ValueError, match="first_view_mode must be one of"):
        FourDPipeline(fourd_model(), DDIMScheduler(), first_view_mode="noised")
    with pytest.raises(ValueError, match="first_view_mode must be one of"):
        pipe(**kwargs, first_view_mode="sometimes")


def test_view_synthesis_averages_samples_into_a_posterior_mean_estimate():
    from convdiff.data.multiview import MultiViewObjects
    from convdiff.eval.video_metrics import fourd_view_synthesis

    pipe = FourDPipeline(fourd_model(), DDIMScheduler(clip_sample=False), first_view_mode="clean")
    pipe.set_progress_bar_config(disable=True)
    data = MultiViewObjects(num_views=3, num_frames=2, image_size=8, length=2)
    one = fourd_view_synthesis(pipe, data, num_clips=2, num_inference_steps=1, batch_size=2)
    two = fourd_view_synthesis(pipe, data, num_clips=2, num_inference_steps=1, batch_size=2, num_samples=2)
    assert two["num_samples"] == 2 and two["psnr_generated"] != one["psnr_generated"]
    assert two["psnr_copy_first_view"] == one["psnr_copy_first_view"]
    # references blind to view 0: another scene's views, and the other scenes' mean image
    assert np.isfinite(one["psnr_other_scene"]) and np.isfinite(one["psnr_mean_image"])
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fourd_view_synthesis(pipe, data, num_clips=2, num_inference_steps=1, num_samples=0)


def test_without_view_layers_makes_every_view_on_its_own():
    from convdiff.apps.video_demo import without_view_layers

    model = fourd_model().eval()
    randomize_(torch.nn.ModuleList([m for n, m in model.named_modules() if n.endswith(".view")]), std=0.2)
    x, cameras, t = torch.randn(1, 3, 3, 2, 8, 8), torch.randn(1, 3, 12), torch.tensor([500])
    changed = x.clone()
    changed[:, :, 0] += 1.0  # another view 0
    per_view = without_view_layers(model)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, cameras=cameras).sample[:, :, 1:],
                                  model(changed, t, cameras=cameras).sample[:, :, 1:])
        torch.testing.assert_close(per_view(x, t, cameras=cameras).sample[:, :, 1:],
                                   per_view(changed, t, cameras=cameras).sample[:, :, 1:])


def test_grid_completion_references_hold_only_the_unseen_motion_wrong():
    """depth_frozen keeps the true paths but the component along view 0's optical axis: exact for motion across
    view 0's image, wrong for motion along its axis; depth_redrawn is deterministic for a seed."""
    from convdiff.data.multiview import MultiViewObjects, orbit_cameras
    from convdiff.eval.video_metrics import grid_completion_references

    cameras = orbit_cameras(4)
    axis = cameras[0][2, :3]

    class OneCube(MultiViewObjects):
        def __init__(self, velocity):
            super().__init__(num_views=4, num_frames=3, image_size=12, length=1)
            self.velocity = np.asarray(velocity, float)

        def scene(self, index):
            cube = {"kind": "cube", "size": 0.35, "color": np.array([0.9, 0.5, 0.3])}
            return [[dict(cube, center=t * self.velocity)] for t in range(3)], cameras

    across = grid_completion_references(OneCube([0.0, 0.12, 0.0]), num_clips=1, redraws=2)  # axis has no y part
    along = grid_completion_references(OneCube(0.15 * axis), num_clips=1, redraws=2)
    assert across["psnr_depth_frozen"] == pytest.approx(120.0)
    assert along["psnr_depth_frozen"] < 40.0
    data = MultiViewObjects(num_views=3, num_frames=3, image_size=8, length=2)
    first, again = (grid_completion_references(data, num_clips=2, redraws=3, seed=5) for _ in range(2))
    assert first == again and first["redraws"] == 3
    assert first["psnr_depth_redrawn_of_mean_mse"] <= first["psnr_depth_redrawn"]
    with pytest.raises(ValueError, match="num_frames >= 2"):
        grid_completion_references(MultiViewObjects(num_views=3, num_frames=1, image_size=8, length=1), num_clips=1)
