"""FVD code path on a tiny stand-in I3D, scripted and saved, loaded through the same user path as the real
i3d_torchscript.pt: input layout and range, determinism, the Fréchet part, symmetry, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import save_torchscript
from convdiff.eval import video_metrics
from convdiff.eval.frechet import Moments, RankDeficientWarning, frechet_distance
from convdiff.eval.fvd import I3D_SIZE, I3DFeatureExtractor, compute_fvd

RECIPES = Path(__file__).resolve().parents[1] / "configs"


class TinyI3D(nn.Module):
    """(N, 3, T, 224, 224) in [-1, 1] -> (N, 8), with the keyword arguments of StyleGAN-V's TorchScript I3D."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 8, (3, 7, 7), stride=(1, 8, 8))
        self.head = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("expected rescale=False, resize=False, return_features=True")
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


class PlainI3D(nn.Module):  # a user TorchScript whose forward takes the clip only
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.std(dim=(1, 2, 3, 4))], 1)


@pytest.fixture
def tiny_i3d(tmp_path):
    return save_torchscript(TinyI3D(), tmp_path / "i3d_torchscript.pt")


def clips(seed, n=12, frames=4, size=16, channels=1, shift=0.0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, 1, size, size, channels)) * 0.6
    motion = np.linspace(0, 0.3, frames)[None, :, None, None, None]
    return np.clip(base + motion + shift, 0, 1).astype(np.float32)  # (N, F, H, W, C) in [0, 1]


def test_preprocessing_layout_and_range(tiny_i3d):
    ext = I3DFeatureExtractor(tiny_i3d)
    videos = np.zeros((2, 3, 10, 12, 1), np.uint8)
    videos[0] = 255
    videos[1, 1] = 128
    x = ext.preprocess(videos)
    assert x.shape == (2, 3, 3, *I3D_SIZE) and x.dtype == torch.float32  # (N, C, T, H, W), gray -> RGB
    torch.testing.assert_close(x[0], torch.ones_like(x[0]))  # (resampling constants: float rounding only)
    torch.testing.assert_close(x[1, :, 0], -torch.ones_like(x[1, :, 0]))
    torch.testing.assert_close(x[1, :, 1], torch.full((3, 224, 224), 128 / 127.5 - 1))
    floats = ext.preprocess(videos.astype(np.float32) / 255)  # [0, 1] floats quantise to the same uint8
    assert torch.equal(floats, x)
    assert ext.call_options == {"rescale": False, "resize": False, "return_features": True}
    assert "i3d_torchscript.pt@sha256:" in ext.protocol and "224x224" in ext.protocol


def test_fvd_deterministic_symmetric_and_the_frechet_of_the_features(tiny_i3d):
    real, fake, far = clips(0), clips(1, shift=0.05), clips(1, shift=0.3)
    ext = I3DFeatureExtractor(tiny_i3d)
    feats = ext(real)
    assert feats.shape == (12, 8) and feats.dtype == torch.float64
    assert torch.equal(feats, I3DFeatureExtractor(tiny_i3d)(real))  # same file, same clips: same features
    r = compute_fvd(real, fake, tiny_i3d)
    expected = frechet_distance(Moments.from_features(feats), Moments.from_features(ext(fake)))
    assert r.fvd_raw == pytest.approx(expected, rel=1e-12) and r.n_a == r.n_b == 12
    assert compute_fvd(fake, real, extractor=ext).fvd_raw == pytest.approx(r.fvd_raw, rel=1e-9)
    assert abs(compute_fvd(real, real, extractor=ext).fvd_raw) < 1e-9
    assert compute_fvd(real, far, extractor=ext).fvd > r.fvd > 0
    assert compute_fvd(Moments.from_features(feats), fake, extractor=ext).fvd_raw == pytest.approx(r.fvd_raw)
    assert str(r).startswith("FVD ") and "8-d features" in r.protocol and "N_A=12 N_B=12" in r.protocol
    assert video_metrics.fvd(real, fake, tiny_i3d).fvd_raw == pytest.approx(r.fvd_raw, rel=1e-12)  # the same path


def test_fvd_errors_say_what_is_expected(tiny_i3d, tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        I3DFeatureExtractor(tmp_path / "missing.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="as a TorchScript I3D"):
        I3DFeatureExtractor(tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="needs the I3D network"):
        compute_fvd(clips(0), clips(1))
    ext = I3DFeatureExtractor(tiny_i3d)
    with pytest.raises(ValueError, match=r"\(N, F, H, W, C\)"):
        ext(np.zeros((2, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"failed on clips of shape \(2, 3, 2, 224, 224\).*10 frames or more"):
        ext(clips(0, n=2, frames=2))  # shorter than the temporal kernel
    plain = I3DFeatureExtractor(save_torchscript(PlainI3D(), tmp_path / "plain.pt"))
    assert plain.call_options == {} and plain(clips(0, n=3)).shape == (3, 2)
    with pytest.warns(RankDeficientWarning):
        compute_fvd(clips(0, n=5), clips(1, n=5), extractor=ext)


def test_video_demo_reports_fvd_with_the_given_i3d(tiny_i3d, tmp_path):
    from convdiff.apps.video_demo import add_fvd, video_demo_main

    samples = {"model": clips(1), "real": clips(2)}
    results = {name: {} for name in samples}
    protocol = add_fvd(results, samples, clips(0), tiny_i3d)
    assert results["model"]["fvd"] == pytest.approx(compute_fvd(clips(1), clips(0), tiny_i3d).fvd)
    assert results["real"]["fvd"] > 0 and "i3d_torchscript.pt@sha256:" in protocol
    with pytest.raises(FileNotFoundError, match="I3D weights file not found"):  # checked before any training
        video_demo_main(["--i3d", str(tmp_path / "missing.pt"), f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="applies to video recipes"):
        video_demo_main(["--config", str(RECIPES / "4d-synthetic.yaml"), "--i3d", str(tiny_i3d)])
    assert not (tmp_path / "out").exists()
