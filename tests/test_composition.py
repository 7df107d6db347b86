"""The composition matrix (docs/inflation.md, "What composes"): every backbone x every order of {ΔConv, video,
4D, ControlNet, scheduler swap} that a user would try. A recipe is walked step by step; a step that cannot
apply must raise the clear error it raises (asserted by message), every other step must work, and a recipe
that works ends in one forward (ControlNet residuals added, equal to the uncontrolled model at init) or, when it
swaps the scheduler, a 2-step pipeline call, both with the right output shape. Tiny models, 8x8 grids.
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from convdiff.models.controlnet import ControlNet
from convdiff.models.convfusion import convert_self_attention, student_modules
from convdiff.models.video import InflatedVideoModel, inflate
from convdiff.pipelines import (ClassConditionalPipeline, ControlNetPipeline, FourDControlNetPipeline, FourDPipeline,
                                LayeredControlNetPipeline, LayeredScheduler, LayeredTextToImagePipeline,
                                VideoControlNetPipeline, VideoPipeline)
from convdiff.registry import create_model

from conftest import randomize_

BACKBONES = {
    "dic": ("dic-tiny", dict(hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=8)),
    "dico": ("dico-tiny", dict(hidden_size=8, sample_size=8)),
    "diffit": ("diffit-tiny", dict(hidden_size=16, sample_size=8)),
    "diffit-unet": ("diffit-unet-tiny", dict(sample_size=8, base_channels=8, block_out_channels=[16, 16])),
    "layered": ("layered-unet-tiny", dict(block_out_channels=[8, 16], attention_head_dim=8, norm_num_groups=4)),
}
# Orders a user would try; "scheduler" (sampling with a swapped scheduler) comes last.
RECIPES = [
    (), ("scheduler",), ("controlnet",), ("video",), ("4d",), ("deltaconv",),
    ("controlnet", "scheduler"), ("video", "scheduler"), ("4d", "scheduler"), ("deltaconv", "scheduler"),
    ("video", "controlnet"), ("4d", "controlnet"), ("video", "4d"), ("video", "4d", "controlnet"),
    ("deltaconv", "controlnet"), ("deltaconv", "video"), ("deltaconv", "4d"),
    ("video", "controlnet", "scheduler"), ("4d", "controlnet", "scheduler"),
    ("deltaconv", "controlnet", "scheduler"), ("deltaconv", "video", "controlnet"),
    ("deltaconv", "4d", "controlnet", "scheduler"),
    ("video", "deltaconv"), ("controlnet", "video"), ("controlnet", "4d"),
]
NO_DELTACONV = ("dic", "dico", "layered")  # no diffusers `attn1` / DiffiT TMSA for ΔConvFusion to replace
GRID = {"image": (), "video": (2,), "4d": (2, 2)}


def refusal(backbone: str, step: str, state) -> str | None:
    """The error `step` must raise on this backbone after the steps before it, None when it applies."""
    if step == "deltaconv" and state.kind != "image":
        return "is an inflated model: convert its 2D model first, then inflate it"
    if step == "deltaconv" and backbone in NO_DELTACONV:
        return r"has no self-attention \(attn1, or DiffiT's attn\) to convert"
    if step in ("video", "4d") and state.controlnet is not None:
        return "This ControlNet was built from a convdiff.models.* but is used with a convdiff.models.video.Inflated"
    if step == "scheduler" and backbone == "layered":  # one schedule per scale; frames pipelines are single-scale
        return "needs a LayeredScheduler" if state.kind == "image" else "wraps a backbone with 2 scales"
    return None


def apply(step: str, state) -> None:
    if step == "deltaconv":
        state.model = convert_self_attention(state.model)
    elif step in ("video", "4d"):
        state.model = inflate(state.model, to=step, temporal=("p3d", "attention"), max_frames=2, max_views=2).eval()
        state.kind = step
        if state.controlnet is not None:  # what a pipeline does with a ControlNet and a denoiser
            state.controlnet.check_backbone(state.model)
    elif step == "controlnet":
        state.controlnet = randomize_(ControlNet.from_backbone(state.model, conditioning_channels=1), seed=2).eval()
        state.fresh_controlnet = ControlNet.from_backbone(state.model, conditioning_channels=1).eval()
    elif step == "scheduler":
        ddim = DDIMScheduler(clip_sample=False, prediction_type=state.model.config.prediction_type)
        state.output = sample(state, EulerDiscreteScheduler.from_config(ddim.config))


def sample(state, scheduler):
    """A 2-step pipeline call with `scheduler`: the pipeline of the model's kind, controlled when there is a ControlNet."""
    model, controlnet = state.model, state.controlnet
    layered = state.kind == "image" and getattr(model, "scale_sizes", None) is not None
    run = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0),
               class_labels=[1, 2])
    if controlnet is not None:
        run["image"] = torch.rand(1, 8, 8) if not layered else torch.rand(1, 16, 16)
    if layered:
        base = LayeredTextToImagePipeline(model, scheduler)
        pipe = base if controlnet is None else LayeredControlNetPipeline.from_base(base, controlnet)
    else:
        plain, controlled = {"image": (ClassConditionalPipeline, ControlNetPipeline),
                             "video": (VideoPipeline, VideoControlNetPipeline),
                             "4d": (FourDPipeline, FourDControlNetPipeline)}[state.kind]
        pipe = plain(model, scheduler) if controlnet is None else controlled(model, controlnet, scheduler)
        run.update({"video": dict(num_frames=2), "4d": dict(num_views=2, num_frames=2), "image": {}}[state.kind])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**run)
    return out.images if state.kind == "image" else out.frames


def forward(state):
    """One forward at the model's kind; with a ControlNet, the residuals are added (and a fresh one is the identity)."""
    model, grid = state.model, GRID[state.kind]
    sizes = getattr(model.base if state.kind != "image" else model, "scale_sizes", None) or [8]
    x = [torch.randn(2, model.config.in_channels, *grid, s, s) for s in sizes]
    x = x if len(x) > 1 else x[0]
    t, y = torch.tensor([3, 700]), torch.tensor([1, 2])
    base = model(x, t, class_labels=y).sample
    if state.controlnet is not None:
        condition = torch.rand(2, 1, sizes[0], sizes[0])
        for net in (state.fresh_controlnet, state.controlnet):
            down, mid = net(x, t, condition, class_labels=y, return_dict=False)
            out = model(x, t, class_labels=y, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
            assert out.shape == base.shape
            if net is state.fresh_controlnet:
                assert torch.equal(out, base)  # zero convs: the controlled model is the base model at init
            else:
                assert not torch.allclose(out, base)
    return base


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "+".join(r) or "base")
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_composition_matrix(backbone, recipe):
    name, overrides = BACKBONES[backbone]
    model = randomize_(create_model(name, in_channels=3, **overrides)).eval()
    state = SimpleNamespace(model=model, kind="image", controlnet=None, output=None)
    for step in recipe:
        expected = refusal(backbone, step, state)
        if expected is not None:
            with pytest.raises(ValueError, match=expected):
                apply(step, state)
            return
        apply(step, state)
    size, channels = state.model.config.sample_size, 3
    grid = GRID[state.kind]
    if state.output is not None:  # a pipeline's images / frames, channels last
        assert state.output.shape == (2, *grid, size, size, channels)
        return
    out = forward(state)
    assert out.shape == (2, state.model.config.out_channels, *grid, size, size)
    if "deltaconv" in recipe:
        assert student_modules(state.model)


@pytest.mark.parametrize("name", ["diffit-tiny", "diffit-unet-tiny"])
def test_a_deltaconv_student_inflates_reloads_and_keeps_its_students(name, tmp_path):
    """A ΔConv-converted DiffiT rebuilds from its config, so inflation, reloading and ControlNet copies keep the
    students."""
    student = randomize_(convert_self_attention(create_model(name, sample_size=8, **({"window_size": 4} if "unet" in name
                                                                                      else {})))).eval()
    video = inflate(student, to="video", temporal=("p3d", "attention"), max_frames=2).eval()
    assert len(student_modules(video)) == len(student_modules(student)) > 0
    x, t, y = torch.randn(1, student.config.in_channels, 2, 8, 8), torch.tensor([300]), torch.tensor([4])
    out = video(x, t, y).sample
    for f in range(2):  # new layers start as the identity: the image student on every frame
        torch.testing.assert_close(out[:, :, f], student(x[:, :, f], t, y).sample)
    video.save_pretrained(tmp_path / "video")
    assert torch.equal(InflatedVideoModel.from_pretrained(tmp_path / "video").eval()(x, t, y).sample, out)
    student.save_pretrained(tmp_path / "image")
    reloaded = type(student).from_pretrained(tmp_path / "image").eval()  # plain from_pretrained keeps them too
    assert student_modules(reloaded) and torch.equal(reloaded(x[:, :, 0], t, y).sample, student(x[:, :, 0], t, y).sample)
    assert student_modules(ControlNet.from_backbone(video))
