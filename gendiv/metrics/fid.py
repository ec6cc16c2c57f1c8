"""FID and friends end to end: images → one resize → FID Inception pool3 features → statistics → metrics,
with gendiv's own Fréchet distance or the clean-fid / torchmetrics back ends on the same weights.
Every result records what decides its value: resize, back end, weights hash, library versions, N, reference hash.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .frechet import FeatureStats, fid_infinity, frechet_distance, kid, precision_recall
from .images import check_source, load_images, open_npz
from .inception_score import inception_score, is_infinity
from .inception import RESIZE_MODES, InceptionFeatures, cache_dir, resize_to_299

BACKENDS = ("gendiv", "clean-fid", "torchmetrics")
_MODELS: dict = {}


def feature_model(weights=None) -> InceptionFeatures:
    key = str(weights)
    if key not in _MODELS:
        _MODELS[key] = InceptionFeatures(weights)
    return _MODELS[key]


def compute_features(images: list[np.ndarray], resize: str = "clean", weights=None, batch_size: int = 32,
                     progress: bool = True, desc: str = "features") -> np.ndarray:
    """[N, 2048] float64 pool3 features; images are resized one by one when sizes differ."""
    if not images:
        raise ValueError("no images to compute features of")
    model = feature_model(weights)
    feats = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = images[start:start + batch_size]
        shapes = {im.shape for im in chunk}
        x = torch.cat([resize_to_299(np.stack([im]), resize) for im in chunk]) if len(shapes) > 1 else \
            resize_to_299(np.stack(chunk), resize)
        feats.append(model(x).double().numpy())
    return np.concatenate(feats)


def versions() -> dict:
    out = {}
    for pkg in ("gendiv", "torch", "torchvision", "numpy", "clean-fid", "torchmetrics", "torch-fidelity"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def stats_hash(stats: FeatureStats) -> str:
    return hashlib.sha256(stats.mu.tobytes() + stats.sigma.tobytes()).hexdigest()[:16]


def reference_stats(spec: str, resize: str, weights=None, num_samples=None, progress=True, images=None,
                    float_range=None) -> tuple[FeatureStats, np.ndarray | None]:
    """A statistics .npz as is, or features of an image source (cached per source, resize and weights); ``images``:
    the source's images when the caller has loaded them already."""
    found = precomputed_reference(spec, resize, weights, num_samples)
    if found is not None:
        return found
    model = feature_model(weights)
    if images is None:
        images = load_images(spec, num_samples, float_range)
    feats = compute_features(images, resize, weights, progress=progress, desc="reference features")
    stats = FeatureStats.from_features(feats, {"source": spec, "resize": resize, "weights_sha256": model.weights_sha256})
    stats_file, feats_file = _reference_cache(spec, num_samples, resize, model)
    stats.save(stats_file)
    np.save(feats_file, feats)
    return stats, feats


def is_statistics_file(spec: str) -> bool:
    """An .npz holding ``mu`` or ``sigma`` (written by ``gendiv fid-stats``; FeatureStats.load names a missing one)."""
    if not (spec.endswith(".npz") and Path(spec).is_file()):
        return False
    with open_npz(spec) as d:
        return "mu" in d or "sigma" in d


def precomputed_reference(spec: str, resize: str, weights=None, num_samples=None):
    """(statistics, features or None) of a statistics file or of a cached reference; None if features must be
    computed. A statistics file made with another resize or other weights is refused."""
    model = feature_model(weights)
    if is_statistics_file(spec):
        stats = FeatureStats.load(spec)
        for key, want in (("resize", resize), ("weights_sha256", model.weights_sha256)):
            have = stats.meta.get(key)
            if have is not None and have != want:
                raise InputError(f"reference statistics {spec} were made with {key}={have}, but this run uses "
                                 f"{want}: the numbers would not be comparable")
        return stats, None
    stats_file, feats_file = _reference_cache(spec, num_samples, resize, model)
    if stats_file.is_file() and feats_file.is_file():
        return FeatureStats.load(stats_file), np.load(feats_file)
    return None


def _reference_cache(spec: str, num_samples, resize: str, model) -> tuple[Path, Path]:
    identity = f"{spec}|{num_samples}|{resize}|{model.weights_sha256}|{_source_fingerprint(spec)}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_dir() / f"ref-{key}.npz", cache_dir() / f"ref-{key}-features.npy"


def check_request(gen: str, ref: str, backend: str, resize: str, num_samples=None, num_ref=None, with_kid=False,
                  with_fid_inf=False, with_pr=False, fid_inf_min: int = 5000):
    """Every argument and the kind of every input, checked before any image is loaded or feature computed (the
    features of a reference can take half an hour)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown back end {backend!r}; choose one of {BACKENDS}")
    if resize not in RESIZE_MODES:
        raise InputError(f"unknown resize mode {resize!r}; choose one of {RESIZE_MODES}")
    if backend == "clean-fid" and resize != "clean":
        raise InputError("the clean-fid back end uses its own 'clean' resize; pass --resize clean")
    if backend == "torchmetrics" and resize == "clean":
        raise InputError("the torchmetrics back end resizes with bilinear: use --resize tf1_bilinear "
                         "(antialias=False, torch-fidelity's) or antialias_bilinear (torchmetrics' default)")
    extras = [flag for flag, on in (("--kid", with_kid), ("--fid-infinity", with_fid_inf),
                                    ("--precision-recall", with_pr)) if on]
    if backend != "gendiv" and extras:
        raise InputError(f"{', '.join(extras)}: only the gendiv back end computes these (--backend gendiv); "
                         f"{backend} computes FID only")
    n_gen = check_source(gen, num_samples, "GEN")
    if is_statistics_file(ref):
        if backend != "gendiv":
            raise InputError(f"REF {ref} is a statistics file; only the gendiv back end reads statistics")
        if with_kid or with_pr:
            raise InputError(f"KID and precision/recall need reference images, not only reference statistics ({ref})")
    else:
        n_ref = check_source(ref, num_ref, "REF", "--num-ref")
        if n_ref < 2:
            raise InputError(f"REF {ref} gives {n_ref} image(s); statistics need at least 2")
    if n_gen < 2:
        raise InputError(f"GEN {gen} gives {n_gen} image(s); statistics need at least 2")
    if with_fid_inf and n_gen < fid_inf_min:
        raise InputError(f"FID∞ needs at least --fid-inf-min={fid_inf_min} generated images; GEN {gen} gives {n_gen}")


def _source_fingerprint(spec: str) -> str:
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return f"{len(files)}:{sum(f.stat().st_size for f in files)}:{max((f.stat().st_mtime_ns for f in files), default=0)}"
    if p.is_file():
        return f"{p.stat().st_size}:{p.stat().st_mtime_ns}"
    return "static"


def evaluate(gen: str, ref: str, backend: str = "gendiv", resize: str = "clean", num_samples: int | None = None,
             num_ref: int | None = None, weights=None, with_kid: bool = False, with_fid_inf: bool = False,
             with_pr: bool = False, fid_inf_min: int = 5000, progress: bool = True, with_is: bool = False,
             with_is_inf: bool = False, float_range=None) -> dict:
    """The metrics between a generated set ``gen`` and a reference ``ref`` (sources as in :func:`load_images`;
    ``float_range`` declares the range of float .npz arrays);
    ``with_is``/``with_is_inf``: the Inception Score (10 splits) and IS∞ of ``gen`` (weights with the classifier)."""
    check_request(gen, ref, backend, resize, num_samples, num_ref, with_kid, with_fid_inf, with_pr, fid_inf_min)
    model = feature_model(weights)
    result = {"backend": backend, "resize": resize, "weights_sha256": model.weights_sha256, "versions": versions(),
              "gen": gen, "ref": ref}
    if with_is or with_is_inf:
        model.require_classifier()  # before any features are computed
    if backend == "gendiv":
        # every input is loaded (and its values checked) before the first feature is computed
        precomputed = precomputed_reference(ref, resize, weights, num_ref)
        ref_images = None if precomputed else load_images(ref, num_ref, float_range)
        gen_images = load_images(gen, num_samples, float_range)
        ref_stats, ref_feats = precomputed or reference_stats(ref, resize, weights, num_ref, progress, ref_images)
        gen_feats = compute_features(gen_images, resize, weights, progress=progress, desc="features")
        gen_stats = FeatureStats.from_features(gen_feats)
        result.update(fid=frechet_distance(ref_stats, gen_stats), n_gen=len(gen_feats), n_ref=ref_stats.n,
                      ref_hash=stats_hash(ref_stats))
        if with_kid or with_pr:
            if with_kid:
                result["kid_mean"], result["kid_std"] = kid(ref_feats, gen_feats)
            if with_pr:
                result["precision"], result["recall"] = precision_recall(ref_feats, gen_feats)
        if with_fid_inf:
            result["fid_infinity"], result["fid_infinity_slope"], _ = fid_infinity(gen_feats, ref_stats, n_min=fid_inf_min)
        if with_is or with_is_inf:
            logits = model.logits(gen_feats)
            if with_is:
                result["is_mean"], result["is_std"] = inception_score(logits)
            if with_is_inf:
                result["is_infinity"], result["is_infinity_slope"], _ = is_infinity(logits, n_min=fid_inf_min)
        return result
    gen_images, ref_images = load_images(gen, num_samples, float_range), load_images(ref, num_ref, float_range)
    result.update(n_gen=len(gen_images), n_ref=len(ref_images))
    if backend == "clean-fid":
        result["fid"] = _cleanfid(gen_images, ref_images, model)
    else:
        result["fid"] = _torchmetrics(gen_images, ref_images, model, antialias=(resize == "antialias_bilinear"))
    return result


def _write_pngs(images, folder: Path):
    from PIL import Image

    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:06d}.png")


def _cleanfid(gen_images, ref_images, model) -> float:
    """clean-fid 0.1.35, mode 'clean', with our network as its custom feature extractor."""
    from cleanfid import fid as cfid

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        _write_pngs(gen_images, Path(a))
        _write_pngs(ref_images, Path(b))
        with open(os.devnull, "w") as devnull:
            old, sys.stdout = sys.stdout, devnull
            try:
                return float(cfid.compute_fid(a, b, mode="clean", custom_feat_extractor=model, num_workers=0,
                                              device=torch.device("cpu"), batch_size=32, verbose=False,
                                              use_dataparallel=False))
            finally:
                sys.stdout = old


def _torchmetrics(gen_images, ref_images, model, antialias: bool) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(model.state_path),
                                      antialias=antialias).double()
    for images, real in ((ref_images, True), (gen_images, False)):
        for im in images:
            metric.update(torch.from_numpy(im.copy()).permute(2, 0, 1)[None], real=real)
    return float(metric.compute())
