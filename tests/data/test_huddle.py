from types import SimpleNamespace

import torch

from mrrcnn.data.huddle import huddled, huddled_xywh, most_huddled


def test_huddled_by_box_iou():
    boxes = torch.tensor(
        [
            [0.0, 0, 10, 10],
            [2.0, 0, 12, 10],  # IoU with the first: 80 / 120 = 0.67
            [30.0, 30, 40, 40],
            [36.0, 30, 46, 40],  # IoU with the third: 40 / 160 = 0.25 < 0.3
        ]
    )
    assert huddled(boxes).tolist() == [True, True, False, False]
    assert huddled(boxes, threshold=0.25).tolist() == [True, True, True, True]
    assert huddled(boxes[:1]).tolist() == [False]
    assert huddled(torch.zeros(0, 4)).tolist() == []


def test_huddled_xywh_and_most_huddled():
    # The boxes of the test above as COCO [x, y, width, height].
    xywh = [[0.0, 0, 10, 10], [2.0, 0, 10, 10], [30.0, 30, 10, 10], [36.0, 30, 10, 10]]
    assert huddled_xywh(xywh).tolist() == [True, True, False, False]
    assert huddled_xywh([]).tolist() == []

    crowd = {"bbox": [0.0, 0, 12, 10], "iscrowd": 1}  # would huddle with both, but crowd regions do not count
    coco = SimpleNamespace(
        imgToAnns={
            7: [{"bbox": b} for b in xywh[2:]],
            8: [{"bbox": b} for b in xywh] + [crowd],
            9: [{"bbox": b} for b in xywh[:2]],
        }
    )
    assert most_huddled(coco, [7, 8, 9], 2) == [(1, 2), (2, 2)]
    assert most_huddled(coco, [7, 8, 9], 5) == [(1, 2), (2, 2), (0, 0)]
