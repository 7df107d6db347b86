"""Text-conditioned video and 4D: the zero-initialised text embedding, prompts and guidance in the pipelines,
directed moving digits, and the video task with `conditioning: text`."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from transformers import CLIPTextModel

from convdiff.data.moving_digits import DIRECTIONS, MovingDigits
from convdiff.models.video import inflate
from convdiff.nn.camera import FrameConditionEmbedding
from convdiff.nn.layouts import Grid
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.pipelines.text_encoders import encode_pooled, tiny_text_encoder
from convdiff.pipelines.video import FourDPipeline, VideoPipeline
from convdiff.registry import create_model
from conftest import assert_saved_as_recipe

TINY = dict(hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=8)
TEXT_DIM = 16


def tiny_base(channels=1, classes=10, conditioned=False):
    """A tiny DiC; `conditioned`: its zero-initialised (adaLN-Zero) layers given weights, so that the condition,
    and with it the text embedding added to it, changes the output as in a trained model."""
    torch.manual_seed(0)
    model = create_model("dic-tiny", in_channels=channels, num_classes=classes, learn_sigma=False, **TINY)
    if conditioned:
        for p in model.parameters():
            if not p.detach().any():
                p.data.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def encoder():
    return tiny_text_encoder(hidden_size=TEXT_DIM)


def text_pipe(encoder, to="video", trained_text=False):
    tokenizer, text_encoder = encoder
    base = tiny_base(channels=1 if to == "video" else 3, classes=10 if to == "video" else 0, conditioned=trained_text)
    model = inflate(base, to=to, max_frames=4, text_dim=TEXT_DIM, **({} if to == "video" else {"max_views": 2}))
    if trained_text:  # as if training had taught the text layers something
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if ".text." in name:
                p.data.normal_(0, 0.3)
    cls = VideoPipeline if to == "video" else FourDPipeline
    pipe = cls(model.eval(), DDIMScheduler(clip_sample=False), text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_text_embedding_starts_at_zero_and_checks_shapes():
    embedding = FrameConditionEmbedding(8, timestamps=False, text_dim=5)
    assert torch.equal(embedding(text=torch.randn(3, 5)), torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"text embeddings of shape \(N, 5\)"):
        embedding(text=torch.randn(3, 4))


def test_text_video_model_equals_the_image_model_per_frame_at_init():
    base = tiny_base()
    model = inflate(base, to="video", max_frames=4, text_dim=TEXT_DIM).eval()
    x, t, y = torch.randn(2, 1, 3, 8, 8), torch.tensor([10, 700]), torch.tensor([3, 10])
    with torch.no_grad():
        video = model(x, t, class_labels=y, text_embeds=torch.randn(2, TEXT_DIM)).sample
        frames = torch.stack([base(x[:, :, f], t, class_labels=y).sample for f in range(3)], dim=2)
    assert torch.equal(video, frames)
    assert any(".text." in name for name in model.new_parameter_names())
    with pytest.raises(ValueError, match="needs text_embeds of shape"):
        model(x, t, class_labels=y)
    with pytest.raises(ValueError, match=r"text_embeds must have shape \(batch, text_dim\)"):
        model(x, t, class_labels=y, text_embeds=torch.randn(3, TEXT_DIM))
    plain = inflate(base, to="video", max_frames=4)
    with pytest.raises(ValueError, match="no text conditioning"):
        plain(x, t, class_labels=y, text_embeds=torch.randn(2, TEXT_DIM))


def test_text_in_the_temporal_attention_starts_silent_then_decides_how_frames_relate(tmp_path):
    base = tiny_base(conditioned=True).eval()  # eval: no random label dropout in the per-frame reference
    model = inflate(base, to="video", max_frames=4, text_dim=TEXT_DIM, temporal_text=True).eval()
    layers = [m for m in model.modules() if getattr(m, "takes_text", False)]
    assert layers and all(layer.text_modulation.in_features == TEXT_DIM for layer in layers)
    x, t, y = torch.randn(2, 1, 3, 8, 8), torch.tensor([500, 200]), torch.tensor([1, 2])
    first, second = torch.randn(2, TEXT_DIM), torch.randn(2, TEXT_DIM)
    with torch.no_grad():
        at_init = model(x, t, class_labels=y, text_embeds=first).sample
        per_frame = torch.stack([base(x[:, :, f], t, class_labels=y).sample for f in range(3)], dim=2)
        torch.testing.assert_close(at_init, per_frame)  # identity at init, text and all
        torch.manual_seed(2)  # as if trained: the attention outputs, then the text modulation, move
        for layer in layers:
            layer.attn.proj.weight.normal_(0, 0.2)
        silent = model(x, t, class_labels=y, text_embeds=first).sample
        torch.testing.assert_close(silent, model(x, t, class_labels=y, text_embeds=second).sample)
        for layer in layers:
            layer.text_modulation.weight.normal_(0, 0.5)
        one, other = (model(x, t, class_labels=y, text_embeds=e).sample for e in (first, second))
    assert not torch.allclose(one, other)  # only the temporal layers read the text: the prompt changes the motion
    model.save_pretrained(tmp_path / "model")
    loaded = type(model).from_pretrained(tmp_path / "model").eval()
    assert loaded.config.temporal_text is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, class_labels=y, text_embeds=first).sample, one)
    with pytest.raises(ValueError, match="temporal_text conditions temporal attention on the text: it needs text_dim"):
        inflate(base, to="video", temporal_text=True)
    with pytest.raises(ValueError, match="pass per-frame text embeddings of shape"):
        layers[0](torch.randn(6, 4, layers[0].norm.normalized_shape[0]), Grid(2, 1, 3))


def test_caption_encoder_pretraining_is_deterministic_and_learns_to_match_clips_and_captions():
    from convdiff.training.caption_encoder import caption_separation, pretrain_caption_encoder

    data = MovingDigits("train", num_frames=4, length=64, motion="directed", seed=0)
    captions = [f"a digit {d} moving {m}" for d in range(10) for m in DIRECTIONS]
    index = lambda label, direction: 4 * int(label) + int(direction)  # noqa: E731
    runs = []
    for _ in range(2):
        tokenizer, text_encoder = tiny_text_encoder(hidden_size=TEXT_DIM)
        report = pretrain_caption_encoder(tokenizer, text_encoder, data, index, captions, steps=40, batch_size=8,
                                          heldout=MovingDigits("heldout", num_frames=4, length=8,
                                                                                  motion="directed", seed=1))
        runs.append((report, text_encoder.state_dict()))
        assert not any(p.requires_grad for p in text_encoder.parameters()) and not text_encoder.training
    (report, weights), (again, repeated) = runs
    assert report == again and all(torch.equal(v, repeated[k]) for k, v in weights.items())
    # the contrastive loss falls (separation comes later: a full run takes the captions' mean cosine similarity
    # from about 0.9 to about 0, docs/video.md); the report reads the encoder it returns
    assert report["loss_end"] < report["loss_start"] <= 1.05 * np.log(len(captions))
    assert report["caption_cosine_after"] == pytest.approx(caption_separation(tokenizer, text_encoder, captions))
    assert 0.0 <= report["heldout_retrieval"] <= 1.0 and report["steps"] == 40


def test_prompts_steer_the_video_and_guidance_uses_the_negative_prompt(encoder):
    pipe = text_pipe(encoder, trained_text=True)
    run = dict(num_frames=3, num_inference_steps=2, output_type="latent")  # an untrained model's images clip
    a = pipe(prompt=["a digit three moving right"], generator=seeded(), **run).frames.numpy()
    b = pipe(prompt=["a digit seven moving up"], generator=seeded(), **run).frames.numpy()
    assert a.shape == (1, 1, 3, 8, 8)
    assert np.abs(a - b).max() > 1e-3  # the prompt reaches the model
    again = pipe(prompt="a digit three moving right", generator=seeded(), **run).frames.numpy()
    np.testing.assert_array_equal(a, again)
    # without guidance the negative prompt plays no part; with guidance it is the unconditional branch
    ignored = pipe(prompt="a digit three moving right", negative_prompt="a digit one", generator=seeded(), **run).frames
    np.testing.assert_array_equal(a, ignored.numpy())
    guided = dict(run, guidance_scale=3.0)
    g_empty = pipe(prompt="a digit three moving right", generator=seeded(), **guided).frames
    g_neg = pipe(prompt="a digit three moving right", negative_prompt="a digit one", generator=seeded(), **guided).frames
    assert (g_empty - g_neg).abs().max() > 1e-3
    # the guided result is cond + s * (cond - uncond) of two explicit model calls
    tokenizer, text_encoder = encoder
    latents = torch.randn(1, 1, 3, 8, 8, generator=seeded(5))
    calls = []
    original = pipe.transformer.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["text_embeds"].clone())
        return original(*args, **kwargs)

    pipe.transformer.forward = spy
    try:
        pipe(prompt="a digit three moving right", negative_prompt="a digit one", latents=latents, num_frames=3,
             num_inference_steps=1, guidance_scale=3.0, output_type="latent")
    finally:
        pipe.transformer.forward = original
    cond, uncond = calls[0].chunk(2)
    assert torch.allclose(cond, encode_pooled(tokenizer, text_encoder, ["a digit three moving right"]))
    assert torch.allclose(uncond, encode_pooled(tokenizer, text_encoder, ["a digit one"]))


def test_text_video_pipeline_errors_and_round_trip(encoder, tmp_path):
    pipe = text_pipe(encoder)
    with pytest.raises(ValueError, match="pass prompt"):
        pipe(num_frames=3, num_inference_steps=1)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries for a batch of 2"):
        pipe(prompt=["a", "b"], negative_prompt=["x", "y", "z"], num_frames=3, num_inference_steps=1)
    no_encoder = VideoPipeline(pipe.transformer, pipe.scheduler)
    with pytest.raises(ValueError, match="no text_encoder"):
        no_encoder(prompt="a digit", num_frames=3, num_inference_steps=1)
    plain = VideoPipeline(inflate(tiny_base(), to="video", max_frames=4), pipe.scheduler)
    with pytest.raises(ValueError, match="no text conditioning"):
        plain(prompt="a digit", class_labels=[1], num_frames=3, num_inference_steps=1)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    run = dict(prompt="a digit two moving left", num_frames=3, num_inference_steps=2, guidance_scale=2.0, output_type="np")
    np.testing.assert_array_equal(pipe(generator=seeded(), **run).frames, loaded(generator=seeded(), **run).frames)


def test_fourd_pipeline_takes_prompts(encoder):
    pipe = text_pipe(encoder, to="4d", trained_text=True)
    run = dict(num_views=2, num_frames=2, num_inference_steps=2, output_type="latent")
    a = pipe(prompt=["a red ball", "a blue cube"], generator=seeded(), **run).frames
    assert a.shape == (2, 3, 2, 2, 8, 8)
    b = pipe(prompt=["a blue cube", "a red ball"], generator=seeded(), **run).frames
    assert (a - b).abs().max() > 1e-3


def test_directed_moving_digits_move_straight_in_the_captioned_direction():
    data = MovingDigits(num_frames=8, length=40, motion="directed", digits=blob_digits("train"))
    seen = set()
    for i in range(40):
        frames, label, direction = data.clip_uint8(i)
        seen.add(direction)
        centre = [np.argwhere(f > 0).mean(0) for f in frames]  # (row, column) of the ink
        moved = centre[-1] - centre[0]
        row_step, column_step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[DIRECTIONS[direction]]
        assert np.sign(np.round(moved[0])) == row_step and np.sign(np.round(moved[1])) == column_step
        assert abs(moved[0] if row_step else moved[1]) >= 6  # about the whole free span of 8 px
    assert seen == set(range(4))
    clip, label, direction = data[0]
    assert clip.shape == (1, 8, 28, 28) and isinstance(direction, int)
    assert len(MovingDigits(length=2, digits=blob_digits("train"))[0]) == 2  # bounce keeps (clip, label)
    with pytest.raises(ValueError, match="motion must be one of"):
        MovingDigits(motion="spin", digits=blob_digits("train"))


def blob_digits(split="train"):
    """Ten synthetic 'digits' (a filled square, one per class) instead of parsing MNIST."""
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = 255
    return images, np.arange(10)


def test_video_task_with_text_trains_the_text_layers_and_saves_a_prompted_pipeline(tmp_path, monkeypatch):
    from convdiff.data import moving_digits
    from convdiff.training.config import load_config
    from convdiff.training.loop import train

    monkeypatch.setattr(moving_digits, "mnist_digits", blob_digits)
    base = create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, prediction_type="flow",
                        **dict(TINY, sample_size=28))
    ClassConditionalPipeline(base, FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path / "base")
    overrides = [f"task_options.base={tmp_path / 'base'}", "task_options.num_frames=3", "task_options.length=8",
                 "task_options.sample_videos=2", "task_options.text_hidden_size=16", "task_options.text_encoder_steps=3",
                 "train_batch_size=2",
                 "max_train_steps=2", "sample_num_inference_steps=1", "report_to=null", "checkpointing_steps=0"]
    config = load_config("configs/text-video-moving-digits.yaml", overrides + [f"output_dir={tmp_path / 'run'}"])
    loaded = VideoPipeline.from_pretrained(train(config))
    assert loaded.transformer.config.text_dim == 16 and loaded.text_encoder is not None
    assert loaded.transformer.config.temporal_text  # the recipe's text reaches the temporal attention too
    # the contrastively pretrained caption encoder is kept for resumes, and it is the one the pipeline ships
    report = json.loads((tmp_path / "run" / "caption_encoder" / "report.json").read_text())
    assert report["steps"] == 3
    kept = CLIPTextModel.from_pretrained(tmp_path / "run" / "caption_encoder" / "text_encoder")
    assert all(torch.equal(v, loaded.text_encoder.state_dict()[k]) for k, v in kept.state_dict().items())
    assert_saved_as_recipe(tmp_path / "run" / "pipeline", config, "FlowMatchEulerDiscreteScheduler")
    fresh = inflate(base, to="video", max_frames=16, text_dim=16).state_dict()
    trained = loaded.transformer.state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained if ".text." in k)  # the text layers trained
    loaded.set_progress_bar_config(disable=True)
    frames = loaded(prompt="a digit four moving down", num_frames=3, num_inference_steps=1, output_type="np").frames
    assert frames.shape == (1, 3, 28, 28, 1)
    again = load_config("configs/text-video-moving-digits.yaml", overrides + [f"output_dir={tmp_path / 'again'}"])
    repeated = VideoPipeline.from_pretrained(train(again)).transformer.state_dict()
    assert all(torch.equal(v, repeated[k]) for k, v in trained.items())  # deterministic: same draws and captions
    with pytest.raises(ValueError, match="names {direction}, but the data has no directions"):
        train(load_config("configs/text-video-moving-digits.yaml",
                          overrides + ["task_options.motion=bounce", f"output_dir={tmp_path / 'bounce'}"]))


def test_motion_directions_read_real_directed_clips():
    from convdiff.eval.video_metrics import motion_directions

    data = MovingDigits("heldout", num_frames=8, length=24, motion="directed", seed=3)
    clips = [data.clip_uint8(i) for i in range(24)]
    videos = np.stack([c[0] for c in clips])[..., None]  # uint8 (N, F, H, W, 1)
    np.testing.assert_array_equal(motion_directions(videos), [c[2] for c in clips])
    still = np.repeat(videos[:, :1], 8, axis=1)  # no move: every step scores 0 and the first one is read
    np.testing.assert_array_equal(motion_directions(still), np.zeros(24))


@pytest.mark.slow
def test_text_video_evaluation_scores_real_clips_at_the_ceiling(encoder):
    from convdiff.apps.text_video_eval import evaluate_text_video
    from convdiff.training.config import load_config

    tokenizer, text_encoder = encoder
    base = create_model("dic-tiny", in_channels=1, num_classes=10, learn_sigma=False, **dict(TINY, sample_size=28))
    model = inflate(base, to="video", max_frames=8, text_dim=TEXT_DIM)
    pipe = VideoPipeline(model, DDIMScheduler(clip_sample=False), text_encoder=text_encoder, tokenizer=tokenizer)
    config = load_config("configs/text-video-moving-digits.yaml", ["task_options.num_frames=4"])
    metrics, samples = evaluate_text_video(pipe, config, per_caption=1, steps=1, guidance_scale=2.0)
    real = metrics["real directed clips (held out)"]
    assert real["direction_accuracy"] == 1.0 and real["digit_accuracy_videos"] >= 0.9
    assert samples["trained"].shape == (40, 4, 28, 28, 1)
    assert set(metrics["trained"]) == {"digit_accuracy_frames", "digit_accuracy_videos", "one_digit_videos",
                                       "asked_digit_every_frame", "frames_as_first_frame", "direction_accuracy",
                                       "both_right"}


def test_video_metrics_add_frame_fid_against_moving_clips(monkeypatch):
    """The second frame FID is the Fréchet distance to the given moving-clip moments: 0 for those very frames."""
    from convdiff.apps import video_demo
    from convdiff.eval import mnist
    from convdiff.eval.frechet import Moments
    from convdiff.eval.video_metrics import frame_features

    class Pools:  # a stand-in feature network: 4x4 average pools of the first channel, (N, 49)
        protocol = "test 4x4 pools"

        def __call__(self, images):
            x = torch.as_tensor(np.asarray(images)).float()[..., 0]
            return torch.nn.functional.avg_pool2d(x[:, None], 4).flatten(1) / 255

    extractor = Pools()

    videos = MovingDigits("heldout", num_frames=4, length=12, seed=2, digits=blob_digits()).clip_uint8
    clips = np.stack([videos(i)[0] for i in range(12)])[..., None] / 255.0
    feats = frame_features(clips, extractor).reshape(-1, 49).double().numpy()
    monkeypatch.setattr(mnist, "heldout_reference", lambda n, ext: (Moments.from_features(feats[::-1].copy()), None))
    metrics = video_demo.video_metrics(clips, extractor, Moments.from_features(feats))
    assert metrics["frame_fid_vs_moving_clips"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["frame_fid"] == pytest.approx(0.0, abs=1e-6)  # the same frames in another order
    assert "frame_fid_vs_moving_clips" not in video_demo.video_metrics(clips, extractor)
