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
    from convdiff.training import train_main

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
    from convdiff.training import train_main

    with pytest.raises(ValueError, match="in_channels=1"):
        train_main([*TINY, "model_overrides.in_channels=3", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="num_classes=10"):
        train_main([*TINY, "model_overrides.num_classes=5", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="does not fit"):
        train_main([*TINY, "model=dico-tiny", "resolution=30", f"output_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


def test_image_folder_errors(tmp_path):
    from convdiff.training import train_main

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
    from convdiff.training import train_main

    for cls in ("zero", "one"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.randint(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "out"
    train_main([*TINY, "data=image_folder", "resolution=28", "random_flip=true", f"data_path={tmp_path / 'data'}",
                "max_train_steps=2", "checkpointing_steps=0", f"output_dir={out}"])
    assert (out / "pipeline/model_index.json").exists()


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

    from convdiff.data.extract import extract_main
    from convdiff.data.latents import LatentDataset
    from convdiff.training import train_main

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
    from convdiff.training import train_main

    out = tmp_path / "run"
    train_main([*TINY, "max_train_steps=100000", "max_train_seconds=0", "checkpointing_steps=0", f"output_dir={out}"])
    assert (out / "pipeline/model_index.json").exists()


def test_label_dropout_reads_the_models_own_rate_and_the_recipe_can_override_it(tmp_path):
    from convdiff.registry import create_model
    from convdiff.training import train_main
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
