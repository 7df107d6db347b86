"""Official DiC / DiCo checkpoint conversion.

The fixtures hold the key names and shapes of the official state dicts (generated once from the official
model code, which cannot ship here; see docs/parity.md). Output parity with the official code was checked by
hand and is recorded in docs/parity.md; here a converted model is compared with our own model carrying the
same weights.
"""

import argparse
import json
import math
import pathlib
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch

from convdiff.apps.convert import convert_main
from convdiff.convert import (
    KEY_MAPS,
    convert_official_checkpoint,
    convert_official_to_folder,
    select_state_dict,
    to_official_state_dict,
)
from convdiff.convert.official import family_of, official_shapes
from convdiff.models.dic import DiCModel
from convdiff.models.dico import DiCoModel
from convdiff.nn.embeddings import timestep_sinusoid
from convdiff.registry import create_model, model_spec

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = sorted(p.stem.removeprefix("official_keys_") for p in FIXTURES.glob("official_keys_*.json"))
TINY = ["dic-tiny", "dico-tiny"]


def fixture(name):
    return json.loads((FIXTURES / f"official_keys_{name}.json").read_text())


def random_official(name, seed=0, std=0.05):
    """A random state dict with the official key names and shapes of `name`."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * std for k, shape in fixture(name)["keys"].items()}


def sample_inputs(num_classes=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 999]), torch.tensor([1, num_classes])


def leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(".")]


def test_fixtures_present():
    assert set(TINY) <= set(FIXTURE_NAMES)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_key_map_matches_official_keys_and_shapes(name):
    data = fixture(name)
    cls, config = model_spec(name)
    with torch.device("meta"):
        model = cls(**config)
    assert official_shapes(model) == {k: tuple(v) for k, v in data["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == data["num_params"]
    key_map = KEY_MAPS[family_of(model)]
    ours = [key_map.to_ours(k) for k in data["keys"]]
    assert sorted(ours) == sorted(model.state_dict())  # one-to-one onto our keys
    assert all(key_map.to_official(o) == k for o, k in zip(ours, data["keys"]))


@pytest.mark.parametrize("name", TINY)
def test_convert_loads_every_tensor(name):
    official = random_official(name)
    model = convert_official_checkpoint(official, name)
    assert not model.training
    ours = model.state_dict()
    key_map = KEY_MAPS[family_of(model)]
    for key, value in official.items():
        assert torch.equal(ours[key_map.to_ours(key)], value), key
    assert to_official_state_dict(model).keys() == official.keys()


@pytest.mark.parametrize("name", TINY)
def test_converted_forward_equals_our_model_with_same_weights(name):
    torch.manual_seed(0)
    reference = create_model(name).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.05)  # the default init zeroes the heads; make every weight count
    checkpoint = {"ema": to_official_state_dict(reference)}
    converted = convert_official_checkpoint(checkpoint, name)
    x, t, y = sample_inputs()
    with torch.no_grad():
        expected = reference(x, t, y).sample
        out = converted(x, t, y).sample
    assert expected.std() > 0.05
    assert torch.equal(out, expected)


def test_training_checkpoint_file_picks_ema(tmp_path):
    ema, raw = random_official("dico-tiny", seed=1), random_official("dico-tiny", seed=2)
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="DiCo-XL", lr=1e-4, image_size=256)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Namespace loads under weights_only=True: no unsafe fallback
        model = convert_official_checkpoint(path, "dico-tiny")
        raw_model = convert_official_checkpoint(path, "dico-tiny", use_ema=False)
    path.unlink()  # the file is memory-mapped while loading; the models must not depend on it
    assert torch.equal(model.stem.proj.weight, ema["x_embedder.proj.weight"])
    assert torch.equal(raw_model.stem.proj.weight, raw["x_embedder.proj.weight"])


def test_checkpoint_selection_rules():
    sd = random_official("dico-tiny")
    assert select_state_dict(sd)[0] == "state_dict"
    assert select_state_dict({"ema": sd, "model": sd})[0] == "ema"
    assert select_state_dict({"ema": sd, "model": sd}, use_ema=False)[0] == "model"
    with pytest.warns(UserWarning, match="no 'ema'"):
        assert select_state_dict({"model": sd, "args": None})[0] == "model"
    with pytest.raises(ValueError, match="no 'model'"):
        select_state_dict({"ema": sd, "args": None}, use_ema=False)
    with pytest.raises(ValueError, match="top-level keys"):
        select_state_dict({"weights": sd, "step": 3})


def test_args_needing_full_unpickling_only_with_trust_pickle(tmp_path):
    path = tmp_path / "odd_args.pt"
    ema = random_official("dic-tiny")
    torch.save({"ema": ema, "args": argparse.Namespace(results_dir=pathlib.PurePosixPath("/results"))}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_official_checkpoint(path, "dic-tiny")  # no automatic fallback
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = convert_official_checkpoint(path, "dic-tiny", trust_pickle=True)
    assert torch.equal(model.output_conv.weight, ema["output.weight"])


class _RunsCode:
    """Unpickling this calls `function(*args)`: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    import os
    import subprocess

    touch = f"open({str(marker)!r}, 'w').write('pwned')"
    return {"subprocess": _RunsCode(subprocess.call, [sys.executable, "-c", touch]),
            "exec": _RunsCode(exec, touch),
            "os.system": _RunsCode(os.system, f"{sys.executable} -c \"{touch}\"")}


@pytest.mark.parametrize("kind", ["subprocess", "exec", "os.system"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_checkpoints_are_refused_and_run_no_code(tmp_path, kind, writer, capsys):
    import pickle

    marker = tmp_path / "marker"
    payload = {"ema": random_official("dic-tiny"), "args": _payloads(marker)[kind]}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(path, "dic-tiny")
    assert str(path) in str(info.value)
    argv = ["--checkpoint", str(path), "--model", "dic-tiny", "--output", str(tmp_path / "out")]
    assert convert_main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("convdiff convert: error: ") and len(error.strip().splitlines()) == 1
    if writer == "torch.save":
        assert "--trust-pickle" in error and "weights_only=True" in error
    assert not marker.exists(), "code from the checkpoint ran"
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_one_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "diffit.safetensors"
    save_file(random_official("dic-tiny"), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert convert_main(["--checkpoint", str(path), "--model", "dic-tiny", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(path) in error and "truncated" in error


def test_converted_folder_has_normal_permissions_and_failed_writes_leave_nothing(tmp_path, monkeypatch):
    import errno
    import os
    import stat

    official = random_official("dic-tiny")
    out = convert_official_to_folder_from_dict(official, tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    before = sorted(p.name for p in out.iterdir())

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DiCModel, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left on device") as info:
        convert_official_to_folder_from_dict(official, out, overwrite=True)
    assert str(out) in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == before and not leftovers(tmp_path)


def convert_official_to_folder_from_dict(official, output_dir, overwrite=False):
    from convdiff.convert.official import save_folder_atomically

    return save_folder_atomically(convert_official_checkpoint(official, "dic-tiny"), output_dir, overwrite=overwrite)


def test_unreadable_file(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        convert_official_checkpoint(tmp_path / "broken.pt", "dic-tiny")
    with pytest.raises(FileNotFoundError):
        convert_official_checkpoint(tmp_path / "missing.pt", "dic-tiny")


def test_module_prefix_is_stripped():
    official = random_official("dic-tiny")
    model = convert_official_checkpoint({"ema": {f"module.{k}": v for k, v in official.items()}}, "dic-tiny")
    assert torch.equal(model.head.proj.bias, official["final_layer.out_proj.bias"])


def test_wrong_keys_are_listed():
    official = random_official("dico-tiny")
    del official["latent.0.conv4.weight"]
    official["latent.0.extra.weight"] = torch.zeros(3)
    official["up2_1.body.0.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(official, "dico-tiny")
    message = str(info.value)
    assert "1 missing key(s)" in message and "latent.0.conv4.weight" in message
    assert "1 unexpected key(s)" in message and "latent.0.extra.weight" in message
    assert "1 shape mismatch(es)" in message and "up2_1.body.0.weight: checkpoint (1, 2, 3, 3) vs model (128, 64, 3, 3)" in message


def test_wrong_size_names_the_size_that_fits():
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(random_official("dico-tiny"), "dico-s")
    message = str(info.value)
    assert "fits 'dico-tiny'" in message
    assert "more)" in message  # long lists are cut to the first 10 with a count


def test_wrong_family_is_named():
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(random_official("dic-tiny"), "dico-tiny")
    assert "looks like a DiC (YuchuanTian/DiC) checkpoint" in str(info.value)
    assert "fits 'dic-tiny'" in str(info.value)


def test_config_overrides_are_suggested_then_accepted(tmp_path):
    official = random_official("dico-tiny")
    for k in range(3):  # a 1000-class checkpoint: 1001 rows with the null class
        key = f"y_embedder.embedding_table_{k}.weight"
        official[key] = torch.randn(1001, official[key].shape[1])
    with pytest.raises(ValueError, match=r"fits 'dico-tiny' with config overrides num_classes=1000 \(CLI: --model dico-tiny --set num_classes=1000\)"):
        convert_official_checkpoint(official, "dico-tiny")
    model = convert_official_checkpoint(official, "dico-tiny", num_classes=1000)
    assert model.config.num_classes == 1000
    torch.save({"ema": official}, tmp_path / "ckpt.pt")
    argv = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--model", "dico-tiny", "--output", str(tmp_path / "out")]
    assert convert_main(argv + ["--set", "num_classes=1000", "--sample-size", "8"]) == 0
    assert DiCoModel.from_pretrained(tmp_path / "out", subfolder="transformer").config.num_classes == 1000


def test_config_dict_and_class_pair_inputs():
    official = random_official("dic-tiny")
    config = {"_class_name": "DiCModel", **create_model("dic-tiny").config}  # as in a saved config.json
    assert isinstance(convert_official_checkpoint(official, config), DiCModel)
    with pytest.raises(ValueError, match="_class_name"):
        convert_official_checkpoint(official, dict(create_model("dic-tiny").config))
    assert isinstance(convert_official_checkpoint(official, (DiCModel, model_spec("dic-tiny")[1])), DiCModel)
    with pytest.raises(ValueError, match=r"no config option\(s\) \['hiden_size'\]"):
        convert_official_checkpoint(official, "dic-tiny", hiden_size=32)
    with pytest.raises(ValueError, match="No official checkpoint format"):
        convert_official_checkpoint(official, "dit-tiny")


@pytest.mark.parametrize("name,cls", [("dico-tiny", DiCoModel), ("dic-tiny", DiCModel)])
def test_folder_round_trip(tmp_path, name, cls):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": random_official(name), "args": argparse.Namespace(model=name)}, path)
    out = convert_official_to_folder(path, tmp_path / "converted", model=name, sample_size=16)
    # the pipeline, the code file diffusers' DiffusionPipeline.from_pretrained loads it by, and its model card
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "convdiff_pipeline.py", "model_index.json", "scheduler",
                                                     "transformer"]
    assert sorted(p.name for p in (out / "transformer").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "## Conversion" in card and "source checkpoint: ckpt.pt" in card
    assert leftovers(tmp_path) == []
    loaded = cls.from_pretrained(out, subfolder="transformer").eval()
    assert loaded.config.sample_size == 16
    direct = convert_official_checkpoint(path, name)
    x, t, y = sample_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y).sample, direct(x, t, y).sample)


def test_existing_folder_is_never_clobbered(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": random_official("dico-tiny")}, path)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_official_to_folder(path, target, model="dico-tiny")
    with pytest.raises(ValueError):  # a failing conversion with overwrite=True still leaves it alone
        convert_official_to_folder(path, target, model="dico-s", overwrite=True)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []
    convert_official_to_folder(path, target, model="dico-tiny", overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model_index.json").is_file()
    assert leftovers(tmp_path) == []


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": random_official("dico-tiny")}, path)

    def broken_save(self, save_directory, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)  # the pipeline's transformer/ subfolder
        (Path(save_directory) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(DiCoModel, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_official_to_folder(path, tmp_path / "out", model="dico-tiny")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_cli(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": random_official("dic-tiny", seed=3), "ema": random_official("dic-tiny")}, path)
    out = tmp_path / "folder"
    argv = ["--checkpoint", str(path), "--model", "dic-tiny", "--output", str(out), "--weights", "model"]
    assert convert_main(argv) == 0
    loaded = DiCModel.from_pretrained(out, subfolder="transformer")
    assert torch.equal(loaded.stem.proj.weight, random_official("dic-tiny", seed=3)["x_embedder.proj.weight"])
    assert convert_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert convert_main(argv + ["--overwrite"]) == 0
    assert convert_main(["--checkpoint", str(path), "--model", "dico-tiny", "--output", str(tmp_path / "x")]) == 2
    assert "looks like a DiC" in capsys.readouterr().err


def test_python_dash_m_entry_point(monkeypatch, capsys):
    # what `python -m convdiff.convert --help` runs, in-process (a fresh interpreter would spend ~15 s on imports)
    monkeypatch.setattr(sys, "argv", ["convdiff.convert", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("convdiff.convert", run_name="__main__")
    assert info.value.code == 0 and "--checkpoint" in capsys.readouterr().out


def test_timestep_embedding_is_the_official_formula():
    # freq_i = exp(-ln(1e4) * i / 128), i < 128; features [cos(t * freq) | sin(t * freq)]
    t = torch.tensor([0, 1, 17, 500, 999, 3.5])
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 128) for i in range(128)], dtype=torch.float64)
    args = t.double()[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    assert torch.allclose(timestep_sinusoid(t, 256).double(), expected, atol=1e-4)
