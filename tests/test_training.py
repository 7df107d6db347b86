import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from convdiff.training.batches import StreamBatchSampler, step_generator
from convdiff.training.checkpoints import list_checkpoints, resolve_resume
from convdiff.training.config import load_config
from convdiff.training.objectives import DiffusionObjective, FlowObjective, make_objective
from conftest import assert_saved_as_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=dic-tiny", "model_overrides.hidden_size=8", "model_overrides.in_channels=1",
    "model_overrides.sample_size=28", "model_overrides.num_classes=10", "train_batch_size=8",
    "report_to=null", "logging_steps=1", "sample_num_inference_steps=2", "learning_rate=0.001", "ema_decay=0.9",
]


def test_hybrid_loss_vlb_vanishes_for_the_true_posterior():
    objective = DiffusionObjective("epsilon", learned_sigma=True)
    x0, noise = torch.rand(4, 2, 4, 4) * 2 - 1, torch.randn(4, 2, 4, 4)
    t = torch.tensor([1, 10, 500, 999])
    x_t, _ = objective.noisy_input(x0, noise, t)
    # exact epsilon and variance output -1 (= the posterior variance): simple MSE 0 and KL 0
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert objective.loss(out, x0, noise, x_t, t).abs().max() < 1e-4
    worse = torch.cat([noise, torch.ones_like(noise)], dim=1)
    loss = objective.loss(worse, x0, noise, x_t, t)
    assert (loss[:2] > 1e-3).all() and (loss >= 0).all()  # late steps: beta_t ~ posterior variance, KL ~ 0


def test_hybrid_loss_matches_diffusers_ddpm_schedule():
    objective = DiffusionObjective("epsilon", learned_sigma=True)
    scheduler = DDPMScheduler(beta_schedule="linear")
    torch.testing.assert_close(objective.alphas_cumprod.float(), scheduler.alphas_cumprod)
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999])
    x_t, _ = objective.noisy_input(x0, noise, t)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, noise, t))


def test_v_prediction_target_and_flow_target():
    v = DiffusionObjective("v_prediction")
    scheduler = DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction")
    x0, noise, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([5, 600])
    x_t, _ = v.noisy_input(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    assert v.loss(target, x0, noise, x_t, t).abs().max() < 1e-10
    flow = FlowObjective()
    sigma = torch.tensor([0.25, 0.75])
    x_t, model_t = flow.noisy_input(x0, noise, sigma)
    torch.testing.assert_close(x_t, 0.75 * x0[:1].expand(2, -1, -1, -1) * torch.tensor([1, 0]).view(2, 1, 1, 1)
                               + 0.25 * x0 * torch.tensor([0, 1]).view(2, 1, 1, 1)
                               + (sigma.view(2, 1, 1, 1) * noise))
    assert torch.equal(model_t, sigma * 1000)
    assert flow.loss(noise - x0, x0, noise, x_t, model_t).abs().max() == 0


def test_logit_normal_flow_timesteps_are_sigmoids_of_standard_normals():
    flow = FlowObjective(timestep_sampling="logit_normal")
    drawn = flow.sample_timesteps(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(3))))
    many = flow.sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert abs(many.median().item() - 0.5) < 0.01 and ((many > 0.27) & (many < 0.73)).float().mean() > 0.67
    with pytest.raises(ValueError, match="for objective 'flow'"):
        make_objective("epsilon", learned_sigma=False, pixel_space=True, timestep_sampling="logit_normal")
    with pytest.raises(ValueError, match="timestep_sampling must be one of"):
        FlowObjective(timestep_sampling="cosine")


def test_objective_and_model_mismatch_errors():
    with pytest.raises(ValueError, match="learn_sigma=False"):
        make_objective("flow", learned_sigma=True, pixel_space=True)
    with pytest.raises(ValueError, match="Unknown objective"):
        make_objective("score", learned_sigma=False, pixel_space=True)
    objective = DiffusionObjective("epsilon")
    with pytest.raises(ValueError, match="learn_sigma"):
        objective.loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), None, torch.tensor([1]))


def test_batches_split_evenly_over_processes_and_cover_each_epoch():
    one = StreamBatchSampler(10, 4, seed=1, start=0, stop=5)
    halves = [StreamBatchSampler(10, 4, seed=1, start=0, stop=5, process_index=r, num_processes=2) for r in range(2)]
    for whole, a, b in zip(one, *halves):
        assert whole == a + b
    stream = [i for batch in StreamBatchSampler(10, 5, seed=3, start=0, stop=4) for i in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    resumed = list(StreamBatchSampler(10, 4, seed=1, start=3, stop=5))
    assert resumed == list(one)[3:]
    assert torch.equal(torch.randn(3, generator=step_generator(0, 7)), torch.randn(3, generator=step_generator(0, 7)))


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_config(ROOT / "configs/dic-mnist-tiny.yaml", ["max_train_steps=7", "model_overrides.hidden_size=16"])
    assert config.max_train_steps == 7 and config.model_overrides["hidden_size"] == 16
    assert config.model_overrides["num_classes"] == 10
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(None, ["learning_rat=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_train_step: 3\n")
    with pytest.raises(ValueError, match="max_train_steps"):
        load_config(bad)


def test_resume_path_without_checkpoint_is_an_error(tmp_path):
    assert resolve_resume(tmp_path, "latest") is None
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-5"))
    (tmp_path / ".checkpoint-9.partial").mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]


def run_train(args, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-u", str(ROOT / "scripts/train.py"), *TINY, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, **popen)


def test_train_in_process_writes_pipeline_grid_and_checkpoints(tmp_path):
    from convdiff.pipelines import ClassConditionalPipeline
    from convdiff.apps.train import train_main

    out = tmp_path / "run"
    train_main([*TINY, "max_train_steps=4", "checkpointing_steps=2", "checkpoints_total_limit=1", f"output_dir={out}",
                "report_to=tensorboard"])
    assert [s for s, _ in list_checkpoints(out)] == [4]
    assert list((out / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs missing"
    assert (out / "train_config.yaml").exists()
    grid = Image.open(out / "samples/final.png")
    assert grid.size == (280, 280) and grid.mode == "L"
    pipe = ClassConditionalPipeline.from_pretrained(out / "pipeline")
    assert pipe.transformer.config.in_channels == 1 and pipe.transformer.config.prediction_type == "epsilon"
    images = pipe(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 28, 28, 1) and np.isfinite(images).all()


def test_sigkill_and_resume_reaches_the_uninterrupted_weights(tmp_path):
    common = ["max_train_steps=16", "checkpointing_steps=2", "checkpoints_total_limit=3"]
    straight = run_train([*common, f"output_dir={tmp_path / 'a'}"])
    log_a = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, log_a

    killed = run_train([*common, f"output_dir={tmp_path / 'b'}"])
    for line in killed.stdout:
        if "saved" in line and "checkpoint-4" in line:
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b/pipeline").exists()
    resumed = run_train([*common, f"output_dir={tmp_path / 'b'}", "resume_from_checkpoint=latest"])
    log_b = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log_b
    assert "resumed from" in log_b

    for rel in ("checkpoint-16/model.safetensors", "pipeline/transformer/diffusion_pytorch_model.safetensors"):
        a, b = load_file(tmp_path / "a" / rel), load_file(tmp_path / "b" / rel)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (rel, key)


def test_model_that_does_not_fit_the_data_fails_before_training(tmp_path):
    from convdiff.apps.train import train_main

    with pytest.raises(ValueError, match="in_channels=1"):
        train_main([*TINY, "model_overrides.in_channels=3", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="num_classes=10"):
        train_main([*TINY, "model_overrides.num_classes=5", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="does not fit"):
        train_main([*TINY, "model=dico-tiny", "resolution=30", f"output_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


def test_image_folder_errors(tmp_path):
    from convdiff.apps.train import train_main

    base = [*TINY, "data=image_folder", "resolution=28", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_main([*base, f"data_path={tmp_path / 'missing'}"])
    (tmp_path / "empty/cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        train_main([*base, f"data_path={tmp_path / 'empty'}"])
    (tmp_path / "broken/cls").mkdir(parents=True)
    (tmp_path / "broken/cls/a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png"):
        train_main([*base, f"data_path={tmp_path / 'broken'}"])


def test_image_folder_trains(tmp_path):
    from convdiff.apps.train import train_main

    for cls in ("zero", "one"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.randint(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "out"
    args = [*TINY, "data=image_folder", "resolution=28", "random_flip=true", f"data_path={tmp_path / 'data'}",
            "max_train_steps=2", "checkpointing_steps=0", f"output_dir={out}"]
    train_main(args)
    # DDIM: the recipe's sample_scheduler default, kept as the saved pipeline's sampler
    assert_saved_as_recipe(out / "pipeline", load_config(None, args), "DDIMScheduler")


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    common = ["max_train_steps=4", "checkpointing_steps=4", "use_ema=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), *TINY, *common, f"output_dir={tmp_path / 'one'}"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts/train.py")]
    double = subprocess.run([*launch, *TINY, *common, f"output_dir={tmp_path / 'two'}"], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "2 process(es) (DistributedType.MULTI_CPU)" in double.stderr, double.stderr[-3000:]
    assert (tmp_path / "two/checkpoint-4/random_states_1.pkl").exists()
    a = load_file(tmp_path / "one/checkpoint-4/model.safetensors")
    b = load_file(tmp_path / "two/checkpoint-4/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_extract_latents_then_train_on_them(tmp_path):
    from diffusers import AutoencoderKL

    from convdiff.apps.extract_latents import extract_main
    from convdiff.data.latents import LatentDataset
    from convdiff.apps.train import train_main

    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "vae")
    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.random.randint(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    extract_main(["--data", str(tmp_path / "images"), "--vae", str(tmp_path / "vae"), "--resolution", "16",
                  "--output", str(tmp_path / "lat.npz")])
    data = LatentDataset(tmp_path / "lat.npz")
    assert data.latents.shape == (4, 2, 4, 8, 8) and data.has_flip_pairs and data.num_classes == 2
    out = tmp_path / "run"
    train_main(["model=dico-tiny", "model_overrides.num_classes=2", "data=latents", f"data_path={tmp_path / 'lat.npz'}",
                f"vae={tmp_path / 'vae'}", "train_batch_size=4", "max_train_steps=2", "checkpointing_steps=0",
                "report_to=null", "sample_num_inference_steps=2", f"output_dir={out}"])
    assert (out / "pipeline/vae/config.json").exists() and (out / "samples/final.png").exists()


def test_wall_clock_budget_stops_early_and_still_saves(tmp_path):
    from convdiff.apps.train import train_main

    out = tmp_path / "run"
    train_main([*TINY, "max_train_steps=100000", "max_train_seconds=0", "checkpointing_steps=0", f"output_dir={out}"])
    assert (out / "pipeline/model_index.json").exists()


def test_label_dropout_reads_the_models_own_rate_and_the_recipe_can_override_it(tmp_path):
    from convdiff.registry import create_model
    from convdiff.apps.train import train_main
    from convdiff.training.labels import disable_internal_label_dropout, null_class_and_dropout

    dit = create_model("dit-tiny")
    assert null_class_and_dropout(dit)[2] == 0.1
    disable_internal_label_dropout(dit)
    assert null_class_and_dropout(dit)[2] == 0.0  # hence the loop reads the rate first
    with pytest.raises(ValueError, match="needs a null class"):
        train_main([*TINY, "model_overrides.class_dropout_prob=0", "label_dropout=0.2", f"output_dir={tmp_path}"])


def test_task_options_override_and_unknown_task(tmp_path):
    from convdiff.training.tasks import make_task

    config = load_config(None, ["task=controlnet", "task_options.base=pipelines/dic-mnist", "task_options.scale=0.5"])
    assert config.task == "controlnet" and config.task_options == {"base": "pipelines/dic-mnist", "scale": 0.5}
    with pytest.raises(ValueError, match="Did you mean denoise"):
        make_task(load_config(None, ["task=denoize"]))


def test_draws_slice_the_global_batch_per_process():
    from convdiff.training.batches import step_generator
    from convdiff.training.task import Draws

    whole = Draws(step_generator(0, 3), 4, slice(0, 4))
    halves = [Draws(step_generator(0, 3), 4, slice(i * 2, i * 2 + 2)) for i in range(2)]
    a = whole.randn(3)
    b = torch.cat([d.randn(3) for d in halves])
    assert torch.equal(a, b)
    assert torch.equal(whole.rand(), torch.cat([d.rand() for d in halves]))


FAST = [*TINY, "max_train_steps=2", "checkpointing_steps=2", "sample_num_inference_steps=1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step run with checkpoints 1 and 2; tests work on copies of it."""
    from convdiff.apps.train import train_main

    out = tmp_path_factory.mktemp("finished") / "run"
    train_main([*FAST, "checkpointing_steps=1", f"output_dir={out}"])
    return out


def copy_run(finished_run, tmp_path):
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_a_fresh_run_refuses_a_folder_with_an_earlier_run_and_overwrite_clears_it(finished_run, tmp_path):
    from convdiff.apps.train import train_main

    out = copy_run(finished_run, tmp_path)
    (out / "notes.txt").write_text("mine")  # not the run's: overwrite must keep it
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for bad in (["max_train_steps=3"], ["max_train_steps=0"]):
        with pytest.raises((FileExistsError, ValueError)) as info:
            train_main([*FAST, *bad, f"output_dir={out}"])
        if bad == ["max_train_steps=3"]:
            assert "--resume latest" in str(info.value) and "--overwrite" in str(info.value)
        else:
            assert "max_train_steps must be an integer >= 1, got 0" in str(info.value)
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before, "the earlier run was touched"
    train_main(["--overwrite", *FAST, "max_train_steps=1", "checkpointing_steps=1", f"output_dir={out}"])
    assert [s for s, _ in list_checkpoints(out)] == [1] and (out / "notes.txt").read_text() == "mine"
    assert load_config(None, ["overwrite=true"]).overwrite is True


def test_resume_reads_ema_weights_only_and_overrides_go_anywhere(finished_run, tmp_path, monkeypatch):
    from convdiff.apps.train import train_main

    out = copy_run(finished_run, tmp_path)
    ckpt = out / "checkpoint-2"
    assert (ckpt / "ema_state.pt").exists() and not list(ckpt.glob("custom_checkpoint_*"))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    # overrides before and after --resume (parse_intermixed_args takes options between positionals)
    train_main(["max_train_steps=3", "--resume", "latest", *FAST, "max_train_steps=3", "checkpointing_steps=1",
                f"output_dir={out}"])
    assert loads and all(loads), "a checkpoint file was unpickled without weights_only=True"
    assert [s for s, _ in list_checkpoints(out)][-1] == 3


def test_resume_refuses_a_malicious_ema_file_and_names_a_damaged_one(finished_run, tmp_path):
    from convdiff.apps.train import train_main

    out = copy_run(finished_run, tmp_path)
    ckpt, marker = out / "checkpoint-2", tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w')",)

    good = (ckpt / "ema_state.pt").read_bytes()
    torch.save({"shadow_params": RunsCode()}, ckpt / "ema_state.pt")
    resume = [*FAST[:-2], "max_train_steps=3", "checkpointing_steps=0", "resume_from_checkpoint=latest", f"output_dir={out}"]
    with pytest.raises(ValueError, match="ema_state.pt holds Python objects"):
        train_main(resume)
    assert not marker.exists()
    (ckpt / "ema_state.pt").write_bytes(good)
    model_file = ckpt / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors is damaged or truncated"):
        train_main(resume)


class _FakeAccelerator:
    """What save_checkpoint uses of an Accelerator; `fail` makes save_state run out of disk halfway."""

    is_main_process = True

    def __init__(self, fail=None):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        if self.fail is not None:
            raise self.fail


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"),
                                   PermissionError(13, "Permission denied")])
def test_failed_checkpoint_write_is_one_clear_error_and_keeps_the_previous_latest(tmp_path, error):
    from convdiff.training.checkpoints import save_checkpoint

    save_checkpoint(_FakeAccelerator(), tmp_path, 2, total_limit=1)
    with pytest.raises(OSError) as info:
        save_checkpoint(_FakeAccelerator(error), tmp_path, 4, total_limit=1)
    message = str(info.value)
    assert str(tmp_path / "checkpoint-4") in message and "checkpoint-2" in message
    assert ("No space left" in message or "Permission denied" in message or "unexpected pos" in message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-2"


def test_failed_pipeline_write_leaves_the_previous_pipeline(tmp_path):
    import errno

    from convdiff.training.loop import _save_atomically

    class Pipeline:
        def __init__(self, text, fail=False):
            self.text, self.fail = text, fail

        def save_pretrained(self, folder):
            (Path(folder) / "model_index.json").write_text(self.text)
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "pipeline"
    _save_atomically(Pipeline("old"), target)
    with pytest.raises(OSError, match="No space left on device") as info:
        _save_atomically(Pipeline("new", fail=True), target)
    assert str(target) in str(info.value)
    assert (target / "model_index.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


@pytest.mark.parametrize("override, message", [
    ("learning_rate=abc", "learning_rate must be a number > 0, got 'abc'"),
    ("max_train_steps=twenty", "max_train_steps must be an integer >= 1, got 'twenty'"),
    ("max_train_steps=-3", "max_train_steps must be an integer >= 1, got -3"),
    ("train_batch_size=0", "train_batch_size must be an integer >= 1, got 0"),
    ("train_batch_size=-8", "train_batch_size must be an integer >= 1, got -8"),
    ("label_dropout=1.5", "label_dropout must be a probability in [0, 1] or null, got 1.5"),
    ("ema_decay=2", "ema_decay must be a number in [0, 1], got 2"),
    ("use_ema=maybe", "use_ema must be true or false, got 'maybe'"),
    ("logging_steps=0", "logging_steps must be an integer >= 1, got 0"),
    ("objective=eps", "objective must be one of epsilon, v_prediction, flow, got 'eps'. Did you mean epsilon?"),
    ("lr_scheduler=cosin", "lr_scheduler must be one of"),
    ("mixed_precision=fp8", "mixed_precision must be one of no, bf16, fp16, got 'fp8'"),
    ("data=mnst", "data must be one of mnist, image_folder, latents, got 'mnst'"),
    ("gradient_accumulation_steps=3", "train_batch_size=8 must be divisible by gradient_accumulation_steps=3"),
    ("model_overrides.hiden_size=8", "model_overrides.hiden_size is not a setting of DiCModel (model='dic-tiny'). "
                                     "Did you mean hidden_size?"),
])
def test_config_values_are_checked_with_the_key_value_and_expectation(tmp_path, override, message):
    from convdiff.apps.train import train_main

    with pytest.raises(ValueError) as info:
        train_main([*TINY, override, f"output_dir={tmp_path / 'run'}"])
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()


def test_config_types_are_checked_from_the_annotations_and_numbers_are_read():
    import dataclasses

    from convdiff.training.config import TrainConfig, check_config

    config = load_config(None, ["learning_rate=1e-4", "max_train_steps=1e3", "adam_weight_decay=0"])
    assert config.learning_rate == 1e-4 and config.max_train_steps == 1000 and isinstance(config.adam_weight_decay, float)

    @dataclasses.dataclass
    class Extended(TrainConfig):  # a key added later is checked without being listed anywhere
        compile: bool = False

    with pytest.raises(ValueError, match="compile must be true or false, got 'yes please'"):
        Extended(compile="yes please")
    config = TrainConfig()
    config.checkpoints_total_limit = 0
    with pytest.raises(ValueError, match="checkpoints_total_limit must be an integer >= 1 or null"):
        check_config(config)


FAILING_RANK_SCRIPT = """
import errno, os, sys
import accelerate
from convdiff.apps.train import train_main

original = accelerate.Accelerator.save_state

def save_state(self, output_dir=None, **kwargs):
    if self.process_index == 1 and "checkpoint-4" in str(output_dir):  # rank 1's disk is full at step 4
        raise OSError(errno.ENOSPC, "No space left on device", output_dir)
    return original(self, output_dir, **kwargs)

accelerate.Accelerator.save_state = save_state
sys.exit(train_main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_write_failure_on_another_process_stops_every_process(tmp_path):
    """Before, rank 1 raised while rank 0 waited at the next barrier for ever (the gloo timeout is 30 min)."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    run = subprocess.run([*launch, *TINY, "max_train_steps=6", "checkpointing_steps=2", "use_ema=false",
                          f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    assert run.returncode != 0
    assert "checkpoint-4" in run.stderr and "checkpoint-2" in run.stderr, run.stderr[-3000:]  # names what is kept
    assert (tmp_path / "run/checkpoint-2/training_state.json").exists()
    assert not (tmp_path / "run/checkpoint-4").exists() and not (tmp_path / "run/.checkpoint-4.partial").exists()
