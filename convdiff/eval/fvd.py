"""Fréchet Video Distance (Unterthiner et al. 2018, arXiv 1812.01717) with an I3D network from a file you give.

FVD is the Fréchet distance (``frechet.py``) between Gaussians fitted to I3D features (Carreira & Zisserman 2017,
Kinetics-400) of real and generated clips. The features are the network's 400 logits before the softmax, as in
the FVD paper.

Weights are never downloaded: pass the path of ``i3d_torchscript.pt``, the TorchScript port of the TF-Hub
``i3d-kinetics-400`` module distributed with StyleGAN-V (Skorokhodov et al. 2022) and used by the common PyTorch
FVD ports. A TorchScript file is a program, not just weights (``torch.load(weights_only=True)`` cannot vet it):
load only a file you trust, which is why it is taken only from an explicit path (``--i3d PATH``).

Input, as the original FVD code prepares it: videos (N, F, H, W, C), uint8 or floats in [0, 1] (quantised to
uint8 first, as the frames of a saved video would be), C = 1 (repeated to RGB) or 3. Every frame is resized to
224x224 with TF1's bilinear resize (``inception.nv_bilinear_resize``: no antialias, aspect ratio not kept) and
scaled to [-1, 1]; the network gets float32 (N, 3, F, 224, 224) and is called with ``rescale=False,
resize=False, return_features=True`` (its own preprocessing off) when its ``forward`` takes those arguments.
The usual protocol is 16-frame clips (FVD16) and 2,048 videos per side; the I3D's temporal pooling needs about
10 frames or more.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .fid import FIDResult
from .frechet import Moments, frechet_distance, warn_if_rank_deficient
from .image_io import videos_uint8
from .inception import file_sha256, nv_bilinear_resize

__all__ = ["I3DFeatureExtractor", "FVDResult", "compute_fvd", "video_moments", "I3D_SIZE"]

I3D_SIZE = (224, 224)
CALL_OPTIONS = {"rescale": False, "resize": False, "return_features": True}


class I3DFeatureExtractor:
    """``extractor(videos)`` -> float64 features (N, D) of the I3D TorchScript at ``weights`` (see module doc)."""

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 8):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"I3D weights file not found: {path}. FVD needs the TorchScript I3D (i3d_torchscript.pt, the "
                "Kinetics-400 I3D used by StyleGAN-V); nothing is downloaded."
            )
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10 but is the format shipped
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name and the expected format
            raise ValueError(f"could not load {path} as a TorchScript I3D (e.g. i3d_torchscript.pt): {e}") from e
        self.weights_path, self.device, self.batch_size = path, torch.device(device), batch_size
        self.net = net.eval().to(self.device)
        arguments = {a.name for a in self.net.forward.schema.arguments} if hasattr(self.net, "forward") else set()
        self.call_options = {k: v for k, v in CALL_OPTIONS.items() if k in arguments}

    @property
    def protocol(self) -> str:
        return (f"i3d={self.weights_path.name}@sha256:{file_sha256(self.weights_path)[:12]}, frames resized to "
                f"{I3D_SIZE[0]}x{I3D_SIZE[1]} (TF1 bilinear), input [-1, 1]")

    def preprocess(self, videos) -> torch.Tensor:
        """(N, F, H, W, C) uint8 / [0, 1] floats -> float32 (N, 3, F, 224, 224) in [-1, 1] on the device."""
        clips = torch.from_numpy(videos_uint8(videos)).to(self.device)
        n, f, h, w, c = clips.shape
        frames = clips.reshape(n * f, h, w, c).permute(0, 3, 1, 2).float()
        if (h, w) != I3D_SIZE:
            frames = nv_bilinear_resize(frames, I3D_SIZE)
        frames = (frames / 127.5 - 1).clamp(-1, 1).expand(-1, 3, -1, -1)
        return frames.reshape(n, f, 3, *I3D_SIZE).permute(0, 2, 1, 3, 4).contiguous()

    @torch.inference_mode()
    def __call__(self, videos) -> torch.Tensor:
        out = []
        for start in range(0, len(videos), self.batch_size):
            x = self.preprocess(videos[start : start + self.batch_size])
            try:
                feats = self.net(x, **self.call_options)
            except RuntimeError as e:
                raise ValueError(
                    f"the I3D in {self.weights_path.name} failed on clips of shape {tuple(x.shape)} (N, C, T, H, W): "
                    f"{str(e).strip().splitlines()[-1]}. It expects RGB clips of about 10 frames or more (16 in "
                    "the FVD protocol)"
                ) from e
            if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
                raise ValueError(f"the I3D returned shape {tuple(feats.shape)}, expected (N, D) features "
                                 "(N, 400 for the Kinetics-400 logits)")
            out.append(feats.to("cpu", torch.float64))
        return torch.cat(out)


def video_moments(videos, extractor) -> Moments:
    """Float64 moments of the I3D features of videos (N, F, H, W, C), or ``videos`` itself if already Moments."""
    return videos if isinstance(videos, Moments) else Moments.from_features(extractor(videos))


class FVDResult(FIDResult):
    """An FID-style result for FVD: ``fvd`` (clamped at 0 for display) and ``fvd_raw`` are ``fid`` / ``fid_raw``."""

    fvd = property(lambda self: self.fid)
    fvd_raw = property(lambda self: self.fid_raw)

    def __str__(self) -> str:
        return f"FVD {self.fid:.4f} | {self.protocol}"


def compute_fvd(videos_a, videos_b, i3d=None, *, extractor=None, device: str | torch.device = "cpu",
                batch_size: int = 8, warn_rank_deficient: bool = True) -> FVDResult:
    """FVD between two sets of videos (N, F, H, W, C), either of which may be precomputed ``Moments``.

    ``i3d``: path of the I3D TorchScript (or pass ``extractor``, any callable videos -> (N, D) with a
    ``protocol``)."""
    if extractor is None:
        if i3d is None:
            raise ValueError("FVD needs the I3D network: pass i3d=PATH of i3d_torchscript.pt (--i3d PATH)")
        extractor = I3DFeatureExtractor(i3d, device=device, batch_size=batch_size)
    frames = [np.shape(v)[1] for v in (videos_a, videos_b) if not isinstance(v, Moments)]
    mom_a, mom_b = video_moments(videos_a, extractor), video_moments(videos_b, extractor)
    if warn_rank_deficient:
        for moments, name in ((mom_a, "A"), (mom_b, "B")):
            warn_if_rank_deficient(moments.n, moments.dim, name, stacklevel=3)
    fvd = frechet_distance(mom_a, mom_b)
    protocol = (f"{extractor.protocol} | {mom_a.dim}-d features | N_A={mom_a.n} N_B={mom_b.n} | "
                f"frames per clip {sorted(set(frames)) or '?'} | frechet=float64 eigh")
    return FVDResult(fid=max(fvd, 0.0), fid_raw=fvd, n_a=mom_a.n, n_b=mom_b.n, protocol=protocol,
                     moments_a=mom_a, moments_b=mom_b)
