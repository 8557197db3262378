from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrrcnn.data.images import read_image


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (3, 1, 4) and image.dtype == torch.float32
    expected = torch.tensor([0, 255, 30000, 65535]) / 65535
    torch.testing.assert_close(image[0, 0], expected)
    assert torch.equal(image[0], image[2])


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_other_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    rgb.convert(mode).save(path)
    image = read_image(path)
    assert image.shape == (3, 2, 4) and 0 <= image.min() and image.max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # displayed turned by 180 degrees
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "turned.jpg")
    assert image.shape == (3, 2, 3)
    assert image[0, 1, 2] > 0.9 and image[0, 0, 0] < 0.1


def test_float_images_and_decompression_bombs_are_refused(tmp_path, monkeypatch):
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif: 32-bit float images are not supported"):
        read_image(tmp_path / "float.tif")
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="big.png: image is larger than 1000 pixels"):
        read_image(tmp_path / "big.png")


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="my picture: cannot read image"):
        read_image(tmp_path / "broken.png", "my picture")


def nuclei_like(tmp_path) -> Path:
    """A 16-bit microscopy-like image: dim background, brighter blobs, values 0-235 (as stardist's nuclei)."""
    rng = np.random.default_rng(0)
    values = rng.poisson(20, (64, 96)).astype(np.float64)
    yy, xx = np.mgrid[:64, :96]
    for y, x in rng.integers(8, 56, (12, 2)):
        values += 180 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30)
    path = tmp_path / "nuclei.png"
    Image.fromarray(values.clip(0, 235).astype(np.uint16)).save(path)
    return path


def test_percentile_intensity_stretches_a_dim_16_bit_image(tmp_path):
    path = nuclei_like(tmp_path)
    # The default is unchanged: 16-bit scaled by 65535, nearly black.
    assert float(read_image(path).max()) == pytest.approx(235 / 65535)
    image = read_image(path, intensity="percentile")
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert float(image.quantile(0.01)) < 0.01 and float(image.quantile(0.998)) > 0.99
    # Other percentiles: more of the image saturates.
    assert (read_image(path, intensity="percentile", percentiles=(1, 90)) == 1).float().mean() >= 0.09


def test_percentile_intensity_per_channel_and_of_a_flat_image(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = np.arange(20).reshape(4, 5)  # red 0..19, green flat at 7, blue 0
    rgb[..., 1] = 7
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png", intensity="percentile", percentiles=(0, 100))
    torch.testing.assert_close(image[0], torch.arange(20.0).reshape(4, 5) / 19)
    assert not image[1:].any()  # a flat channel has no contrast to stretch
    with pytest.raises(ValueError, match="intensity must be full_range or percentile, got 'log'"):
        read_image(tmp_path / "rgb.png", intensity="log")
