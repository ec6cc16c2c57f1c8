"""Image inputs are read in their declared value range, never guessed per image (issue 21): the exact pixel values
FID and training see, for every input kind."""
import numpy as np
import pytest
import torch
from PIL import Image

from gendiv.errors import InputError
from gendiv.metrics.images import load_images, load_npz_images
from gendiv.training.data import build_source


def _expected_uint8(x, low, high):
    """The affine map of [low, high] onto 0..255, rounded: the documented reading of a float array."""
    return np.rint((np.asarray(x, np.float64) - low) / (high - low) * 255).astype(np.uint8)


def test_float_arrays_are_read_in_their_declared_range(tmp_path):
    rng = np.random.default_rng(0)
    positive = rng.uniform(0, 1, (3, 5, 5)).astype(np.float32)  # a [-1, 1] image that happens to have no negative pixel
    np.savez(tmp_path / "a.npz", images=positive)
    got = np.stack(load_npz_images(tmp_path / "a.npz"))
    np.testing.assert_array_equal(got[..., 0], _expected_uint8(positive, -1, 1))  # not stretched as if [0, 1]
    np.testing.assert_array_equal(np.stack(load_npz_images(tmp_path / "a.npz", (0.0, 1.0)))[..., 0],
                                  _expected_uint8(positive, 0, 1))
    np.savez(tmp_path / "b.npz", samples=positive, value_range=np.array([0.0, 1.0]))  # as `gendiv sample` writes
    np.testing.assert_array_equal(np.stack(load_npz_images(tmp_path / "b.npz", (-1.0, 1.0)))[..., 0],
                                  _expected_uint8(positive, 0, 1))  # the file's own declaration wins


def test_integer_arrays_are_0_to_255_whatever_their_dtype(tmp_path):
    values = np.arange(0, 256, 4).reshape(1, 8, 8)
    for dtype in (np.uint8, np.int64, np.int16):
        np.savez(tmp_path / "i.npz", images=values.astype(dtype))
        np.testing.assert_array_equal(np.stack(load_npz_images(tmp_path / "i.npz"))[..., 1], values)
    np.savez(tmp_path / "i.npz", images=-values.astype(np.int64))
    with pytest.raises(InputError, match=r"values span -252\.\.0, outside the declared range \[0, 255\]"):
        load_npz_images(tmp_path / "i.npz")


def test_a_value_just_outside_the_range_is_round_off_beyond_it_an_error(tmp_path):
    np.savez(tmp_path / "r.npz", images=np.full((1, 4, 4), 1.0005, np.float32))  # within 1e-3 of the width
    assert np.stack(load_npz_images(tmp_path / "r.npz")).min() == 255
    np.savez(tmp_path / "r.npz", images=np.full((1, 4, 4), 1.01, np.float32))
    with pytest.raises(InputError, match="outside the declared range"):
        load_npz_images(tmp_path / "r.npz")


def test_sixteen_bit_pngs_keep_their_range(tmp_path):
    values = (np.arange(64, dtype=np.int64).reshape(8, 8) * 1040).astype(np.uint16)  # 0 … 65520
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    fid_pixels = np.stack(load_images(str(tmp_path)))[0, ..., 0]
    np.testing.assert_array_equal(fid_pixels, np.rint(values / 65535 * 255).astype(np.uint8))  # not clipped to 255
    train_pixels = build_source(f"folder:{tmp_path}").images[0, 0].numpy()
    np.testing.assert_allclose(train_pixels, values / 65535 * 2 - 1, atol=1e-6)


def test_non_square_folders_are_kept_or_centre_cropped_never_squashed(tmp_path):
    columns = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))  # 8×16, each column its own value
    Image.fromarray(columns).save(tmp_path / "wide.png")
    kept = build_source(f"folder:{tmp_path}")
    assert kept.shape == (1, 8, 16)  # one size in the folder: kept as it is
    cropped = build_source(f"folder:{tmp_path}", image_size=8).images[0, 0].numpy()
    # shorter side already 8: no resampling, the centre 8 columns exactly (a squash would average column pairs)
    np.testing.assert_allclose(cropped, columns[:, 4:12] / 255 * 2 - 1, atol=1e-6)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "square.png")
    with pytest.raises(InputError, match=r"holds images of 2 sizes \(e\.g\. .*\); set data\.image_size"):
        build_source(f"folder:{tmp_path}")
    both = build_source(f"folder:{tmp_path}", image_size=4)
    assert both.shape == (1, 4, 4) and torch.isfinite(both.images).all()
