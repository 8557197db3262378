import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from mrrcnn.inference.detections import Detections
from mrrcnn.inference.results import to_coco_results, write_results


def output(n: int, masks: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    prediction = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.5, 0.25, 3.0, 4.0]])[:n],
        "labels": torch.tensor([3, 18])[:n],
        "scores": torch.tensor([0.75, 0.5])[:n],
    }
    if masks:
        prediction["masks"] = torch.rand(n, 1, 7, 5, generator=g)
    return prediction


def detections(n: int, masks: bool = True) -> Detections:
    return Detections.from_output(output(n, masks), mask_threshold=0.4, image_size=(7, 5))


def test_to_coco_results():
    predictions = {42: detections(2), 7: detections(1, masks=False), 8: detections(0)}
    records = to_coco_results(predictions)
    assert [{k: v for k, v in r.items() if k != "segmentation"} for r in records] == [
        {"image_id": 42, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.75},
        {"image_id": 42, "category_id": 18, "bbox": [0.5, 0.25, 2.5, 3.75], "score": 0.5},
        {"image_id": 7, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.75},
    ]
    assert "segmentation" not in records[2]
    masks = output(2)["masks"][:, 0] > 0.4
    for record, mask in zip(records[:2], masks):
        assert isinstance(record["segmentation"]["counts"], str)
        assert np.array_equal(mask_util.decode(record["segmentation"]), mask.numpy())
    json.dumps(records)


def test_write_results(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    records = to_coco_results({1: detections(2)})
    write_results(records, path)
    assert json.loads(path.read_text()) == records
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    # A failed write leaves the previous file whole and no temporary file behind.
    with pytest.raises(TypeError):
        write_results([{"score": torch.ones(1)}], path)
    assert json.loads(path.read_text()) == records
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
