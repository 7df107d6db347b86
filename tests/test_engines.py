"""Distributed engines: FSDP runs for real on CPU (gloo), wraps the model's own blocks; DeepSpeed refuses clearly."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convdiff.registry import create_model
from convdiff.training.config import load_config
from convdiff.training.engines import check_engine, fit_model, requested_engine, wrap_classes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=dic-tiny", "model_overrides.hidden_size=8", "model_overrides.in_channels=1",
        "model_overrides.sample_size=28", "model_overrides.num_classes=10", "train_batch_size=8", "report_to=null",
        "logging_steps=1", "sample_num_inference_steps=2", "learning_rate=0.001", "ema_decay=0.9",
        "max_train_steps=4", "checkpointing_steps=2", "sample_final_grid=false"]
FSDP = {"ACCELERATE_USE_FSDP": "true"}
DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true"}


@pytest.mark.parametrize("name, blocks", [("dic-tiny", ["DiCBlock"]), ("dico-tiny", ["DiCoBlock"]),
                                          ("diffit-tiny", ["DiffiTBlock"]), ("dit-tiny", ["BasicTransformerBlock"]),
                                          ("sd-unet-mnist", ["BasicTransformerBlock", "ResnetBlock2D"])])
def test_fsdp_wraps_the_blocks_of_the_model_being_trained(name, blocks):
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    model = create_model(name)
    assert wrap_classes(model) == blocks
    # the launch config names another model's block (as fsdp.yaml once named DiCoBlock for every model)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["SomeoneElsesBlock"])
    accelerator = types.SimpleNamespace(distributed_type=DistributedType.FSDP,
                                        state=types.SimpleNamespace(fsdp_plugin=plugin))
    fit_model(accelerator, model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(m).__name__ for m in model.modules() if policy(m)}
    assert wrapped == set(blocks)
    assert all(p.is_contiguous() for p in model.parameters())  # FSDP cannot shard channels-last kernels


def test_a_model_without_blocks_to_wrap_is_refused():
    with pytest.raises(ValueError, match="names no block FSDP could wrap.*_no_split_modules.*DDP"):
        wrap_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_engines_refuse_where_they_cannot_run(monkeypatch):
    config = load_config(None, TINY)
    assert requested_engine({}) == "ddp" and requested_engine(FSDP) == "fsdp"
    assert check_engine(config, gpu=False, env=FSDP) == "fsdp"
    with pytest.raises(ValueError, match="FSDP on CPU trains in float32 only: set mixed_precision=no"):
        check_engine(load_config(None, [*TINY, "mixed_precision=bf16"]), gpu=False, env=FSDP)
    with pytest.raises(ValueError, match="FSDP trains task=denoise only.*cpu-2proc.yaml"):
        check_engine(load_config(None, [*TINY, "task=controlnet"]), gpu=False, env=FSDP)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # not installed (whether or not it is here)
    with pytest.raises(ImportError, match=r"DeepSpeed .* not installed: `pip install deepspeed` on a machine with CUDA"):
        check_engine(config, gpu=False, env=DEEPSPEED)
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))  # installed, but no GPU
    with pytest.raises(ValueError, match="DeepSpeed, which needs CUDA GPUs.*fsdp.yaml \\(FSDP runs on CPU\\)"):
        check_engine(config, gpu=False, env=DEEPSPEED)
    with pytest.raises(ValueError, match="set gradient_accumulation_steps=1"):
        check_engine(load_config(None, [*TINY, "gradient_accumulation_steps=2"]), gpu=True, env=DEEPSPEED)


def test_training_launched_for_deepspeed_stops_before_writing(tmp_path, monkeypatch):
    from convdiff.apps.train import train_main

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ImportError, match="pip install deepspeed"):
        train_main([*TINY, f"output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def launch(config_file, args):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config_file),
               "--num_processes", "2", str(ROOT / "scripts/train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_the_shipped_deepspeed_config_names_what_to_install(tmp_path):
    try:
        import deepspeed  # noqa: F401
        pytest.skip("deepspeed is installed here")
    except ImportError:
        pass
    run = launch("configs/accelerate/deepspeed.yaml", [*TINY, f"output_dir={tmp_path / 'run'}"])
    assert run.returncode != 0 and "install deepspeed" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fsdp_on_cpu_shards_checkpoints_resumes_exactly_and_matches_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), *TINY, f"output_dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    fsdp = launch("configs/accelerate/fsdp.yaml", [*TINY, "sample_steps=2", f"output_dir={tmp_path / 'fsdp'}"])
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "2 process(es) (DistributedType.FSDP)" in fsdp.stderr, fsdp.stderr[-3000:]
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # one shard file per process
        assert sorted(p.name for p in (tmp_path / f"fsdp/checkpoint-4/{part}").glob("*.distcp")) == \
            ["__0_0.distcp", "__1_0.distcp"]
    assert (tmp_path / "fsdp/samples/step-0000002.png").exists()  # drawn from the gathered model
    resumed = launch("configs/accelerate/fsdp.yaml",
                     [*TINY, f"resume_from_checkpoint={tmp_path / 'fsdp/checkpoint-2'}", f"output_dir={tmp_path / 'resumed'}"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-3000:]

    weights = "pipeline/transformer/diffusion_pytorch_model.safetensors"  # the EMA weights, gathered
    a, b, c = (load_file(tmp_path / run / weights) for run in ("fsdp", "resumed", "one"))
    torch.manual_seed(0)
    init = create_model("dic-tiny", hidden_size=8, in_channels=1, sample_size=28, num_classes=10).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert any(not torch.equal(a[k], init[k].contiguous()) for k in a)  # it trained
    for key in a:
        assert torch.equal(a[key], b[key]), key  # resumed from the sharded checkpoint: exact
        torch.testing.assert_close(a[key], c[key], rtol=1e-5, atol=1e-6)  # sharded over 2 == 1 process
