"""Data: COCO-format datasets, detection transforms and the synthetic huddled-instance benchmark."""

from .coco import CocoDetection, collate_fn
from .huddle import HUDDLE_IOU, huddled, huddled_xywh, most_huddled
from .synthetic import CLASSES, make_synthetic
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "CLASSES",
    "HUDDLE_IOU",
    "CocoDetection",
    "Compose",
    "RandomHorizontalFlip",
    "collate_fn",
    "huddled",
    "huddled_xywh",
    "make_synthetic",
    "most_huddled",
]
