import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
from PIL import Image

from mrrcnn.data import convert_label_images
from mrrcnn.inference.labels import write_label_image


def _converted_masks(folder, out) -> dict[str, list[np.ndarray]]:
    """``mrrcnn convert`` of ``folder`` (images and ``_labels`` label images side by side): each image's
    instance masks, in annotation order."""
    result = convert_label_images(folder, folder, out, label_suffix="_labels")
    dataset = json.loads(result["annotation_file"].read_text())
    names = {image["id"]: image["file_name"] for image in dataset["images"]}
    masks: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
    for ann in dataset["annotations"]:
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode("ascii")}
        masks[names[ann["image_id"]]].append(mask_util.decode(rle))
    return masks


def test_labels_up_to_65535_are_a_16_bit_png_that_convert_reads_back(tmp_path):
    labels = np.zeros((6, 8), dtype=np.int64)
    labels[0:3, 0:3] = 1
    labels[0:3, 3:5] = 2  # touches 1
    labels[5, 0:2] = labels[5, 6:8] = 300  # in two pieces, past 8 bits
    Image.fromarray(np.full((6, 8), 50, dtype=np.uint8)).save(tmp_path / "cells.png")
    path = write_label_image(labels, tmp_path / "cells")
    assert path == tmp_path / "cells_labels.png"
    with Image.open(path) as pil:
        assert np.array_equal(np.asarray(pil), labels) and np.asarray(pil).dtype == np.uint16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png", "cells_labels.png"]

    masks = _converted_masks(tmp_path, tmp_path / "coco")["cells.png"]
    assert len(masks) == 3
    for mask, label in zip(masks, (1, 2, 300)):
        assert np.array_equal(mask, labels == label)


def test_labels_past_65535_are_a_32_bit_tiff_that_convert_reads_back(tmp_path):
    labels = np.zeros((300, 300), dtype=np.uint32)
    labels[10:20, 10:20] = 1
    labels[100:150, 200:220] = 65536
    labels[290:, :] = 70000
    Image.fromarray(np.zeros((300, 300), dtype=np.uint8)).save(tmp_path / "big.png")
    path = write_label_image(labels, tmp_path / "big")
    assert path == tmp_path / "big_labels.tif"
    read = tifffile.imread(path)
    assert read.dtype == np.uint32 and np.array_equal(read, labels)

    masks = _converted_masks(tmp_path, tmp_path / "coco")["big.png"]
    assert len(masks) == 3
    for mask, label in zip(masks, (1, 65536, 70000)):
        assert np.array_equal(mask, labels == label)


def test_a_label_image_of_the_other_suffix_from_an_earlier_run_is_removed(tmp_path):
    stem = tmp_path / "a"
    wide = np.full((3, 4), 70000)
    assert write_label_image(wide, stem).name == "a_labels.tif"
    assert write_label_image(np.ones((3, 4), dtype=np.uint8), stem).name == "a_labels.png"
    assert [p.name for p in tmp_path.iterdir()] == ["a_labels.png"]
    assert write_label_image(wide, stem).name == "a_labels.tif"
    assert [p.name for p in tmp_path.iterdir()] == ["a_labels.tif"]


def test_bad_labels(tmp_path):
    with pytest.raises(
        ValueError, match=r"non-empty 2-D integer array \[H, W\], got float64 of shape \(2, 2\)"
    ):
        write_label_image(np.zeros((2, 2)), tmp_path / "a")
    with pytest.raises(ValueError, match=r"got int64 of shape \(2, 2, 3\)"):
        write_label_image(np.zeros((2, 2, 3), dtype=np.int64), tmp_path / "a")
    with pytest.raises(ValueError, match=r"must be in \[0, 4294967295\] \(0 the background\), got -1..0"):
        write_label_image(np.array([[0, -1]]), tmp_path / "a")
    assert not list(tmp_path.iterdir())
