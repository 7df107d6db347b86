"""`convdiff sample --output X.npz`: sharded across processes, resumable after a kill, one ADM .npz at the end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_

import convdiff.apps.sharded_sampling as sharded
from convdiff.cli import main
from convdiff.pipelines import ClassConditionalPipeline
from convdiff.pipelines.schedulers import adm_scheduler
from convdiff.registry import create_model

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 7, 2  # four batches, the last one short


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny pixel-space class-conditional pipeline (random weights) that samples in 3 steps by default."""
    folder = tmp_path_factory.mktemp("sharded") / "pipeline"
    net = randomize_(create_model("dic-tiny", in_channels=3, sample_size=8, hidden_size=8, num_classes=4), seed=3)
    ClassConditionalPipeline(net, adm_scheduler(learned_sigma=True),
                             sampling_defaults=dict(num_inference_steps=3, guidance_scale=2.0)).save_pretrained(folder)
    return folder


def sample(pipeline_dir, output, *extra):
    return main(["sample", "--pipeline", str(pipeline_dir), "--output", str(output), "--num-samples", str(N),
                 "--batch-size", str(BATCH), *extra])


def load(path):
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def killed_at(first_start):
    """A write_batch killed (KeyboardInterrupt, as by Ctrl-C) before it writes the batch starting at `first_start`."""
    original = sharded.write_batch

    def write(output, start, stop, images):
        if start >= first_start:
            raise KeyboardInterrupt
        original(output, start, stop, images)

    return write


@pytest.fixture(scope="module")
def reference(pipeline_dir, tmp_path_factory):
    """One uninterrupted single-process run."""
    output = tmp_path_factory.mktemp("reference") / "samples.npz"
    assert sample(pipeline_dir, output) == 0
    return load(output)


def test_one_run_writes_the_adm_npz_and_matches_the_pipeline(pipeline_dir, reference):
    images, labels = reference
    assert images.dtype == np.uint8 and images.shape == (N, 8, 8, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 4 for i in range(N)]
    # sample i is the pipeline's output for generator seed + i (default seed 0) and label i mod 4
    pipe = ClassConditionalPipeline.from_pretrained(pipeline_dir)
    direct = pipe(class_labels=[5 % 4, 6 % 4], generator=[torch.Generator().manual_seed(i) for i in (5, 6)],
                  output_type="np").images
    np.testing.assert_array_equal(images[5:], (direct * 255).round().clip(0, 255).astype(np.uint8))


def test_the_streamed_npz_reads_like_np_savez(pipeline_dir, tmp_path):
    from convdiff.eval.image_io import NpzImageSource

    output = tmp_path / "samples.npz"
    assert sample(pipeline_dir, output) == 0
    images, labels = load(output)
    np.savez(tmp_path / "savez.npz", arr_0=images, arr_1=labels)
    with np.load(tmp_path / "savez.npz") as theirs, np.load(output) as ours:
        assert theirs.files == ours.files
    source = NpzImageSource(output)  # what convdiff fid reads, straight from the zip member
    assert len(source) == N
    np.testing.assert_array_equal(np.concatenate(list(source.iter_batches(3))), images)


def test_a_killed_run_resumes_without_duplicating_or_skipping_a_seed(pipeline_dir, reference, tmp_path, monkeypatch):
    output = tmp_path / "samples.npz"
    written, original = [], sharded.write_batch
    monkeypatch.setattr(sharded, "write_batch", killed_at(4))  # the kill, between the second and third batch
    assert sample(pipeline_dir, output) == 130
    assert not output.exists() and sharded.finished_batches(output) == [(0, 2), (2, 4)]
    # a half-written batch left by the kill is ignored and replaced
    (sharded.parts_folder(output) / ".batch-00000004-00000006.npy.partial").write_bytes(b"garbage")
    monkeypatch.setattr(sharded, "write_batch", lambda *a: (written.append(a[1:3]), original(*a)))
    assert sample(pipeline_dir, output) == 2  # rerun without --resume: refused, nothing touched
    assert sharded.finished_batches(output) == [(0, 2), (2, 4)]
    written.clear()
    assert sample(pipeline_dir, output, "--resume") == 0
    assert written == [(4, 6), (6, 7)]  # only the missing batches were sampled
    for mine, theirs in zip(load(output), reference):
        np.testing.assert_array_equal(mine, theirs)
    assert [p.name for p in sharded.parts_folder(output).iterdir()] == ["arguments.json"]
    written.clear()
    assert sample(pipeline_dir, output, "--resume") == 0 and written == []  # complete: nothing to do


def test_a_resume_with_other_arguments_is_refused_naming_them(pipeline_dir, tmp_path, monkeypatch, capsys):
    output = tmp_path / "samples.npz"
    original = sharded.write_batch
    monkeypatch.setattr(sharded, "write_batch", killed_at(2))
    assert sample(pipeline_dir, output) == 130
    capsys.readouterr()
    assert sample(pipeline_dir, output, "--resume", "--seed", "1", "--steps", "2") == 2
    error = capsys.readouterr().err
    assert "seed=0 (this run: 1)" in error and "num_inference_steps=3 (this run: 2)" in error and "--overwrite" in error
    assert sharded.finished_batches(output) == [(0, 2)]
    monkeypatch.setattr(sharded, "write_batch", original)
    assert sample(pipeline_dir, output, "--overwrite", "--seed", "1") == 0  # starts again with the new arguments
    assert load(output)[0].shape == (N, 8, 8, 3)


def test_an_output_from_elsewhere_is_never_overwritten(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "samples.npz"
    output.write_bytes(b"someone else's file")
    assert sample(pipeline_dir, output) == 2 and sample(pipeline_dir, output, "--resume") == 2
    assert "--overwrite" in capsys.readouterr().err and output.read_bytes() == b"someone else's file"


def test_bad_arguments_are_refused_before_the_output_is_claimed(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "samples.npz"
    assert sample(pipeline_dir, output, "--guidance-channels", "9") == 2
    assert "guidance_channels" in capsys.readouterr().err
    assert not output.exists() and not sharded.parts_folder(output).exists()


@pytest.mark.slow
def test_two_processes_give_the_same_samples_as_one(pipeline_dir, reference, tmp_path, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts/sample.py"),
              "--pipeline", str(pipeline_dir), "--num-samples", str(N), "--batch-size", str(BATCH)]
    output = tmp_path / "two.npz"
    result = subprocess.run([*launch, "--output", str(output)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "written (2 process(es))" in result.stdout, result.stdout[-2000:]
    # the four batches went round robin: 2 + 2 samples to process 0, 2 + 1 to process 1
    assert "process 0: sampled 4 of 7" in result.stderr and "process 1: sampled 3 of 7" in result.stderr
    for mine, theirs in zip(load(output), reference):
        np.testing.assert_array_equal(mine, theirs)
    # a single-process run killed after one batch, resumed by two processes: the same samples again
    resumed = tmp_path / "resumed.npz"
    monkeypatch.setattr(sharded, "write_batch", killed_at(2))
    assert sample(pipeline_dir, resumed) == 130
    result = subprocess.run([*launch, "--output", str(resumed), "--resume"], capture_output=True, text=True, env=env,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0: sampled 3 of 7" in result.stderr and "process 1: sampled 2 of 7" in result.stderr
    for mine, theirs in zip(load(resumed), reference):
        np.testing.assert_array_equal(mine, theirs)


def test_the_pipeline_fingerprint_sees_its_components_only(pipeline_dir, tmp_path):
    import shutil

    folder = Path(shutil.copytree(pipeline_dir, tmp_path / "pipeline"))
    before = sharded.fingerprint(folder)
    (folder / "samples.npz.parts").mkdir()  # a run's output inside the folder changes nothing
    (folder / "samples.npz.parts/arguments.json").write_text("{}")
    assert sharded.fingerprint(folder) == before
    config = folder / "scheduler/scheduler_config.json"
    config.write_text(config.read_text().replace('"linspace"', '"leading"'))
    assert sharded.fingerprint(folder) != before
