import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convdiff.cli import main

TINY_TRAIN = ["model=dic-tiny", "model_overrides.hidden_size=8", "model_overrides.in_channels=1",
              "model_overrides.sample_size=28", "model_overrides.num_classes=10", "train_batch_size=8",
              "report_to=null", "max_train_steps=2", "checkpointing_steps=0", "sample_num_inference_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY_TRAIN, f"output_dir={out}"]) == 0
    return out / "pipeline"


def test_sample_npz_is_adm_format_and_batch_size_independent(trained, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    main(["sample", "--pipeline", str(trained), "--output", str(a), "--num-samples", "6", "--steps", "2", "--batch-size", "4"])
    main(["sample", "--pipeline", str(trained), "--output", str(b), "--num-samples", "6", "--steps", "2", "--batch-size", "6"])
    with np.load(a) as x, np.load(b) as y:
        assert x["arr_0"].dtype == np.uint8 and x["arr_0"].shape[:3] == (6, 28, 28)
        assert x["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]
        np.testing.assert_array_equal(x["arr_0"], y["arr_0"])


def test_sample_grid_png(trained, tmp_path):
    out = tmp_path / "grid.png"
    main(["sample", "--pipeline", str(trained), "--output", str(out), "--labels", "1,2,3", "--steps", "2"])
    assert Image.open(out).size == (84, 28)


def test_sample_refuses_a_folder_that_is_not_a_pipeline(tmp_path, capsys):
    argv = ["sample", "--pipeline", str(tmp_path), "--output", str(tmp_path / "x.png")]
    assert main(argv) == 2  # a user error: one line, exit status 2
    error = capsys.readouterr().err
    assert error.startswith("convdiff sample: error: ") and "model_index.json" in error and error.count("\n") == 1
    with pytest.raises(FileNotFoundError, match="model_index.json"):  # --debug, anywhere: the traceback
        main([*argv[:1], "--debug", *argv[1:]])


def test_mnist_demo_prints_fid_with_protocol(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVDIFF_CACHE", str(tmp_path / "cache"))
    import importlib

    import convdiff.apps.mnist_demo

    importlib.reload(convdiff.apps.mnist_demo)
    assert main(["mnist-demo", "--pipeline", str(trained), "--fid-samples", "12", "--fid-steps", "2",
                 f"output_dir={tmp_path / 'demo'}"]) == 0
    printed = capsys.readouterr().out
    # the folder's own sampler (its recipe's default sample_scheduler, ddim, saved by training): the default call
    assert "FID vs held-out MNIST digits" in printed and "N_A=12 N_B=12" in printed and "sampler=DDIMScheduler" in printed
    assert "class accuracy (independent digit classifier)" in printed and "shipped features" in printed
    assert Image.open(tmp_path / "demo/grid.png").size == (280, 280)  # the first 100 samples, sampled once
    assert not (tmp_path / "cache/fid").exists()  # the shipped reference features stand in: nothing recomputed


def test_console_entry_point_lists_commands():
    result = subprocess.run([sys.executable, "-m", "convdiff", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "mnist-demo" in result.stdout and "convert" in result.stdout


def test_bad_sampling_arguments_exit_2_without_writing(trained, tmp_path, capsys):
    out = tmp_path / "grid.png"
    for steps in ("-5", "0"):
        assert main(["sample", "--pipeline", str(trained), "--output", str(out), "--labels", "1", "--steps", steps]) == 2
        assert "num_inference_steps must be an integer >= 1" in capsys.readouterr().err
    assert main(["sample", "--pipeline", str(trained), "--output", str(out), "--labels", "1", "--steps", "1",
                 "--guidance-scale", "nan"]) == 2
    assert "guidance_scale must be a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "learning_rate=abc", f"output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert error == "convdiff train: error: Invalid training config: learning_rate must be a number > 0, got 'abc'.\n"
    with pytest.raises(ValueError, match="max_train_steps"):
        main(["train", "--debug", "max_train_steps=twenty", f"output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_every_help_answers_without_importing_diffusers_and_every_option_has_help():
    """`convdiff --help` and each command's --help build their parser before any heavy import (under 3 s)."""
    script = """
import argparse, sys, time
from convdiff.cli import COMMANDS, main
parsers = []
for name in ("parse_known_args", "parse_known_intermixed_args"):
    original = getattr(argparse.ArgumentParser, name)
    def record(self, *a, _original=original, **k):
        parsers.append(self)
        return _original(self, *a, **k)
    setattr(argparse.ArgumentParser, name, record)
start = time.perf_counter()
for argv in (["--help"], *([c, "--help"] for c in COMMANDS)):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
print("SECONDS", time.perf_counter() - start, file=sys.stderr)
print("DIFFUSERS", "diffusers" in sys.modules, file=sys.stderr)
for parser in parsers:
    for action in parser._actions:
        if action.help is None:
            print("NOHELP", parser.prog, action.option_strings or action.dest, file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DIFFUSERS False" in result.stderr
    missing = [line for line in result.stderr.splitlines() if line.startswith("NOHELP")]
    assert not missing, missing  # every option of every command says what it does


def test_a_truncated_pipeline_file_is_named(trained, tmp_path, capsys):
    import shutil

    folder = Path(shutil.copytree(trained, tmp_path / "pipeline"))
    weights = folder / "transformer/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["sample", "--pipeline", str(folder), "--output", str(tmp_path / "x.png"), "--steps", "1"]) == 2
    assert str(weights) in capsys.readouterr().err
