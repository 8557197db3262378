import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
from PIL import Image

from mrrcnn.data import CocoDetection
from mrrcnn.data.images import read_image
from mrrcnn.data.labels import convert_label_images


def touching_labels() -> np.ndarray:
    """Four instances in a 40x56 label image: two that touch, one in two pieces, one of a single pixel."""
    labels = np.zeros((40, 56), np.uint16)
    labels[4:20, 4:28] = 1
    labels[4:20, 28:44] = 2  # shares an edge with label 1
    labels[24:30, 4:10] = 700
    labels[24:30, 40:50] = 700  # the same instance, in two pieces
    labels[35, 50] = 3
    return labels


@pytest.fixture
def folders(tmp_path):
    """``images/`` and ``labels/``: a 16-bit TIFF image of small range with a 16-bit TIFF label image, and an
    8-bit RGB PNG with a 32-bit TIFF label image."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(images / "cells.tif", rng.integers(0, 236, (40, 56), dtype=np.uint16))
    tifffile.imwrite(labels / "cells.tif", touching_labels())
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / "photo.png")
    tifffile.imwrite(labels / "photo.tif", (touching_labels() > 0).astype(np.uint32) * 5)
    return images, labels


def test_one_annotation_per_label_whose_mask_is_the_label(folders, tmp_path):
    images, labels = folders
    summary = convert_label_images(images, labels, tmp_path / "coco", class_name="cell")
    assert summary["num_images"] == 2 and summary["num_instances"] == 4 + 1
    assert summary["categories"] == {1: "cell"} and summary["wide_images"] == 1
    assert summary["annotation_file"] == tmp_path / "coco" / "annotations" / "train.json"
    dataset = json.loads(summary["annotation_file"].read_text())
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in dataset["images"]] == [
        (1, "cells.png", 40, 56),
        (2, "photo.png", 40, 56),
    ]
    expected = {1: touching_labels(), 2: (touching_labels() > 0) * 5}
    for ann in dataset["annotations"]:
        mask = mask_util.decode(ann["segmentation"])
        label = int(expected[ann["image_id"]][mask.astype(bool)][0])
        assert np.array_equal(mask, expected[ann["image_id"]] == label), (ann["image_id"], label)
        assert ann["area"] == mask.sum() and ann["category_id"] == 1 and ann["iscrowd"] == 0
    assert [a["id"] for a in dataset["annotations"]] == [1, 2, 3, 4, 5]

    # Written as the model reads them: the same values, in PNG files read_image reads.
    written = summary["images_dir"]
    assert np.array_equal(
        np.asarray(Image.open(written / "cells.png")), tifffile.imread(images / "cells.tif")
    )
    assert np.array_equal(read_image(written / "photo.png"), read_image(images / "photo.png"))
    coco = CocoDetection(written, summary["annotation_file"])
    _, target = coco[0]
    assert target["masks"].shape == (4, 40, 56) and target["boxes"][0].tolist() == [4, 4, 28, 20]


def test_classes_from_a_csv(folders, tmp_path):
    images, labels = folders
    csv = tmp_path / "classes.csv"
    rows = [
        "image,label,class",
        "cells,1,nucleus",
        "cells.tif,2,nucleus",
        "cells,700,debris",
        "cells,3,nucleus",
    ]
    csv.write_text("\n".join([*rows, "photo.png,5,nucleus", "other,1,zebra", ""]))
    summary = convert_label_images(images, labels, tmp_path / "coco", split="val", classes=csv)
    # Alphabetical over the whole CSV, so that every split converted with it numbers classes alike.
    assert summary["categories"] == {1: "debris", 2: "nucleus", 3: "zebra"}
    dataset = json.loads((tmp_path / "coco" / "annotations" / "val.json").read_text())
    assert [a["category_id"] for a in dataset["annotations"]] == [2, 2, 2, 1, 2]

    csv.write_text("\n".join(rows[:-1] + ["photo,5,nucleus"]))
    with pytest.raises(ValueError, match=r"cells.tif: label\(s\) \[3\] have no class in .*classes.csv"):
        convert_label_images(images, labels, tmp_path / "coco", classes=csv)
    csv.write_text("\n".join([*rows, "photo,5,nucleus", "photo,6,nucleus"]))
    with pytest.raises(
        ValueError, match=r"rows of image photo name label\(s\) \[6\], which .*photo.tif lacks"
    ):
        convert_label_images(images, labels, tmp_path / "coco", classes=csv)
    csv.write_text("name,label\ncells,1")
    with pytest.raises(ValueError, match="its first line must be the header image,label,class"):
        convert_label_images(images, labels, tmp_path / "coco", classes=csv)
    csv.write_text("image,label,class\ncells,one,nucleus")
    with pytest.raises(
        ValueError, match=r"classes.csv, line 2: needs an image, a label >= 1 and a class name"
    ):
        convert_label_images(images, labels, tmp_path / "coco", classes=csv)


def test_cellpose_layout_one_folder_and_a_suffix(tmp_path):
    Image.fromarray(np.full((40, 56), 100, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(touching_labels()).save(tmp_path / "a_masks.png")  # 16-bit PNG
    summary = convert_label_images(tmp_path, tmp_path, tmp_path / "coco", label_suffix="_masks")
    assert summary["num_images"] == 1 and summary["num_instances"] == 4


def test_bad_label_images_are_named(folders, tmp_path):
    images, labels = folders
    out = tmp_path / "coco"
    tifffile.imwrite(labels / "photo.tif", np.zeros((40, 55), np.uint16))
    with pytest.raises(
        ValueError, match=r"photo.tif is 55x40 \(width x height\), its image .*photo.png 56x40"
    ):
        convert_label_images(images, labels, out)
    tifffile.imwrite(labels / "photo.tif", np.zeros((40, 56), np.float32))
    with pytest.raises(
        ValueError, match="photo.tif: a 40x56 label image of float32; a label image holds one"
    ):
        convert_label_images(images, labels, out)
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(labels / "photo.png")
    (labels / "photo.tif").unlink()
    with pytest.raises(ValueError, match="photo.png: a 40x56x3 label image of uint8"):
        convert_label_images(images, labels, out)
    (labels / "photo.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="photo.png: cannot read label image"):
        convert_label_images(images, labels, out)
    (labels / "photo.png").unlink()
    tifffile.imwrite(labels / "photo.tif", -np.ones((40, 56), np.int16))
    with pytest.raises(ValueError, match="photo.tif: label -1 is negative"):
        convert_label_images(images, labels, out)
    (labels / "photo.tif").unlink()
    with pytest.raises(ValueError, match=r"pair by stem.*no label image in .*labels for photo"):
        convert_label_images(images, labels, out)
    tifffile.imwrite(images / "photo.tif", np.zeros((2, 40, 56, 3), np.uint8))
    tifffile.imwrite(labels / "photo.tif", np.zeros((40, 56), np.uint8))
    (images / "photo.png").unlink()
    with pytest.raises(ValueError, match=r"photo.tif: a 2x40x56x3 image of uint8; convert takes 8-bit"):
        convert_label_images(images, labels, out)
