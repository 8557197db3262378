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
