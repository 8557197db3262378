import torch

from mrrcnn.data.huddle import huddled


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
