"""Latent shard folders: extraction (resumable, across processes, provenance recorded) and the lazy reader."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from convdiff.data.latent_shards import LatentShardDataset, read_index, shard_name, write_index, write_shard

ROOT = Path(__file__).resolve().parents[1]


def tiny_vae(folder):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(folder)
    return folder


def image_folder(folder, per_class=5):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    return folder


def extract(tmp_path, output, *extra):
    from convdiff.apps.extract_latents import extract_main

    return extract_main(["--data", str(tmp_path / "images"), "--vae", str(tmp_path / "vae"), "--resolution", "16",
                         "--output", str(output), "--shard-size", "3", "--batch-size", "2", *extra])


def shard_tensors(folder):
    from safetensors.torch import load_file

    return [load_file(folder / entry["file"]) for entry in read_index(folder)["shards"]]


@pytest.fixture
def sources(tmp_path):
    tiny_vae(tmp_path / "vae")
    image_folder(tmp_path / "images")
    return tmp_path


def test_extraction_records_its_vae_and_resumes_after_a_kill_keeping_finished_shards(sources):
    tmp_path = sources
    extract(tmp_path, tmp_path / "straight")
    info = read_index(tmp_path / "straight")
    assert [s["count"] for s in info["shards"]] == [3, 3, 3, 1]
    assert info["vae"] == str(tmp_path / "vae") and len(info["vae_config_hash"]) == 64
    assert info["scaling_factor"] == 0.18215 and info["flip"] is True and info["dtype"] == "float16"
    data = LatentShardDataset(tmp_path / "straight")
    assert len(data) == 10 and data.has_flip_pairs and data.sample_shape == (4, 8, 8) and data.num_classes == 2
    x, label = data[9]
    assert x.dtype == torch.float32 and x.shape == (2, 4, 8, 8) and label.item() == 1

    # Killed (SIGKILL, no clean-up) while encoding the third shard; a stale partial write is left behind too.
    out = tmp_path / "resumed"
    killer = ("import os, signal, sys; from convdiff.data import image_folder as m; from convdiff.apps.extract_latents import "
              "extract_main; real = m.ImageFolderDataset.__getitem__; m.ImageFolderDataset.__getitem__ = lambda self, i: "
              "os.kill(os.getpid(), signal.SIGKILL) if i == 7 else real(self, i); extract_main(sys.argv[1:])")
    args = ["--data", str(tmp_path / "images"), "--vae", str(tmp_path / "vae"), "--resolution", "16",
            "--output", str(out), "--shard-size", "3", "--batch-size", "2"]
    killed = subprocess.run([sys.executable, "-c", killer, *args], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [shard_name(0), shard_name(1)]  # no index, no half shard
    (out / f".{shard_name(2)}.partial").write_bytes(b"half a shard")
    kept = {k: (out / shard_name(k)).stat().st_mtime_ns for k in (0, 1)}
    extract(tmp_path, out)
    assert {k: (out / shard_name(k)).stat().st_mtime_ns for k in (0, 1)} == kept  # finished shards not redone
    for a, b in zip(shard_tensors(tmp_path / "straight"), shard_tensors(out)):
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["labels"], b["labels"])
    assert json.loads((out / "index.json").read_text())["shards"] == info["shards"]
    assert not list(out.glob(".*"))  # the stale partial was overwritten and renamed into place


def test_a_folder_of_other_latents_is_refused_and_kept(sources):
    tmp_path = sources
    extract(tmp_path, tmp_path / "lat")
    before = {p.name: p.read_bytes() for p in (tmp_path / "lat").iterdir()}
    with pytest.raises(ValueError, match=r"other settings .*flip='True' \(this run: 'False'\).*another --output"):
        extract(tmp_path, tmp_path / "lat", "--no-flip")
    assert {p.name: p.read_bytes() for p in (tmp_path / "lat").iterdir()} == before


def test_training_reads_a_shard_folder_and_the_npz_path_still_works(sources):
    from convdiff.apps.train import train_main

    tmp_path = sources
    extract(tmp_path, tmp_path / "lat")
    extract(tmp_path, tmp_path / "lat.npz")
    for data, out in ((tmp_path / "lat", "run-shards"), (tmp_path / "lat.npz", "run-npz")):
        train_main(["model=dico-tiny", "model_overrides.num_classes=2", "data=latents", f"data_path={data}",
                    "train_batch_size=4", "max_train_steps=2", "checkpointing_steps=0", "report_to=null",
                    "sample_final_grid=false", f"output_dir={tmp_path / out}"])
        assert (tmp_path / out / "pipeline/model_index.json").exists()


def test_training_refuses_a_vae_that_did_not_make_the_shards(sources):
    from diffusers import AutoencoderKL

    from convdiff.apps.train import train_main

    tmp_path = sources
    extract(tmp_path, tmp_path / "lat")
    other = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                          latent_channels=4, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2)
    other.save_pretrained(tmp_path / "other-vae")
    base = ["model=dico-tiny", "model_overrides.num_classes=2", "data=latents", f"data_path={tmp_path / 'lat'}",
            "train_batch_size=4", "max_train_steps=1", "checkpointing_steps=0", "report_to=null",
            "sample_num_inference_steps=1"]
    with pytest.raises(ValueError, match=r"made with the VAE .*vae\b.*has another config.*set vae= to the VAE"):
        train_main([*base, f"vae={tmp_path / 'other-vae'}", f"output_dir={tmp_path / 'bad'}"])
    assert not (tmp_path / "bad").exists()
    train_main([*base, f"vae={tmp_path / 'vae'}", f"output_dir={tmp_path / 'good'}"])
    assert (tmp_path / "good/pipeline/vae/config.json").exists()


def test_missing_and_damaged_shards_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.json.*extract-latents"):
        LatentShardDataset(tmp_path)
    write_shard(tmp_path / shard_name(0), torch.zeros(4, 4, 2, 2), torch.zeros(4), {})
    write_index(tmp_path, {"num_classes": 1, "shards": [{"file": shard_name(0), "count": 4},
                                                         {"file": shard_name(1), "count": 4}]})
    with pytest.raises(FileNotFoundError, match="shard-00001.safetensors is listed .* but missing"):
        LatentShardDataset(tmp_path)
    write_shard(tmp_path / shard_name(1), torch.zeros(4, 4, 2, 2), torch.zeros(4), {})
    data = (tmp_path / shard_name(1)).read_bytes()
    (tmp_path / shard_name(1)).write_bytes(data[:-8])
    with pytest.raises(ValueError, match="shard-00001.safetensors is truncated"):
        LatentShardDataset(tmp_path)


def test_reading_a_300mb_set_keeps_resident_memory_flat(tmp_path):
    """Every item of ~315 MB of float16 latents read once: the process's RSS grows by far less than the set."""
    shard_size, shards, shape = 4096, 5, (2, 4, 32, 32)
    entries = []
    for k in range(shards):
        latents = torch.randn((shard_size, *shape), generator=torch.Generator().manual_seed(k)).half()
        write_shard(tmp_path / shard_name(k), latents, torch.full((shard_size,), k), {})
        entries.append({"file": shard_name(k), "count": shard_size})
        del latents
    write_index(tmp_path, {"num_classes": shards, "shards": entries})
    set_bytes = sum((tmp_path / e["file"]).stat().st_size for e in entries)
    assert set_bytes > 300e6

    data = LatentShardDataset(tmp_path)
    process = psutil.Process()
    before = process.memory_info().rss
    checksum = 0.0
    for index in range(len(data)):
        x, label = data[index]
        checksum += float(x[0, 0, 0, 0])
        assert label.item() == index // shard_size
    grown = process.memory_info().rss - before
    assert grown < 0.05 * set_bytes, f"RSS grew by {grown / 2**20:.0f} MiB reading a {set_bytes / 2**20:.0f} MiB set"
    first = torch.randn((shard_size, *shape), generator=torch.Generator().manual_seed(3)).half()[17].float()
    assert torch.equal(data[3 * shard_size + 17][0], first)


@pytest.mark.slow
def test_two_processes_extract_the_same_shards_as_one(sources):
    tmp_path = sources
    extract(tmp_path, tmp_path / "one")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "convdiff",
              "extract-latents", "--data", str(tmp_path / "images"), "--vae", str(tmp_path / "vae"),
              "--resolution", "16", "--output", str(tmp_path / "two"), "--shard-size", "3", "--batch-size", "2"]
    run = subprocess.run(launch, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "process 1 of 2: 2 shard(s) to encode" in run.stderr, run.stderr[-3000:]
    assert read_index(tmp_path / "two")["shards"] == read_index(tmp_path / "one")["shards"]
    for a, b in zip(shard_tensors(tmp_path / "one"), shard_tensors(tmp_path / "two")):
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["labels"], b["labels"])
