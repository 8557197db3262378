import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from mrrcnn.data import CLASSES, CocoDetection, huddled, make_synthetic
from mrrcnn.data.synthetic import MIN_VISIBLE_PIXELS, _Crop, _encode


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    return out, make_synthetic(out, num_train=12, num_val=4, seed=3, image_size=96)


@pytest.fixture(scope="module")
def moderate(tmp_path_factory):
    out = tmp_path_factory.mktemp("moderate")
    return out, make_synthetic(out, num_train=40, num_val=20, seed=0)


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_layout_and_summary(small):
    out, summary = small
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"{i:06d}.png" for i in range(12)]
    assert len(list((out / "val").iterdir())) == 4
    for split, count in (("train", 12), ("val", 4)):
        info = summary[split]
        assert info["annotation_file"] == str(out / "annotations" / f"{split}.json")
        assert info["num_images"] == count
        assert info["num_instances"] == len(
            json.loads((out / "annotations" / f"{split}.json").read_text())["annotations"]
        )
        assert 0 <= info["huddled_fraction"] <= 1


def test_annotations_describe_the_visible_parts(small):
    out, _ = small
    coco = COCO(out / "annotations" / "train.json")
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    for image_id in coco.getImgIds():
        image = coco.imgs[image_id]
        assert (image["height"], image["width"]) == (96, 96)
        anns = coco.imgToAnns[image_id]
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, 96, 96))
        assert masks.sum(0).max(initial=0) <= 1  # a pixel shows one instance at most
        for ann, mask in zip(anns, masks):
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["iscrowd"] == 0 and ann["category_id"] in range(1, len(CLASSES) + 1)
            assert ann["area"] == mask.sum() >= MIN_VISIBLE_PIXELS
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == mask_util.toBbox(ann["segmentation"]).tolist()


def test_loads_as_coco_detection(small):
    out, summary = small
    dataset = CocoDetection(out / "val", out / "annotations" / "val.json")
    assert len(dataset) == 4 and dataset.num_classes == len(CLASSES) + 1
    count = 0
    for image, target in dataset:
        assert image.shape == (3, 96, 96)
        assert target["masks"].shape == (len(target["labels"]), 96, 96)
        count += len(target["labels"])
    assert count == summary["val"]["num_instances"]


def test_instances_huddle_and_every_class_shows(moderate):
    out, summary = moderate
    for split in ("train", "val"):
        coco = json.loads((out / "annotations" / f"{split}.json").read_text())
        assert {a["category_id"] for a in coco["annotations"]} == set(range(1, len(CLASSES) + 1))
        num_huddled = 0
        for image in coco["images"]:
            boxes = torch.tensor(
                [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
            ).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            num_huddled += int(huddled(boxes.double()).sum())
        fraction = num_huddled / len(coco["annotations"])
        assert fraction == pytest.approx(summary[split]["huddled_fraction"])
        assert fraction >= 1 / 3


def test_crowding_zero_keeps_instances_apart(tmp_path):
    summary = make_synthetic(tmp_path, num_train=10, num_val=0, seed=0, crowding=0.0)
    assert summary["train"]["huddled_fraction"] == 0
    assert summary["val"]["num_instances"] == 0


def test_same_seed_same_bytes(tmp_path, small):
    out, _ = small
    make_synthetic(tmp_path / "again", num_train=12, num_val=4, seed=3, image_size=96)
    assert _files(tmp_path / "again") == _files(out)
    make_synthetic(tmp_path / "other", num_train=12, num_val=4, seed=4, image_size=96)
    other = _files(tmp_path / "other")
    assert all(other[name] != data for name, data in _files(out).items())


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"seed": -1}, "seed"),
        ({"image_size": 32}, "image_size"),
        ({"crowding": 1.5}, "crowding"),
        ({"num_val": -1}, "num_val"),
        ({"object_size": 32}, "object_size"),
        ({"object_size": 161}, "object_size"),
        ({"object_size": 100.0}, "object_size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        make_synthetic(tmp_path, **{"num_train": 1, "num_val": 1, **kwargs})


def test_uniform_appearance_one_fill_per_image_and_outlines(tmp_path):
    summary = make_synthetic(tmp_path, num_train=3, num_val=0, seed=1, appearance="uniform", crowding=1.0)
    coco = COCO(summary["train"]["annotation_file"])
    assert coco.dataset["info"]["appearance"] == "uniform"
    for image_id in coco.getImgIds():
        pixels = np.asarray(Image.open(tmp_path / "train" / coco.imgs[image_id]["file_name"])).astype(float)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        medians = [np.median(pixels[coco.annToMask(a).astype(bool)], axis=0) for a in anns]
        # One colour for every instance of the image (flat or stripes of it: medians agree closely).
        assert np.ptp(np.array(medians), axis=0).max() < 60
        # Each instance's border is darker than its inside: the outline.
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            inner = (
                mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
            )
            assert pixels[mask & ~inner].mean() < pixels[inner].mean()
    with pytest.raises(ValueError, match="appearance must be one of"):
        make_synthetic(tmp_path, 1, 0, appearance="plain")


def _counts_and_areas(annotation_file):
    coco = json.loads(annotation_file.read_text())
    return len(coco["annotations"]) / len(coco["images"]), np.mean([a["area"] for a in coco["annotations"]])


def test_object_size_keeps_shape_sizes_and_density(tmp_path, moderate):
    out, _ = moderate
    count, area = _counts_and_areas(out / "annotations" / "train.json")
    summary = make_synthetic(tmp_path, num_train=4, num_val=0, seed=0, image_size=512, object_size=160)
    large_count, large_area = _counts_and_areas(tmp_path / "annotations" / "train.json")
    assert 1 / 1.5 < large_area / area < 1.5
    # As many instances per pixel: about (512 / 160)**2 = 10.24 times as many per image.
    assert 7 < large_count / count < 14
    assert 0.3 < summary["train"]["huddled_fraction"] < 0.7
    assert json.loads((tmp_path / "annotations" / "train.json").read_text())["info"]["object_size"] == 160
    assert "object_size" not in json.loads((out / "annotations" / "train.json").read_text())["info"]


@pytest.mark.parametrize("size", [7, 64])
def test_crop_rles_match_whole_mask_rles(size):
    rng = np.random.default_rng(size)
    for _ in range(50):
        # Windows anywhere, those touching the image's edges and corners included.
        y0, x0 = rng.integers(0, size, 2) * rng.integers(0, 2, 2)
        height, width = rng.integers(1, size - y0 + 1), rng.integers(1, size - x0 + 1)
        crop = _Crop(int(y0), int(x0), rng.uniform(size=(height, width)) < rng.choice([0.1, 0.5, 0.95]))
        whole = np.zeros((size, size), dtype=np.uint8, order="F")
        whole[crop.window] = crop.mask
        assert _encode(crop, size) == mask_util.encode(whole)
