"""Inflated video / 4D models: identity at init for every backbone and design, degenerate grids, freezing,
gradient checkpointing, save/load, and clear errors for bad input."""

import pytest
import torch
from conftest import randomize_

from convdiff.models.video import InflatedFourDModel, InflatedVideoModel, inflate
from convdiff.nn.layouts import Grid
from convdiff.nn.spatiotemporal import GridContext
from convdiff.registry import MODELS, create_model

BACKBONES = {
    "dic": lambda: create_model("dic-tiny", in_channels=3, sample_size=8, hidden_size=16),
    "dico": lambda: create_model("dico-tiny", in_channels=3, sample_size=8, hidden_size=16),
    "diffit-windows": lambda: create_model("diffit-tiny", in_channels=3, sample_size=8, window_size=2),
    "layered-unet": lambda: create_model("layered-unet-tiny", sample_size=8, num_scales=1),
    "diffit-unet": lambda: create_model("diffit-unet-tiny", in_channels=3, sample_size=8),
}
DESIGNS_4D = {
    "attention": dict(temporal=("p3d", "attention")),
    "attention-pixel": dict(view_scope="pixel"),
    "two-stream-soft": dict(view="two-stream", sync="soft"),
    "two-stream-hard": dict(view="two-stream", sync="hard", temporal="p3d"),
    "fused": dict(view="fused", camera_dim=12),
}


def image_model(name):
    if name == "diffit-unet" and "diffit-unet-tiny" not in MODELS:
        pytest.skip("the image-space DiffiT U-Net is not in the registry yet")
    return randomize_(BACKBONES[name]()).eval()


def per_frame_reference(model, grid, timestep, labels, **kwargs):
    """The 2D model applied to every frame of a (B, C, V, T, H, W) grid."""
    b, c, v, t, h, w = grid.shape
    frames = grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, h, w)
    kwargs = {k: x.repeat_interleave(v * t, dim=0) for k, x in kwargs.items()}
    out = model(frames, timestep.repeat_interleave(v * t), class_labels=labels.repeat_interleave(v * t), **kwargs).sample
    return out.reshape(b, v, t, -1, h, w).permute(0, 3, 1, 2, 4, 5)


def call(model, x, t, y, **kwargs):
    if isinstance(model, InflatedFourDModel) and model.config.camera_dim:
        kwargs.setdefault("cameras", torch.randn(x.shape[0], x.shape[2], model.config.camera_dim))
    return model(x, t, y, **kwargs).sample


def randomize_new_layers(model, seed=0):
    """Give the inserted layers random weights, as training would."""
    modules = dict(model.named_modules())
    owners = {n.rpartition(".")[0] for n in model.new_parameter_names()}
    return randomize_(torch.nn.ModuleList([modules[n] for n in sorted(owners)]), seed=seed, std=0.2)


T_STEPS, LABELS = torch.tensor([10, 700]), torch.tensor([3, 7])


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("temporal", ["p3d", "attention", ("p3d", "attention")])
def test_video_model_equals_image_model_per_frame_at_init(backbone, temporal):
    model = image_model(backbone)
    video = inflate(model, to="video", temporal=temporal, max_frames=4).eval()
    x = torch.randn(2, 3, 4, 8, 8)
    with torch.no_grad():
        expected = per_frame_reference(model, x[:, :, None], T_STEPS, LABELS)[:, :, 0]
        assert torch.allclose(video(x, T_STEPS, LABELS).sample, expected, atol=1e-5)
        randomize_new_layers(video)  # trained temporal layers make frames depend on each other
        assert not torch.allclose(video(x, T_STEPS, LABELS).sample, expected, atol=1e-3)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("design", list(DESIGNS_4D))
def test_4d_model_equals_image_model_per_frame_at_init(backbone, design):
    model = image_model(backbone)
    fourd = inflate(model, to="4d", max_frames=4, max_views=4, **DESIGNS_4D[design]).eval()
    x = torch.randn(2, 3, 2, 3, 8, 8)
    with torch.no_grad():
        expected = per_frame_reference(model, x, T_STEPS, LABELS)
        assert torch.allclose(call(fourd, x, T_STEPS, LABELS), expected, atol=1e-5)
        for degenerate in (x[:, :, :1], x[:, :, :, :1]):  # V=1 plain video, T=1 multi-view images
            assert torch.allclose(call(fourd, degenerate, T_STEPS, LABELS),
                                  per_frame_reference(model, degenerate, T_STEPS, LABELS), atol=1e-5)


@pytest.mark.parametrize("name", ["unet-mnist", "dit-tiny"])
def test_diffusers_baselines_inflate_too(name):
    model = randomize_(create_model(name, **({"sample_size": 8} if name == "unet-mnist" else {}))).eval()
    size, channels = model.config.sample_size, model.config.in_channels
    x = torch.randn(2, channels, 2, 2, size, size)
    with torch.no_grad():
        expected = per_frame_reference(model, x, T_STEPS, LABELS)
        video = inflate(model, to="video", temporal=("p3d", "attention")).eval()
        assert torch.allclose(video(x[:, :, 0], T_STEPS, LABELS).sample, expected[:, :, 0], atol=1e-5)
        fourd = inflate(model, to="4d", view="two-stream").eval()
        assert torch.allclose(fourd(x, T_STEPS, LABELS).sample, expected, atol=1e-5)


def test_multi_scale_text_conditioned_backbone_is_inflated_scale_by_scale():
    model = randomize_(create_model("layered-unet-tiny", sample_size=8, cross_attention_dim=16)).eval()
    fourd = inflate(model, to="4d", view="fused").eval()
    grids = [torch.randn(2, 3, 2, 2, 8, 8), torch.randn(2, 3, 2, 2, 4, 4)]
    text = torch.randn(2, 5, 16)
    with torch.no_grad():
        out = fourd(grids, T_STEPS, LABELS, encoder_hidden_states=text)
        frames = [g.permute(0, 2, 3, 1, 4, 5).flatten(0, 2) for g in grids]
        expected = model(frames, T_STEPS.repeat_interleave(4), text.repeat_interleave(4, 0),
                         class_labels=LABELS.repeat_interleave(4)).scales
    assert len(out.scales) == 2 and torch.equal(out.sample, out.scales[0])
    for got, want in zip(out.scales, expected):
        assert torch.allclose(got, want.unflatten(0, (2, 2, 2)).permute(0, 3, 1, 2, 4, 5), atol=1e-5)
    with pytest.raises(ValueError, match="backbone with 2 scales"):
        fourd(grids[0], T_STEPS, LABELS, encoder_hidden_states=text)


def test_single_view_4d_ignores_view_layers_and_matches_its_video_model():
    model = image_model("dic")
    video = inflate(model, to="video", temporal=("p3d", "attention"), max_frames=4)
    randomize_(torch.nn.ModuleList([m for n, m in video.named_modules() if n.endswith(("temporal", "frame_embedding"))]))
    fourd = inflate(video, to="4d", view="attention", camera_dim=12).eval()
    randomize_(torch.nn.ModuleList([m for n, m in fourd.named_modules() if n.endswith(".view")]), seed=3)
    x = torch.randn(2, 3, 1, 4, 8, 8)
    with torch.no_grad():
        expected = video.eval()(x[:, :, 0], T_STEPS, LABELS).sample
        out = fourd(x, T_STEPS, LABELS, cameras=torch.zeros(2, 1, 12)).sample[:, :, 0]
    assert torch.allclose(out, expected, atol=1e-5)


def test_fused_4d_from_a_video_model_reuses_its_temporal_attention():
    video = inflate(image_model("dico"), to="video", temporal="attention")
    randomize_(torch.nn.ModuleList([m for n, m in video.named_modules() if n.endswith(".temporal")]))
    fused = inflate(video, to="4d", view="fused")
    for name, tensor in video.state_dict().items():
        assert torch.equal(fused.state_dict()[name], tensor), name


def test_freeze_spatial_keeps_fixed_2d_parameters_fixed():
    video = inflate(image_model("diffit-windows"), to="video", freeze_spatial=False)
    assert not video.base.pos_embed.requires_grad  # DiffiT never trains its sin-cos position embedding
    assert all(p.requires_grad for n, p in video.named_parameters() if n != "base.pos_embed")


def test_freeze_spatial_trains_only_new_layers():
    model = image_model("dic")
    video = inflate(model, to="video", temporal=("p3d", "attention"), freeze_spatial=True)
    trainable = {n for n, p in video.named_parameters() if p.requires_grad}
    assert trainable == set(video.new_parameter_names()) and trainable
    assert all(n in video.spatial_names for n, p in video.named_parameters() if not p.requires_grad)
    video.train()
    loss = video(torch.randn(1, 3, 3, 8, 8), torch.tensor([5]), torch.tensor([1])).sample.square().mean()
    loss.backward()
    assert all(p.grad is None for n, p in video.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in video.parameters() if p.requires_grad)


def test_grid_context_lasts_one_forward_even_when_it_fails():
    fourd = inflate(image_model("dic"), to="4d", view="two-stream", camera_dim=12)
    x, cameras = torch.randn(1, 3, 2, 2, 8, 8), torch.randn(1, 2, 12)
    empty = GridContext().state()
    fourd(x, T_STEPS[:1], LABELS[:1], cameras=cameras)
    assert fourd.context.state() == empty

    def fail(*args):
        raise RuntimeError("inside the backbone")

    handle = fourd.base.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="inside the backbone"):
        fourd(x, T_STEPS[:1], LABELS[:1], cameras=cameras)
    handle.remove()
    assert fourd.context.state() == empty


def test_gradient_checkpointing_gives_the_same_gradients():
    fourd = inflate(image_model("dico"), to="4d", view="two-stream", temporal=("p3d", "attention"))
    randomize_(fourd)
    x, t, y = torch.randn(1, 3, 2, 2, 8, 8), torch.tensor([5]), torch.tensor([1])

    def grads():
        fourd.zero_grad()
        fourd(x, t, y, force_drop_ids=torch.tensor([0])).sample.square().mean().backward()
        return [p.grad.clone() for p in fourd.parameters()]

    plain = grads()
    fourd.enable_gradient_checkpointing()
    assert fourd.base.gradient_checkpointing
    for a, b in zip(plain, grads()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", ["video", "4d"])
def test_save_and_load_round_trip(tmp_path, kind):
    model = image_model("dic")
    if kind == "video":
        inflated = inflate(model, to="video", temporal=("p3d", "attention"), max_frames=6, freeze_spatial=True)
        x, kwargs = torch.randn(1, 3, 3, 8, 8), dict(timestamps=torch.tensor([[0.0, 0.5, 1.0]]))
    else:
        inflated = inflate(model, to="4d", view="two-stream", sync="hard", camera_dim=12, freeze_spatial=True)
        x, kwargs = torch.randn(1, 3, 2, 3, 8, 8), dict(cameras=torch.randn(1, 2, 12))
    randomize_(inflated).eval()
    inflated.save_pretrained(tmp_path)
    cls = InflatedVideoModel if kind == "video" else InflatedFourDModel
    loaded = cls.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, T_STEPS[:1], LABELS[:1], **kwargs).sample,
                           inflated(x, T_STEPS[:1], LABELS[:1], **kwargs).sample)
    assert loaded.config.base_class == "convdiff.models.dic.DiCModel"
    for key in ("in_channels", "out_channels", "num_classes", "class_dropout_prob", "learn_sigma", "sample_size"):
        assert loaded.config[key] == model.config[key], key
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(inflated.new_parameter_names())


def test_label_dropout_is_drawn_per_video_not_per_frame(monkeypatch):
    video = inflate(image_model("dic"), to="video").train()
    seen = {}
    original = type(video.base).forward

    def spy(self, hidden_states, timestep, class_labels=None, force_drop_ids=None, return_dict=True):
        seen["drop"] = force_drop_ids
        return original(self, hidden_states, timestep, class_labels, force_drop_ids, return_dict)

    monkeypatch.setattr(type(video.base), "forward", spy)
    video(torch.randn(4, 3, 3, 8, 8), torch.tensor([1]), torch.tensor([1, 2, 3, 4]))
    assert seen["drop"].shape == (12,) and (seen["drop"].view(4, 3) == seen["drop"].view(4, 3)[:, :1]).all()


def test_timestamps_and_cameras_reach_the_timestep_embedding():
    fourd = inflate(image_model("dic"), to="4d", view="fused", camera_dim=12)
    randomize_(torch.nn.ModuleList([m for n, m in fourd.named_modules() if n.endswith("frame_embedding")])).eval()
    x, cams = torch.randn(1, 3, 2, 2, 8, 8), torch.randn(1, 2, 12)
    with torch.no_grad():
        base = fourd(x, T_STEPS[:1], LABELS[:1], cameras=cams).sample
        assert not torch.allclose(base, fourd(x, T_STEPS[:1], LABELS[:1], cameras=cams + 1).sample)
        later = torch.tensor([[5.0, 6.0]])
        assert not torch.allclose(base, fourd(x, T_STEPS[:1], LABELS[:1], cameras=cams, timestamps=later).sample)


def test_bad_input_gives_clear_errors():
    model = image_model("dic")
    video = inflate(model, to="video", max_frames=4)
    fourd = inflate(model, to="4d", view="attention", camera_dim=12, max_frames=4, max_views=2)
    t, y = torch.tensor([1]), torch.tensor([1])
    with pytest.raises(ValueError, match=r"expects a grid \(batch, channels, views, frames"):
        fourd(torch.randn(1, 3, 4, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"expects a video \(batch, channels, frames"):
        video(torch.randn(1, 3, 1, 4, 8, 8), t, y)
    with pytest.raises(ValueError, match="max_frames=4 but got 5 frames"):
        video(torch.randn(1, 3, 5, 8, 8), t, y)
    with pytest.raises(ValueError, match="max_views=2 but got 3 views"):
        fourd(torch.randn(1, 3, 3, 2, 8, 8), t, y, cameras=torch.randn(1, 3, 12))
    with pytest.raises(ValueError, match=r"needs cameras of shape \(batch, views, 12\)"):
        fourd(torch.randn(1, 3, 2, 2, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"cameras must have shape"):
        fourd(torch.randn(1, 3, 2, 2, 8, 8), t, y, cameras=torch.randn(1, 2, 9))
    with pytest.raises(ValueError, match="no camera conditioning"):
        inflate(model, to="4d")(torch.randn(1, 3, 2, 2, 8, 8), t, y, cameras=torch.randn(1, 2, 12))
    with pytest.raises(ValueError, match=r"timestamps must have shape \(batch, frames\)"):
        video(torch.randn(1, 3, 3, 8, 8), t, y, timestamps=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="expects 3 channels"):
        video(torch.randn(1, 4, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match="temporal must be 'p3d', 'attention'"):
        inflate(model, to="video", temporal="conv")
    with pytest.raises(ValueError, match="view must be one of"):
        inflate(model, to="4d", view="cross")
    # the grid context lives for one forward pass: afterwards the backbone runs on plain images again ...
    video(torch.randn(1, 3, 2, 8, 8), t, y)
    assert video.context.grid is None
    images = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(video.base(images, t, y).sample, model(images, t, y).sample)
    # ... while inside a video forward (a grid of 2 frames) a backbone batch of another size is refused
    with pytest.raises(ValueError, match="call the inflated model, not its 2D backbone"):
        with video.context.scope(Grid(1, 1, 2), frame_timestamps=torch.zeros(2)):
            video.base(torch.randn(3, 3, 8, 8), torch.tensor([1]), torch.tensor([1]))
