"""Regression tests for the attacker's and careless user's cases of the reliability round (docs/security.md):
folders run no code, configs are bounded, a resume keeps the run's record true, outputs are owned, and every
weak input gets one clear error."""

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler

from convdiff.models.class_paths import import_class
from convdiff.models.config_bounds import MAX_PARAMS_ENV, ModelTooLarge
from convdiff.models.controlnet import ControlNet
from convdiff.models.video import inflate
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.pipelines.video import FourDPipeline, VideoPipeline
from convdiff.registry import create_model

TINY = dict(hidden_size=8, depth=[1, 1, 1, 1, 1], sample_size=8, in_channels=1, num_classes=3)
PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nclass Evil:\n    pass\n"


def tiny_base():
    torch.manual_seed(0)
    return create_model("dic-tiny", **TINY)


@pytest.fixture(scope="module")
def video_pipe():
    pipe = VideoPipeline(inflate(tiny_base(), to="video", temporal="attention", max_frames=4),
                         DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def fourd_pipe():
    model = inflate(create_model("dic-tiny", **{**TINY, "in_channels": 3, "num_classes": 0, "learn_sigma": False}),
                    to="4d", temporal="attention", view="attention", camera_dim=4, max_frames=2, max_views=2)
    pipe = FourDPipeline(model, DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A module `payload_mod` in the current directory, which is on sys.path (as under `python -c` or a notebook
    started there); importing it writes `marker`. Returns (folder for saved pipelines, marker)."""
    marker = tmp_path / "marker"
    (tmp_path / "payload_mod.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "payload_mod", raising=False)
    return tmp_path, marker


# ---- 1. no code from a folder ------------------------------------------------------------------------------

def test_a_video_folder_naming_a_module_beside_it_runs_no_code(video_pipe, payload):
    root, marker = payload
    folder = root / "video"
    video_pipe.save_pretrained(folder)
    (folder / "transformer" / "payload_mod.py").write_text(PAYLOAD.format(marker=str(marker)))
    edit_json(folder / "transformer" / "config.json", base_class="payload_mod.Evil")
    with pytest.raises(ValueError, match=r"'payload_mod'.*not inside convdiff or diffusers"):
        VideoPipeline.from_pretrained(folder)
    assert not marker.exists(), "the folder's module ran"
    assert "payload_mod" not in sys.modules


def test_a_controlnet_folder_naming_a_module_beside_it_runs_no_code(payload):
    root, marker = payload
    folder = root / "controlnet"
    ControlNet.from_backbone(tiny_base(), conditioning_channels=1).save_pretrained(folder)
    (folder / "payload_mod.py").write_text(PAYLOAD.format(marker=str(marker)))
    edit_json(folder / "config.json", backbone_class="payload_mod.Evil")
    with pytest.raises(ValueError, match=r"backbone class 'payload_mod.Evil'.*not inside convdiff or diffusers"):
        ControlNet.from_pretrained(folder)
    assert not marker.exists()


def test_a_pipeline_folder_whose_model_index_names_a_module_in_the_current_directory_runs_no_code(video_pipe, payload):
    root, marker = payload
    folder = root / "pipe"
    ClassConditionalPipeline(tiny_base(), DDIMScheduler()).save_pretrained(folder)
    edit_json(folder / "model_index.json", transformer=["payload_mod", "Evil"])
    with pytest.raises(ValueError, match=r"component 'transformer'.*'payload_mod'"):
        ClassConditionalPipeline.from_pretrained(folder)
    assert not marker.exists()


def test_this_s_as_a_folder_base_class_runs_no_code(video_pipe, tmp_path, capsys):
    folder = tmp_path / "video"
    video_pipe.save_pretrained(folder)
    edit_json(folder / "transformer" / "config.json", base_class="this.s")
    sys.modules.pop("this", None)
    with pytest.raises(ValueError, match=r"2D backbone class 'this.s'.*not inside convdiff or diffusers"):
        VideoPipeline.from_pretrained(folder)
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out


def test_an_installed_module_named_by_a_config_is_not_imported(capsys):
    sys.modules.pop("this", None)
    for path in ("this.s", "os.system", "torch.nn.Conv2d", "convdiff..models.X", "..dic.DiCModel", 5):
        with pytest.raises(ValueError, match="2D backbone"):
            import_class(path, "2D backbone")
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out
    assert import_class("convdiff.models.dic.DiCModel", "2D backbone").__name__ == "DiCModel"
    assert import_class("diffusers.DiTTransformer2DModel", "2D backbone").__name__ == "DiTTransformer2DModel"


# ---- 2. bounded configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    (dict(hidden_size=-4), "hidden_size must be an integer >= 1, got -4"),
    (dict(hidden_size=0), "hidden_size must be an integer >= 1, got 0"),
    (dict(hidden_size="abc"), "hidden_size must be an integer >= 1, got 'abc'"),
    (dict(depth=[2, -1, 2, 2, 2]), r"depth must be an integer >= 1 \(or a list of them\)"),
    (dict(hidden_size=10**9), f"above the size limit.*{MAX_PARAMS_ENV}"),
    (dict(depth=[100000] * 5), f"tensors.*{MAX_PARAMS_ENV}"),
])
def test_recipe_sizes_are_checked_before_anything_is_allocated(overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model("dic-tiny", **overrides)


def test_the_size_limit_is_raised_explicitly(monkeypatch):
    monkeypatch.setenv(MAX_PARAMS_ENV, "1000")
    with pytest.raises(ModelTooLarge, match="now 1,000"):
        create_model("dic-tiny", **TINY)
    monkeypatch.setenv(MAX_PARAMS_ENV, "1e7")
    assert create_model("dic-tiny", **TINY).config.hidden_size == 8
    monkeypatch.setenv(MAX_PARAMS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PARAMS_ENV}='lots' must be a number"):
        create_model("dic-tiny", **TINY)


@pytest.mark.parametrize("changes,match", [(dict(hidden_size=10**9), "above the size limit"),
                                           (dict(hidden_size=-4), "hidden_size must be an integer >= 1, got -4"),
                                           (dict(depth=[100000] * 5), "tensors")])
def test_folder_configs_are_bounded(video_pipe, tmp_path, changes, match):
    folder = tmp_path / "video"
    video_pipe.save_pretrained(folder)
    config = folder / "transformer" / "config.json"
    edit_json(config, base_config={**json.loads(config.read_text())["base_config"], **changes})
    with pytest.raises(ValueError, match=match):
        VideoPipeline.from_pretrained(folder)
    plain = tmp_path / "plain"
    ClassConditionalPipeline(tiny_base(), DDIMScheduler()).save_pretrained(plain)
    edit_json(plain / "transformer" / "config.json", **changes)
    with pytest.raises(ValueError, match=match) as info:
        ClassConditionalPipeline.from_pretrained(plain)
    assert "transformer/config.json" in str(info.value)


# ---- 3. a resume keeps the run's record true ---------------------------------------------------------------

RUN = ["model=dic-tiny", "model_overrides.hidden_size=8", "model_overrides.in_channels=1",
       "model_overrides.sample_size=28", "model_overrides.num_classes=10", "model_overrides.depth=[1,1,1,1,1]",
       "train_batch_size=4", "report_to=null", "logging_steps=1", "sample_num_inference_steps=1",
       "sample_final_grid=false", "learning_rate=0.003", "checkpointing_steps=1"]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    from convdiff.apps.train import train_main

    out = tmp_path_factory.mktemp("run") / "run"
    train_main([*RUN, "max_train_steps=2", f"output_dir={out}"])
    return out


@pytest.fixture
def run(two_step_run, tmp_path):
    import shutil

    return shutil.copytree(two_step_run, tmp_path / "run")


def test_resume_refuses_a_changed_learning_rate_and_keeps_the_record(run):
    from convdiff.apps.train import train_main

    record = (run / "train_config.yaml").read_text()
    for change, key in (("learning_rate=0.01", "learning_rate"), ("seed=3", "seed"), ("train_batch_size=2", "train_batch_size"),
                        ("objective=v_prediction", "objective"), ("lr_scheduler=cosine", "lr_scheduler")):
        with pytest.raises(ValueError, match=rf"--resume would change what this run trains \({key}: .*--accept-changes"):
            train_main([*RUN, "max_train_steps=3", f"output_dir={run}", "--resume", "latest", change])
    assert (run / "train_config.yaml").read_text() == record
    assert not (run / "checkpoint-3").exists()


def test_resume_may_extend_the_run_and_an_accepted_change_is_appended_with_its_step(run):
    from convdiff.files import load_weights_only
    from convdiff.apps.train import train_main

    record = (run / "train_config.yaml").read_text()
    train_main([*RUN, "max_train_steps=3", f"output_dir={run}", "--resume", "latest"])
    assert (run / "checkpoint-3").is_dir() and (run / "train_config.yaml").read_text() == record
    train_main([*RUN, "max_train_steps=4", f"output_dir={run}", "--resume", "latest", "--accept-changes",
                "learning_rate=0.01"])
    assert (run / "train_config.yaml").read_text() == record, "train_config.yaml was rewritten"
    changes = yaml.safe_load((run / "train_changes.yaml").read_text())
    assert changes[-1]["step"] == 3
    assert changes[-1]["changes"]["learning_rate"] == {"was": 0.003, "now": 0.01}
    assert changes[-1]["changes"]["max_train_steps"] == {"was": 2, "now": 4}
    optimizer = load_weights_only(run / "checkpoint-4" / "optimizer.bin")
    assert [g["lr"] for g in optimizer["param_groups"]] == [0.01], "the accepted learning rate was not applied"


def test_a_corrupt_or_malicious_checkpoint_file_is_named(run, tmp_path):
    from convdiff.apps.train import train_main

    resume = [*RUN, "max_train_steps=3", f"output_dir={run}", "--resume", "latest"]
    ckpt, marker = run / "checkpoint-2", tmp_path / "marker"
    state = (ckpt / "training_state.json").read_text()
    (ckpt / "training_state.json").write_text("")
    with pytest.raises(ValueError, match=r"checkpoint-2/training_state.json is not valid JSON"):
        train_main(resume)
    (ckpt / "training_state.json").write_text(state)

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w')",)

    for name in ("optimizer.bin", "scheduler.bin"):
        good = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(b"garbage, not a torch file")
        with pytest.raises(ValueError, match=rf"checkpoint-2/{name} is not a readable torch checkpoint"):
            train_main(resume)
        torch.save({"state": RunsCode()}, ckpt / name)
        with pytest.raises(ValueError, match=rf"checkpoint-2/{name} holds Python objects"):
            train_main(resume)
        assert not marker.exists()
        (ckpt / name).write_bytes(good)


# ---- 4. outputs are owned ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "pipeline"
    ClassConditionalPipeline(tiny_base(), DDIMScheduler()).save_pretrained(folder)
    return folder


def sample(folder, output, *extra):
    from convdiff.cli import main

    return main(["sample", "--pipeline", str(folder), "--output", str(output), "--steps", "1", *extra])


def test_sample_refuses_an_existing_grid_without_overwrite(pipeline_folder, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"mine")
    assert sample(pipeline_folder, grid, "--labels", "0,1") == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err and grid.read_bytes() == b"mine"
    assert sample(pipeline_folder, grid, "--labels", "0,1", "--overwrite") == 0
    from PIL import Image

    assert Image.open(grid).size == (16, 8)


def test_sample_checks_the_output_before_loading_anything(tmp_path, capsys, monkeypatch):
    import convdiff.apps.sample as sample_app

    monkeypatch.setattr(sample_app, "load_pipeline", lambda *a, **k: pytest.fail("the pipeline was loaded"))
    for output, message in ((tmp_path / "grid.txt", "extension '.txt'"), (tmp_path / "grid", "extension '(none)'"),
                            (tmp_path, "is a folder")):
        assert sample(tmp_path / "missing", output) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "grid.txt").exists()


@pytest.mark.parametrize("labels,match", [("", r"--labels: expected comma-separated class ids .* got ''"),
                                          ("a,b", r"--labels: .*'a' is not an integer")])
def test_sample_labels_are_parsed_with_a_message_naming_the_flag(pipeline_folder, tmp_path, capsys, labels, match):
    with pytest.raises(SystemExit):
        sample(pipeline_folder, tmp_path / "grid.png", "--labels", labels)
    import re

    assert re.search(match, capsys.readouterr().err)


# ---- 5. pipelines refuse what they cannot sample -----------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize("num_frames", [0, -2, 2.5, True, "4"])
def test_video_num_frames_outside_one_to_max_frames_is_refused(video_pipe, fourd_pipe, num_frames):
    with pytest.raises(ValueError, match=rf"num_frames must be an integer >= 1, got {num_frames!r}"):
        video_pipe([0], num_frames=num_frames, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1"):
        fourd_pipe(batch_size=1, cameras=torch.zeros(2, 4), num_frames=num_frames, num_inference_steps=1)


def test_video_windows_and_views_are_checked(video_pipe, fourd_pipe):
    with pytest.raises(ValueError, match="window_frames must be an integer >= 1, got 0"):
        video_pipe([0], num_frames=6, window_frames=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_views must be an integer >= 1 and <= the model's max_views=2, got 3"):
        fourd_pipe(batch_size=1, cameras=torch.zeros(3, 4), num_frames=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_views must be an integer >= 1"):
        fourd_pipe(batch_size=1, cameras=torch.zeros(2, 4), num_views=0, num_frames=2, num_inference_steps=1)
    frames = video_pipe([0], num_frames=1, num_inference_steps=1, output_type="np").frames
    assert frames.shape[1] == 1  # one frame is one frame, not the model's default


def test_nan_or_infinite_inputs_are_refused(video_pipe, fourd_pipe):
    image = ClassConditionalPipeline(tiny_base(), DDIMScheduler())
    for bad in (NAN, float("inf")):
        latents = torch.zeros(1, 1, 8, 8)
        latents[0, 0, 3, 3] = bad
        with pytest.raises(ValueError, match=r"latents holds 1 NaN or infinite value\(s\) of 64"):
            image(class_labels=[0], latents=latents, num_inference_steps=1)
        with pytest.raises(ValueError, match="latents holds 1 NaN"):
            video_pipe([0], latents=torch.stack([latents, torch.zeros_like(latents)], 2), num_inference_steps=1)
        with pytest.raises(ValueError, match="first_frame holds 1 NaN"):
            video_pipe([0], num_frames=2, first_frame=latents[0], num_inference_steps=1)
        with pytest.raises(ValueError, match="timestamps holds 1 NaN"):
            video_pipe([0], num_frames=2, timestamps=torch.tensor([0.0, bad]), num_inference_steps=1)
        cameras = torch.zeros(2, 4)
        cameras[1, 2] = bad
        with pytest.raises(ValueError, match="cameras holds 1 NaN"):
            fourd_pipe(batch_size=1, cameras=cameras, num_frames=2, num_inference_steps=1)


def test_a_prompt_that_is_not_text_is_refused():
    from convdiff.pipelines.text_encoders import tiny_text_encoder

    tokenizer, text_encoder = tiny_text_encoder(hidden_size=16)
    model = inflate(tiny_base(), to="video", max_frames=2, text_dim=16)
    pipe = VideoPipeline(model, DDIMScheduler(), text_encoder=text_encoder, tokenizer=tokenizer)
    for prompt, name in ((5, "prompt"), ([], "prompt"), (["a", 3], "prompt")):
        with pytest.raises(ValueError, match=rf"{name} must be a string or a non-empty list of strings, got "):
            pipe(prompt=prompt, num_frames=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="negative_prompt must be a string"):
        pipe(prompt="a", negative_prompt=7, num_frames=2, num_inference_steps=1)


# ---- 5. one clear line for each weak case ------------------------------------------------------------------

@pytest.mark.parametrize("setting,message", [
    ("hidden_size=abc", "hidden_size must be an integer >= 1, got 'abc' in the dic-tiny config"),
    ("num_classes=-5", "num_classes must be an integer >= 0, got -5 in the dic-tiny config"),
    ("depth=[2,0,2,2,2]", "depth must be an integer >= 1 (or a list of them), got [2, 0, 2, 2, 2]"),
])
def test_convert_set_names_the_key_and_the_value(tmp_path, capsys, setting, message):
    from convdiff.cli import main

    checkpoint = tmp_path / "model.pt"
    torch.save({"model": {}}, checkpoint)
    assert main(["convert", "--checkpoint", str(checkpoint), "--model", "dic-tiny", "--output", str(tmp_path / "out"),
                 "--set", setting]) == 2
    error = capsys.readouterr().err
    assert message in error and "--set" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_train_model_overrides_sizes_are_named(tmp_path):
    from convdiff.training.config import load_config

    with pytest.raises(ValueError, match=r"hidden_size must be an integer >= 1, got -4 in model_overrides"):
        load_config(None, ["model_overrides.hidden_size=-4", f"output_dir={tmp_path}"])


def test_extract_latents_checks_data_first_and_never_looks_beyond_a_local_vae(tmp_path, monkeypatch, capsys):
    from diffusers import AutoencoderKL

    from convdiff.cli import main

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("VAE was loaded")))
    argv = ["extract-latents", "--vae", "/nonexistent", "--output", str(tmp_path / "latents.npz")]
    assert main([*argv, "--data", str(tmp_path / "no-images")]) == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert main([*argv, "--data", str(tmp_path / "images")]) == 2
    assert "No AutoencoderKL folder at /nonexistent" in capsys.readouterr().err
    assert not (tmp_path / "latents.npz").exists()


class ShapeExtractor:
    protocol = "shape-extractor"

    def __call__(self, batch):
        return torch.stack([torch.tensor([float(np.asarray(im).mean()), float(np.asarray(im).std())])
                            for im in batch])


def test_fid_says_when_the_sides_differ_in_size_or_channels():
    from convdiff.eval.fid import ImageShapeWarning, compute_fid

    rng = np.random.default_rng(0)
    colour, grey = rng.integers(0, 255, (6, 64, 64, 3), np.uint8), rng.integers(0, 255, (6, 28, 28, 1), np.uint8)
    with pytest.warns(ImageShapeWarning, match=r"A's images are 64x64x3 \(HxWxC\), B's 28x28x1"):
        result = compute_fid(colour, grey, extractor=ShapeExtractor(), progress=False, warn_rank_deficient=False)
    assert "WARNING: the sides differ in size or channels" in str(result)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageShapeWarning)
        same = compute_fid(colour, colour[::-1].copy(), extractor=ShapeExtractor(), progress=False,
                           warn_rank_deficient=False)
    assert "WARNING" not in str(same)


def test_a_distill_teacher_folder_is_vetted_before_diffusers_loads_it(payload):
    from convdiff.distill.task import make_distill_task
    from convdiff.training.config import load_config

    root, marker = payload
    folder = root / "teacher"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                        "unet": ["payload_mod", "Evil"]}))
    task = make_distill_task(load_config(None, ["task=distill", f"task_options.teacher={folder}"]))
    with pytest.raises(ValueError, match=r"component 'unet'.*'payload_mod'"):
        task.build_model(None)
    assert not marker.exists()
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"teacher/model_index.json is not valid JSON"):
        make_distill_task(load_config(None, ["task=distill", f"task_options.teacher={folder}"]))


@pytest.mark.parametrize("changes,match", [(dict(hidden_size=10**9), "above the size limit"),
                                           (dict(hidden_size=-4), "hidden_size must be an integer >= 1, got -4")])
def test_a_model_folder_loaded_on_its_own_is_bounded(tmp_path, changes, match):
    """Model.from_pretrained(folder) checks the folder's config.json before diffusers builds anything from it."""
    from convdiff.models import DiCModel

    tiny_base().save_pretrained(tmp_path / "model")
    edit_json(tmp_path / "model" / "config.json", **changes)
    with pytest.raises(ValueError, match=match):
        DiCModel.from_pretrained(tmp_path / "model")
    ClassConditionalPipeline(tiny_base(), DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    edit_json(tmp_path / "pipe" / "transformer" / "config.json", **changes)
    with pytest.raises(ValueError, match=match):
        DiCModel.from_pretrained(tmp_path / "pipe", subfolder="transformer")


def test_a_converted_model_folder_is_bounded(tmp_path):
    from convdiff.distill.io import load_converted

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "DiCModel", "hidden_size": -4, "convfusion": {}}))
    with pytest.raises(ValueError, match=r"hidden_size must be an integer >= 1, got -4 in .*config.json"):
        load_converted(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": 7, "convfusion": {}}))
    with pytest.raises(ValueError, match="Unknown model class 7"):
        load_converted(tmp_path)


def test_diffusers_and_transformers_components_pass_the_folder_check(tmp_path):
    from convdiff.models.class_paths import check_pipeline_folder

    index = {"_class_name": "StableDiffusionPipeline", "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    check_pipeline_folder(tmp_path)
    for library in ("os", "this", "stable_diffusion.evil", "diffusers/../x"):
        (tmp_path / "model_index.json").write_text(json.dumps({**index, "unet": [library, "UNet"]}))
        with pytest.raises(ValueError, match="component 'unet'"):
            check_pipeline_folder(tmp_path)
