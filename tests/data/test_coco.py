import json
import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mrrcnn.data import CocoDetection, collate_fn

H, W = 48, 64

# Ground truth of image 1, in numpy: one mask per kind of segmentation.
POLYGON_MASK = np.zeros((H, W), np.uint8)
POLYGON_MASK[3:7, 2:8] = 1  # pycocotools' rasterisation of the polygon below
UNCOMPRESSED_MASK = np.zeros((H, W), np.uint8)
UNCOMPRESSED_MASK[2:6, 10] = 1
COMPRESSED_MASK = np.zeros((H, W), np.uint8)
COMPRESSED_MASK[10:14, 0:5] = 1


def _dataset_json():
    compressed = mask_util.encode(np.asfortranarray(COMPRESSED_MASK))
    crowd = mask_util.encode(np.asfortranarray(np.ones((H, W), np.uint8)))
    return {
        "images": [
            {"id": 1, "file_name": "rgb.png", "height": H, "width": W},
            {"id": 2, "file_name": "gray.png", "height": 8, "width": 10},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [[2, 3, 8, 3, 8, 7, 2, 7]],
                "bbox": [2, 3, 6, 4],
                "area": 24.0,
                "iscrowd": 0,
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                # Column-major runs, starting with background: pixels 10 * H + 2 .. 10 * H + 5.
                "segmentation": {"size": [H, W], "counts": [10 * H + 2, 4, H * W - 10 * H - 6]},
                "bbox": [10, 2, 1, 4],
                "area": 4.0,
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 3,
                "segmentation": {"size": [H, W], "counts": compressed["counts"].decode("ascii")},
                "bbox": [0, 10, 5, 4],
                "area": 20.0,
                "iscrowd": 0,
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [H, W], "counts": crowd["counts"].decode("ascii")},
                "bbox": [0, 0, W, H],
                "area": float(H * W),
                "iscrowd": 1,
            },
        ],
        "categories": [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}],
    }


def _write(tmp_path, dataset):
    rng = np.random.default_rng(0)
    # Noise makes the PNG's pixel data long enough to be cut in the middle by the truncation test.
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((8, 10), 128, np.uint8), mode="L").save(tmp_path / "gray.png")
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(dataset))
    return annotation_file


@pytest.fixture
def annotation_file(tmp_path):
    return _write(tmp_path, _dataset_json())


def test_targets_of_every_segmentation_kind(tmp_path, annotation_file):
    dataset = CocoDetection(tmp_path, annotation_file)
    assert len(dataset) == 2
    assert dataset.categories == {1: "one", 3: "three"}
    assert dataset.num_classes == 4

    image, target = dataset[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    expected = np.asarray(Image.open(tmp_path / "rgb.png")).transpose(2, 0, 1) / 255
    assert torch.allclose(image, torch.from_numpy(expected).float())
    assert target["image_id"] == 1
    # The crowd annotation (id 13) is left out.
    assert target["labels"].tolist() == [3, 1, 3] and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[2, 3, 8, 7], [10, 2, 11, 6], [0, 10, 5, 14]]
    assert target["boxes"].dtype == torch.float32
    assert target["masks"].dtype == torch.uint8
    assert np.array_equal(
        target["masks"].numpy(), np.stack([POLYGON_MASK, UNCOMPRESSED_MASK, COMPRESSED_MASK])
    )
    assert target["area"].tolist() == [24, 4, 20] and target["area"].dtype == torch.float32
    assert target["iscrowd"].tolist() == [0, 0, 0] and target["iscrowd"].dtype == torch.int64


def test_image_without_annotations_is_gray_to_rgb(tmp_path, annotation_file):
    image, target = CocoDetection(tmp_path, annotation_file)[1]
    assert image.shape == (3, 8, 10)
    assert torch.allclose(image, torch.full((3, 8, 10), 128 / 255))
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 8, 10) and target["masks"].dtype == torch.uint8
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)


def test_transforms_are_applied(tmp_path, annotation_file):
    def transforms(image, target):
        return image * 0, {**target, "seen": True}

    image, target = CocoDetection(tmp_path, annotation_file, transforms=transforms)[0]
    assert image.sum() == 0 and target["seen"]


def test_dataloader_with_worker_processes(tmp_path, annotation_file):
    dataset = CocoDetection(tmp_path, annotation_file)
    pickle.dumps(dataset)  # what spawn-started workers need
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_fn)
    ((images, targets),) = list(loader)
    assert [i.shape for i in images] == [(3, H, W), (3, 8, 10)]
    assert [t["image_id"] for t in targets] == [1, 2]


def _unknown_image(d):
    d["annotations"][0]["image_id"] = 99


def _unknown_category(d):
    d["annotations"][0]["category_id"] = 2


def _empty_bbox(d):
    d["annotations"][0]["bbox"] = [2, 3, 0, 4]


def _short_bbox(d):
    d["annotations"][0]["bbox"] = [2, 3, 6]


def _odd_polygon(d):
    d["annotations"][0]["segmentation"] = [[2, 3, 8, 3, 8, 7, 2]]


def _rle_size_mismatch(d):
    d["annotations"][2]["segmentation"]["size"] = [W, H]


def _polygon_outside(d):
    # Its bbox lies inside the image, but the polygon does not: it would give an empty mask.
    d["annotations"][0]["segmentation"] = [[W + 1, 3, W + 8, 3, W + 8, 7]]


BAD_RECORDS = [
    (_unknown_image, 10, 99, "image_id 99"),
    (_unknown_category, 10, 1, "category_id 2"),
    (_empty_bbox, 10, 1, "width or height <= 0"),
    (_short_bbox, 10, 1, "'bbox' must be 4 finite numbers"),
    (_odd_polygon, 10, 1, "polygon 0 has 7 coordinates"),
    (_rle_size_mismatch, 12, 1, "RLE 'size'"),
    (_polygon_outside, 10, 1, "polygons lie entirely outside the 64x48 image"),
]


@pytest.mark.parametrize("corrupt, ann_id, image_id, problem", BAD_RECORDS)
def test_bad_record_is_named(tmp_path, corrupt, ann_id, image_id, problem):
    dataset = _dataset_json()
    corrupt(dataset)
    annotation_file = _write(tmp_path, dataset)
    with pytest.raises(ValueError) as info:
        CocoDetection(tmp_path, annotation_file)
    message = str(info.value)
    assert str(annotation_file) in message
    assert f"annotation id={ann_id}, image id={image_id}" in message
    assert problem in message


@pytest.mark.parametrize("corrupt, ann_id, image_id, problem", BAD_RECORDS)
def test_bad_record_skipped(tmp_path, corrupt, ann_id, image_id, problem):
    dataset = _dataset_json()
    corrupt(dataset)
    annotation_file = _write(tmp_path, dataset)
    with pytest.warns(UserWarning, match=f"annotation id={ann_id}, image id={image_id}") as record:
        dataset = CocoDetection(tmp_path, annotation_file, skip_bad=True)
    assert len(record) == 1
    assert dataset.num_skipped_records == 1
    if image_id == 1:
        # The image of a bad annotation goes, lest its instance be learnt as background.
        assert dataset.ids == [2]
        assert dataset.coco.getAnnIds() == []
    else:
        assert dataset.ids == [1, 2]
        assert len(dataset[0][1]["labels"]) == 2


def test_two_bad_records_two_warnings(tmp_path):
    dataset = _dataset_json()
    _odd_polygon(dataset)
    dataset["images"][1]["width"] = 0
    annotation_file = _write(tmp_path, dataset)
    with pytest.warns(UserWarning) as record:
        dataset = CocoDetection(tmp_path, annotation_file, skip_bad=True)
    assert len(record) == 2
    assert "image id=2, file_name='gray.png'" in str(record[0].message)
    assert dataset.num_skipped_records == 2
    assert len(dataset) == 0


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not a valid JSON file"),
        ('{"images": [], "categories": []}', "lacks \\['annotations'\\]"),
    ],
)
def test_bad_json(tmp_path, text, problem):
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(text)
    with pytest.raises(ValueError, match=problem) as info:
        CocoDetection(tmp_path, annotation_file)
    assert str(annotation_file) in str(info.value)


def _missing(path):
    path.unlink()


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_size(path):
    Image.new("RGB", (W, H + 1)).save(path)


@pytest.mark.parametrize(
    "corrupt, problem",
    [(_missing, "cannot read image"), (_truncated, "truncated"), (_wrong_size, "the json says 64x48")],
)
def test_bad_image_file(tmp_path, annotation_file, corrupt, problem):
    corrupt(tmp_path / "rgb.png")
    dataset = CocoDetection(tmp_path, annotation_file)
    with pytest.raises(ValueError, match=problem) as info:
        dataset[0]
    assert f"{tmp_path / 'rgb.png'} (image id=1 in {annotation_file})" in str(info.value)

    dataset = CocoDetection(tmp_path, annotation_file, skip_bad=True)
    with pytest.warns(UserWarning, match="rgb.png") as record:
        sample = dataset[0]
    assert sample is None and len(record) == 1
    images, targets = collate_fn([sample, dataset[1], None])
    assert len(images) == 1 and targets[0]["image_id"] == 2
    assert collate_fn([None]) == ((), ())


def test_undecodable_compressed_rle(tmp_path):
    dataset = _dataset_json()
    dataset["annotations"][2]["segmentation"]["counts"] = "0PP4"  # runs of a 64 x 64 mask
    annotation_file = _write(tmp_path, dataset)
    with pytest.raises(ValueError, match="annotation id=12 \\(image id=1\\): cannot decode segmentation"):
        CocoDetection(tmp_path, annotation_file)[0]


# pytest.warns re-emits the warnings it did not match, pycocotools' NumPy 2 deprecation among them.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_segmentation_covering_no_pixel_is_named(tmp_path):
    dataset = _dataset_json()
    # Inside the image, but a sliver thinner than a pixel centre: pycocotools rasterises nothing.
    dataset["annotations"][0]["segmentation"] = [[2.0, 3.0, 8.0, 3.0, 8.0, 3.2]]
    annotation_file = _write(tmp_path, dataset)
    with pytest.raises(
        ValueError, match=r"annotation id=10 \(image id=1\): its segmentation covers no pixel"
    ):
        CocoDetection(tmp_path, annotation_file)[0]
    with pytest.warns(UserWarning, match="covers no pixel"):
        assert CocoDetection(tmp_path, annotation_file, skip_bad=True)[0] is None


def test_exif_rotated_image_annotated_as_displayed(tmp_path):
    dataset = _dataset_json()
    annotation_file = _write(tmp_path, dataset)
    pixels = np.asarray(Image.open(tmp_path / "rgb.png"))
    # Stored 48 x 64 (width x height), displayed 64 x 48 after a 90-degree turn (orientation 6).
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rgb.png", exif=exif)
    image, _ = CocoDetection(tmp_path, annotation_file)[0]
    assert torch.equal(image, torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255)

    # The same json for the stored size: the message says why it does not fit.
    dataset["images"][0].update(width=H, height=W)
    dataset["annotations"] = dataset["annotations"][:1]
    annotation_file.write_text(json.dumps(dataset))
    with pytest.raises(
        ValueError,
        match="the json says 48x64 \\(as displayed, its EXIF orientation applied\\); the json has the stored size",
    ):
        CocoDetection(tmp_path, annotation_file)[0]
