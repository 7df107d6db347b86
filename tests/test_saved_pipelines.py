"""Saved pipeline folders sample as they were measured, load through diffusers, and carry a model card.

The shipped folders (`convdiff/apps/shipped.py` records each one's documented sampling and figures), the
convention diffusers documents for pipelines outside its package (a code file named by `_class_name`), and the
sampling defaults every convdiff pipeline reads.
"""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from convdiff import create_model
from convdiff.apps.shipped import CONTROLNETS, ROOT, SHIPPED, load_shipped
from convdiff.pipelines import ClassConditionalPipeline, ControlNetPipeline, LayeredTextToImagePipeline, VideoPipeline
from convdiff.pipelines.schedulers import make_scheduler

SHIPPED_IDS = [folder.name for folder in SHIPPED]


def small_call(folder, pipe) -> dict:
    """The cheapest call that still runs every documented sampling step of the folder (one sample, few frames)."""
    generator = torch.Generator().manual_seed(0)
    if folder.name == "dic-mnist":
        return {"class_labels": [7], "generator": generator, "output_type": "np"}
    if folder.name == "layered-mnist":
        return {"prompt": ["a handwritten digit seven"], "generator": generator, "output_type": "np"}
    if folder.name == "text-video-dic-mnist":
        return {"prompt": "a digit three moving right", "num_frames": 2, "generator": generator, "output_type": "np"}
    if folder.name == "video-dic-mnist":
        return {"class_labels": [3], "num_frames": 2, "generator": generator, "output_type": "np"}
    size, cameras = pipe.transformer.config.sample_size, torch.randn(2, pipe.transformer.config.camera_dim)
    return {"first_view": torch.zeros(3, 2, size, size), "cameras": cameras, "num_frames": 2, "generator": generator,
            "output_type": "np"}


def outputs(result):
    return result.images if hasattr(result, "images") else result.frames


@pytest.mark.parametrize("name", SHIPPED_IDS)
def test_a_shipped_folder_samples_by_default_as_its_figures_were_measured(name):
    """README's and docs/'s figures were measured with these settings: the default call must be them."""
    folder = next(f for f in SHIPPED if f.name == name)
    pipe = load_shipped(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.sampling_defaults == folder.sampling
    if folder.sampler:
        assert type(pipe.scheduler) is type(make_scheduler(folder.sampler, pipe.scheduler))
    call = small_call(folder, pipe)
    by_default = outputs(pipe(**call))
    call["generator"] = torch.Generator().manual_seed(0)
    explicit = outputs(pipe(**call, **folder.sampling))
    assert torch.equal(torch.as_tensor(by_default), torch.as_tensor(explicit))


@pytest.mark.parametrize("name", SHIPPED_IDS)
def test_diffusers_loads_every_shipped_folder_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = ROOT / "pipelines" / name
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers' own guard for code in a folder
        DiffusionPipeline.from_pretrained(folder)
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    expected = next(f for f in SHIPPED if f.name == name).pipeline
    assert type(pipe).__name__ == expected and type(pipe).__module__.startswith("convdiff.pipelines")
    code = (folder / "convdiff_pipeline.py").read_text()
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports == [f"from {type(pipe).__module__} import {expected}  # noqa: F401"]  # only the installed convdiff


@pytest.mark.parametrize("folder", [*SHIPPED, *CONTROLNETS], ids=[*SHIPPED_IDS, *(f.name for f in CONTROLNETS)])
def test_every_shipped_folder_has_a_model_card(folder):
    card = (ROOT / "pipelines" / folder.name / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    header = yaml.safe_load(header)
    assert header["library_name"] == "diffusers" and header["license"] == "apache-2.0"
    assert header["pipeline_tag"] and "convdiff" in header["tags"]
    assert header.get("base_model") == folder.training.get("base model")
    for heading in ("## Use", "## Training", "## Evaluation", "## Limits"):
        assert heading in body
    assert all(line in body for line in folder.evaluation)  # the documented figures and their command
    assert folder.training["wall time"] in body


def test_convdiffs_own_loader_never_runs_the_folders_code_file(tmp_path, monkeypatch):
    """The code file is for diffusers' loader only; a folder from someone else may hold any file of that name."""
    folder = tmp_path / "dic-mnist"
    shutil.copytree(ROOT / "pipelines" / "dic-mnist", folder)
    marker = tmp_path / "ran"
    (folder / "convdiff_pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    pipe = ClassConditionalPipeline.from_pretrained(folder)
    assert isinstance(pipe, ClassConditionalPipeline) and not marker.exists()


def tiny_class_pipeline(**kwargs):
    model = create_model("dic-tiny", in_channels=1, sample_size=8, num_classes=10, learn_sigma=False,
                         prediction_type="flow", hidden_size=8)
    return ClassConditionalPipeline(model.eval(), FlowMatchEulerDiscreteScheduler(), **kwargs)


def test_sampling_defaults_are_checked_and_survive_a_round_trip(tmp_path):
    with pytest.raises(ValueError, match=r"sampling_defaults of ClassConditionalPipeline takes .*unknown key\(s\) \['eta'\]"):
        tiny_class_pipeline(sampling_defaults={"eta": 1.0})
    with pytest.raises(ValueError, match="sampling_defaults: num_inference_steps must be an integer >= 1, got 0"):
        tiny_class_pipeline(sampling_defaults={"num_inference_steps": 0})
    pipe = tiny_class_pipeline(sampling_defaults={"num_inference_steps": 3, "guidance_scale": 1.5})
    pipe.save_pretrained(tmp_path / "saved")
    loaded = ClassConditionalPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.sampling_arguments() == {"num_inference_steps": 3, "guidance_scale": 1.5, "guidance_channels": None,
                                           "guidance_schedule": "constant"}
    assert loaded.sampling_arguments(num_inference_steps=7)["num_inference_steps"] == 7  # a given argument wins
    assert "a call with no sampling arguments uses: num_inference_steps=3, guidance_scale=1.5" in \
        (tmp_path / "saved" / "README.md").read_text()


def test_controlnet_from_base_keeps_the_bases_sampling_defaults():
    from convdiff.models import ControlNet

    base = tiny_class_pipeline(sampling_defaults={"num_inference_steps": 2, "guidance_scale": 2.0})
    pipe = ControlNetPipeline.from_base(base, ControlNet.from_backbone(base.transformer, conditioning_channels=1))
    assert pipe.config.sampling_defaults == base.config.sampling_defaults
    pipe.set_progress_bar_config(disable=True)
    image, generator = torch.rand(1, 1, 8, 8), torch.Generator().manual_seed(0)
    by_default = pipe(image, class_labels=[1], generator=generator, output_type="np").images
    explicit = pipe(image, class_labels=[1], num_inference_steps=2, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images
    assert torch.equal(torch.as_tensor(by_default), torch.as_tensor(explicit))


def test_layered_and_video_pipelines_read_their_sampling_defaults(tmp_path):
    from convdiff.models.video import inflate
    from convdiff.pipelines import LayeredScheduler

    unet = create_model("layered-unet-tiny", in_channels=1, sample_size=16, num_classes=10).eval()
    layered = LayeredTextToImagePipeline(unet, LayeredScheduler(sample_sizes=list(unet.scale_sizes)),
                                         sampling_defaults={"num_inference_steps": 2, "guidance_scale": 1.0})
    layered.save_pretrained(tmp_path / "layered")
    layered = LayeredTextToImagePipeline.from_pretrained(tmp_path / "layered")
    layered.set_progress_bar_config(disable=True)
    by_default = layered(class_labels=[3], generator=torch.Generator().manual_seed(0), output_type="np").images
    explicit = layered(class_labels=[3], num_inference_steps=2, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(0), output_type="np").images
    assert layered.num_timesteps == 2 and torch.equal(torch.as_tensor(by_default), torch.as_tensor(explicit))

    image = tiny_class_pipeline().transformer
    video = VideoPipeline(inflate(image, to="video", max_frames=2), FlowMatchEulerDiscreteScheduler(),
                          sampling_defaults={"num_inference_steps": 3})
    video.save_pretrained(tmp_path / "video")
    video = VideoPipeline.from_pretrained(tmp_path / "video")
    video.set_progress_bar_config(disable=True)
    video(class_labels=[1], num_frames=2, output_type="np")
    assert video.num_timesteps == 3
    assert Path(tmp_path / "video" / "README.md").read_text().count("pipeline_tag: unconditional-image-generation") == 1
