import subprocess
import sys

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


def test_sample_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        main(["sample", "--pipeline", str(tmp_path), "--output", str(tmp_path / "x.png")])


def test_mnist_demo_prints_fid_with_protocol(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVDIFF_CACHE", str(tmp_path / "cache"))
    import importlib

    import convdiff.demo

    importlib.reload(convdiff.demo)
    assert main(["mnist-demo", "--pipeline", str(trained), "--fid-samples", "12", "--fid-steps", "2",
                 f"output_dir={tmp_path / 'demo'}"]) == 0
    printed = capsys.readouterr().out
    assert "FID vs held-out MNIST digits" in printed and "N_A=12 N_B=12" in printed and "sampler=ddim" in printed
    assert Image.open(tmp_path / "demo/grid.png").size == (280, 280)
    assert (tmp_path / "cache/fid/mnist-heldout-12.npz").exists()


def test_console_entry_point_lists_commands():
    result = subprocess.run([sys.executable, "-m", "convdiff", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "mnist-demo" in result.stdout and "convert" in result.stdout
